//! Pacing: at most so many new calls per second per campaign, and across all campaigns,
//! whatever the number of dialer replicas.
//!
//! The rate is kept as a shared schedule in the `pacing` KV bucket, one key per scope
//! (`global`, `<campaign>`), holding the next free dial slot (the "theoretical arrival time"
//! of the generic cell rate algorithm). A dialer reserves a slot by compare-and-set on the
//! key's revision: it reads the slot, writes `max(slot, now) + 1/rate` expecting the revision
//! it read, and on success owns `max(slot, now)`; on a conflict another replica took that slot
//! and it reads again. It then waits until its slot (keeping the dial message alive) before
//! placing the call.
//!
//! Why a KV revision rather than a shared rate subject or a token count per second: the CAS
//! gives one totally ordered schedule that every replica sees at once, with no leader, no
//! extra service and nothing to reset; slots are evenly spaced, so calls never bunch at
//! the top of a second. The cost is two round trips per call per scope and retries under
//! contention, which bounds a single scope to a few thousand calls per second: far above what
//! a carrier trunk takes. A reserved slot whose call is then not placed (shutdown) is simply
//! lost: pacing errs on the slow side. Slots older than the bucket's `max_age` (an hour) are
//! as good as none.

use std::time::Duration;

use async_nats::jetstream::{AckKind, Message, kv};
use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

/// Most compare-and-set rounds before giving up (the message is then handed back).
const MAX_ROUNDS: usize = 100;

/// Why no slot could be reserved.
#[derive(Debug, thiserror::Error)]
pub enum PacingError {
    #[error("cannot read or write the pacing slot of {0}")]
    Kv(String, #[source] async_nats::Error),
    #[error("the pacing slot of {0} kept changing")]
    Contended(String),
}

/// The shared schedules.
#[derive(Debug, Clone)]
pub struct Pacing {
    pub bucket: kv::Store,
    /// `dialer.max_calls_per_second`; 0: no global limit.
    pub global_per_second: u32,
    /// The carrier account's rate ([`crate::account`]), kept in the same bucket.
    pub account: crate::account::Account,
}

impl Pacing {
    /// Reserves the campaign's, the global and the carrier account's slot (those that are
    /// limited) and returns the instant from which the call may be placed.
    pub async fn reserve(
        &self,
        campaign: ccm_core::CampaignId,
        campaign_per_second: Option<u32>,
        carrier_weight: u32,
    ) -> Result<Option<DateTime<Utc>>, PacingError> {
        let mut at = None;
        if let Some(rate) = campaign_per_second.filter(|r| *r > 0) {
            at = Some(reserve(&self.bucket, &campaign.to_string(), rate).await?);
        }
        if self.global_per_second > 0 {
            let global = reserve(&self.bucket, "global", self.global_per_second).await?;
            at = Some(at.map_or(global, |a: DateTime<Utc>| a.max(global)));
        }
        if let Some(account) = self.account.reserve(campaign, carrier_weight).await? {
            at = Some(at.map_or(account, |a: DateTime<Utc>| a.max(account)));
        }
        Ok(at)
    }
}

/// The slot after `slot` at `per_second`.
pub fn next_slot(
    slot: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    per_second: u32,
) -> (DateTime<Utc>, DateTime<Utc>) {
    let start = slot.map_or(now, |s| s.max(now));
    let interval = chrono::Duration::microseconds(1_000_000 / i64::from(per_second.max(1)));
    (start, start + interval)
}

async fn reserve(
    bucket: &kv::Store,
    scope: &str,
    per_second: u32,
) -> Result<DateTime<Utc>, PacingError> {
    let kv_error = |e: async_nats::Error| PacingError::Kv(scope.to_owned(), e);
    for _ in 0..MAX_ROUNDS {
        let entry = bucket.entry(scope).await.map_err(|e| kv_error(e.into()))?;
        let (slot, revision) = match &entry {
            Some(e) if e.operation == kv::Operation::Put => (
                std::str::from_utf8(&e.value)
                    .ok()
                    .and_then(|v| v.parse::<i64>().ok())
                    .and_then(DateTime::<Utc>::from_timestamp_micros),
                Some(e.revision),
            ),
            Some(e) => (None, Some(e.revision)),
            None => (None, None),
        };
        let (start, next) = next_slot(slot, Utc::now(), per_second);
        let value = next.timestamp_micros().to_string();
        let written = match revision {
            Some(revision) => bucket
                .update(scope, value.into(), revision)
                .await
                .map_err(|e| (ccm_core::nats::lost_race(&e), e.into())),
            None => bucket
                .create(scope, value.into())
                .await
                .map_err(|e| (ccm_core::nats::lost_race(&e), e.into())),
        };
        match written {
            Ok(_) => return Ok(start),
            Err((true, _)) => continue,
            Err((false, e)) => return Err(kv_error(e)),
        }
    }
    Err(PacingError::Contended(scope.to_owned()))
}

/// Waits until `at`, keeping the dial message alive; false if the dialer shuts down first.
pub async fn wait_until(
    at: DateTime<Utc>,
    message: &Message,
    progress_every: Duration,
    shutdown: &CancellationToken,
) -> bool {
    loop {
        let Ok(remaining) = (at - Utc::now()).to_std() else {
            return true;
        };
        if remaining.is_zero() {
            return true;
        }
        tokio::select! {
            _ = tokio::time::sleep(remaining.min(progress_every)) => {}
            _ = shutdown.cancelled() => return false,
        }
        let _ = message.ack_with(AckKind::Progress).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_spaced_by_the_rate_and_never_in_the_past() {
        let now = Utc::now();
        let (start, next) = next_slot(None, now, 4);
        assert_eq!(start, now);
        assert_eq!(next - start, chrono::Duration::milliseconds(250));
        let (start, _) = next_slot(Some(now - chrono::Duration::seconds(5)), now, 4);
        assert_eq!(start, now, "an old slot is as good as none");
        let later = now + chrono::Duration::seconds(2);
        assert_eq!(
            next_slot(Some(later), now, 1).0,
            later,
            "queued behind others"
        );
    }
}
