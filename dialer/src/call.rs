//! The life of one call attempt in the dialer: from the dial message to its outcome.
//!
//! The dial message stays un-acknowledged for the whole call (in-progress acks keep it
//! alive), so the campaign's `max_ack_pending` caps its live calls cluster-wide. Before
//! placing, the call registers with the dialer's outcome router ([`crate::outcomes`]) and then
//! reads the call's latest event and outcome: a redelivered message whose attempt was already
//! placed is only waited on, never dialled again.
//!
//! Whether the attempt may go ([`crate::admission`]: the campaign's state, a do-not-call
//! listing, the calling window, the daily attempt cap) is decided before a paced call waits
//! for its slot and again, on fresh reads, right before placing: a pause, cancel or listing
//! made during the wait stops it. A number listed after its call was queued ends `CANCELLED`
//! with the list named.
//!
//! `Dialing` is published before the carrier is asked, so a crash between the two leaves a
//! record that the attempt *may* have been placed; such an attempt is never placed again and
//! ends by its outcome or at its maximum duration ([`crate::expiry`]: hung up at the carrier,
//! then the carrier's own outcome or a synthetic FAILED). Only when the carrier's answer
//! proves it created nothing ([`crate::carrier::classify`]) is the `Dialing` event withdrawn
//! (deleted from the stream) before the message is handed back, so the redelivery places it;
//! an answer that proves nothing (a 502, a timeout) leaves the attempt placed with its
//! outcome unknown. Of two deliveries of one attempt that both found nothing placed, only the
//! first `Dialing` is stored ([`crate::dialing`]); the other looks again and only waits.

use std::{sync::Arc, time::Duration};

use async_nats::jetstream::{self, AckKind, Message, kv};
use ccm_core::{
    CallEvent, DialRequest, EventKind, OutcomeSource, OutcomeStatus,
    metrics::{counter, histogram},
};
use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{
    carrier::{CampaignInfo, Carrier, CarrierError},
    dialing::Dialing,
    known::{Known, known, outcome_stored},
};

/// What a call task needs; shared by all calls of a dialer.
#[derive(Debug, Clone)]
pub struct CallContext {
    /// Wakes a call when its outcome is published.
    pub outcomes: crate::outcomes::Outcomes,
    /// Campaign documents, read again right before a call that waited for its slot is placed.
    pub campaigns: kv::Store,
    pub js: jetstream::Context,
    pub events: jetstream::stream::Stream,
    /// Number claims, released when an attempt is cancelled (see [`ccm_core::claims`]).
    pub claims: ccm_core::claims::Claims,
    /// Contacts, for the callee's own time zone.
    pub contacts: kv::Store,
    /// Do-not-call lists, checked just before placing.
    pub dnc: kv::Store,
    /// Consents per number and type (see [`ccm_core::consent`]), checked before placing.
    pub consents: kv::Store,
    /// Shared call-rate schedules.
    pub pacing: crate::pacing::Pacing,
    /// The dial consumers, for the count of held messages while a cap change is recent.
    pub consumers: ccm_core::dial_consumer::DialConsumers,
    /// Campaigns whose cap changed recently ([`crate::cap`]).
    pub cap_changes: Arc<crate::cap::CapChanges>,
    /// Recent attempts per number, for the frequency limits.
    pub frequency: crate::frequency::Frequency,
    /// Recent uses of the caller-id pools' numbers, for their caps.
    pub caller_ids: crate::caller_id::CallerIds,
    /// The rule packs and frequency limits calls are checked against.
    pub compliance: crate::compliance::Compliance,
    /// The carrier's ids of placed attempts, for callbacks that name only the call.
    pub placements: crate::placements::Placements,
    pub carrier: Arc<dyn Carrier>,
    /// The adapter's name (`sim`, `http`, `twilio`): the `carrier` label of its metrics.
    pub carrier_kind: &'static str,
    pub max_call_duration: Duration,
    /// How long a call hung up at its maximum duration waits for the carrier's own outcome.
    pub hangup_grace: Duration,
    /// How often the dial message is kept alive while the call lasts (well under AckWait).
    pub progress_every: Duration,
    pub shutdown: CancellationToken,
    /// This replica's name in the attempts' audit records ([`crate::audit::replica`]).
    pub replica: Arc<str>,
}

