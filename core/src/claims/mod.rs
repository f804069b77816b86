//! Number claims: one live call per number, and no new call within the duplicate window after
//! the last one ended. The one owner of the `active_calls` bucket: ingest, the retrier, the
//! dialer and the DLQ redrive claim, bind and release only through [`Claims`].
//!
//! A claim lives exactly as long as its call:
//! - [`Claims::claim`] writes a *pending* claim (the call id, with a per-key TTL of
//!   `claims.pending_ttl_secs`) with an expected last revision, so of concurrent requests for
//!   one number exactly one wins. A writer that dies before its call is published leaves the
//!   number blocked for that TTL at most.
//! - [`Claims::bind`], once the call's publish is definite, rewrites it without a TTL: no
//!   bucket-wide age can take it from a call that waits in a queue for weeks.
//! - [`Claims::release`] (the call ended) replaces it with a delete marker whose TTL is what
//!   is left of the duplicate window: the window check reads the marker, which then goes by
//!   itself. Retried with backoff until definite.
//! - [`Claims::give_back`] (the publish was refused) purges it: the call never happened.
//! - [`reap`] frees what a crash left: bound claims of ended calls, and binds pending claims
//!   whose call was published by a writer that died before binding.

mod plan;
pub mod reap;
mod wire;

use std::time::Duration;

use async_nats::jetstream::{self, stream::Stream};
use chrono::{DateTime, Utc};

pub use plan::{Latest, ReapStep};
pub use wire::{Phase, Record, Slot};

use crate::{
    CallId, CampaignId, PhoneNumber,
    config::{Config, DuplicateScope},
    topology::names,
};
use plan::{ClaimStep, ReleaseStep, claim_step, release_step};
use wire::{Write, WriteError};

/// The `active_calls` key that claims `phone` under `scope`: its digits, prefixed by the
/// campaign when the scope is per campaign.
pub fn key(scope: DuplicateScope, campaign: CampaignId, phone: &PhoneNumber) -> String {
    match scope {
        DuplicateScope::Global => phone.digits().to_owned(),
        DuplicateScope::Campaign => format!("{campaign}.{}", phone.digits()),
    }
}

/// Every key a call of `campaign` to `phone` may hold, whatever the scope was when it
/// claimed: a release checks both (and frees only a claim holding its own call id), so a
/// change of scope between claim and release never strands a number.
pub fn all_keys(campaign: CampaignId, phone: &PhoneNumber) -> [String; 2] {
    [
        key(DuplicateScope::Global, campaign, phone),
        key(DuplicateScope::Campaign, campaign, phone),
    ]
}

/// The durations claims live by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimSettings {
    /// A pending claim's (and a pending Idempotency-Key's) TTL.
    pub pending_ttl: Duration,
    /// The duplicate window (0: off).
    pub window: Duration,
}

impl ClaimSettings {
    pub fn of(config: &Config) -> Self {
        Self {
            pending_ttl: Duration::from_secs(config.claims.pending_ttl_secs.max(1)),
            window: Duration::from_secs(
                u64::from(config.ingest.duplicate_call_window_minutes) * 60,
            ),
        }
    }

    fn window_secs(&self) -> i64 {
        i64::try_from(self.window.as_secs()).unwrap_or(i64::MAX)
    }
}

/// Why a number could not be claimed.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// Another call to the number is live.
    #[error("a call to this number is already in progress")]
    InProgress,
    /// The number's last call ended less than the duplicate window ago.
    #[error("a call to this number ended less than the duplicate window ago")]
    WithinWindow,
    /// NATS did not answer.
    #[error("cannot claim the number")]
    Unavailable(#[source] async_nats::Error),
}

/// A claim held by a call: the key and the revision its holder wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub key: String,
    pub revision: u64,
    pub call: CallId,
    pub campaign: CampaignId,
}

/// The claims bucket, with the streams the reaper reads.
#[derive(Debug, Clone)]
pub struct Claims {
    js: jetstream::Context,
    bucket: Stream,
    settings: ClaimSettings,
}

