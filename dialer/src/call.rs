//! The life of one call attempt in the dialer: from the dial message to its outcome.
//!
//! The dial message stays un-acknowledged for the whole call (in-progress acks keep it
//! alive), so the campaign's `max_ack_pending` caps its live calls cluster-wide. Before
//! placing, the dialer subscribes to the attempt's outcome subject and then reads the call's
//! latest event and outcome: a redelivered message whose attempt was already placed is only
//! waited on, never dialled again.

use std::{sync::Arc, time::Duration};

use async_nats::jetstream::{self, AckKind, Message};
use ccm_core::{CallEvent, DialRequest, EventKind, OutcomeSource, OutcomeStatus, subjects};
use chrono::Utc;
use futures::StreamExt;
use rand::Rng;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::carrier::{Carrier, CarrierError};

/// What a call task needs; shared by all calls of a dialer.
#[derive(Debug, Clone)]
pub struct CallContext {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub events: jetstream::stream::Stream,
    pub carrier: Arc<dyn Carrier>,
    pub max_call_duration: Duration,
    /// How often the dial message is kept alive while the call lasts (well under AckWait).
    pub progress_every: Duration,
    pub shutdown: CancellationToken,
}

/// What the stream already knows about this attempt.
#[derive(Debug, PartialEq, Eq)]
enum Known {
    /// Nothing: the attempt has not been placed.
    Nothing,
    /// Placed (a `Dialing` event exists); its outcome has not arrived.
    Placed,
    /// The outcome exists, or the call moved past this attempt: nothing left to do.
    Done,
}

/// Handles one dial message to the end.
pub async fn handle(ctx: CallContext, message: Message) {
    let request: DialRequest = match serde_json::from_slice(&message.payload) {
        Ok(request) => request,
        Err(e) => {
            // Let redelivery count it: after max_deliver the retrier dead-letters it.
            tracing::warn!(error = %e, subject = %message.subject, "undecodable dial message");
            let _ = message
                .ack_with(AckKind::Nak(Some(Duration::from_secs(5))))
                .await;
            return;
        }
    };
    let span = tracing::info_span!("call", call = %request.call_id, attempt = request.attempt);
    if let Err(e) = run(&ctx, &request, &message).instrument(span).await {
        tracing::warn!(call = %request.call_id, error = %e, "call attempt handed back");
        let delay = jittered_backoff(message.info().map(|i| i.delivered).unwrap_or(1));
        let _ = message.ack_with(AckKind::Nak(Some(delay))).await;
    }
}

/// Errors that hand the dial message back for redelivery.
#[derive(Debug, thiserror::Error)]
enum CallError {
    #[error("NATS: {0}")]
    Nats(String),
    #[error(transparent)]
    Carrier(CarrierError),
    #[error("shutting down before the outcome arrived")]
    Shutdown,
}

async fn run(ctx: &CallContext, request: &DialRequest, message: &Message) -> Result<(), CallError> {
    let outcome_subject = subjects::outcome(request.campaign_id, request.call_id);
    // Subscribe before looking: an outcome published between the look and the subscription
    // would otherwise be missed.
    let mut outcomes = ctx
        .client
        .subscribe(outcome_subject.clone())
        .await
        .map_err(|e| CallError::Nats(e.to_string()))?;
    match known(ctx, request).await? {
        Known::Done => {
            ack(message).await;
            return Ok(());
        }
        Known::Placed => tracing::info!(call = %request.call_id, "attempt already placed; waiting"),
        Known::Nothing => {
            let dialing = CallEvent {
                call_id: request.call_id,
                campaign_id: request.campaign_id,
                attempt: request.attempt,
                at: Utc::now(),
                kind: EventKind::Dialing {
                    phone_number: request.phone_number.clone(),
                    max_attempts: request.max_attempts,
                    created_at: request.created_at,
                },
            };
            ccm_core::nats::publish_event(&ctx.js, &dialing)
                .await
                .map_err(|e| CallError::Nats(e.to_string()))?;
            match ctx.carrier.place(request).await {
                Ok(_) => {}
                Err(CarrierError::Rejected(reason)) => {
                    publish_outcome(ctx, request, OutcomeSource::Rejected, reason).await?;
                }
                Err(e @ CarrierError::Unavailable(_)) => return Err(CallError::Carrier(e)),
            }
        }
    }
    let deadline = tokio::time::Instant::now() + ctx.max_call_duration;
    let mut progress = tokio::time::interval(ctx.progress_every);
    progress.tick().await;
    loop {
        tokio::select! {
            next = outcomes.next() => {
                let Some(next) = next else {
                    return Err(CallError::Nats("outcome subscription closed".into()));
                };
                match serde_json::from_slice::<CallEvent>(&next.payload) {
                    Ok(event) if event.attempt == request.attempt => break,
                    _ => continue,
                }
            }
            _ = progress.tick() => {
                let _ = message.ack_with(AckKind::Progress).await;
            }
            _ = tokio::time::sleep_until(deadline) => {
                publish_outcome(ctx, request, OutcomeSource::Timeout, "timeout".into()).await?;
                break;
            }
            _ = ctx.shutdown.cancelled() => return Err(CallError::Shutdown),
        }
    }
    ack(message).await;
    Ok(())
}

