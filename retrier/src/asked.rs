//! An outcome that carries the callee's callback request ("call me back at five", reported by
//! an AI voice agent with the call's outcome): the next attempt is scheduled at the asked time,
//! inside the calling rules, instead of the policy's decision ([`ccm_core::callback`]). It does
//! not count against the policy's attempt limit.
//!
//! A request that cannot be honoured (unreadable, in the past, after the call's expiry, too
//! far ahead) is logged and counted, and the policy decides as if it had not been made.

use ccm_core::{
    CallEvent, Campaign, DialRequest, EventKind, RetryEntry,
    callback::{self, CallbackError},
    metrics::counter,
    telemetry::chain,
};

use crate::{Shared, history::CallFacts, outcome::OutcomeError};

/// Schedules the callback `outcome` asks for, if it asks for one that can be honoured; `true`
/// when it did (the outcome is decided).
pub(crate) async fn decide(
    ctx: &Shared,
    outcome: &CallEvent,
    campaign: Option<&Campaign>,
    facts: Option<&CallFacts>,
    answered_on: Option<ccm_core::contact_numbers::Alternate>,
) -> Result<bool, OutcomeError> {
    let EventKind::Outcome {
        status,
        callback: Some(ask),
        ..
    } = &outcome.kind
    else {
        return Ok(false);
    };
    let (Some(campaign), Some(facts)) = (campaign, facts) else {
        return Ok(false);
    };
    let rules = callback::Context {
        js: &ctx.js,
        events: &ctx.events,
        contacts: &ctx.contacts,
        rules: &ctx.rules,
        horizon: ctx.callback_horizon,
    };
    // As of the outcome's own time, so a redelivered outcome decides the same.
    let (asked, allowed, moved) = match callback::allowed_time(
        &rules,
        campaign,
        &facts.phone_number,
        facts.expires_at,
        &ask.at,
        ask.time_zone.as_deref(),
        outcome.at,
    )
    .await
    {
        Ok(planned) => planned,
        Err(CallbackError::Contact(e)) => return Err(e.into()),
        Err(e) => {
            tracing::warn!(call = %outcome.call_id, error = %chain(&e),
                "callback asked with the outcome not honoured; the policy decides");
            counter!("ccm_retrier_callbacks_refused_total").increment(1);
            return Ok(false);
        }
    };
    let tag = callback::outcome_tag(outcome.call_id, outcome.attempt);
    let entry = RetryEntry {
        due_at: allowed,
        request: DialRequest {
            call_id: outcome.call_id,
            campaign_id: outcome.campaign_id,
            phone_number: facts.phone_number.clone(),
            attempt: outcome.attempt + 1,
            max_attempts: facts.max_attempts,
            created_at: facts.created_at,
            queued_at: allowed,
            custom_fields: facts.custom_fields.clone(),
            expires_at: facts.expires_at,
            callback: Some(tag),
            alternate: answered_on,
        },
        window_deferral: None,
    };
    // The entry first: a `Rescheduled` event always has its entry behind it.
    ccm_core::retries::schedule(&ctx.js, &entry).await?;
    let event = CallEvent::now(
        outcome.call_id,
        outcome.campaign_id,
        outcome.attempt,
        EventKind::Rescheduled {
            next_retry_at: allowed,
            asked_for: asked.at,
            time_zone: asked.time_zone,
            moved,
            tag,
        },
    );
    ccm_core::nats::publish_event(&ctx.js, &event).await?;
    counter!("ccm_retrier_decisions_total", "decision" => "rescheduled", "status" => status.as_str())
        .increment(1);
    tracing::debug!(call = %event.call_id, attempt = event.attempt, at = %allowed,
        "callback asked with the outcome scheduled");
    Ok(true)
}
