//! ccm-core against a real nats-server.

mod provisioning;