/// How often a waiting call reads its outcome from the stream, in case its copy was missed
/// during a disconnection too short for the router to notice, or lost otherwise: the bound of
/// the stream fallback ([`crate::outcomes`]).
const OUTCOME_RECHECK: Duration = Duration::from_secs(30);

/// What to do with a dial message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Place the attempt.
    Dial,
    /// The campaign is over (cancelled, completed, past its end date): end the attempt
    /// `CANCELLED` with this reason unless it was already placed.
    Cancel(&'static str),
}

/// Handles one dial message to the end; `limit` is the campaign's own bound on a call's
/// length, when it has one (else the dialer's).
pub async fn handle(
    ctx: Arc<CallContext>,
    limit: Option<Duration>,
    message: Message,
    campaign: CampaignInfo,
    mode: Mode,
) {
    let request: DialRequest = match serde_json::from_slice(&message.payload) {
        Ok(request) => request,
        Err(e) => {
            // Let redelivery count it: after max_deliver the retrier dead-letters it.
            tracing::warn!(error = %ccm_core::telemetry::chain(&e), subject = %message.subject, "undecodable dial message");
            let nak = message.ack_with(AckKind::Nak(Some(Duration::from_secs(5))));
            let _ = Box::pin(nak).await;
            return;
        }
    };
    let span = tracing::info_span!("call", call = %request.call_id, attempt = request.attempt);
    // The attempt continues the trace of whoever published it (the API request or the retry).
    ccm_core::trace_context::set_parent(&span, message.headers.as_ref());
    let max_call_duration = limit.unwrap_or(ctx.max_call_duration);
    let result = run(&ctx, &request, &message, &campaign, mode, max_call_duration)
        .instrument(span)
        .await;
    if let Err(e) = result {
        tracing::warn!(call = %request.call_id, error = %ccm_core::telemetry::chain(&e), "call attempt handed back");
        let delay = jittered_backoff(message.info().map(|i| i.delivered).unwrap_or(1));
        let _ = Box::pin(message.ack_with(AckKind::Nak(Some(delay)))).await;
    }
}

/// Errors that hand the dial message back for redelivery.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CallError {
    #[error("NATS: {0}")]
    Nats(String),
    #[error(transparent)]
    Dialing(crate::dialing::DialingError),
    #[error(transparent)]
    Carrier(CarrierError),
    #[error("shutting down before the outcome arrived")]
    Shutdown,
    #[error(transparent)]
    Window(crate::window::WindowError),
    #[error(transparent)]
    Pacing(crate::pacing::PacingError),
    #[error(transparent)]
    Frequency(crate::frequency::CapError),
    #[error(transparent)]
    Check(crate::admission::CheckError),
    #[error("cannot count the campaign's held calls")]
    Cap(#[source] crate::cap::CountError),
}

