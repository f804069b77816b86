//! ccm-core against a real nats-server.

mod claims;
mod consumer;
mod dial_consumer;
mod inspect;
mod provisioning;
mod schema;
