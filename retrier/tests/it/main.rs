//! Integration tests of the retrier against a real NATS JetStream (one test binary).

mod cli;
mod dead_letters;
mod expiry;
mod history;
mod metrics;
mod outcomes;
mod policy_file;
mod retries;
mod shutdown;
mod support;
mod terminated;
mod window;