async fn run(
    ctx: &CallContext,
    request: &DialRequest,
    message: &Message,
    campaign: &CampaignInfo,
    mode: Mode,
    max_call_duration: Duration,
) -> Result<(), CallError> {
    // Registered before looking: an outcome published between the look and the registration
    // would otherwise be missed. The dialer's one subscription has been at the server since
    // it started, so the router either handles the outcome after this entry exists, or had
    // already received it before the look-up below is sent (see `Outcomes::register`).
    // Dropping the waiter, on whatever path leaves this function, unregisters it.
    let mut waiter = ctx.outcomes.register(request.call_id, request.attempt);
    // Boxed: looking up and placing take several kilobytes of future state, which a call
    // task would otherwise keep for as long as it waits for its outcome.
    let placing = place(ctx, request, message, campaign, mode, max_call_duration);
    let Some(placed) = Box::pin(placing).await? else {
        return Ok(());
    };
    // Placed by another dialer (one restarted or replaced since): its outcome's copy goes to
    // that dialer's address, so listen to it too while waiting. Anything copied before the
    // subscription was in place is stored: read the stream once more.
    let _adopted = match placed.by.clone() {
        Some(by) => match ctx.outcomes.adopt(by).await {
            Ok(adoption) => {
                if Box::pin(outcome_stored(ctx, request)).await {
                    ctx.outcomes.found_in_stream();
                    Box::pin(ack(message)).await;
                    return Ok(());
                }
                Some(adoption)
            }
            Err(e) => {
                // The periodic read of the stream finds the outcome.
                tracing::warn!(error = %ccm_core::telemetry::chain(&e), "cannot listen to the placing dialer's address");
                None
            }
        },
        None => None,
    };
    // The call's time runs from its placement, also when a redelivery picks it up later.
    let elapsed = (Utc::now() - placed.at).to_std().unwrap_or_default();
    let deadline = tokio::time::Instant::now() + max_call_duration.saturating_sub(elapsed);
    let mut progress = tokio::time::interval(ctx.progress_every);
    progress.tick().await;
    // An outcome published while the dialer was disconnected never reaches the router: look
    // for it in the stream after each reconnect, and every so often.
    let mut reconnects = ctx.outcomes.reconnects();
    let mut recheck = tokio::time::interval(OUTCOME_RECHECK);
    recheck.tick().await;
    loop {
        tokio::select! {
            woken = waiter.outcome() => match woken {
                Ok(()) => break,
                Err(closed) => return Err(CallError::Nats(closed.to_string())),
            },
            Ok(()) = reconnects.changed() => {
                if Box::pin(outcome_stored(ctx, request)).await {
                    ctx.outcomes.found_in_stream();
                    break;
                }
            }
            _ = recheck.tick() => {
                if Box::pin(outcome_stored(ctx, request)).await {
                    ctx.outcomes.found_in_stream();
                    break;
                }
            }
            _ = progress.tick() => {
                let _ = Box::pin(message.ack_with(AckKind::Progress)).await;
            }
            _ = tokio::time::sleep_until(deadline) => {
                // Ended at the carrier first: the line is free before the attempt ends.
                Box::pin(crate::expiry::expire(ctx, request, message, &mut waiter, placed)).await?;
                break;
            }
            _ = ctx.shutdown.cancelled() => return Err(CallError::Shutdown),
        }
    }
    Box::pin(ack(message)).await;
    Ok(())
}

/// A placed attempt, as the call that waits for its outcome knows it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Placed {
    pub at: DateTime<Utc>,
    /// The carrier's id of the call, when this delivery placed it and was told.
    pub external_call_id: Option<String>,
    /// Why the placement's result is unknown, when the carrier's answer proved nothing.
    pub unknown: Option<String>,
    /// The dialer whose `Dialing` placed it, when another delivery did (`None`: this one, or
    /// a dialer that recorded no address).
    pub by: Option<ccm_core::outcome_route::Address>,
}

impl Placed {
    fn at(at: DateTime<Utc>) -> Self {
        Self {
            at,
            ..Self::default()
        }
    }
}

