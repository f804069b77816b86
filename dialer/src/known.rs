//! What the stream already knows about an attempt: its call's latest lifecycle event and
//! outcome, read by subject (direct get), and the sequence a `Dialing` publish expects.

use ccm_core::{CallEvent, DialRequest, outcome_route::Address, subjects};
use chrono::{DateTime, Utc};

use crate::call::{CallContext, CallError};

/// What the stream already knows about this attempt.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Known {
    /// Nothing: the attempt has not been placed. The last message on the call's event
    /// subject is at this sequence (0: none), which `Dialing` expects.
    Nothing(u64),
    /// Placed at this time (a `Dialing` event exists) by the dialer at this address (`None`:
    /// a dialer that recorded none); its outcome has not arrived.
    Placed(DateTime<Utc>, Option<Address>),
    /// The outcome exists, or the call moved past this attempt: nothing left to do.
    Done,
}

/// Reads the latest lifecycle event and outcome of the call (direct get by subject).
pub(crate) async fn known(ctx: &CallContext, request: &DialRequest) -> Result<Known, CallError> {
    let outcome = latest(ctx, subjects::outcome(request.campaign_id, request.call_id)).await?;
    if ends(outcome.as_ref(), request) {
        return Ok(Known::Done);
    }
    let subject = subjects::event(request.campaign_id, request.call_id);
    let (event, sequence, dialer) = match last(ctx, subject).await? {
        Some(last) => (last.event.ok(), last.sequence, last.dialer),
        None => (None, 0, None),
    };
    Ok(match event {
        Some(e) if e.attempt > request.attempt || e.kind.is_terminal() => Known::Done,
        Some(e) if e.attempt == request.attempt => Known::Placed(e.at, dialer),
        // A plan replaced since (the callee asked for another time): never placed.
        Some(e) if !ccm_core::callback::plans(&e, request) => Known::Done,
        _ => Known::Nothing(sequence),
    })
}

/// Whether the call's latest outcome ends this attempt.
fn ends(outcome: Option<&CallEvent>, request: &DialRequest) -> bool {
    outcome.is_some_and(|o| o.attempt >= request.attempt)
}

/// Whether the attempt's outcome is stored (a failed read counts as not yet).
pub(crate) async fn outcome_stored(ctx: &CallContext, request: &DialRequest) -> bool {
    match latest(ctx, subjects::outcome(request.campaign_id, request.call_id)).await {
        Ok(outcome) => ends(outcome.as_ref(), request),
        Err(e) => {
            tracing::debug!(error = %ccm_core::telemetry::chain(&e), "cannot read the outcome yet");
            false
        }
    }
}

async fn latest(ctx: &CallContext, subject: String) -> Result<Option<CallEvent>, CallError> {
    Ok(last(ctx, subject)
        .await?
        .and_then(ccm_core::call_log::Last::decoded))
}

/// The last message on `subject`, if any.
async fn last(
    ctx: &CallContext,
    subject: String,
) -> Result<Option<ccm_core::call_log::Last>, CallError> {
    ccm_core::call_log::last_on(&ctx.events, subject)
        .await
        .map_err(|e| CallError::Nats(e.to_string()))
}