/// Reads the latest lifecycle event and outcome of the call (direct get by subject).
async fn known(ctx: &CallContext, request: &DialRequest) -> Result<Known, CallError> {
    let outcome = latest(ctx, subjects::outcome(request.campaign_id, request.call_id)).await?;
    if outcome.is_some_and(|o| o.attempt >= request.attempt) {
        return Ok(Known::Done);
    }
    let event = latest(ctx, subjects::event(request.campaign_id, request.call_id)).await?;
    Ok(match event {
        Some(e) if e.attempt > request.attempt || e.kind.is_terminal() => Known::Done,
        Some(e) if e.attempt == request.attempt => Known::Placed,
        _ => Known::Nothing,
    })
}

async fn latest(ctx: &CallContext, subject: String) -> Result<Option<CallEvent>, CallError> {
    use jetstream::stream::DirectGetErrorKind;
    match ctx.events.direct_get_last_for_subject(subject).await {
        Ok(message) => Ok(serde_json::from_slice(&message.payload).ok()),
        Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
        Err(e) => Err(CallError::Nats(e.to_string())),
    }
}

async fn publish_outcome(
    ctx: &CallContext,
    request: &DialRequest,
    source: OutcomeSource,
    reason: String,
) -> Result<(), CallError> {
    let event = CallEvent {
        call_id: request.call_id,
        campaign_id: request.campaign_id,
        attempt: request.attempt,
        at: Utc::now(),
        kind: EventKind::Outcome {
            status: OutcomeStatus::Failed,
            source,
            raw_status: None,
            duration_secs: None,
            external_call_id: None,
            reason: Some(reason),
        },
    };
    ccm_core::nats::publish_event(&ctx.js, &event)
        .await
        .map(|_| ())
        .map_err(|e| CallError::Nats(e.to_string()))
}

async fn ack(message: &Message) {
    // A double ack waits for the server to confirm: the slot is free and the message will
    // not come back.
    if let Err(e) = message.double_ack().await {
        tracing::warn!(error = %e, "ack failed; a redelivery will find the outcome and stop");
    }
}

/// Exponential backoff (1 s doubling, at most 60 s) with full jitter, by delivery count.
pub fn jittered_backoff(delivered: i64) -> Duration {
    let exp = u32::try_from(delivered.clamp(1, 7) - 1).unwrap_or(0);
    let cap_ms = (1000u64 << exp).min(60_000);
    Duration::from_millis(rand::rng().random_range(cap_ms / 2..=cap_ms))
}

#[cfg(test)]
mod tests {
    use super::jittered_backoff;

    #[test]
    fn backoff_grows_and_is_capped() {
        for _ in 0..100 {
            let first = jittered_backoff(1).as_millis();
            assert!((500..=1000).contains(&first), "{first}");
            let late = jittered_backoff(50).as_millis();
            assert!((30_000..=60_000).contains(&late), "{late}");
        }
    }
}
