//! The carrier account's rate, shared by all campaigns and dialer replicas.
//!
//! A carrier limits each account (Twilio: calls per second per account, 429 / error 20429
//! over it; Vonage 3 CPS, Bandwidth 5 CPS), whatever ccm's campaigns. The dialer keeps the
//! account's rate as one record in the `pacing` bucket (key `account-<name>`), changed only
//! by compare-and-set like the campaign and global schedules ([`crate::pacing`]): each call
//! takes the account's next slot at the current rate, and a 429 cuts the rate ([`aimd`], the
//! decision); the throttled call itself waits for the carrier's `Retry-After`. The throttled attempt is
//! not a failure: its `Dialing` is withdrawn (the 429 proves nothing was created) and it is
//! put off to when the account may place again, through `RETRIES` like a calling-window
//! deferral, so it keeps its attempt number and uses none of its deliveries.

pub mod aimd;

use std::time::Duration;

use async_nats::jetstream::kv;
use ccm_core::metrics::{counter, gauge};
use chrono::{DateTime, Utc};

use crate::pacing::PacingError;
use aimd::{AccountRate, Aimd, Micros};

/// Most compare-and-set rounds before giving up.
const MAX_ROUNDS: usize = 100;

/// One carrier account's shared rate.
#[derive(Debug, Clone)]
pub struct Account {
    pub bucket: kv::Store,
    /// The account's name in keys and metrics.
    pub name: String,
    /// `None`: no rate kept (`dialer.carrier_account.max_calls_per_second` is 0).
    pub aimd: Option<Aimd>,
    /// The wait after a 429 without `Retry-After`.
    pub retry: Duration,
}

/// The account's name: the Twilio account sid, else the adapter's kind.
pub fn name(config: &ccm_core::config::CarrierConfig) -> String {
    use ccm_core::config::CarrierConfig;
    let raw = match config {
        CarrierConfig::Twilio(t) if !t.account_sid.is_empty() => t.account_sid.as_str(),
        CarrierConfig::Twilio(_) => "twilio",
        CarrierConfig::Http(_) => "http",
        CarrierConfig::Sim(_) => "sim",
    };
    raw.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl Account {
    pub fn new(
        bucket: kv::Store,
        carrier: &ccm_core::config::CarrierConfig,
        config: &ccm_core::config::CarrierAccountConfig,
    ) -> Self {
        Self {
            bucket,
            name: name(carrier),
            aimd: Aimd::of(config),
            retry: Duration::from_millis(config.retry_ms),
        }
    }

    fn key(&self) -> String {
        format!("account-{}", self.name)
    }

    /// Takes the next slot of `campaign` (of `weight`) at the account's rate: when the call
    /// may go (`None`: no account rate).
    pub async fn reserve(
        &self,
        campaign: ccm_core::CampaignId,
        weight: u32,
    ) -> Result<Option<DateTime<Utc>>, PacingError> {
        let Some(aimd) = self.aimd else {
            return Ok(None);
        };
        let campaign = campaign.to_string();
        let start = self
            .change(|stored, now| aimd.reserve(stored, now, &campaign, weight))
            .await?;
        Ok(DateTime::from_timestamp_micros(start))
    }

    /// The carrier answered 429 (asking to wait `retry_after`): cuts the rate and returns
    /// when the call may be tried again.
    pub async fn throttled(
        &self,
        retry_after: Option<Duration>,
    ) -> Result<DateTime<Utc>, PacingError> {
        counter!("ccm_dialer_carrier_throttled_total", "account" => self.name.clone()).increment(1);
        let wait = retry_after.unwrap_or(self.retry);
        let Some(aimd) = self.aimd else {
            return Ok(Utc::now() + wait);
        };
        let until = self
            .change(|stored, now| {
                let s = aimd.throttled(stored, now, wait);
                (
                    now.saturating_add(i64::try_from(wait.as_micros()).unwrap_or(i64::MAX)),
                    s,
                )
            })
            .await?;
        Ok(DateTime::from_timestamp_micros(until).unwrap_or_else(|| Utc::now() + wait))
    }

    /// Reads the record, applies `f` at the current time and writes the result back if
    /// nobody changed it meanwhile (else again).
    async fn change<T>(
        &self,
        f: impl Fn(Option<AccountRate>, Micros) -> (T, AccountRate),
    ) -> Result<T, PacingError> {
        let key = self.key();
        let kv_error = |e: async_nats::Error| PacingError::Kv(key.clone(), e);
        for _ in 0..MAX_ROUNDS {
            let entry = self
                .bucket
                .entry(&key)
                .await
                .map_err(|e| kv_error(e.into()))?;
            let (stored, revision) = match &entry {
                Some(e) if e.operation == kv::Operation::Put => {
                    (serde_json::from_slice(&e.value).ok(), Some(e.revision))
                }
                Some(e) => (None, Some(e.revision)),
                None => (None, None),
            };
            let (out, state) = f(stored, Utc::now().timestamp_micros());
            let value = serde_json::to_vec(&state).unwrap_or_default();
            let written = match revision {
                Some(revision) => self
                    .bucket
                    .update(&key, value.into(), revision)
                    .await
                    .map_err(|e| (ccm_core::nats::lost_race(&e), e.into())),
                None => self
                    .bucket
                    .create(&key, value.into())
                    .await
                    .map_err(|e| (ccm_core::nats::lost_race(&e), e.into())),
            };
            match written {
                Ok(_) => {
                    gauge!("ccm_dialer_carrier_account_rate", "account" => self.name.clone())
                        .set(state.rate);
                    return Ok(out);
                }
                Err((true, _)) => continue,
                Err((false, e)) => return Err(kv_error(e)),
            }
        }
        Err(PacingError::Contended(key))
    }
}
