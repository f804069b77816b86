//! The retry decision: given an outcome and the call's history, what happens next and when.

use chrono::{DateTime, Days, Duration, NaiveDate, NaiveDateTime, TimeZone as _, Utc};

use super::{RetryPolicy, StatusRule, TimeSlot};
use crate::status::OutcomeStatus;

/// No call is tried more often than this, whatever the policy says: a rule that does not
/// increment the attempt and has no `max_attempts` would otherwise retry for ever.
pub const ATTEMPT_CEILING: u32 = 100;

/// How far ahead a slot is looked for before the policy is declared to have none.
const SEARCH_DAYS: u64 = 8;

/// One earlier outcome of the call (the one being decided included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PastOutcome {
    pub attempt: u32,
    pub status: OutcomeStatus,
    pub at: DateTime<Utc>,
}

/// What happens to a call after an outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Answered: the call is done.
    Complete,
    /// Try again at `at`.
    Retry { at: DateTime<Utc>, reason: String },
    /// Done for good.
    Fail { reason: String },
}

/// One occurrence of a slot on a given day, in UTC.
#[derive(Debug, Clone, Copy)]
struct Occurrence<'a> {
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    slot: &'a TimeSlot,
}

impl RetryPolicy {
    /// Decides what follows `status` for attempt `attempt` of a call allowed `max_attempts`
    /// attempts. `history` holds the call's outcomes so far, this one included (attempts
    /// with several outcomes count once). `jitter_sample` is a value in `-1.0..=1.0`.
    pub fn decide(
        &self,
        status: OutcomeStatus,
        attempt: u32,
        max_attempts: u32,
        history: &[PastOutcome],
        now: DateTime<Utc>,
        jitter_sample: f64,
    ) -> Decision {
        if status == OutcomeStatus::Picked {
            return Decision::Complete;
        }
        let Some(rule) = self
            .status_retry_rules
            .get(&status)
            .filter(|r| r.should_retry)
        else {
            return Decision::Fail {
                reason: format!("{status} is not retried by the policy"),
            };
        };
        let history = dedup(history);
        let of_status = history.iter().filter(|o| o.status == status).count() as u32;
        if let Some(limit) = rule.max_attempts
            && of_status > limit
        {
            return Decision::Fail {
                reason: format!("Max retry attempts for {status} reached ({limit})"),
            };
        }
        let max_attempts = if max_attempts == 0 {
            self.defaults.max_attempts
        } else {
            max_attempts
        };
        let counted = self.counted(&history);
        if rule.increment_attempt && counted >= max_attempts {
            return Decision::Fail {
                reason: format!("Max retry attempts reached ({max_attempts})"),
            };
        }
        if attempt >= ATTEMPT_CEILING {
            return Decision::Fail {
                reason: format!("Attempt ceiling reached ({ATTEMPT_CEILING})"),
            };
        }
        let current = self.occurrence_at(now);
        let base = self.base_delay(rule, of_status, current.as_ref());
        let jitter = rule.jitter.unwrap_or(self.jitter).fraction();
        let factor = 1.0 + jitter * jitter_sample.clamp(-1.0, 1.0);
        let delay_ms = (base.num_milliseconds() as f64 * factor).round().max(0.0) as i64;
        let mut at = now + Duration::milliseconds(delay_ms);
        // The slot the call is in may have used up its attempts: wait for the next one.
        if let Some(occ) = current {
            let in_slot = self.counted(
                &history
                    .iter()
                    .copied()
                    .filter(|o| o.at >= occ.start && o.at < occ.end)
                    .collect::<Vec<_>>(),
            );
            if in_slot >= occ.slot.max_attempts {
                match self.next_slot_start(occ.end) {
                    Some(next) => at = at.max(next),
                    None => return no_slot(),
                }
            }
        }
        if !self.allowed_at(at) {
            match self.next_slot_start(at) {
                Some(next) => at = next,
                None => return no_slot(),
            }
        }
        Decision::Retry {
            at,
            reason: format!("{status} on attempt {attempt}"),
        }
    }

