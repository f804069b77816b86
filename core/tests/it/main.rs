//! ccm-core against a real nats-server.

mod claims;
mod inspect;
mod provisioning;
mod schema;
