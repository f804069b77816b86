//! The decision which of a contact's numbers a call's next attempt dials: pure, so the
//! retrier (after an outcome) and the dialer (a number found barred right before placing)
//! reach the same answer from the same facts, and a redelivered outcome decides the same.
//!
//! Order: after an outcome the policy advances on, the numbers after the one just dialled,
//! wrapping round (the one just dialled comes last); after any other outcome, the same number
//! first, then the others in that order. The first number in that order that is not barred
//! and is under both limits on the local date of the next attempt is dialled. When none is
//! (only limits stand in the way) the call waits for the callee's next local midnight, or,
//! when limits never reset, ends. A contact whose every number is barred ends at once.

use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;

use super::{AlternateNumbers, LimitReset};

/// One attempt of the call that was placed: which number (its index in the contact's list)
/// and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    pub number: usize,
    pub at: DateTime<Utc>,
}

/// What the decision knows.
#[derive(Debug, Clone)]
pub struct Situation<'a> {
    pub policy: &'a AlternateNumbers,
    /// Per number of the contact, in order: it may not be dialled (on a do-not-call list,
    /// opted out, without the campaign's consent). Its length is the number of numbers.
    pub barred: &'a [bool],
    /// The index of the number the attempt that just ended dialled.
    pub current: usize,
    /// The attempt ended with an outcome the policy advances on.
    pub advance: bool,
    /// Every placed attempt of the call, the one that just ended included.
    pub attempts: &'a [Attempt],
    /// The callee's zone: days, and so the counts, run from its midnight.
    pub zone: Tz,
    /// When the next attempt is due by the retry policy.
    pub due: DateTime<Utc>,
}

/// The decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Dial number `index` when due.
    Dial { index: usize },
    /// Every number allowed is at a limit on the due date: dial number `index` at
    /// `not_before`, the callee's next local midnight, when the counts reset.
    Tomorrow {
        index: usize,
        not_before: DateTime<Utc>,
    },
    /// No number may be dialled again: the call ends FAILED with this reason.
    Exhausted { reason: String },
}

/// The local date of `at` in `zone`.
pub fn local_date(zone: Tz, at: DateTime<Utc>) -> NaiveDate {
    at.with_timezone(&zone).date_naive()
}

/// The first instant of `date` in `zone` (midnight, or the end of a gap that swallows it).
pub fn start_of_day(zone: Tz, date: NaiveDate) -> DateTime<Utc> {
    let midnight = date.and_time(chrono::NaiveTime::MIN);
    // A DST gap at midnight (America/Santiago, Asia/Beirut, …) lasts at most an hour or two:
    // the first valid minute after it starts the day.
    (0..=24 * 60)
        .find_map(|m| {
            zone.from_local_datetime(&(midnight + Duration::minutes(m)))
                .earliest()
        })
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|| midnight.and_utc())
}

/// Which number the next attempt dials, if any.
pub fn next(s: &Situation<'_>) -> Next {
    let count = s.barred.len();
    let order: Vec<usize> = if s.advance {
        (1..=count).map(|k| (s.current + k) % count).collect()
    } else {
        (0..count).map(|k| (s.current + k) % count).collect()
    };
    let allowed: Vec<usize> = order.into_iter().filter(|&i| !s.barred[i]).collect();
    let Some(&first_allowed) = allowed.first() else {
        return Next::Exhausted {
            reason: format!(
                "every number of the contact ({count}) is barred: do-not-call, opted out or without consent"
            ),
        };
    };
    let day = local_date(s.zone, s.due);
    // The attempts that count: those of the due date, or all of them when limits never reset.
    let today: Vec<usize> = s
        .attempts
        .iter()
        .filter(|a| s.policy.reset == LimitReset::Never || local_date(s.zone, a.at) == day)
        .map(|a| a.number)
        .collect();
    let contact_full = s
        .policy
        .max_attempts_per_contact
        .is_some_and(|max| today.len() as u64 >= u64::from(max));
    let number_full = |i: usize| {
        s.policy
            .max_attempts_per_number
            .is_some_and(|max| today.iter().filter(|&&n| n == i).count() as u64 >= u64::from(max))
    };
    if !contact_full && let Some(&index) = allowed.iter().find(|&&i| !number_full(i)) {
        return Next::Dial { index };
    }
    match s.policy.reset {
        LimitReset::Daily => Next::Tomorrow {
            index: first_allowed,
            not_before: start_of_day(s.zone, day.succ_opt().unwrap_or(day)),
        },
        LimitReset::Never => Next::Exhausted {
            reason: format!(
                "all {count} numbers of the contact reached their attempt limits ({})",
                limits(s.policy)
            ),
        },
    }
}

fn limits(policy: &AlternateNumbers) -> String {
    let mut parts = Vec::new();
    if let Some(n) = policy.max_attempts_per_number {
        parts.push(format!("max_attempts_per_number {n}"));
    }
    if let Some(n) = policy.max_attempts_per_contact {
        parts.push(format!("max_attempts_per_contact {n}"));
    }
    parts.join(", ")
}
