//! ccm-core against a real nats-server.

mod claims;
mod consumer;
mod inspect;
mod provisioning;
