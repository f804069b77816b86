//! Cancelling a campaign's attempts scheduled in `RETRIES` when the campaign is over.
//!
//! Queued attempts on `CALLS` are drained by the campaign's own worker (each ends
//! `CANCELLED`); `CALLS` is never purged, because the projector reads it too and a purged
//! dial message it has not read yet would leave the read model without the call. `RETRIES` is
//! a work queue that only the retrier reads, so its entries of the campaign are read by
//! subject (`STREAM.MSG.GET` with `next_by_subj`, nats-server 2.9: a second consumer on a work
//! queue may not overlap the retrier's), each attempt gets its `Cancelled` event and its
//! number's claim released, and then the subject is purged up to the last entry read. An
//! entry the retrier fires in the meantime reaches `CALLS` and is drained there, with the same
//! de-duplication id, so the call is cancelled once either way. Every replica does this;
//! doing it twice changes nothing.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
};

use ccm_core::{
    CampaignId,
    retries::{RetriesError, Scheduled},
};

use crate::call::{CallContext, cancel_attempt};

/// Why the scheduled attempts could not all be cancelled (tried again on the next re-read).
#[derive(Debug, thiserror::Error)]
pub enum ScheduledError {
    #[error(transparent)]
    Retries(#[from] RetriesError),
    #[error("cannot publish the Cancelled event")]
    Publish(#[source] ccm_core::nats::NatsError),
}

/// The campaigns whose scheduled attempts were cancelled by this replica.
#[derive(Debug, Clone, Default)]
pub struct Cancelled(Arc<Mutex<HashSet<CampaignId>>>);

impl Cancelled {
    /// Marks the campaign; false when it was marked already.
    pub fn begin(&self, id: CampaignId) -> bool {
        self.0.lock().map(|mut set| set.insert(id)).unwrap_or(false)
    }

    /// Unmarks it, so the next re-read tries again.
    pub fn forget(&self, id: CampaignId) {
        if let Ok(mut set) = self.0.lock() {
            set.remove(&id);
        }
    }
}

/// Cancels and purges the campaign's entries in `RETRIES`; returns how many were cancelled.
pub async fn cancel(
    ctx: &CallContext,
    campaign: CampaignId,
    reason: &str,
) -> Result<usize, ScheduledError> {
    // Read through the retrier's module of `RETRIES` (`ccm_core::retries`).
    let mut scheduled = Scheduled::of(&ctx.js, campaign).await?;
    let mut cancelled = 0usize;
    while let Some((seq, entry)) = scheduled.next().await? {
        cancel_attempt(ctx, &entry.request, reason)
            .await
            .map_err(ScheduledError::Publish)?;
        cancelled += 1;
        scheduled.handled(seq);
    }
    scheduled.purge().await?;
    Ok(cancelled)
}