/// Looks the attempt up and places it if it has not been: the placement (now or earlier),
/// or `None` when nothing is left to wait for (the message is then acknowledged).
async fn place(
    ctx: &CallContext,
    request: &DialRequest,
    message: &Message,
    campaign: &CampaignInfo,
    mode: Mode,
    max_call_duration: Duration,
) -> Result<Option<Placed>, CallError> {
    match known(ctx, request).await? {
        Known::Done => {
            ack(message).await;
            Ok(None)
        }
        Known::Placed(at, by) => {
            tracing::info!(call = %request.call_id, "attempt already placed; waiting");
            Ok(Some(Placed {
                by,
                ..Placed::at(at)
            }))
        }
        Known::Nothing(last_sequence) => 'nothing: {
            use crate::admission::{Seen, gather};
            let pulled = Seen::Pulled {
                mode,
                info: campaign,
            };
            let mut facts = gather(ctx, request, pulled)
                .await
                .map_err(CallError::Check)?;
            if settle(ctx, request, message, &facts, false).await? {
                return Ok(None);
            }
            let slot = ctx
                .pacing
                .reserve(
                    request.campaign_id,
                    campaign.max_calls_per_second,
                    campaign.carrier_weight,
                )
                .await
                .map_err(CallError::Pacing)?;
            if let Some(at) = slot.filter(|at| *at > Utc::now()) {
                if !crate::pacing::wait_until(at, message, ctx.progress_every, &ctx.shutdown).await
                {
                    return Err(CallError::Shutdown);
                }
                // Anything may have changed while it waited: the decision that counts is
                // made again on what is stored now.
                let stored = Seen::Stored {
                    mode,
                    info: campaign,
                };
                facts = gather(ctx, request, stored)
                    .await
                    .map_err(CallError::Check)?;
                if settle(ctx, request, message, &facts, false).await? {
                    return Ok(None);
                }
            }
            // While a cap change is recent the consumer may briefly allow more than the
            // campaign's cap: count the held messages on the server before going.
            if ctx.cap_changes.recent(request.campaign_id)
                && let Some((held, cap)) = crate::cap::count(ctx, request.campaign_id)
                    .await
                    .map_err(CallError::Cap)?
            {
                tracing::info!(call = %request.call_id, held, cap,
                    "more calls held than the campaign's cap; put off");
                counter!("ccm_dialer_over_cap_put_off_total").increment(1);
                let later = crate::admission::held_until(&facts, Utc::now() + crate::cap::PUT_OFF);
                if carry_out(ctx, request, message, &facts, later).await? {
                    return Ok(None);
                }
            }
            // Counted only now that it goes; another attempt to the number may have taken
            // the last unit of a limit since the look.
            facts.capped_until =
                crate::compliance::take(ctx, request, &mut facts.compliance, Utc::now())
                    .await
                    .map_err(CallError::Frequency)?;
            facts.checks.rules = Some(crate::compliance::audited(&facts.compliance));
            let caller_id = crate::caller_id::choose_for(ctx, request, campaign, &mut facts)
                .await
                .map_err(CallError::Frequency)?;
            // The decision that counts, recorded whatever it is.
            if settle(ctx, request, message, &facts, true).await? {
                return Ok(None);
            }
            let published =
                crate::dialing::publish(ctx, request, message, last_sequence, caller_id.as_ref())
                    .await
                    .map_err(CallError::Dialing)?;
            let dialing_seq = match published {
                Dialing::Published(sequence) => sequence,
                Dialing::Elsewhere(at) => break 'nothing Ok(Some(Placed::at(at))),
                Dialing::Raced => match known(ctx, request).await? {
                    Known::Done => {
                        ack(message).await;
                        break 'nothing Ok(None);
                    }
                    Known::Placed(at, by) => {
                        tracing::info!(call = %request.call_id,
                            "another delivery of the attempt placed it meanwhile; waiting");
                        break 'nothing Ok(Some(Placed {
                            by,
                            ..Placed::at(at)
                        }));
                    }
                    // Placed and withdrawn meanwhile: the redelivery decides afresh.
                    Known::Nothing(_) => {
                        break 'nothing Err(CallError::Nats("the call changed; look again".into()));
                    }
                },
            };
            counter!("ccm_dialer_calls_placed_total",
                "campaign" => request.campaign_id.to_string())
            .increment(1);
            let started = std::time::Instant::now();
            let placed = ctx
                .carrier
                .place(request, campaign, caller_id.as_ref(), max_call_duration)
                .await;
            record_placement(ctx.carrier_kind, started.elapsed(), &placed);
            let mut result = Placed::at(Utc::now());
            match placed {
                Ok(placement) => {
                    tracing::debug!(external = ?placement.external_call_id, "placed");
                    ctx.placements.record(request, &placement).await;
                    result.external_call_id = placement.external_call_id;
                }
                Err(CarrierError::Ambiguous(e)) => {
                    // Never placed again: it may be ringing. It ends by its outcome, or is
                    // hung up at its maximum duration and ends with the reason shown.
                    tracing::warn!(error = %e, "placement unconfirmed; waiting for its outcome");
                    result.unknown = Some(e);
                }
                Err(CarrierError::Rejected(reason)) => {
                    publish_outcome(ctx, request, OutcomeSource::Rejected, reason).await?;
                    ack(message).await;
                    return Ok(None);
                }
                Err(e @ CarrierError::Unavailable(_)) => {
                    crate::dialing::withdraw(ctx, dialing_seq).await;
                    return Err(CallError::Carrier(e));
                }
                Err(CarrierError::Throttled {
                    reason,
                    retry_after,
                }) => {
                    // Nothing was created: withdrawn, then put off to when the account may
                    // place again, keeping its attempt number and its deliveries.
                    crate::dialing::withdraw(ctx, dialing_seq).await;
                    let until = ctx
                        .pacing
                        .account
                        .throttled(retry_after)
                        .await
                        .map_err(CallError::Pacing)?;
                    tracing::info!(call = %request.call_id, %until, %reason,
                        "carrier account throttled; put off");
                    crate::window::defer(ctx, request, message, until)
                        .await
                        .map_err(CallError::Window)?;
                    ack(message).await;
                    return Ok(None);
                }
            }
            Ok(Some(result))
        }
    }
}

