//! The frequency cap: at most `dialer.max_attempts_per_number_per_day` attempts placed to one
//! number per UTC day, across all campaigns and dialer replicas.
//!
//! Each placement first takes one unit of the number's counter for the day in the `attempts`
//! bucket (key `<digits>.<yyyymmdd>`), by compare-and-set, so two replicas can never both take
//! the last one. An attempt that finds the day's count used up is put off to the next UTC
//! midnight through `RETRIES`, like an attempt outside its calling window (which is checked
//! again then). A counted attempt whose placement then fails stays counted: the cap errs on
//! the side of calling less. Counters live two days (the bucket's `max_age`).

use async_nats::jetstream::kv;
use ccm_core::{PhoneNumber, attempt_audit::DailyCapSeen};
use chrono::{DateTime, Days, Utc};

/// Until when the number is capped (`None`: not capped), and the count seen (`None`: no cap).
pub type Counted = (Option<DateTime<Utc>>, Option<DailyCapSeen>);

/// Most compare-and-set rounds before giving up (the message is then handed back).
const MAX_ROUNDS: usize = 100;

/// Why the counter could not be read or taken.
#[derive(Debug, thiserror::Error)]
pub enum CapError {
    #[error("cannot read or write the attempt counter {0}")]
    Kv(String, #[source] async_nats::Error),
    #[error("the attempt counter {0} kept changing")]
    Contended(String),
}

/// The daily cap.
#[derive(Debug, Clone)]
pub struct FrequencyCap {
    pub bucket: kv::Store,
    /// 0: no cap.
    pub per_day: u32,
}

/// The next UTC midnight after `now`.
pub fn next_day(now: DateTime<Utc>) -> DateTime<Utc> {
    let tomorrow = now
        .date_naive()
        .checked_add_days(Days::new(1))
        .unwrap_or(now.date_naive());
    tomorrow.and_time(chrono::NaiveTime::MIN).and_utc()
}

/// When the count starts again if `count` attempts today use up the cap; `None` while some
/// are left.
pub fn used_up(count: u32, per_day: u32, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    (per_day > 0 && count >= per_day).then(|| next_day(now))
}

fn key(phone: &PhoneNumber, now: DateTime<Utc>) -> String {
    format!("{}.{}", phone.digits(), now.format("%Y%m%d"))
}

fn count_of(entry: Option<&kv::Entry>) -> (u32, Option<u64>) {
    match entry {
        Some(e) if e.operation == kv::Operation::Put => (
            std::str::from_utf8(&e.value)
                .ok()
                .and_then(|v| v.parse::<u32>().ok())
                .unwrap_or(0),
            Some(e.revision),
        ),
        Some(e) => (0, Some(e.revision)),
        None => (0, None),
    }
}

impl FrequencyCap {
    /// Looks without counting: the instant the next day's count starts when today's is used
    /// up, else `None`; and what was seen, for the audit record (`None` without a cap).
    pub async fn peek(&self, phone: &PhoneNumber, now: DateTime<Utc>) -> Result<Counted, CapError> {
        if self.per_day == 0 {
            return Ok((None, None));
        }
        let key = key(phone, now);
        let entry = self
            .bucket
            .entry(key.as_str())
            .await
            .map_err(|e| CapError::Kv(key.clone(), e.into()))?;
        let count = count_of(entry.as_ref()).0;
        Ok((
            used_up(count, self.per_day, now),
            Some(self.seen(count, now)),
        ))
    }

    fn seen(&self, count: u32, now: DateTime<Utc>) -> DailyCapSeen {
        DailyCapSeen {
            day: now.format("%Y%m%d").to_string(),
            count,
            per_day: self.per_day,
        }
    }

    /// Counts one attempt to `phone` at `now`: `None` when counted (place it), or the instant
    /// the next day's count starts when today's is used up; with the count found before it.
    pub async fn take(&self, phone: &PhoneNumber, now: DateTime<Utc>) -> Result<Counted, CapError> {
        if self.per_day == 0 {
            return Ok((None, None));
        }
        let key = key(phone, now);
        let kv_error = |e: async_nats::Error| CapError::Kv(key.clone(), e);
        for _ in 0..MAX_ROUNDS {
            let entry = self
                .bucket
                .entry(key.as_str())
                .await
                .map_err(|e| kv_error(e.into()))?;
            let (count, revision) = count_of(entry.as_ref());
            if let Some(next) = used_up(count, self.per_day, now) {
                return Ok((Some(next), Some(self.seen(count, now))));
            }
            let value = (count + 1).to_string();
            let written = match revision {
                Some(revision) => self
                    .bucket
                    .update(key.as_str(), value.into(), revision)
                    .await
                    .map_err(|e| (e.kind() == kv::UpdateErrorKind::WrongLastRevision, e.into())),
                None => self
                    .bucket
                    .create(key.as_str(), value.into())
                    .await
                    .map_err(|e| (e.kind() == kv::CreateErrorKind::AlreadyExists, e.into())),
            };
            match written {
                Ok(_) => return Ok((None, Some(self.seen(count, now)))),
                Err((true, _)) => continue,
                Err((false, e)) => return Err(kv_error(e)),
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
        assert_eq!(
            next_day(next),
            Utc.with_ymd_and_hms(2027, 1, 2, 0, 0, 0)
                .single()
                .expect("t")
        );
    }
}
