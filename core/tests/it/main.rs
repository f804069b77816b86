//! ccm-core against a real nats-server.

mod claims;
mod connect;
mod consumer;
mod dial_consumer;
mod inspect;
mod lost_race;
mod provisioning;
mod schema;
