//! Records which attempt the carrier's id of a call belongs to ([`ccm_core::placements`]),
//! for carriers whose callbacks name only the call (the old contract's `http` adapter).
//!
//! The record is written right after the carrier answered with its id, and only as a best
//! effort: a failed write is logged and the call goes on. That is safe because ingest, not
//! finding the id, credits the callback to the call's latest attempt, which is this one
//! until the next attempt is placed; only a callback that arrives later than that needs the
//! record. For the same reason a callback that overtakes the write is credited correctly.
//! Adapters whose outcomes name their attempt (the simulator publishes them itself, Twilio's
//! callback URL carries the attempt) record nothing under the carrier's id: nobody would read
//! it, and it would cost a write per call.
//!
//! Adapters that can hang a call up also record the carrier's id under the attempt
//! ([`ccm_core::placements::attempt_key`]): a redelivered dial message whose call outlived its
//! maximum duration must name the call to end it ([`crate::expiry`]).

use async_nats::jetstream::kv;
use ccm_core::{DialRequest, placements::PlacedAttempt};

use crate::carrier::Placement;

/// Where placements are recorded; `bucket` is `None` when the adapter needs neither record.
#[derive(Debug, Clone)]
pub struct Placements {
    pub bucket: Option<kv::Store>,
    /// Record the attempt under the carrier's id (callbacks name only the call).
    pub by_external: bool,
    /// Record the carrier's id under the attempt, so a redelivery that finds the call past its
    /// maximum duration can hang it up by that id (the adapter can hang up).
    pub by_attempt: bool,
}

impl Placements {
    /// Records `placement`'s external id for `request`'s attempt, if there is one to record.
    pub async fn record(&self, request: &DialRequest, placement: &Placement) {
        let (Some(bucket), Some(external)) = (&self.bucket, &placement.external_call_id) else {
            return;
        };
        let placed = PlacedAttempt {
            call_id: request.call_id,
            campaign_id: request.campaign_id,
            attempt: request.attempt,
        };
        if self.by_external
            && let Err(e) = ccm_core::placements::record(bucket, external, &placed).await
        {
            tracing::warn!(error = ?e, external,
                "cannot record the carrier's id; a late callback will go to the latest attempt");
        }
        if self.by_attempt
            && let Err(e) = ccm_core::placements::record_attempt(bucket, &placed, external).await
        {
            tracing::warn!(error = ?e, external,
                "cannot record the attempt's carrier id; a redelivery hangs up without it");
        }
    }

    /// The carrier's id recorded for `request`'s attempt (none when unknown or unreadable).
    pub async fn external_id(&self, request: &DialRequest) -> Option<String> {
        let bucket = self.bucket.as_ref().filter(|_| self.by_attempt)?;
        ccm_core::placements::attempt_external_id(bucket, request.call_id, request.attempt)
            .await
            .inspect_err(|e| tracing::warn!(error = ?e, "cannot read the attempt's carrier id"))
            .ok()
            .flatten()
    }
}
