//! Entries of `RETRIES` that the consumer no longer delivers: found and put back.
//!
//! `RETRIES` is a work queue: an entry leaves the stream when `retrier_retries` acknowledges
//! it, so every entry still stored should be above the consumer's ack floor or pending on it.
//! A generated fault run (two retriers, one killed while it held two entries, then a
//! nats-server restart; nats-server 2.15.1) ended with both entries still stored, the
//! consumer showing nothing pending and its ack floor past them: the server had lost their
//! pending state, so they were never redelivered and their calls never went on. nats-server's
//! tracker lists open defects of this kind on work-queue streams (messages kept in the stream
//! that the consumer no longer delivers).
//!
//! So a sweep compares the two every `retrier.stranded_sweep_ms`: an entry stored at or below
//! the ack floor is stranded. One seen stranded on two sweeps in a row (an ack the server has
//! counted but whose removal it has not finished yet is not stranded) is put back: when its
//! call still waits for that attempt ([`crate::expiry::verdict`] on the call's latest event),
//! a copy is stored under an id of its own (`<entry id>/restored/<seq>`, so the de-duplication
//! window does not drop it), which the consumer delivers and fires as usual; then the stranded
//! entry is deleted. A crash between the two stores the copy again under the same id (dropped
//! as a duplicate) or, past the window, a second copy: its dial message carries the attempt's
//! own id and the dialer places an attempt once whatever the number of its dial messages.
//!
//! Several replicas may sweep at once: the copy's id makes the second store a no-op and a
//! delete of an entry already deleted is no error.

use std::collections::BTreeSet;

use async_nats::jetstream::stream::{RawMessageErrorKind, Stream};
use ccm_core::{RetryEntry, metrics::counter, subjects, topology::names};

use crate::Shared;

/// Stored entries looked at per sweep at most: bounded work whatever happened.
const PER_SWEEP: usize = 1000;

/// Why a sweep stopped early (the next one starts again).
#[derive(Debug, thiserror::Error)]
pub enum StrandedError {
    #[error("cannot read {0}")]
    Read(&'static str, #[source] async_nats::Error),
    #[error("cannot delete stranded entry {0} from RETRIES")]
    Delete(u64, #[source] ccm_core::retries::RetriesError),
    #[error(transparent)]
    Publish(#[from] ccm_core::nats::NatsError),
}

/// What one sweep found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Swept {
    /// Sequences stored at or below the ack floor now.
    pub stranded: BTreeSet<u64>,
    /// Of those, put back (a copy stored, the entry deleted).
    pub restored: u64,
    /// Of those, deleted only: the call no longer waits for that attempt.
    pub dropped: u64,
}

/// Which of the stranded sequences `now` to put back: those stranded on the previous sweep
/// too.
pub fn to_restore(before: &BTreeSet<u64>, now: &BTreeSet<u64>) -> Vec<u64> {
    now.intersection(before).copied().collect()
}

/// Sweeps every `every` until `shutdown`.
pub async fn run(
    ctx: std::sync::Arc<Shared>,
    every: std::time::Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut before = BTreeSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        match sweep(&ctx, &before).await {
            Ok(swept) => before = swept.stranded,
            Err(e) => {
                tracing::warn!(error = %ccm_core::telemetry::chain(&e), "stranded-entry sweep stopped early");
            }
        }
    }
}

/// One sweep, given the sequences found stranded by the previous one.
pub async fn sweep(ctx: &Shared, before: &BTreeSet<u64>) -> Result<Swept, StrandedError> {
    let read = |e: async_nats::Error| StrandedError::Read(names::RETRIES, e);
    let retries = ctx
        .js
        .get_stream(names::RETRIES)
        .await
        .map_err(|e| read(e.into()))?;
    // The floor first: it only grows, so an entry found at or below it afterwards was there
    // when it was read.
    let floor = retries
        .consumer_info("retrier_retries")
        .await
        .map_err(|e| read(e.into()))?
        .ack_floor
        .stream_sequence;
    let mut swept = Swept {
        stranded: stored_up_to(&retries, floor).await?,
        ..Swept::default()
    };
    for seq in to_restore(before, &swept.stranded) {
        let message = match retries.get_raw_message(seq).await {
            Ok(message) => message,
            Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => continue,
            Err(e) => return Err(read(e.into())),
        };
        let Ok(entry) = serde_json::from_slice::<RetryEntry>(&message.payload) else {
            tracing::warn!(seq, "undecodable stranded retry entry kept");
            continue;
        };
        if still_waits(ctx, &entry).await? {
            let id = format!("{}/restored/{seq}", entry.msg_id());
            ccm_core::nats::publish_json(&ctx.js, entry.subject(), &id, None, &entry).await?;
            swept.restored += 1;
            counter!("ccm_retrier_stranded_entries_total", "action" => "restored").increment(1);
            tracing::warn!(call = %entry.request.call_id, attempt = entry.request.attempt, seq,
                "a retry entry the consumer no longer delivered was put back");
        } else {
            swept.dropped += 1;
            counter!("ccm_retrier_stranded_entries_total", "action" => "dropped").increment(1);
            tracing::info!(call = %entry.request.call_id, attempt = entry.request.attempt, seq,
                "a stranded retry entry whose call went on without it was deleted");
        }
        ccm_core::retries::delete(&retries, seq)
            .await
            .map_err(|e| StrandedError::Delete(seq, e))?;
    }
    Ok(swept)
}

/// The sequences of the entries stored at or below `floor` (at most [`PER_SWEEP`]).
async fn stored_up_to(retries: &Stream, floor: u64) -> Result<BTreeSet<u64>, StrandedError> {
    let mut found = BTreeSet::new();
    let mut seq = 1;
    while seq <= floor && found.len() < PER_SWEEP {
        let message = match retries
            .raw_message_builder()
            .sequence(seq)
            .next_by_subject(subjects::RETRY_ALL.to_owned())
            .send()
            .await
        {
            Ok(message) => message,
            Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => break,
            Err(e) => return Err(StrandedError::Read(names::RETRIES, e.into())),
        };
        if message.sequence > floor {
            break;
        }
        found.insert(message.sequence);
        seq = message.sequence + 1;
    }
    Ok(found)
}

/// Whether the entry's call still waits for the entry's attempt.
async fn still_waits(ctx: &Shared, entry: &RetryEntry) -> Result<bool, StrandedError> {
    let request = &entry.request;
    let latest = ccm_core::call_log::last_on(
        &ctx.events,
        subjects::event(request.campaign_id, request.call_id),
    )
    .await
    .map_err(|e| StrandedError::Read(names::CALL_EVENTS, e))?
    .and_then(|last| last.event.ok());
    Ok(crate::expiry::verdict(request.attempt, latest.as_ref()) == crate::expiry::Verdict::Expire)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_entries_stranded_on_two_sweeps_in_a_row_are_put_back() {
        let set = |s: &[u64]| s.iter().copied().collect::<BTreeSet<u64>>();
        assert!(to_restore(&set(&[]), &set(&[4, 9])).is_empty());
        assert_eq!(to_restore(&set(&[4, 9]), &set(&[4, 9, 12])), vec![4, 9]);
        assert_eq!(to_restore(&set(&[4]), &set(&[9])), Vec::<u64>::new());
    }
}
