//! The decisions of a callback, as pure functions: what the asked time is, whether the call
//! can take one, and which scheduled attempt is the call's plan.

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;

use crate::{
    CallEvent, DialRequest, EventKind,
    call_lifecycle::{CallState, End},
};

/// A time the callee asked for, as an instant, with the zone it was given in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asked {
    pub at: DateTime<Utc>,
    /// The zone a local time was read in (absent when `at` carried its own offset).
    pub time_zone: Option<String>,
}

/// Why an asked time cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AskError {
    #[error(
        "`at` {0:?} is not a time: give RFC 3339 (2026-12-07T17:00:00-05:00) or a local time (2026-12-07T17:00) with `time_zone`"
    )]
    Unparseable(String),
    #[error("unknown time zone {0:?}: give an IANA name such as America/New_York")]
    Zone(String),
    #[error("`at` {0:?} is a local time and the callee's zone is not known: give `time_zone`")]
    NoZone(String),
    #[error("{0} does not exist in {1} (the clocks skip it)")]
    Gap(String, String),
}

/// Reads `at`: an instant with its own offset (RFC 3339), or a local time in `time_zone`,
/// else in `callee_zone` (the callee's own zone when it is known for sure).
pub fn parse_asked(
    at: &str,
    time_zone: Option<&str>,
    callee_zone: Option<Tz>,
) -> Result<Asked, AskError> {
    let given = time_zone
        .map(|name| {
            name.parse::<Tz>()
                .map_err(|_| AskError::Zone(name.to_owned()))
        })
        .transpose()?;
    let at = at.trim();
    if let Ok(instant) = DateTime::parse_from_rfc3339(at) {
        return Ok(Asked {
            at: instant.with_timezone(&Utc),
            time_zone: given.map(|z| z.name().to_owned()),
        });
    }
    let local = [
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%d %H:%M",
    ]
    .iter()
    .find_map(|format| NaiveDateTime::parse_from_str(at, format).ok())
    .ok_or_else(|| AskError::Unparseable(at.to_owned()))?;
    let zone = given
        .or(callee_zone)
        .ok_or_else(|| AskError::NoZone(at.to_owned()))?;
    // A local time that happens twice (clocks going back) is the earlier one, as the
    // calling windows read it.
    let instant = zone
        .from_local_datetime(&local)
        .earliest()
        .ok_or_else(|| AskError::Gap(at.to_owned(), zone.name().to_owned()))?;
    Ok(Asked {
        at: instant.with_timezone(&Utc),
        time_zone: Some(zone.name().to_owned()),
    })
}

/// Why a call cannot be given a callback.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the call ended ({0:?}): nothing is left to reschedule")]
    Ended(End),
    #[error(
        "an attempt of the call is queued or in progress; reschedule once its outcome is decided, or report the callback time with the outcome"
    )]
    InProgress,
    #[error("{asked} is in the past")]
    Past { asked: DateTime<Utc> },
    #[error("{asked} is after the call's expiry ({expires_at})")]
    AfterExpiry {
        asked: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    },
    #[error("{asked} is further ahead than callbacks may be scheduled (until {limit})")]
    TooFar {
        asked: DateTime<Utc>,
        limit: DateTime<Utc>,
    },
}

/// The attempt whose next attempt a callback replaces: the call must be waiting for its next
/// attempt (`Retrying`, or rescheduled before). A call that ended is refused for good; one
/// queued, dialling, or waiting for the retrier's decision is refused until it is decided,
/// since its next attempt is not planned yet.
pub fn planned_after(last: &EventKind, attempt: u32) -> Result<u32, Refusal> {
    match CallState::of(last) {
        CallState::Retrying => Ok(attempt),
        CallState::Ended(end) => Err(Refusal::Ended(end)),
        _ => Err(Refusal::InProgress),
    }
}

/// Whether the asked time may be scheduled: not in the past, not after the call's expiry,
/// not further ahead than `horizon` (events and claims must outlive the wait).
pub fn check_time(
    asked: DateTime<Utc>,
    now: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    horizon: chrono::Duration,
) -> Result<(), Refusal> {
    if asked < now {
        return Err(Refusal::Past { asked });
    }
    if let Some(expires_at) = expires_at.filter(|e| asked > *e) {
        return Err(Refusal::AfterExpiry { asked, expires_at });
    }
    let limit = now + horizon;
    if asked > limit {
        return Err(Refusal::TooFar { asked, limit });
    }
    Ok(())
}

/// What the answer says when the calling rules move the asked time.
pub fn moved(asked: DateTime<Utc>, allowed: DateTime<Utc>) -> Option<String> {
    (allowed > asked).then(|| {
        format!(
            "{asked} is outside the calling window or the callee's calling rules; {allowed} is the first allowed time after it"
        )
    })
}

/// Whether `request` is the attempt the call's latest event `last` plans: after a
/// `Rescheduled`, only the attempt carrying its tag; after a `Retrying`, only the policy's
/// own attempt. Anything else (an earlier plan replaced since) is stale and never placed.
pub fn plans(last: &CallEvent, request: &DialRequest) -> bool {
    if last.attempt.checked_add(1) != Some(request.attempt) {
        return true;
    }
    match last.kind {
        EventKind::Rescheduled { tag, .. } => request.callback == Some(tag),
        EventKind::Retrying { .. } => request.callback.is_none(),
        _ => true,
    }
}

/// The attempts the callee asked for: those planned by a `Rescheduled` that was the last
/// plan of the attempt before them. The retry policy leaves them out of the outcomes it counts
/// (`events` are the call's lifecycle events, oldest first).
pub fn callback_attempts(events: &[CallEvent]) -> std::collections::BTreeSet<u32> {
    let mut last_plan = std::collections::BTreeMap::new();
    for e in events {
        if matches!(
            e.kind,
            EventKind::Retrying { .. } | EventKind::Rescheduled { .. }
        ) {
            last_plan.insert(e.attempt, matches!(e.kind, EventKind::Rescheduled { .. }));
        }
    }
    last_plan
        .into_iter()
        .filter(|(_, callback)| *callback)
        .filter_map(|(attempt, _)| attempt.checked_add(1))
        .collect()
}
