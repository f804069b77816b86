//! Turning a carrier outcome into the call's next state, by the retry policy.
//!
//! PICKED completes the call. A retryable outcome with attempts left schedules attempt n+1:
//! first an entry in `RETRIES` (due at the policy's time), then a `Retrying` event that shows
//! it. Anything else ends the call `FAILED` with the reason. Every terminal state releases the
//! number's `active_calls` claim.
//!
//! Handling is idempotent: the call's history is read first, and an attempt that already has
//! its retry or terminal event is not decided again (a redelivered outcome only repeats the
//! claim release). Publishes carry de-duplication ids, so a crash between two of them is
//! repaired by the redelivery.

use std::hash::{Hash, Hasher};

use async_nats::jetstream::kv;
use ccm_core::{
    CallEvent, CallId, Campaign, DialRequest, EventKind, OutcomeStatus, RetryEntry,
    consumer::Delivery, metrics::counter, policy::Decision, telemetry::chain,
};

use crate::{
    Shared,
    history::{CallHistory, HistoryError},
};

/// Why an outcome could not be handled now (it is redelivered).
#[derive(Debug, thiserror::Error)]
pub enum OutcomeError {
    #[error(transparent)]
    History(#[from] HistoryError),
    #[error("cannot read campaign {0}")]
    Campaign(String, #[source] async_nats::Error),
    #[error(transparent)]
    Publish(#[from] ccm_core::nats::NatsError),
    #[error("cannot release the number's claim")]
    Release(#[source] async_nats::Error),
    #[error(transparent)]
    Contact(#[from] ccm_core::contacts::ContactReadError),
    #[error("cannot check or claim a number of the contact")]
    Check(#[source] async_nats::Error),
}

/// Handles one outcome message and acknowledges it.
pub async fn handle(ctx: &Shared, message: Delivery) {
    let outcome: CallEvent = match serde_json::from_slice(&message.payload) {
        Ok(event) => event,
        Err(e) => {
            // TERMed (the consumer's poison policy): the retrier parks it from the advisory,
            // without spending max_deliver on a message that can never be decoded.
            let _ = message.poison(&format!("undecodable outcome: {e}")).await;
            return;
        }
    };
    let seq = message.info().ok().map(|info| info.stream_sequence);
    match decide(ctx, &outcome, seq).await {
        Ok(()) => {
            if let Err(e) = message.ack().await {
                tracing::warn!(error = %chain(&e), "ack failed; the decision is idempotent");
            }
        }
        Err(e) => {
            tracing::warn!(error = %chain(&e), call = %outcome.call_id, "outcome not handled; retrying");
            let _ = message.nak(Some(std::time::Duration::from_secs(1))).await;
        }
    }
}

/// Decides outcome `outcome`, stored at stream sequence `seq` when known.
async fn decide(ctx: &Shared, outcome: &CallEvent, seq: Option<u64>) -> Result<(), OutcomeError> {
    let EventKind::Outcome {
        status,
        reason,
        source,
        ..
    } = &outcome.kind
    else {
        return Ok(());
    };
    let history = CallHistory::read_for(
        &ctx.events,
        outcome.campaign_id,
        outcome.call_id,
        outcome.attempt,
        seq,
    )
    .await?;
    let facts = history.facts();
    if history.settled(outcome.attempt).is_some() {
        // Decided before (this is a redelivery, or a stale outcome of an earlier attempt).
        // Only when the call still ends with this attempt is the release repeated: a call
        // redriven since holds its number again.
        let last = history.events.last();
        if let Some(last) = last.filter(|e| e.kind.is_terminal() && e.attempt == outcome.attempt)
            && let Some(facts) = &facts
        {
            ctx.claims
                .release(
                    outcome.campaign_id,
                    &facts.phone_number,
                    outcome.call_id,
                    last.at,
                )
                .await;
            crate::alternate::release_all(
                ctx,
                None,
                (outcome.campaign_id, &facts.phone_number),
                outcome.call_id,
                &history,
                last.at,
            )
            .await?;
        }
        return Ok(());
    }
    let campaign = campaign(&ctx.campaigns, outcome).await?;
    // The callee asked to be called back: that is the decision ([`crate::asked`]), on the
    // number that answered (a contact's further number, or its first).
    let answered_on = history
        .events
        .iter()
        .rev()
        .find_map(|e| match &e.kind {
            EventKind::Dialing { alternate, .. } if e.attempt == outcome.attempt => {
                Some(alternate.clone())
            }
            _ => None,
        })
        .flatten();
    if crate::asked::decide(ctx, outcome, campaign.as_ref(), facts.as_ref(), answered_on).await? {
        return Ok(());
    }
    // A machine's answer counts as no answer when the campaign says so, in this outcome and
    // in the call's earlier ones (so the attempts it used are counted).
    let machine = campaign
        .as_ref()
        .map(|c| c.answering_machine)
        .unwrap_or_default();
    let status = &machine.effective_status(*status, reason.as_deref());
    let policy = ctx
        .policy
        .with_override(campaign.as_ref().and_then(|c| c.retry_policy.as_ref()));
    let max_attempts = facts
        .as_ref()
        .map(|f| f.max_attempts)
        .or(campaign.as_ref().map(|c| c.max_attempts))
        .unwrap_or(0);
    let mut outcomes: Vec<ccm_core::policy::PastOutcome> = history
        .outcomes
        .iter()
        .zip(&history.outcome_reasons)
        .map(|(o, r)| ccm_core::policy::PastOutcome {
            status: machine.effective_status(o.status, r.as_deref()),
            ..*o
        })
        .collect();
    if !outcomes.iter().any(|o| o.attempt == outcome.attempt) {
        outcomes.push(ccm_core::policy::PastOutcome {
            attempt: outcome.attempt,
            status: *status,
            at: outcome.at,
        });
    }
    // Attempts the callee asked for do not count against the policy's limit.
    let callbacks = ccm_core::callback::callback_attempts(&history.events);
    outcomes.retain(|o| !callbacks.contains(&o.attempt));
    // Decided from the outcome's own time, not the clock: an outcome delivered twice (and
    // handled by two tasks or replicas at once) then yields the very same decision, so the
    // RETRIES entry and the Retrying event agree whichever of the two publishes first.
    let decision = policy.decide(
        *status,
        outcome.attempt,
        max_attempts,
        &outcomes,
        outcome.at,
        jitter_sample(outcome.call_id, outcome.attempt),
    );
    // A contact's further numbers (the campaign's `alternate_numbers`).
    let (decision, alternate) = crate::alternate::apply(
        ctx,
        campaign.as_ref(),
        facts.as_ref().map(|f| &f.phone_number),
        outcome.call_id,
        outcome.attempt,
        max_attempts,
        &history,
        (*status, *source, outcome.at),
        decision,
    )
    .await?;
    let kind = match decision {
        Decision::Complete => EventKind::Completed,
        Decision::Retry { at, reason: why } => match &facts {
            Some(facts) => {
                let at = ccm_core::window::first_allowed(
                    &ctx.contacts,
                    &ctx.rules,
                    campaign.as_ref(),
                    &facts.phone_number,
                    at,
                )
                .await?;
                // No retry after the call's expiry: it ends now, saying why.
                if let Some(reason) = ccm_core::expiry::retry_past(at, facts.expires_at) {
                    EventKind::Expired { reason }
                } else {
                    let entry = RetryEntry {
                        due_at: at,
                        request: DialRequest {
                            call_id: outcome.call_id,
                            campaign_id: outcome.campaign_id,
                            phone_number: facts.phone_number.clone(),
                            attempt: outcome.attempt + 1,
                            max_attempts: facts.max_attempts,
                            created_at: facts.created_at,
                            queued_at: at,
                            custom_fields: facts.custom_fields.clone(),
                            expires_at: facts.expires_at,
                            alternate,
                            callback: None,
                        },
                        window_deferral: None,
                    };
                    // The entry first: a Retrying event always has its entry behind it.
                    ccm_core::retries::schedule(&ctx.js, &entry).await?;
                    EventKind::Retrying {
                        next_retry_at: at,
                        reason: why,
                    }
                }
            }
            None => EventKind::Failed {
                reason: "Cannot retry: the call's Dialing event (its phone number) is missing"
                    .into(),
            },
        },
        Decision::Fail { reason: why } => EventKind::Failed {
            reason: match (status, reason) {
                (OutcomeStatus::Failed, Some(carrier)) => format!("{why}: {carrier}"),
                _ => why,
            },
        },
    };
    let terminal = kind.is_terminal();
    let decision = kind.name();
    let event = CallEvent::now(outcome.call_id, outcome.campaign_id, outcome.attempt, kind);
    ccm_core::nats::publish_event(&ctx.js, &event).await?;
    counter!("ccm_retrier_decisions_total", "decision" => decision, "status" => status.as_str())
        .increment(1);
    if matches!(event.kind, EventKind::Retrying { .. }) {
        // The outcome status is the reason: a closed set, unlike the policy's text.
        counter!("ccm_retrier_retries_scheduled_total", "reason" => status.as_str()).increment(1);
    }
    // Debug, not info: one line per call at thousands of calls a second costs real CPU, and
    // every decision is already an event in CALL_EVENTS and a row in PostgreSQL.
    tracing::debug!(call = %event.call_id, attempt = event.attempt, kind = event.kind.name(),
        "outcome {status} decided");
    if terminal && let Some(facts) = &facts {
        ctx.claims
            .release(
                outcome.campaign_id,
                &facts.phone_number,
                outcome.call_id,
                event.at,
            )
            .await;
        crate::alternate::release_all(
            ctx,
            campaign.as_ref(),
            (outcome.campaign_id, &facts.phone_number),
            outcome.call_id,
            &history,
            event.at,
        )
        .await?;
    }
    Ok(())
}

/// The campaign document, for its policy override and attempt limit.
async fn campaign(
    campaigns: &kv::Store,
    outcome: &CallEvent,
) -> Result<Option<Campaign>, OutcomeError> {
    let key = outcome.campaign_id.to_string();
    let value = campaigns
        .get(key.clone())
        .await
        .map_err(|e| OutcomeError::Campaign(key.clone(), e.into()))?;
    Ok(value.and_then(|v| match serde_json::from_slice(&v) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(campaign = %key, error = %ccm_core::telemetry::chain(&e), "undecodable campaign; global policy");
            None
        }
    }))
}

/// A value in `-1.0..=1.0` fixed by the call and attempt, so a redelivered outcome computes
/// the same jitter as the first delivery did.
pub fn jitter_sample(call: CallId, attempt: u32) -> f64 {
    let mut hasher = std::hash::DefaultHasher::new();
    call.hash(&mut hasher);
    attempt.hash(&mut hasher);
    (hasher.finish() as f64 / u64::MAX as f64) * 2.0 - 1.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_samples_are_fixed_per_attempt_and_spread_over_the_range() {
        let call = CallId::new();
        assert_eq!(jitter_sample(call, 1), jitter_sample(call, 1));
        let samples: Vec<f64> = (0..2000).map(|n| jitter_sample(CallId::new(), n)).collect();
        assert!(samples.iter().all(|s| (-1.0..=1.0).contains(s)));
        assert!(samples.iter().any(|s| *s < -0.9) && samples.iter().any(|s| *s > 0.9));
        let mean = samples.iter().sum::<f64>() / samples.len() as f64;
        assert!(mean.abs() < 0.1, "centred: {mean}");
    }
}
