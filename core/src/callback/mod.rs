//! Callbacks the callee asks for: "call me back at five".
//!
//! A callback moves a call's next attempt to the time the callee asked for, in their zone,
//! inside the calling rules: when the asked time is outside the campaign's window or the
//! callee's rule packs, the first allowed time after it ([`crate::window::first_allowed`]),
//! and the answer says so. The attempt it plans does not count against the retry policy's
//! attempt limit ([`callback_attempts`]); it is dialled like any other attempt, so the frequency
//! limits and legal caps the dialer applies count it.
//!
//! How it stays one next attempt, never two:
//! - The call must be waiting for its next attempt (`RETRYING`): its `RETRIES` entry exists
//!   and nothing is live. A call queued, dialling or waiting for its decision is refused
//!   ([`Refusal::InProgress`]); one that ended is refused for good.
//! - A callback publishes a new `RETRIES` entry for the next attempt, tagged with a fresh
//!   random tag (its own de-duplication ids), then a `Rescheduled` event naming the tag on the
//!   call's event subject *expecting that subject's last sequence to be the one it planned
//!   from*. That expected sequence is the commit point: the dialer's `Dialing` publish
//!   expects it too, so of a callback and the next attempt's placement exactly one wins, and
//!   the loser looks again (the callback then finds the attempt in progress; the dialer finds
//!   its attempt stale).
//! - The dialer places an attempt only while it is the call's plan ([`plans`]): after a
//!   `Rescheduled`, only the entry carrying its tag. The entries it replaced (the policy's,
//!   earlier callbacks') are removed from `RETRIES` once it is committed
//!   ([`crate::retries::remove_replaced`]); one the retrier already holds, or one a failed
//!   removal left, is dropped by the dialer when it comes due (or, due while the callback's
//!   attempt is live, waits for that attempt's outcome and places nothing).
//! - The number's claim is untouched: the call stays open, so the number stays claimed while
//!   the callback waits, and a cancel, erase or opt-out ends the call as before (the callback's
//!   dial message then finds it ended).

mod plan;
#[cfg(test)]
mod tests;

use async_nats::{
    HeaderMap,
    jetstream::{self, kv, stream::Stream},
};
use chrono::{DateTime, Utc};

pub use plan::{
    AskError, Asked, Refusal, callback_attempts, check_time, moved, parse_asked, planned_after,
    plans,
};

use crate::{
    CallEvent, CallId, Campaign, DialRequest, EventKind, RetryEntry, call_log, nats::NatsError,
    rules::Rules, subjects,
};

/// Where a call stands, as a callback reads it: its newest lifecycle event and that event's
/// sequence on the call's subject.
#[derive(Debug)]
pub struct Standing {
    pub event: CallEvent,
    pub sequence: u64,
}

/// What is needed to schedule a callback.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub js: &'a jetstream::Context,
    pub events: &'a Stream,
    pub contacts: &'a kv::Store,
    pub rules: &'a Rules,
    /// How far ahead a callback may be (within the events' and calls' retention).
    pub horizon: chrono::Duration,
}

/// A scheduled callback.
#[derive(Debug, Clone, PartialEq)]
pub struct Scheduled {
    /// The attempt that will call back.
    pub attempt: u32,
    pub asked: Asked,
    /// When it is placed: the asked time, or the first allowed time after it.
    pub at: DateTime<Utc>,
    /// Why `at` is later than the asked time.
    pub moved: Option<String>,
}

