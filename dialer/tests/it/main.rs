//! The dialer's carrier adapters against carrier-sim over HTTP, and its metrics and probes
//! against a real NATS server.

mod adapters;
mod metrics;
