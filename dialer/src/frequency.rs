//! Frequency limits across campaigns and dialer replicas: the rolling 24-hour caps of the rule
//! packs and "at most K attempts in D local days" (`compliance.frequency_limits`, and
//! `dialer.max_attempts_per_number_per_day` as K in one day).
//!
//! One record per number in the `attempts` bucket (key `<digits>`) holds the times of its
//! recent attempts; the decisions over it are [`ccm_core::rules::frequency`]'s. Each placement
//! first adds its time to the record by compare-and-set, so two replicas can never both take
//! the last unit: one of them finds the record changed, reads it again and sees the limit
//! reached. An attempt over a limit is put off until the earliest moment it is permitted,
//! through `RETRIES`, like an attempt outside its calling window (and checked again then). A
//! counted attempt whose placement then fails stays counted: the limits err on the side of
//! calling less. Times older than the longest limit are dropped at each write, and the record
//! lives 35 days after its last write (the bucket's `max_age`), more than the longest limit
//! (31 days) allows. Counters of the old per-UTC-day keys (`<digits>.<yyyymmdd>`) are no
//! longer read and age out within two days.

use async_nats::jetstream::kv;
use ccm_core::{
    PhoneNumber,
    rules::frequency::{Count, Limits, counts, next_allowed},
};
use chrono::{DateTime, Days, Duration, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

/// Most compare-and-set rounds before giving up (the message is then handed back).
const MAX_ROUNDS: usize = 100;

/// Why the record could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CapError {
    #[error("cannot read or write the attempt record {0}")]
    Kv(String, #[source] async_nats::Error),
    #[error("the attempt record {0} kept changing")]
    Contended(String),
}

/// The per-number records.
#[derive(Debug, Clone)]
pub struct Frequency {
    pub bucket: kv::Store,
    /// How long attempt times are kept in a record: the longest limit and a day.
    pub keep: Duration,
}

/// A number's recent attempts, as stored.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Record {
    /// Unix seconds of each counted attempt.
    at: Vec<i64>,
}

/// What the limits say about one more attempt now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    /// When the next attempt is permitted, if not now.
    pub wait_until: Option<DateTime<Utc>>,
    /// The counts seen (before this attempt).
    pub counts: Vec<Count>,
}

/// The next UTC midnight after `now` (the day a number's count starts again for a callee in
/// UTC, e.g. a `+1 555` number in a campaign without a zone).
pub fn next_day(now: DateTime<Utc>) -> DateTime<Utc> {
    let tomorrow = now
        .date_naive()
        .checked_add_days(Days::new(1))
        .unwrap_or(now.date_naive());
    tomorrow.and_time(chrono::NaiveTime::MIN).and_utc()
}

fn key(phone: &PhoneNumber) -> String {
    phone.digits().to_owned()
}

pub(crate) fn record_of(entry: Option<&kv::Entry>) -> (Vec<DateTime<Utc>>, Option<u64>) {
    match entry {
        Some(e) if e.operation == kv::Operation::Put => {
            let record: Record = serde_json::from_slice(&e.value).unwrap_or_default();
            let times = record
                .at
                .iter()
                .filter_map(|s| DateTime::from_timestamp(*s, 0))
                .collect();
            (times, Some(e.revision))
        }
        Some(e) => (Vec::new(), Some(e.revision)),
        None => (Vec::new(), None),
    }
}

/// Writes the record of `key` read at `revision` (none: absent) as `times` after `since`
/// plus `now`, by compare-and-set: `Ok(false)` when another writer won the race (read again).
pub(crate) async fn append(
    bucket: &kv::Store,
    key: &str,
    times: &[DateTime<Utc>],
    revision: Option<u64>,
    since: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<bool, async_nats::Error> {
    let mut at: Vec<i64> = times
        .iter()
        .filter(|t| **t > since)
        .map(DateTime::timestamp)
        .collect();
    at.push(now.timestamp());
    let value = serde_json::to_vec(&Record { at }).unwrap_or_default();
    let written = match revision {
        Some(revision) => bucket
            .update(key, value.into(), revision)
            .await
            .map_err(|e| (ccm_core::nats::lost_race(&e), e.into())),
        None => bucket
            .create(key, value.into())
            .await
            .map_err(|e| (ccm_core::nats::lost_race(&e), e.into())),
    };
    match written {
        Ok(_) => Ok(true),
        Err((true, _)) => Ok(false),
        Err((false, e)) => Err(e),
    }
}

fn verdict(times: &[DateTime<Utc>], limits: &Limits, zones: &[Tz], now: DateTime<Utc>) -> Verdict {
    Verdict {
        wait_until: next_allowed(times, limits, zones, now),
        counts: counts(times, limits, zones, now),
    }
}

impl Frequency {
    /// Looks without counting.
    pub async fn peek(
        &self,
        phone: &PhoneNumber,
        limits: &Limits,
        zones: &[Tz],
        now: DateTime<Utc>,
    ) -> Result<Verdict, CapError> {
        if limits.is_empty() {
            return Ok(Verdict::default());
        }
        let key = key(phone);
        let entry = self
            .bucket
            .entry(key.as_str())
            .await
            .map_err(|e| CapError::Kv(key.clone(), e.into()))?;
        Ok(verdict(&record_of(entry.as_ref()).0, limits, zones, now))
    }

    /// Counts one attempt to `phone` at `now` when the limits permit it (`wait_until` is then
    /// `None`: place it), else says until when it must wait.
    pub async fn take(
        &self,
        phone: &PhoneNumber,
        limits: &Limits,
        zones: &[Tz],
        now: DateTime<Utc>,
    ) -> Result<Verdict, CapError> {
        if limits.is_empty() {
            return Ok(Verdict::default());
        }
        let key = key(phone);
        let kv_error = |e: async_nats::Error| CapError::Kv(key.clone(), e);
        for _ in 0..MAX_ROUNDS {
            let entry = self
                .bucket
                .entry(key.as_str())
                .await
                .map_err(|e| kv_error(e.into()))?;
            let (times, revision) = record_of(entry.as_ref());
            let seen = verdict(&times, limits, zones, now);
            if seen.wait_until.is_some() {
                return Ok(seen);
            }
            let since = now - self.keep.max(limits.horizon());
            match append(&self.bucket, &key, &times, revision, since, now).await {
                Ok(true) => return Ok(seen),
                Ok(false) => continue,
                Err(e) => return Err(kv_error(e)),
            }
        }
        Err(CapError::Contended(key))
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn the_next_day_starts_at_utc_midnight() {
        let late = Utc
            .with_ymd_and_hms(2026, 12, 31, 23, 59, 59)
            .single()
            .expect("t");
        let next = Utc
            .with_ymd_and_hms(2027, 1, 1, 0, 0, 0)
            .single()
            .expect("t");
        assert_eq!(next_day(late), next);
    }
}
