//! # ccm-core
//!
//! What every ccm service shares, and nothing service-specific:
//!
//! - [`ids`], [`phone`], [`status`]: parsed domain values (call and campaign ids, E.164 phone
//!   numbers, the old system's status names).
//! - [`events`], [`campaign`]: the payloads that travel through JetStream and the campaign
//!   document kept in the `campaigns` KV bucket; [`lifecycle`]: its states and transitions.
//! - [`subjects`]: the only place subject strings and de-duplication ids are built.
//! - [`topology`]: the streams, consumers and KV buckets of `nats/`, embedded, and their
//!   idempotent provisioning.
//! - [`nats`]: connecting and publishing with `Nats-Msg-Id`. [`trace_context`]: the W3C
//!   trace context carried in NATS headers.
//! - [`dial_consumer`]: a campaign's dial consumer (cap, pause) derived from its document.
//! - [`inspect`]: streams, consumers and buckets as the operator's `status` command shows them.
//! - [`metrics`]: the Prometheus recorder and a minimal `/metrics` server.
//! - [`policy`]: the YAML retry policy (the old system's format plus extensions) and the
//!   pure retry decision.
//! - [`dnc`]: the do-not-call lists. [`consent`]: consent types and the `consents` bucket.
//! - [`placements`]: the carrier's call id → the attempt it placed, for callbacks that name
//!   only the call.
//! - [`dlq`]: dead letters as stored in `DLQ`, and the operator's actions on them.
//! - [`config`], [`telemetry`], [`service`]: layered configuration, `tracing` set-up, and
//!   the command line and shutdown signal every binary shares.
//! - [`ssrf`]: which addresses a webhook may be sent to.
//! - [`window`]: calling windows in the callee's time zone.
//! - [`twilio`]: Twilio's request signature and call statuses, shared by the dialer's
//!   adapter, ingest's callback route and carrier-sim.
//!
//! Services never depend on each other; whatever two of them must agree on lives here.

pub mod access;
pub mod attempt_audit;
pub mod call_lifecycle;
pub mod call_log;
pub mod callback;
pub mod campaign;
pub mod claims;
pub mod config;
pub mod consent;
pub mod consumer;
pub mod contact_numbers;
pub mod contacts;
pub mod dial_consumer;
pub mod dlq;
pub mod dnc;
pub mod events;
pub mod expiry;
pub mod ids;
pub mod inspect;
pub mod kv_ttl;
pub mod lifecycle;
pub mod metrics;
pub mod mirror;
pub mod nats;
pub mod outcome_route;
pub mod phone;
pub mod placements;
pub mod policy;
pub mod privacy;
pub mod retries;
pub mod rules;
pub mod schema;
pub mod server_version;
pub mod service;
pub mod ssrf;
pub mod status;
pub mod subjects;
pub mod telemetry;
pub mod topology;
pub mod trace_context;
pub mod twilio;
pub mod webhook_queue;
pub mod webhooks;
pub mod window;

pub use campaign::{Campaign, CampaignState};
pub use config::Config;
pub use events::{
    AskedCallback, CallEvent, CustomFields, DialRequest, EventKind, OutcomeSource, RetryEntry,
};
pub use ids::{CallId, CampaignId};
pub use phone::{PhoneNumber, PhoneRule};
pub use policy::{PolicyOverride, RetryPolicy};
pub use status::{CallStatus, OutcomeStatus};