impl Claims {
    /// Opens the claims of a provisioned topology.
    pub async fn open(
        js: jetstream::Context,
        settings: ClaimSettings,
    ) -> Result<Self, crate::nats::NatsError> {
        let stream = format!("KV_{}", names::KV_ACTIVE_CALLS);
        let bucket = js
            .get_stream(&stream)
            .await
            .map_err(|e| crate::nats::NatsError::Bucket {
                bucket: stream,
                source: e.into(),
            })?;
        Ok(Self {
            js,
            bucket,
            settings,
        })
    }

    pub fn settings(&self) -> ClaimSettings {
        self.settings
    }

    /// The same claims under other settings.
    pub fn with_settings(mut self, settings: ClaimSettings) -> Self {
        self.settings = settings;
        self
    }

    /// Reads a claim key as it is now.
    pub async fn read(&self, key: &str) -> Result<Record, async_nats::Error> {
        wire::read(&self.bucket, key).await
    }

    /// Claims `phone` for `call` under `scope`, pending until [`Claims::bind`]. A claim this
    /// call already holds is renewed (a request resumed under the same Idempotency-Key, or a
    /// redriven dead letter). The common case, a number never called (or whose marker has
    /// gone), costs a single publish.
    pub async fn claim(
        &self,
        scope: DuplicateScope,
        campaign: CampaignId,
        phone: &PhoneNumber,
        call: CallId,
    ) -> Result<Claim, ClaimError> {
        let key = key(scope, campaign, phone);
        let pending = Write::Hold {
            call: call.to_string(),
            phase: Phase::Pending,
            campaign: Some(campaign),
        };
        let ttl = Some(self.settings.pending_ttl);
        let claim = |revision| Claim {
            key: key.clone(),
            revision,
            call,
            campaign,
        };
        let unavailable = |e: WriteError| ClaimError::Unavailable(e.into());
        // Revision 0 means "the key has no message": true for a number never called.
        match wire::write(&self.js, &key, &pending, 0, ttl).await {
            Ok(revision) => return Ok(claim(revision)),
            Err(WriteError::Conflict) => {}
            Err(e) => return Err(unavailable(e)),
        }
        let record = self.read(&key).await.map_err(ClaimError::Unavailable)?;
        let now = Utc::now().timestamp();
        let (change, ttl) =
            match claim_step(&record, &call.to_string(), now, self.settings.window_secs()) {
                ClaimStep::InProgress => return Err(ClaimError::InProgress),
                ClaimStep::WithinWindow => return Err(ClaimError::WithinWindow),
                ClaimStep::Take => (pending, ttl),
                ClaimStep::Rebind => (bound(call, campaign), None),
            };
        match wire::write(&self.js, &key, &change, record.revision, ttl).await {
            Ok(revision) => Ok(claim(revision)),
            // Someone claimed it between our read and our write.
            Err(WriteError::Conflict) => Err(ClaimError::InProgress),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Makes a claim last as long as its call, once the call's publish is definite: the
    /// pending claim is rewritten without a TTL. Tried a few times; a claim left pending is
    /// bound by the reaper, which finds the call's dial message.
    pub async fn bind(&self, claim: &Claim) -> Result<(), ClaimError> {
        let change = bound(claim.call, claim.campaign);
        let call = claim.call.to_string();
        let mut expect = claim.revision;
        let mut delays = backoff(Duration::from_millis(50), Duration::from_secs(1)).take(5);
        loop {
            let error = match wire::write(&self.js, &claim.key, &change, expect, None).await {
                Ok(_) => return Ok(()),
                Err(WriteError::Conflict) => match self.read(&claim.key).await {
                    Ok(record) => match &record.slot {
                        Slot::Held {
                            call: by, phase, ..
                        } if *by == call => {
                            if *phase == Phase::Bound {
                                return Ok(());
                            }
                            expect = record.revision;
                            continue;
                        }
                        // The pending TTL ran out first: the call is published, so it takes
                        // its number back unless another call holds it now.
                        Slot::Free | Slot::Purged => {
                            expect = record.revision;
                            continue;
                        }
                        Slot::Released { call: by, .. } if by.as_deref() == Some(call.as_str()) => {
                            return Ok(());
                        }
                        _ => {
                            tracing::error!(key = %claim.key, call = %claim.call,
                                "the claim of a published call was lost to another call");
                            return Err(ClaimError::InProgress);
                        }
                    },
                    Err(e) => e,
                },
                Err(e) => e.into(),
            };
            let Some(delay) = delays.next() else {
                return Err(ClaimError::Unavailable(error));
            };
            tokio::time::sleep(delay).await;
        }
    }

    /// Gives back the claim of a call whose publish was refused: a purge, which leaves no
    /// window (the call never happened). A few tries; the pending TTL frees it otherwise.
    pub async fn give_back(&self, claim: &Claim) {
        let call = claim.call.to_string();
        let mut expect = claim.revision;
        let mut delays = backoff(Duration::from_millis(50), Duration::from_secs(1)).take(5);
        loop {
            let error = match wire::write(
                &self.js,
                &claim.key,
                &Write::Purge,
                expect,
                Some(Duration::from_secs(1)),
            )
            .await
            {
                Ok(_) => return,
                Err(WriteError::Conflict) => match self.read(&claim.key).await {
                    Ok(record) if record.held_by(&call) => {
                        expect = record.revision;
                        continue;
                    }
                    Ok(_) => return,
                    Err(e) => e,
                },
                Err(e) => e.into(),
            };
            let Some(delay) = delays.next() else {
                tracing::warn!(key = %claim.key, error = %error, "cannot give a claim back; its TTL frees it");
                return;
            };
            tokio::time::sleep(delay).await;
        }
    }

    /// Releases the number of a call that ended at `ended`, under whichever scope it was
    /// claimed, if this call still holds it. Retried with backoff until the answer is
    /// definite; only a claim holding this call's id is touched, at the revision read.
    pub async fn release(
        &self,
        campaign: CampaignId,
        phone: &PhoneNumber,
        call: CallId,
        ended: DateTime<Utc>,
    ) {
        for key in all_keys(campaign, phone) {
            self.release_key(&key, call, ended.timestamp()).await;
        }
    }

    /// Releases one key (see [`Claims::release`]); true if this call held it.
    pub(crate) async fn release_key(&self, key: &str, call: CallId, ended: i64) -> bool {
        let id = call.to_string();
        let mut delays = backoff(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            let error = match self.read(key).await {
                Ok(record) => {
                    let now = Utc::now().timestamp();
                    let window = self.settings.window_secs();
                    let (change, ttl) = match release_step(&record, &id, ended, now, window) {
                        ReleaseStep::Skip => return false,
                        ReleaseStep::Mark { ttl_secs } => (
                            Write::Release {
                                call: id.clone(),
                                ended,
                            },
                            Duration::from_secs(ttl_secs),
                        ),
                        ReleaseStep::Purge => (Write::Purge, Duration::from_secs(1)),
                    };
                    match wire::write(&self.js, key, &change, record.revision, Some(ttl)).await {
                        Ok(_) => return true,
                        // Changed since the read: read again and decide again.
                        Err(WriteError::Conflict) => continue,
                        Err(e) => e.into(),
                    }
                }
                Err(e) => e,
            };
            let delay = delays.next().unwrap_or(Duration::from_secs(5));
            tracing::warn!(%key, %call, error = %error, ?delay, "releasing a claim failed; retrying");
            tokio::time::sleep(delay).await;
        }
    }
}

fn bound(call: CallId, campaign: CampaignId) -> Write {
    Write::Hold {
        call: call.to_string(),
        phase: Phase::Bound,
        campaign: Some(campaign),
    }
}

/// Exponential delays from `min` doubling to `max`, without end.
fn backoff(min: Duration, max: Duration) -> impl Iterator<Item = Duration> {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(min)
        .with_max_delay(max)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
}

#[cfg(test)]
mod tests;