/// Why a callback was not scheduled.
#[derive(Debug, thiserror::Error)]
pub enum CallbackError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error(transparent)]
    Ask(#[from] AskError),
    #[error("the call's Dialing event (its phone number) is missing")]
    NoFacts,
    #[error("cannot read the call's events")]
    Read(#[source] async_nats::Error),
    #[error(transparent)]
    Contact(#[from] crate::contacts::ContactReadError),
    #[error(transparent)]
    Publish(#[from] NatsError),
    #[error("the call kept changing while the callback was scheduled")]
    Contended,
}

/// The call's newest lifecycle event, found by call id alone (`None`: the call has no event
/// yet, or is unknown).
pub async fn standing(events: &Stream, call: CallId) -> Result<Option<Standing>, CallbackError> {
    let last = call_log::last_of_call(events, call)
        .await
        .map_err(CallbackError::Read)?;
    Ok(last.and_then(|l| {
        let sequence = l.sequence;
        l.decoded().map(|event| Standing { event, sequence })
    }))
}

/// Schedules the callback the callee asked for (`at`, in `time_zone` or their own zone) as
/// the next attempt of a call standing at `standing`, of `campaign`.
pub async fn reschedule(
    ctx: Context<'_>,
    campaign: &Campaign,
    mut standing: Standing,
    at: &str,
    time_zone: Option<&str>,
) -> Result<Scheduled, CallbackError> {
    // A few looks: each lost race means the call moved (another callback, or its next
    // attempt started), and the next look decides on what it is now.
    for _ in 0..5 {
        let attempt = planned_after(&standing.event.kind, standing.event.attempt)?;
        let call = standing.event.call_id;
        let dialing = last_dialing(ctx.events, campaign, call).await?;
        let dialing = dialing.ok_or(CallbackError::NoFacts)?;
        let (asked, allowed, moved) = allowed_time(
            &ctx,
            campaign,
            &dialing.phone_number,
            dialing.expires_at,
            at,
            time_zone,
            Utc::now(),
        )
        .await?;
        let tag = uuid::Uuid::new_v4().as_u64_pair().0;
        let entry = RetryEntry {
            due_at: allowed,
            request: DialRequest {
                attempt: attempt + 1,
                queued_at: allowed,
                callback: Some(tag),
                ..dialing
            },
            window_deferral: None,
        };
        // The entry first: a `Rescheduled` event always has its entry behind it. An entry
        // whose event loses the race below is never placed ([`plans`]).
        crate::retries::schedule(ctx.js, &entry).await?;
        let event = CallEvent::now(
            call,
            campaign.id,
            attempt,
            EventKind::Rescheduled {
                next_retry_at: allowed,
                asked_for: asked.at,
                time_zone: asked.time_zone.clone(),
                moved: moved.clone(),
                tag,
            },
        );
        let mut headers = HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            standing.sequence.to_string().as_str(),
        );
        match crate::nats::publish_json(
            ctx.js,
            event.subject(),
            &event.msg_id(),
            Some(headers),
            &event,
        )
        .await
        {
            Ok(_) => {
                // Best effort: a replaced entry left behind places nothing when it comes due.
                if let Err(e) =
                    crate::retries::remove_replaced(ctx.js, campaign.id, call, attempt + 1, tag)
                        .await
                {
                    tracing::warn!(%call, error = %crate::telemetry::chain(&e),
                        "replaced retry entries stay until due");
                }
                return Ok(Scheduled {
                    attempt: attempt + 1,
                    asked,
                    at: allowed,
                    moved,
                });
            }
            Err(NatsError::Publish { source, .. }) if crate::nats::lost_race(source.as_ref()) => {
                let subject = subjects::event(campaign.id, call);
                let last = call_log::last_on(ctx.events, subject)
                    .await
                    .map_err(CallbackError::Read)?;
                standing = match last.and_then(|l| {
                    let sequence = l.sequence;
                    l.decoded().map(|event| Standing { event, sequence })
                }) {
                    Some(now) => now,
                    None => return Err(CallbackError::Contended),
                };
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(CallbackError::Contended)
}

/// When a callback asked for at `at` (in `time_zone`, else the callee's own zone when it is
/// known for sure) is placed, as of `now`: the asked time, or the first time the calling
/// window and the callee's rule packs allow after it, with why it moved. Refused when it is in
/// the past, after `expires_at` or beyond the horizon.
pub async fn allowed_time(
    ctx: &Context<'_>,
    campaign: &Campaign,
    phone: &crate::PhoneNumber,
    expires_at: Option<DateTime<Utc>>,
    at: &str,
    time_zone: Option<&str>,
    now: DateTime<Utc>,
) -> Result<(Asked, DateTime<Utc>, Option<String>), CallbackError> {
    let zones = crate::contacts::callee_zones(
        ctx.contacts,
        campaign.id,
        campaign.time_zone.as_deref(),
        phone,
    )
    .await?;
    let callee_zone = match zones.as_slice() {
        [one] => Some(*one),
        _ => None,
    };
    let asked = parse_asked(at, time_zone, callee_zone)?;
    check_time(asked.at, now, expires_at, ctx.horizon)?;
    let allowed =
        crate::window::first_allowed(ctx.contacts, ctx.rules, Some(campaign), phone, asked.at)
            .await?;
    // The rules may move it past the expiry or the horizon: that is refused as well.
    check_time(allowed, now, expires_at, ctx.horizon)?;
    let moved = moved(asked.at, allowed);
    Ok((asked, allowed, moved))
}

/// How far ahead a callback may be: three quarters of the events' retention (of a week when
/// it is unlimited), so its `Rescheduled` event is still there when it comes due.
pub fn horizon(retention: std::time::Duration) -> chrono::Duration {
    let retention = if retention.is_zero() {
        std::time::Duration::from_secs(7 * 86_400)
    } else {
        retention
    };
    chrono::Duration::from_std(retention * 3 / 4).unwrap_or(chrono::Duration::days(5))
}

/// The tag of the callback the retrier schedules for an outcome of `attempt` that asked for
/// one: fixed by the call and attempt, so a redelivered outcome schedules the same entry and
/// publishes the same event.
pub fn outcome_tag(call: CallId, attempt: u32) -> u64 {
    let (high, low) = call.as_uuid().as_u64_pair();
    (high ^ low.rotate_left(17)) ^ u64::from(attempt).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// The dial request of the call's latest `Dialing` event (the facts every attempt carries),
/// read by walking the call's event subject: callbacks are rare, so the walk's cost is not a
/// concern here (the retrier's hot path avoids it).
async fn last_dialing(
    events: &Stream,
    campaign: &Campaign,
    call: CallId,
) -> Result<Option<DialRequest>, CallbackError> {
    let subject = subjects::event(campaign.id, call);
    let mut from = None;
    let mut found = None;
    loop {
        match events
            .direct_get_next_for_subject(subject.clone(), from)
            .await
        {
            Ok(message) => {
                from = Some(message.sequence + 1);
                if let Ok(event) = serde_json::from_slice::<CallEvent>(&message.payload)
                    && let EventKind::Dialing {
                        phone_number,
                        max_attempts,
                        created_at,
                        custom_fields,
                        expires_at,
                        alternate,
                    } = event.kind
                {
                    found = Some(DialRequest {
                        call_id: call,
                        campaign_id: campaign.id,
                        phone_number,
                        attempt: event.attempt,
                        max_attempts,
                        created_at,
                        queued_at: event.at,
                        custom_fields,
                        expires_at,
                        callback: None,
                        // The callee asked on the number that answered: call back there.
                        alternate,
                    });
                }
            }
            Err(e) if e.kind() == async_nats::jetstream::stream::DirectGetErrorKind::NotFound => {
                return Ok(found);
            }
            Err(e) => return Err(CallbackError::Read(e.into())),
        }
    }
}
