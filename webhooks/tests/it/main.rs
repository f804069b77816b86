//! Integration tests of ccm-webhooks against a real nats-server, with receivers that are
//! small axum servers on 127.0.0.1 in the test process.

mod api;
mod completion;
mod delivery;
mod lifecycle;
mod metrics;
mod mirror;
mod replicas;
mod shutdown;
mod support;
mod targets;
