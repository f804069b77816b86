//! Integration tests of ingest against a real NATS server and PostgreSQL (one each per test).

mod api;
mod auth;
mod bad_input;
mod bulk;
mod callback;
mod calling_hours;
mod campaigns;
mod consumer_pause;
mod contact_import;
mod dashboard;
mod dead_letters;
mod dnc;
mod dnc_cache;
mod duplicates;
mod idempotency;
mod initiate;
mod lifecycle;
mod limits;
mod logs;
mod metrics;
mod nul_text;
mod openapi;
mod prometheus;
mod resource_calls;
mod resource_campaigns;
mod security;
