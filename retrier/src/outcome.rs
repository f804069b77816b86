//! Turning a carrier outcome into the call's next state.
//!
//! This is the walking skeleton's decision: PICKED completes the call; any other outcome ends
//! it FAILED, naming the outcome, because the YAML retry policy is not applied yet. On every
//! terminal state the number's `active_calls` claim is released.

use async_nats::jetstream::{self, AckKind, Message, kv};
use ccm_core::{CallEvent, CallId, EventKind, OutcomeStatus, PhoneNumber, subjects};
use chrono::Utc;

/// What handling an outcome needs.
#[derive(Debug, Clone)]
pub struct OutcomeContext {
    pub js: jetstream::Context,
    pub events: jetstream::stream::Stream,
    pub active_calls: kv::Store,
}

/// Why an outcome could not be handled now (it is redelivered).
#[derive(Debug, thiserror::Error)]
pub enum OutcomeError {
    #[error("cannot read the call's events")]
    Read(#[source] async_nats::Error),
    #[error(transparent)]
    Publish(#[from] ccm_core::nats::NatsError),
    #[error("cannot release the number's claim")]
    Release(#[source] async_nats::Error),
}

/// Handles one outcome message and acknowledges it.
pub async fn handle(ctx: &OutcomeContext, message: Message) {
    let outcome: CallEvent = match serde_json::from_slice(&message.payload) {
        Ok(event) => event,
        Err(e) => {
            tracing::warn!(error = %e, subject = %message.subject, "undecodable outcome");
            let _ = message
                .ack_with(AckKind::Nak(Some(std::time::Duration::from_secs(5))))
                .await;
            return;
        }
    };
    match decide(ctx, &outcome).await {
        Ok(()) => {
            if let Err(e) = message.ack().await {
                tracing::warn!(error = %e, "ack failed; the decision is idempotent");
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, call = %outcome.call_id, "outcome not handled; retrying");
            let _ = message
                .ack_with(AckKind::Nak(Some(std::time::Duration::from_secs(1))))
                .await;
        }
    }
}

async fn decide(ctx: &OutcomeContext, outcome: &CallEvent) -> Result<(), OutcomeError> {
    let EventKind::Outcome { status, reason, .. } = &outcome.kind else {
        return Ok(());
    };
    let kind = match status {
        OutcomeStatus::Picked => EventKind::Completed,
        other => EventKind::Failed {
            reason: reason
                .clone()
                .unwrap_or_else(|| format!("call ended {other}")),
        },
    };
    let event = CallEvent {
        call_id: outcome.call_id,
        campaign_id: outcome.campaign_id,
        attempt: outcome.attempt,
        at: Utc::now(),
        kind,
    };
    // The phone number is on the attempt's Dialing event, the latest lifecycle event until the
    // terminal one is published.
    let phone = dialing_phone(ctx, outcome).await?;
    ccm_core::nats::publish_event(&ctx.js, &event).await?;
    if let Some(phone) = phone {
        release(&ctx.active_calls, &phone, outcome.call_id).await?;
    }
    Ok(())
}

async fn dialing_phone(
    ctx: &OutcomeContext,
    outcome: &CallEvent,
) -> Result<Option<PhoneNumber>, OutcomeError> {
    use jetstream::stream::DirectGetErrorKind;
    let subject = subjects::event(outcome.campaign_id, outcome.call_id);
    match ctx.events.direct_get_last_for_subject(subject).await {
        Ok(message) => Ok(serde_json::from_slice::<CallEvent>(&message.payload)
            .ok()
            .and_then(|e| match e.kind {
                EventKind::Dialing { phone_number, .. } => Some(phone_number),
                _ => None,
            })),
        Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
        Err(e) => Err(OutcomeError::Read(e.into())),
    }
}

/// Releases the claim on `phone` if this call still holds it.
pub async fn release(
    active_calls: &kv::Store,
    phone: &PhoneNumber,
    call: CallId,
) -> Result<(), OutcomeError> {
    let entry = active_calls
        .entry(phone.digits())
        .await
        .map_err(|e| OutcomeError::Release(e.into()))?;
    let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
        return Ok(());
    };
    if entry.value.as_ref() != call.to_string().as_bytes() {
        return Ok(());
    }
    // Expecting the revision read makes the delete a no-op if the claim changed hands since.
    match active_calls
        .delete_expect_revision(phone.digits(), Some(entry.revision))
        .await
    {
        Ok(()) => Ok(()),
        Err(e) => {
            tracing::debug!(error = %e, "claim changed before release");
            Ok(())
        }
    }
}
