//! No call vanishes by age: an attempt left waiting in `CALLS` (a draft, paused, not yet
//! started or slowly paced campaign) longer than `retrier.max_queue_age_secs` ends `EXPIRED`,
//! with its reason, before the stream's retention (`streams.max_age_*`, checked to be longer at
//! config load) could drop its message unseen.
//!
//! A sweep reads `CALLS` by sequence from its first message up to the first one stored after
//! the cut-off (now - max queue age), at most [`PER_ROUND`] messages a round, resuming where
//! the last round stopped. Each old dial message is judged by [`verdict`] (from the call's
//! latest lifecycle event, one direct get) and, when its attempt still waits, gets an `Expired` event (published expecting the call's last event sequence read, so
//! a dialer's `Dialing` that lands first wins) and the number's claim is released. The dial
//! message stays: a dialer that reaches it later finds the call ended and acks it.
//!
//! Several replicas may sweep at once: the event's `Nats-Msg-Id` and the expected sequence make
//! the second publish a no-op, and the release only deletes a claim this call still holds.

use std::{sync::Arc, time::Duration};

use async_nats::HeaderMap;
use ccm_core::{CallEvent, DialRequest, EventKind, metrics::counter, subjects, topology::names};
use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::Shared;

/// Dial messages read per round at most: bounded work whatever the backlog.
pub(crate) const PER_ROUND: u64 = 1000;

/// Why a round stopped early (the next round resumes at the same message).
#[derive(Debug, thiserror::Error)]
pub enum ExpiryError {
    #[error("cannot read {0}")]
    Read(&'static str, #[source] async_nats::Error),
    #[error(transparent)]
    Publish(#[from] ccm_core::nats::NatsError),
    #[error(transparent)]
    Release(#[from] crate::outcome::OutcomeError),
}

/// What to do with an old dial message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Still waiting: end the call `EXPIRED`.
    Expire,
    /// Delivered to a dialer, dialled, or ended: not waiting.
    Leave,
}

/// Judges an old dial message of `attempt` by the call's latest lifecycle event `latest`: the
/// attempt still waits unless the call ended or has an event of this attempt or a later one
/// (`Dialing` or after). Whether the dial consumer delivered the message does not matter: a
/// message taken as the campaign paused is left un-acked and is not redelivered while it stays
/// paused, and one put off (held campaign, calling window, daily cap) came back as a newer
/// message of an attempt that has been waiting, undialled, since this one was stored.
pub fn verdict(attempt: u32, latest: Option<&CallEvent>) -> Verdict {
    match latest {
        Some(e) if e.kind.is_terminal() || e.attempt >= attempt => Verdict::Leave,
        _ => Verdict::Expire,
    }
}

/// The reason recorded on the event.
pub fn reason(waited: chrono::TimeDelta, max_queue_age: Duration) -> String {
    format!(
        "queued {}s without being dialled, over the maximum queue age of {}s",
        waited.num_seconds(),
        max_queue_age.as_secs()
    )
}

/// Sweeps every `every` until `shutdown`.
pub async fn run(
    ctx: Arc<Shared>,
    max_queue_age: Duration,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut next = 0_u64;
    let mut held = crate::deadline::Cursors::default();
    loop {
        match round(&ctx, max_queue_age, next).await {
            Ok(resume) => next = resume,
            Err(e) => tracing::warn!(error = ?e, "expiry sweep stopped early; next round resumes"),
        }
        if let Err(e) = crate::deadline::round(&ctx, &mut held).await {
            tracing::warn!(error = ?e, "held calls' expiry sweep stopped early; next round resumes");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// One round from sequence `next`; returns where the next round resumes.
pub async fn round(ctx: &Shared, max_queue_age: Duration, next: u64) -> Result<u64, ExpiryError> {
    let mut calls = ctx
        .js
        .get_stream(names::CALLS)
        .await
        .map_err(|e| ExpiryError::Read(names::CALLS, e.into()))?;
    let state = calls
        .info()
        .await
        .map_err(|e| ExpiryError::Read(names::CALLS, e.into()))?
        .state
        .clone();
    let now = Utc::now();
    let cutoff = now - chrono::TimeDelta::from_std(max_queue_age).unwrap_or(chrono::TimeDelta::MAX);
    let mut seq = next.max(state.first_sequence).max(1);
    let end = seq.saturating_add(PER_ROUND);
    while seq <= state.last_sequence && seq < end {
        let message = match calls.get_raw_message(seq).await {
            Ok(message) => message,
            // Deleted (dead-lettered) or already gone: nothing waits there.
            Err(e) if e.to_string().contains("no message found") => {
                seq += 1;
                continue;
            }
            Err(e) => return Err(ExpiryError::Read(names::CALLS, e.into())),
        };
        let stored =
            DateTime::<Utc>::from_timestamp(message.time.unix_timestamp(), 0).unwrap_or(now);
        if stored > cutoff {
            break;
        }
        if let Ok(request) = serde_json::from_slice::<DialRequest>(&message.payload) {
            let why = reason(now - stored, max_queue_age);
            expire_if_waiting(ctx, &request, why).await?;
        }
        seq += 1;
    }
    Ok(seq)
}

/// Ends `request`'s call `EXPIRED` with `reason` if its attempt still waits (see [`verdict`]).
pub(crate) async fn expire_if_waiting(
    ctx: &Shared,
    request: &DialRequest,
    reason: String,
) -> Result<(), ExpiryError> {
    let subject = subjects::event(request.campaign_id, request.call_id);
    let latest = ccm_core::call_log::last_on(&ctx.events, subject.clone())
        .await
        .map_err(|e| ExpiryError::Read(names::CALL_EVENTS, e))?
        .map(|last| (last.sequence, last.event.ok()));
    let event = latest.as_ref().and_then(|(_, e)| e.as_ref());
    if verdict(request.attempt, event) == Verdict::Leave {
        return Ok(());
    }
    let expired = CallEvent::of_request(request, EventKind::Expired { reason });
    // Only if nothing happened to the call since it was read: a Dialing that lands first wins.
    let mut headers = HeaderMap::new();
    let last = latest.map_or(0, |(s, _)| s);
    headers.insert(
        async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
        last.to_string().as_str(),
    );
    ccm_core::nats::publish_json(
        &ctx.js,
        expired.subject(),
        &expired.msg_id(),
        Some(headers),
        &expired,
    )
    .await?;
    counter!("ccm_retrier_expired_total").increment(1);
    tracing::info!(call = %request.call_id, attempt = request.attempt, "waited too long; expired");
    // Released through the claims' owner, retried there until definite.
    ctx.claims
        .release(
            request.campaign_id,
            &request.phone_number,
            request.call_id,
            expired.at,
        )
        .await;
    Ok(())
}