/// Decides on `facts` and carries out a decision not to place: true when the attempt was
/// ended or put off (and its message acknowledged), false when it is to be placed. Every
/// decision that is acted on is recorded first ([`crate::audit`]); a decision to place is
/// recorded only when it is `last` (the one made right before `Dialing`).
async fn settle(
    ctx: &CallContext,
    request: &DialRequest,
    message: &Message,
    facts: &crate::admission::Facts,
    last: bool,
) -> Result<bool, CallError> {
    use crate::admission::{Decision, decide};
    let decision = decide(facts);
    if decision == Decision::Place && !last {
        return Ok(false);
    }
    carry_out(ctx, request, message, facts, decision).await
}

/// Records `decision` (made on `facts`) and carries it out: true when the attempt was ended
/// or put off (and its message acknowledged), false when it is to be placed.
async fn carry_out(
    ctx: &CallContext,
    request: &DialRequest,
    message: &Message,
    facts: &crate::admission::Facts,
    decision: crate::admission::Decision,
) -> Result<bool, CallError> {
    use crate::admission::Decision;
    let record = crate::audit::record(ctx, request, message, facts, &decision);
    crate::audit::publish(ctx, &record)
        .await
        .map_err(|e| CallError::Nats(e.to_string()))?;
    let end = |kind| async move {
        end_attempt(ctx, request, kind)
            .await
            .map_err(|e| CallError::Nats(e.to_string()))
    };
    match decision {
        Decision::Place => return Ok(false),
        Decision::End(reason) => cancel(ctx, request, &reason).await?,
        Decision::Expire(reason) => end(EventKind::Expired { reason }).await?,
        Decision::Limit(reason) => end(EventKind::Limited { reason }).await?,
        Decision::Defer(until) => crate::window::defer(ctx, request, message, until)
            .await
            .map_err(CallError::Window)?,
    }
    ack(message).await;
    Ok(true)
}

