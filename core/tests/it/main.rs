//! ccm-core against a real nats-server.

mod inspect;
mod provisioning;
