//! Frequency limits as pure decisions over a number's recent attempt times: the rolling
//! 24-hour caps of the rule packs and the "K attempts in D local days" limits.
//!
//! The times come from the dialer's per-number record (written by compare-and-set, so every
//! replica sees every counted attempt); this module only says whether one more attempt may go
//! now and, if not, the earliest moment it may. Local days are the callee's: a day starts at
//! local midnight in each of their zones (a callee who may be in several zones is counted in
//! each, and the latest permitted moment wins), so a daylight-saving change makes a day 23 or
//! 25 hours long and never moves a count across dates.

use chrono::{DateTime, Days, Duration, NaiveDate, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use super::FrequencyLimit;

/// The limits on one call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    /// Attempts in any rolling 24 hours (the rule packs' `max_per_24h`).
    pub cap_24h: Option<u32>,
    /// Attempts in the last D local days.
    pub per_days: Vec<FrequencyLimit>,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        self.cap_24h.is_none() && self.per_days.is_empty()
    }

    /// How far back attempts matter: D local days (plus a day for the widest zone offsets)
    /// or 24 hours.
    pub fn horizon(&self) -> Duration {
        let days = self.per_days.iter().map(|l| l.days).max().unwrap_or(0);
        Duration::days(i64::from(days) + 1).max(Duration::hours(24))
    }
}

/// The count one limit saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Count {
    /// `24h`, or `<D>d`.
    pub over: String,
    pub limit: u32,
    pub seen: u32,
}

/// Attempts counted at `now` against each limit (for the audit trail).
pub fn counts(
    attempts: &[DateTime<Utc>],
    limits: &Limits,
    zones: &[Tz],
    now: DateTime<Utc>,
) -> Vec<Count> {
    let mut out = Vec::new();
    if let Some(cap) = limits.cap_24h {
        out.push(Count {
            over: "24h".into(),
            limit: cap,
            seen: rolling(attempts, now).len() as u32,
        });
    }
    for limit in &limits.per_days {
        let seen = zones
            .iter()
            .map(|zone| in_local_days(attempts, limit.days, *zone, now).len())
            .max()
            .unwrap_or(0);
        out.push(Count {
            over: format!("{}d", limit.days),
            limit: limit.max_attempts,
            seen: seen as u32,
        });
    }
    out
}

/// `None` when one more attempt may be placed at `now`; else the earliest moment it may.
pub fn next_allowed(
    attempts: &[DateTime<Utc>],
    limits: &Limits,
    zones: &[Tz],
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let mut latest: Option<DateTime<Utc>> = None;
    let mut wait = |at: DateTime<Utc>| latest = Some(latest.map_or(at, |l| l.max(at)));
    if let Some(cap) = limits.cap_24h {
        let recent = rolling(attempts, now);
        // The oldest attempts must leave the 24 hours until fewer than `cap` are left.
        if cap > 0 && recent.len() >= cap as usize {
            let leaving = recent[recent.len() - cap as usize];
            wait(leaving + Duration::hours(24));
        }
    }
    for limit in &limits.per_days {
        for zone in zones {
            let dates = in_local_days(attempts, limit.days, *zone, now);
            let k = limit.max_attempts as usize;
            if dates.len() >= k {
                // Days [T-D+1, T] may hold at most k-1 of them: T is the day after the
                // (n-k+1)-th oldest's date leaves the window.
                let leaving = dates[dates.len() - k];
                let Some(opens) = leaving
                    .checked_add_days(Days::new(u64::from(limit.days)))
                    .and_then(|date| crate::window::resolve(*zone, date, 0))
                else {
                    continue;
                };
                wait(opens);
            }
        }
    }
    latest.filter(|at| *at > now)
}

/// Attempts in the 24 hours before `now`, oldest first.
fn rolling(attempts: &[DateTime<Utc>], now: DateTime<Utc>) -> Vec<DateTime<Utc>> {
    let since = now - Duration::hours(24);
    let mut recent: Vec<_> = attempts
        .iter()
        .copied()
        .filter(|at| *at > since && *at <= now)
        .collect();
    recent.sort_unstable();
    recent
}

/// The local dates (in `zone`) of the attempts within the last `days` local days, today
/// included, oldest first.
fn in_local_days(
    attempts: &[DateTime<Utc>],
    days: u32,
    zone: Tz,
    now: DateTime<Utc>,
) -> Vec<NaiveDate> {
    let today = now.with_timezone(&zone).date_naive();
    let first = today
        .checked_sub_days(Days::new(u64::from(days.saturating_sub(1))))
        .unwrap_or(today);
    let mut dates: Vec<_> = attempts
        .iter()
        .filter(|at| **at <= now)
        .map(|at| at.with_timezone(&zone).date_naive())
        .filter(|date| *date >= first && *date <= today)
        .collect();
    dates.sort_unstable();
    dates
}
