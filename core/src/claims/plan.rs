//! The decisions about a claim key, as pure functions of what it holds and what is known
//! about its call; [`super::Claims`] and [`super::reap`] carry them out.

use super::wire::{Phase, Record, Slot};

/// What a claim request does with the key it read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClaimStep {
    /// Write a pending claim over the key's revision (free, given back, or window over; or
    /// this call's own pending claim, whose TTL a resumed request renews).
    Take,
    /// This call's claim is already bound: rewrite it bound, so its revision moves and a
    /// reaper that judged the old revision cannot free it (a redriven dead letter).
    Rebind,
    /// Another call holds the number.
    InProgress,
    /// The number's last call ended less than the duplicate window ago.
    WithinWindow,
}

/// `call` wants the key that holds `record`, at `now` (unix seconds), with the duplicate
/// window of `window` seconds (0: off). A release marker of this very call never counts
/// against it: a redriven call claims its number again.
pub(crate) fn claim_step(record: &Record, call: &str, now: i64, window: i64) -> ClaimStep {
    match &record.slot {
        Slot::Free | Slot::Purged => ClaimStep::Take,
        Slot::Released { call: by, ended } => {
            if by.as_deref() != Some(call) && window > 0 && now - ended < window {
                ClaimStep::WithinWindow
            } else {
                ClaimStep::Take
            }
        }
        Slot::Held {
            call: by, phase, ..
        } if by == call => match phase {
            Phase::Bound => ClaimStep::Rebind,
            Phase::Pending | Phase::Legacy => ClaimStep::Take,
        },
        Slot::Held { .. } => ClaimStep::InProgress,
    }
}

/// How a release leaves a key that `call` may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReleaseStep {
    /// Not this call's claim (never was, or released already): nothing to do.
    Skip,
    /// A release marker that expires when the duplicate window after `ended` is over.
    Mark { ttl_secs: u64 },
    /// No window left to keep: a purge marker that expires at once.
    Purge,
}

pub(crate) fn release_step(
    record: &Record,
    call: &str,
    ended: i64,
    now: i64,
    window: i64,
) -> ReleaseStep {
    if !record.held_by(call) {
        return ReleaseStep::Skip;
    }
    let left = ended.saturating_add(window).saturating_sub(now);
    match u64::try_from(left) {
        Ok(ttl_secs) if ttl_secs > 0 => ReleaseStep::Mark { ttl_secs },
        _ => ReleaseStep::Purge,
    }
}

/// The newest event of a claim's call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Latest {
    pub terminal: bool,
    /// When the stream stored it (unix seconds).
    pub at: i64,
}

/// What the reaper knows about a claim's call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Facts {
    /// `None`: not read yet; `Some(None)`: the call has no event.
    pub latest: Option<Option<Latest>>,
    /// Whether `CALLS` holds the call's dial message near the claim's time; `None`: not
    /// looked yet.
    pub in_calls: Option<bool>,
}

/// What the reaper does with a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReapStep {
    Keep,
    /// The call's latest event is needed first.
    ReadLatest,
    /// The call's dial message is to be looked for in `CALLS`.
    SearchCalls,
    /// The call is published: bind its claim (a writer died before it could).
    Bind,
    /// The call is over: release its claim as the retrier would have.
    Release {
        ended: i64,
    },
    /// Nothing to keep: a claim of a call never published (written before claims had TTLs),
    /// or a marker without a TTL whose window is over.
    Purge,
}

/// The reaper's decision for `record` at `now`, given `facts` gathered so far. A claim is freed
/// only when its call ended (its latest event is terminal, and for a pending claim newer than
/// the claim: an older one is a redrive in flight), or, for a claim written before claims had
/// TTLs, when its call was never published; a pending claim of a call never published is
/// left to its TTL.
/// The write that follows expects `record.revision`, so any change since makes it a no-op.
pub(crate) fn reap_step(
    record: &Record,
    expires: bool,
    facts: Facts,
    now: i64,
    pending_ttl: i64,
    window: i64,
) -> ReapStep {
    match &record.slot {
        Slot::Free => ReapStep::Keep,
        // Markers with a TTL go on their own; older ones aged out with the bucket's max_age.
        Slot::Purged if expires => ReapStep::Keep,
        Slot::Purged => ReapStep::Purge,
        Slot::Released { .. } if expires => ReapStep::Keep,
        Slot::Released { ended, .. } if now - ended >= window => ReapStep::Purge,
        Slot::Released { .. } => ReapStep::Keep,
        Slot::Held { phase, at, .. } => {
            let age = now - at;
            // A young pending claim is its writer's business: it binds or gives it back.
            if *phase == Phase::Pending && age < pending_ttl / 4 {
                return ReapStep::Keep;
            }
            let Some(latest) = facts.latest else {
                return ReapStep::ReadLatest;
            };
            match (phase, latest) {
                (Phase::Bound | Phase::Legacy, Some(l)) if l.terminal => {
                    ReapStep::Release { ended: l.at }
                }
                (Phase::Bound, _) => ReapStep::Keep,
                // Ended after it was claimed: the writer died between its publish and its
                // bind, and the call is over since.
                (Phase::Pending, Some(l)) if l.terminal && l.at > *at => {
                    ReapStep::Release { ended: l.at }
                }
                (Phase::Pending | Phase::Legacy, Some(l)) if !l.terminal => ReapStep::Bind,
                // No event yet (a queued call), or, for a pending claim, an event that ended the
                // call before this claim (a redrive in flight): only a dial message in `CALLS`
                // proves the call was published.
                _ => match facts.in_calls {
                    None => ReapStep::SearchCalls,
                    Some(true) => ReapStep::Bind,
                    Some(false) if *phase == Phase::Legacy && age > pending_ttl => ReapStep::Purge,
                    Some(false) => ReapStep::Keep,
                },
            }
        }
    }
}
