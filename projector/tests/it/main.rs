//! Integration tests of the projector against a real NATS JetStream and PostgreSQL.

mod audit;
mod crash;
mod dead_letters;
mod duplicates;
mod free_text;
mod outage;
mod poison;
mod provision;
mod replay;
mod shutdown;
mod support;
