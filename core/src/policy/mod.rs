//! The retry policy: when a call is tried again, read from YAML.
//!
//! The format is the old system's `retry_config.yaml`, accepted unchanged, with every part of
//! it honoured (the old system read only some of it):
//!
//! - `global_rules`: per weekday, the time slots in which retries may be placed, each with its
//!   own `max_attempts` (attempts within one occurrence of the slot) and
//!   `retry_interval_minutes`;
//! - `defaults`: `max_attempts` and `retry_interval_minutes` where no slot applies, and the
//!   campaign defaults `concurrent_call_limit` and `duplicate_call_window_minutes`;
//! - `status_retry_rules`: per outcome, `should_retry`, `increment_attempt` (whether the retry
//!   uses up one of the call's attempts) and `max_attempts` (how many times that outcome may be
//!   retried over the call's life: `FAILED: {max_attempts: 1}` retries a failure once);
//! - `timezone` of the slots, and `scheduler`, whose settings the retrier applies to its
//!   `RETRIES` consumer (see [`SchedulerSettings`]).
//!
//! Extensions: per-status `backoff` lists (`[10m, 1h, 4h]`, the n-th retry of that status
//! waits the n-th delay, the last repeating), a `jitter` fraction (top level or per status),
//! and per-campaign overrides ([`PolicyOverride`], stored in the campaign document).
//!
//! The decision itself ([`RetryPolicy::decide`]) is pure: it takes the clock and the random
//! jitter sample as arguments, so it is tested with fixed times.

mod schedule;
mod values;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

pub use schedule::{Decision, PastOutcome};
pub use values::{BadDuration, ClockTime, Day, HumanDuration, Jitter, TimeZone};

use crate::status::OutcomeStatus;

/// A whole retry policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Per-weekday slots. Empty means retries may be placed at any time.
    #[serde(default)]
    pub global_rules: Vec<DayRule>,
    #[serde(default)]
    pub defaults: Defaults,
    /// Outcomes without a rule are not retried.
    #[serde(default)]
    pub status_retry_rules: HashMap<OutcomeStatus, StatusRule>,
    #[serde(default)]
    pub timezone: TimeZone,
    #[serde(default)]
    pub scheduler: SchedulerSettings,
    /// Extension: jitter applied to every delay unless a status rule sets its own.
    #[serde(default)]
    pub jitter: Jitter,
}

/// The slots of some weekdays.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, try_from = "RawDayRule")]
pub struct DayRule {
    pub name: String,
    pub days: Vec<Day>,
    pub time_slots: Vec<TimeSlot>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDayRule {
    #[serde(default)]
    name: String,
    days: Vec<Day>,
    time_slots: Vec<TimeSlot>,
}

impl TryFrom<RawDayRule> for DayRule {
    type Error = String;

    fn try_from(raw: RawDayRule) -> Result<Self, Self::Error> {
        if raw.days.is_empty() || raw.time_slots.is_empty() {
            return Err(format!(
                "rule {:?} needs at least one day and one time slot",
                raw.name
            ));
        }
        Ok(Self {
            name: raw.name,
            days: raw.days,
            time_slots: raw.time_slots,
        })
    }
}

/// A window of the day in which retries may be placed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, try_from = "RawTimeSlot")]
pub struct TimeSlot {
    pub start_time: ClockTime,
    /// The last minute of the slot: `23:59` covers the day to midnight.
    pub end_time: ClockTime,
    /// Attempts placed within one occurrence of this slot at most.
    pub max_attempts: u32,
    pub retry_interval_minutes: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTimeSlot {
    start_time: ClockTime,
    end_time: ClockTime,
    max_attempts: u32,
    retry_interval_minutes: u32,
}

impl TryFrom<RawTimeSlot> for TimeSlot {
    type Error = String;

