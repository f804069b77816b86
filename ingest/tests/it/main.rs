//! Integration tests of ingest against a real NATS server and PostgreSQL (one each per test).

mod api;
mod auth;
mod bad_input;
mod bulk;
mod callback;
mod campaigns;
mod duplicates;
mod initiate;
mod metrics;
mod openapi;
mod resource_calls;
mod resource_campaigns;
mod security;
