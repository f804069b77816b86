//! ccm-core against a real nats-server.

mod claims;
mod connect;
mod consumer;
mod dial_consumer;
mod inspect;
mod provisioning;
mod schema;