/// Records one placement request's duration and, when it failed, its kind.
fn record_placement(
    carrier: &'static str,
    took: Duration,
    placed: &Result<crate::carrier::Placement, CarrierError>,
) {
    let result = match placed {
        Ok(_) => "placed",
        Err(CarrierError::Rejected(_)) => "rejected",
        Err(CarrierError::Unavailable(_)) => "unavailable",
        Err(CarrierError::Ambiguous(_)) => "ambiguous",
        Err(CarrierError::Throttled { .. }) => "throttled",
    };
    histogram!("ccm_dialer_carrier_request_duration_seconds",
        "carrier" => carrier, "result" => result)
    .record(took.as_secs_f64());
    if placed.is_err() {
        counter!("ccm_dialer_carrier_errors_total", "carrier" => carrier, "kind" => result)
            .increment(1);
    }
}

/// Ends an attempt of a campaign that is over: a `Cancelled` event, and the callee's number
/// is free again (the retrier, which releases claims on outcomes, never sees this attempt).
async fn cancel(ctx: &CallContext, request: &DialRequest, reason: &str) -> Result<(), CallError> {
    cancel_attempt(ctx, request, reason)
        .await
        .map_err(|e| CallError::Nats(e.to_string()))
}

/// Publishes the attempt's `Cancelled` event and releases the number's claim. Shared with
/// the cancellation of scheduled attempts, so both give the same de-duplication id.
pub(crate) async fn cancel_attempt(
    ctx: &CallContext,
    request: &DialRequest,
    reason: &str,
) -> Result<(), ccm_core::nats::NatsError> {
    let kind = EventKind::Cancelled {
        reason: reason.into(),
    };
    end_attempt(ctx, request, kind).await
}

/// Ends an unplaced attempt with the terminal event `kind` (cancelled, expired, limited) and
/// releases the number's claim ([`ccm_core::call_lifecycle::end_unplaced`]).
async fn end_attempt(
    ctx: &CallContext,
    request: &DialRequest,
    kind: EventKind,
) -> Result<(), ccm_core::nats::NatsError> {
    ccm_core::call_lifecycle::end_unplaced(&ctx.js, &ctx.claims, request, kind)
        .await
        .map(drop)
}

pub(crate) async fn publish_outcome(
    ctx: &CallContext,
    request: &DialRequest,
    source: OutcomeSource,
    reason: String,
) -> Result<(), CallError> {
    let event = CallEvent::of_request(
        request,
        EventKind::Outcome {
            status: OutcomeStatus::Failed,
            source,
            raw_status: None,
            duration_secs: None,
            external_call_id: None,
            reason: Some(reason),
            callback: None,
        },
    );
    // Copied to this dialer: another delivery of the attempt waiting here wakes too.
    ccm_core::outcome_route::publish(&ctx.js, &event, Some(ctx.outcomes.address()))
        .await
        .map(|_| ())
        .map_err(|e| CallError::Nats(e.to_string()))
}

async fn ack(message: &Message) {
    // A double ack waits for the server to confirm: the slot is free and the message will
    // not come back.
    if let Err(e) = message.double_ack().await {
        tracing::warn!(error = %ccm_core::telemetry::chain(e.as_ref()), "ack failed; a redelivery will find the outcome and stop");
    }
}

/// The redelivery delay after a technical failure, by delivery count: 0.5 s doubling up to
/// 30 s, each with up to as much again of random jitter (so 0.5–1 s first, 30–60 s at the
/// cap), which spreads a carrier outage's retries instead of bunching them.
pub fn jittered_backoff(delivered: i64) -> Duration {
    use backon::BackoffBuilder;
    let nth = usize::try_from(delivered.clamp(1, 16)).unwrap_or(1);
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_secs(30))
        .with_factor(2.0)
        .with_jitter()
        .with_max_times(nth)
        .build()
        .last()
        .unwrap_or(Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::jittered_backoff;

    #[test]
    fn backoff_grows_and_is_capped() {
        for _ in 0..100 {
            let first = jittered_backoff(1).as_millis();
            assert!((500..=1000).contains(&first), "{first}");
            let third = jittered_backoff(3).as_millis();
            assert!((2000..=4000).contains(&third), "{third}");
            let late = jittered_backoff(50).as_millis();
            assert!((30_000..=60_000).contains(&late), "{late}");
        }
    }
}