    /// Whether a retry may be placed at `t` (always, when the policy has no slots).
    pub fn allowed_at(&self, t: DateTime<Utc>) -> bool {
        self.global_rules.is_empty() || self.occurrence_at(t).is_some()
    }

    /// The start of the first slot at or after `t` (`t` itself when there are no slots).
    pub fn next_slot_start(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if self.global_rules.is_empty() {
            return Some(t);
        }
        let first = t.with_timezone(&self.timezone.0).date_naive().pred_opt()?;
        (0..=SEARCH_DAYS)
            .filter_map(|n| first.checked_add_days(Days::new(n)))
            .flat_map(|date| self.occurrences(date))
            .map(|occ| occ.start)
            .filter(|start| *start >= t)
            .min()
    }

    /// Attempts that count against `max_attempts`: those whose outcome increments.
    fn counted(&self, history: &[PastOutcome]) -> u32 {
        history
            .iter()
            .filter(|o| {
                self.status_retry_rules
                    .get(&o.status)
                    .is_none_or(|r| r.increment_attempt)
            })
            .count() as u32
    }

    fn base_delay(
        &self,
        rule: &StatusRule,
        of_status: u32,
        slot: Option<&Occurrence<'_>>,
    ) -> Duration {
        if let Some(step) = rule
            .backoff
            .get((of_status.max(1) - 1) as usize)
            .or(rule.backoff.last())
        {
            return Duration::from_std(step.0).unwrap_or(Duration::MAX);
        }
        let minutes = slot.map_or(self.defaults.retry_interval_minutes, |o| {
            o.slot.retry_interval_minutes
        });
        Duration::minutes(i64::from(minutes))
    }

    /// The slot occurrence containing `t`, if any.
    fn occurrence_at(&self, t: DateTime<Utc>) -> Option<Occurrence<'_>> {
        let today = t.with_timezone(&self.timezone.0).date_naive();
        [today.pred_opt(), Some(today)]
            .into_iter()
            .flatten()
            .flat_map(|date| self.occurrences(date))
            .find(|occ| occ.start <= t && t < occ.end)
    }

    /// Every slot occurrence on a local date, in UTC.
    fn occurrences(&self, date: NaiveDate) -> Vec<Occurrence<'_>> {
        let weekday = chrono::Datelike::weekday(&date);
        self.global_rules
            .iter()
            .filter(|rule| rule.days.iter().any(|d| d.0 == weekday))
            .flat_map(|rule| rule.time_slots.iter())
            .filter_map(|slot| {
                let start = self.to_utc(date.and_time(slot.start_time.0))?;
                // The end time names the slot's last minute.
                let end = self.to_utc(date.and_time(slot.end_time.0) + Duration::minutes(1))?;
                Some(Occurrence { start, end, slot })
            })
            .collect()
    }

    /// A local wall-clock time in UTC. A time skipped by a daylight-saving change is taken as
    /// the first valid time after it; a repeated one as its first occurrence.
    fn to_utc(&self, local: NaiveDateTime) -> Option<DateTime<Utc>> {
        let tz = self.timezone.0;
        (0..=2)
            .find_map(|h| {
                tz.from_local_datetime(&(local + Duration::hours(h)))
                    .earliest()
            })
            .map(|t| t.with_timezone(&Utc))
    }
}

fn no_slot() -> Decision {
    Decision::Fail {
        reason: "The retry policy has no time slot in the coming week".into(),
    }
}

/// One entry per attempt: a redelivered outcome must not count twice.
fn dedup(history: &[PastOutcome]) -> Vec<PastOutcome> {
    let mut seen = std::collections::HashSet::new();
    history
        .iter()
        .copied()
        .filter(|o| seen.insert(o.attempt))
        .collect()
}
