//! Records which attempt the carrier's id of a call belongs to ([`ccm_core::placements`]),
//! for carriers whose callbacks name only the call (the old contract's `http` adapter).
//!
//! The record is written right after the carrier answered with its id, and only as a best
//! effort: a failed write is logged and the call goes on. That is safe because ingest, not
//! finding the id, credits the callback to the call's latest attempt, which is this one
//! until the next attempt is placed; only a callback that arrives later than that needs the
//! record. For the same reason a callback that overtakes the write is credited correctly.
//! Adapters whose outcomes name their attempt (the simulator publishes them itself, Twilio's
//! callback URL carries the attempt) record nothing: nobody would read it, and it would cost
//! a write per call.

use async_nats::jetstream::kv;
use ccm_core::{DialRequest, placements::PlacedAttempt};

use crate::carrier::Placement;

/// Where placements are recorded; `bucket` is `None` when the adapter does not need it.
#[derive(Debug, Clone)]
pub struct Placements {
    pub bucket: Option<kv::Store>,
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
        if let Err(e) = ccm_core::placements::record(bucket, external, &placed).await {
            tracing::warn!(error = ?e, external,
                "cannot record the carrier's id; a late callback will go to the latest attempt");
        }
    }
}
