//! A call's expiry (`expires_at`): the one rule for when a call that was not placed in time
//! ends, and with which reason.
//!
//! A call and a contact may each carry `expires_at`; the call's dial request carries the
//! earlier of the two ([`earliest`]), and so does every later attempt (through `Dialing`).
//! Ingest refuses one already past ([`check_not_past`]). The dialer ends an attempt it finds
//! past its expiry, and ends instead of putting off one whose wait would outlast it
//! ([`instead_of_waiting`]): `EXPIRED` for a closed window or a held campaign, `LIMITED` for
//! a frequency limit. The retrier schedules no retry after it ([`retry_past`]) and ends a call
//! still queued in a held campaign when it passes (its expiry sweep).
//!
//! Not to be confused with the maximum queue age (`retrier.max_queue_age_secs`, also
//! `EXPIRED`, another reason) or the maximum call duration (the dialer's `expiry` module).

use chrono::{DateTime, SecondsFormat, Utc};

use crate::call_lifecycle::End;

/// The earlier of two expiries (either may be absent).
pub fn earliest(a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// An `expires_at` that is not in the future.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expires_at {} is not in the future (now {})", stamp(*.at), stamp(*.now))]
pub struct PastExpiry {
    pub at: DateTime<Utc>,
    pub now: DateTime<Utc>,
}

/// Refuses an expiry at or before `now`: a call that could never be placed is not accepted.
pub fn check_not_past(at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Result<(), PastExpiry> {
    match at {
        Some(at) if at <= now => Err(PastExpiry { at, now }),
        _ => Ok(()),
    }
}

/// Whether the call is past its expiry at `now`.
pub fn is_past(expires_at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
    expires_at.is_some_and(|at| at <= now)
}

/// The reason of a call found unplaced at or after its expiry.
pub fn overdue(expires_at: DateTime<Utc>) -> String {
    format!("not placed by its expiry {}", stamp(expires_at))
}

/// Why an attempt waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Its calling window (or a blackout date) is closed.
    Window,
    /// Its campaign is paused or not started.
    Held,
    /// A frequency limit on its number.
    Frequency,
}

impl Wait {
    fn what(self) -> &'static str {
        match self {
            Self::Window => "its calling window opens",
            Self::Held => "its campaign dials again",
            Self::Frequency => "its number's frequency limit allows another attempt",
        }
    }

    /// How a call ends when this wait would outlast its expiry.
    pub fn end(self) -> End {
        match self {
            Self::Frequency => End::Limited,
            Self::Window | Self::Held => End::Expired,
        }
    }
}

/// How the call ends instead of waiting `why` until `until`, when that falls after its expiry;
/// `None` when it may wait (no expiry, or the wait ends first).
pub fn instead_of_waiting(
    why: Wait,
    until: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
) -> Option<(End, String)> {
    let expires_at = expires_at.filter(|at| until > *at)?;
    Some((
        why.end(),
        format!(
            "{} at {}, after its expiry {}",
            why.what(),
            stamp(until),
            stamp(expires_at)
        ),
    ))
}

/// The reason a retry the policy wants at `at` is not scheduled, when `at` falls after the
/// call's expiry.
pub fn retry_past(at: DateTime<Utc>, expires_at: Option<DateTime<Utc>>) -> Option<String> {
    let expires_at = expires_at.filter(|e| at > *e)?;
    Some(format!(
        "its next attempt would be at {}, after its expiry {}",
        stamp(at),
        stamp(expires_at)
    ))
}

fn stamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng, rngs::StdRng};

    use super::*;

    /// Generated: the earlier expiry wins whichever side holds it, and a wait ends the call
    /// exactly when it outlasts the expiry, as EXPIRED or (frequency) LIMITED.
    #[test]
    fn the_earlier_expiry_wins_and_a_wait_past_it_ends_the_call() {
        let seed: u64 = rand::random();
        println!("seed {seed}");
        let mut rng = StdRng::seed_from_u64(seed);
        let now = Utc::now();
        let some = |rng: &mut StdRng| {
            rng.random_bool(0.7)
                .then(|| now + chrono::Duration::seconds(rng.random_range(-3600..86_400)))
        };
        for _ in 0..10_000 {
            let (call, contact) = (some(&mut rng), some(&mut rng));
            let e = earliest(call, contact);
            assert_eq!(e, earliest(contact, call), "seed {seed}");
            for side in [call, contact].into_iter().flatten() {
                assert!(e.is_some_and(|e| e <= side), "seed {seed}");
            }
            assert_eq!(e.is_none(), call.is_none() && contact.is_none());
            assert_eq!(check_not_past(e, now).is_err(), is_past(e, now));
            let until = now + chrono::Duration::seconds(rng.random_range(0..86_400));
            let why = [Wait::Window, Wait::Held, Wait::Frequency][rng.random_range(0..3)];
            let ended = instead_of_waiting(why, until, e);
            assert_eq!(ended.is_some(), e.is_some_and(|e| until > e), "seed {seed}");
            if let Some((end, _)) = ended {
                let want = if why == Wait::Frequency {
                    End::Limited
                } else {
                    End::Expired
                };
                assert_eq!(end, want, "seed {seed}");
            }
            assert_eq!(retry_past(until, e).is_some(), ended.is_some());
        }
    }
}
