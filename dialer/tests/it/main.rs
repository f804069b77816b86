//! The dialer's carrier adapters against carrier-sim over HTTP, and its metrics, probes and
//! outcome router against a real NATS server.

mod adapters;
mod metrics;
mod outcomes;
