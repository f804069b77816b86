//! Carrier adapters: how a call attempt is handed to a telephony carrier.
//!
//! An adapter only *places* the call. Its outcome always comes back as an outcome event on
//! `calls.outcome.<campaign>.<call>`: from a carrier callback through ingest, or published by
//! the adapter itself (the in-process simulator). The dialer waits for that event whatever
//! the adapter, so all adapters behave alike after placement.

pub mod sim;

use ccm_core::DialRequest;
use futures::future::BoxFuture;

/// What the carrier said when the call was placed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    /// The carrier's id of the call, when it gives one.
    pub external_call_id: Option<String>,
}

/// Why a placement failed.
#[derive(Debug, thiserror::Error)]
pub enum CarrierError {
    /// The carrier could not be reached or failed (5xx): a technical failure, retried by
    /// redelivery and dead-lettered after `max_deliver`.
    #[error("carrier unavailable: {0}")]
    Unavailable(String),
    /// The carrier refused this call (4xx): the attempt ends FAILED with this reason.
    #[error("carrier rejected the call: {0}")]
    Rejected(String),
}

/// A carrier adapter.
pub trait Carrier: Send + Sync + std::fmt::Debug + 'static {
    /// Places `call` with the carrier. Must be safe to call again for the same attempt after
    /// an ambiguous failure (adapters pass the attempt's id as the carrier's idempotency key
    /// where the carrier has one).
    fn place<'a>(&'a self, call: &'a DialRequest)
    -> BoxFuture<'a, Result<Placement, CarrierError>>;
}