    fn try_from(raw: RawTimeSlot) -> Result<Self, Self::Error> {
        if raw.start_time >= raw.end_time {
            return Err(format!(
                "time slot starts at {} but ends at {}: the start must come first",
                raw.start_time.0.format("%H:%M"),
                raw.end_time.0.format("%H:%M")
            ));
        }
        if raw.max_attempts == 0 || raw.retry_interval_minutes == 0 {
            return Err(
                "a time slot's max_attempts and retry_interval_minutes must be at least 1"
                    .to_owned(),
            );
        }
        Ok(Self {
            start_time: raw.start_time,
            end_time: raw.end_time,
            max_attempts: raw.max_attempts,
            retry_interval_minutes: raw.retry_interval_minutes,
        })
    }
}

/// The old file's `defaults`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Defaults {
    /// Attempts of a call (including the first) when its campaign sets none.
    pub max_attempts: u32,
    /// Delay before a retry when no slot and no backoff applies.
    pub retry_interval_minutes: u32,
    /// Concurrency cap of a campaign created without one.
    pub concurrent_call_limit: u32,
    /// How long a number stays blocked for a duplicate call.
    pub duplicate_call_window_minutes: u32,
}

impl Default for Defaults {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            retry_interval_minutes: 60,
            concurrent_call_limit: 100,
            duplicate_call_window_minutes: 5,
        }
    }
}

/// What to do after one kind of outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusRule {
    pub should_retry: bool,
    /// Whether the retry uses up one of the call's `max_attempts` (default true).
    #[serde(default = "yes")]
    pub increment_attempt: bool,
    /// How many times this outcome may be retried over the call's life.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Extension: the delay before the 1st, 2nd, … retry of this outcome; the last repeats.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backoff: Vec<HumanDuration>,
    /// Extension: jitter for this outcome's delays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<Jitter>,
}

fn yes() -> bool {
    true
}

/// The old file's `scheduler` section. The old system polled the database; here the
/// retrier applies these to its `RETRIES` consumer instead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchedulerSettings {
    /// The longest single delayed redelivery: a retry due later is re-delayed in steps of
    /// at most this, so a changed policy or a long outage never strands it.
    pub check_interval_minutes: u32,
    /// Retry entries fetched per pull request.
    pub batch_size: usize,
    /// Due retries re-published at the same time by one retrier replica.
    pub max_concurrent_retries: usize,
}

impl Default for SchedulerSettings {
    fn default() -> Self {
        Self {
            check_interval_minutes: 10,
            batch_size: 100,
            max_concurrent_retries: 50,
        }
    }
}

/// A campaign's changes to the global policy; what it leaves out is inherited.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyOverride {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<TimeZone>,
    /// Replaces the global slots as a whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global_rules: Option<Vec<DayRule>>,
    /// Replaces the rules of the outcomes it names.
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    pub status_retry_rules: HashMap<OutcomeStatus, StatusRule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<Jitter>,
}

/// Why a policy file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read retry policy {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid retry policy {path}, line {line}, column {column}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
}

impl RetryPolicy {
    /// Reads and validates a policy file.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses policy text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Self, PolicyError> {
        serde_yaml_ng::from_str(text).map_err(|e| {
            let (mut line, mut column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
            // The library prefixes its message with the location; it is in our fields.
            let message = e.to_string();
            let message = message
                .split_once(" at line ")
                .map_or(message.as_str(), |(head, _)| head)
                .to_owned();
            // Errors about a top-level key are marked at the document's start; point at the
            // key itself instead.
            if line <= 1
                && let Some(found) = top_level_key_line(text, &message)
            {
                (line, column) = (found, 1);
            }
            PolicyError::Invalid {
                path: origin.to_owned(),
                line,
                column,
                message,
            }
        })
    }

    /// The policy of a campaign: this one with the campaign's override applied.
    pub fn with_override(&self, change: Option<&PolicyOverride>) -> RetryPolicy {
        let mut policy = self.clone();
        let Some(change) = change else { return policy };
        if let Some(tz) = change.timezone {
            policy.timezone = tz;
        }
        if let Some(rules) = &change.global_rules {
            policy.global_rules = rules.clone();
        }
        for (status, rule) in &change.status_retry_rules {
            policy.status_retry_rules.insert(*status, rule.clone());
        }
        if let Some(jitter) = change.jitter {
            policy.jitter = jitter;
        }
        policy
    }
}

/// The line of the unknown top-level key an error message names.
fn top_level_key_line(text: &str, message: &str) -> Option<usize> {
    let (_, rest) = message.split_once("unknown field `")?;
    let key = rest.split('`').next()?;
    text.lines()
        .position(|l| {
            l.strip_prefix(key)
                .is_some_and(|r| r.trim_start().starts_with(':'))
        })
        .map(|i| i + 1)
}

#[cfg(test)]
mod tests;
