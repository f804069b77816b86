//! The end of a call that outlived its maximum duration.
//!
//! A synthetic outcome frees the campaign's slot and lets the retry policy dial the number
//! again, so it must never be made while the line may still be live, and never in place of
//! an outcome the carrier is about to report. So, in order, with the dial message still held
//! (its slot taken, kept alive by in-progress acks):
//!
//! 1. The call is hung up at the carrier ([`crate::carrier::Carrier::hang_up`]), asked again
//!    with backoff until the carrier confirms that nothing is live. An adapter that cannot
//!    name the call waits out the time the carrier takes to end it by itself.
//! 2. The carrier reports the call it hung up (its final callback): for
//!    `dialer.hangup_grace_ms` the call waits for that real outcome, which then ends the
//!    attempt as any outcome does (a PICKED call completes).
//! 3. Only if none came is the synthetic FAILED (`timeout`) published, with the reason the
//!    placement's result was unknown when it was.
//!
//! The real outcome arriving at any step ends the wait at once. A real outcome later than
//! the grace is stored under the attempt's outcome id, which the synthetic one then holds.

use std::time::Duration;

use async_nats::jetstream::{AckKind, Message};
use ccm_core::{DialRequest, OutcomeSource, metrics::counter};

use crate::{
    call::{CallContext, CallError, Placed, publish_outcome},
    carrier::HangUp,
    known::outcome_stored,
    outcomes::Waiter,
};

/// First pause between two hang-up requests the carrier did not confirm; doubled up to
/// [`HANG_UP_MAX_DELAY`].
const HANG_UP_DELAY: Duration = Duration::from_millis(500);
const HANG_UP_MAX_DELAY: Duration = Duration::from_secs(30);

/// Ends the attempt whose maximum duration has passed; returns once it has its outcome
/// (the carrier's or the synthetic one), so the message may be acknowledged.
pub(crate) async fn expire(
    ctx: &CallContext,
    request: &DialRequest,
    message: &Message,
    waiter: &mut Waiter,
    placed: Placed,
) -> Result<(), CallError> {
    let external = match placed.external_call_id {
        Some(id) => Some(id),
        None => ctx.placements.external_id(request).await,
    };
    let mut delay = HANG_UP_DELAY;
    loop {
        let hung_up = tokio::select! {
            hung_up = ctx.carrier.hang_up(request, external.as_deref()) => hung_up,
            woken = waiter.outcome() => return woken.map_err(|c| CallError::Nats(c.to_string())),
            () = ctx.shutdown.cancelled() => return Err(CallError::Shutdown),
        };
        // How long to hold the call before going on, and whether it is over by then.
        let (wait, over) = match hung_up {
            Ok(HangUp::Ended) => break,
            Ok(HangUp::EndsWithin(within)) => (within, true),
            Err(e) => {
                tracing::warn!(call = %request.call_id, error = %ccm_core::telemetry::chain(&e),
                    "the carrier did not confirm the hang-up; the call stays held");
                counter!("ccm_dialer_hang_up_failures_total", "carrier" => ctx.carrier_kind)
                    .increment(1);
                let wait = delay;
                delay = (delay * 2).min(HANG_UP_MAX_DELAY);
                (wait, false)
            }
        };
        if hold(ctx, request, message, waiter, wait).await? {
            return Ok(());
        }
        if over {
            break;
        }
    }
    counter!("ccm_dialer_hang_ups_total", "carrier" => ctx.carrier_kind).increment(1);
    if ctx.carrier.reports_hang_ups()
        && hold(ctx, request, message, waiter, ctx.hangup_grace).await?
    {
        return Ok(());
    }
    // A delivery missed while the connection was down is still in the stream.
    if outcome_stored(ctx, request).await {
        return Ok(());
    }
    let reason = match placed.unknown {
        None => "timeout".to_owned(),
        Some(why) => format!("timeout: outcome unknown, the carrier answered {why}"),
    };
    publish_outcome(ctx, request, OutcomeSource::Timeout, reason).await?;
    counter!("ccm_dialer_outcome_timeouts_total").increment(1);
    Ok(())
}

/// Holds the call for `wait`, keeping its message alive: true when its outcome arrived.
async fn hold(
    ctx: &CallContext,
    request: &DialRequest,
    message: &Message,
    waiter: &mut Waiter,
    wait: Duration,
) -> Result<bool, CallError> {
    let until = tokio::time::Instant::now() + wait;
    let mut progress = tokio::time::interval(ctx.progress_every);
    loop {
        tokio::select! {
            woken = waiter.outcome() => {
                return woken.map(|()| true).map_err(|c| CallError::Nats(c.to_string()));
            }
            _ = progress.tick() => {
                let _ = Box::pin(message.ack_with(AckKind::Progress)).await;
            }
            () = tokio::time::sleep_until(until) => return Ok(outcome_stored(ctx, request).await),
            () = ctx.shutdown.cancelled() => return Err(CallError::Shutdown),
        }
    }
}
