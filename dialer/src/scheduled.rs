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

use async_nats::jetstream::stream::RawMessageErrorKind;
use ccm_core::{CampaignId, RetryEntry, subjects, topology::names::RETRIES};

use crate::call::{CallContext, cancel_attempt};

/// Why the scheduled attempts could not all be cancelled (tried again on the next re-read).
#[derive(Debug, thiserror::Error)]
pub enum ScheduledError {
    #[error("cannot read RETRIES")]
    Read(#[source] async_nats::Error),
    #[error("cannot publish the Cancelled event")]
    Publish(#[source] ccm_core::nats::NatsError),
    #[error("cannot purge RETRIES")]
    Purge(#[source] async_nats::Error),
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
    let subject = subjects::retry(campaign);
    let stream = ctx
        .js
        .get_stream(RETRIES)
        .await
        .map_err(|e| ScheduledError::Read(e.into()))?;
    let (mut next, mut last, mut cancelled) = (1u64, None, 0usize);
    loop {
        let message = match stream
            .raw_message_builder()
            .sequence(next)
            .next_by_subject(subject.clone())
            .send()
            .await
        {
            Ok(message) => message,
            Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => break,
            Err(e) => return Err(ScheduledError::Read(e.into())),
        };
        let Ok(entry) = serde_json::from_slice::<RetryEntry>(&message.payload) else {
            // Left for the retrier, which dead-letters undecodable entries; the purge stops
            // before it.
            tracing::warn!(%campaign, seq = message.sequence, "undecodable retry entry kept");
            break;
        };
        cancel_attempt(ctx, &entry.request, reason)
            .await
            .map_err(ScheduledError::Publish)?;
        cancelled += 1;
        last = Some(message.sequence);
        next = message.sequence + 1;
    }
    if let Some(last) = last {
        stream
            .purge()
            .filter(subject)
            .sequence(last + 1)
            .await
            .map_err(|e| ScheduledError::Purge(e.into()))?;
    }
    Ok(cancelled)
}
