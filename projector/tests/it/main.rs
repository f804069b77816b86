//! Integration tests of the projector against a real NATS JetStream and PostgreSQL.

mod crash;
mod outage;
mod poison;
mod replay;
mod support;
