//! How a claim is written in and read from the `active_calls` bucket's stream.
//!
//! The value is the holder's call id, as before, so any KV reader sees who holds a number.
//! Headers say the rest: `Ccm-Claim` (`pending` or `bound`; absent on claims written before
//! claims had phases), `Ccm-Campaign` (for the reaper's search of `CALLS`), and on a release
//! marker `Ccm-Call` (who released) and `Ccm-Ended` (when the call ended, unix seconds). The
//! per-key TTL is the server's `Nats-TTL` header: it is how a pending claim and a release
//! marker vanish on their own.

use std::time::Duration;

use async_nats::{
    HeaderMap,
    jetstream::{
        self,
        context::PublishErrorKind,
        stream::{DirectGetErrorKind, Stream},
    },
};
use bytes::Bytes;

use crate::CampaignId;

const STATE: &str = "Ccm-Claim";
const CAMPAIGN: &str = "Ccm-Campaign";
const CALL: &str = "Ccm-Call";
const ENDED: &str = "Ccm-Ended";
const KV_OPERATION: &str = "KV-Operation";
/// Set by the server on the limit marker it leaves when a key's TTL runs out (the bucket has
/// limit markers); such a marker has no `KV-Operation`.
const MARKER_REASON: &str = "Nats-Marker-Reason";

/// The subject of a claim key in the `active_calls` bucket.
pub(crate) fn subject(key: &str) -> String {
    format!("$KV.{}.{key}", crate::topology::names::KV_ACTIVE_CALLS)
}

/// How far a held claim has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Written before its call's publish was definite; expires with its TTL unless bound.
    Pending,
    /// Its call is published: no TTL, it lives until released.
    Bound,
    /// Written by a version before claims had phases (no TTL, publish unknown).
    Legacy,
}

/// What a claim key holds now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Slot {
    /// Nothing: never claimed, or its last message expired (without a limit marker).
    Free,
    /// Held by `call` (its id as written) since `at` (unix seconds, the server's clock).
    Held {
        call: String,
        phase: Phase,
        campaign: Option<CampaignId>,
        at: i64,
    },
    /// Released by a call that ended at `ended`: the duplicate window counts from there.
    Released { call: Option<String>, ended: i64 },
    /// Given back by a call that never happened (or with the window off), or the server's
    /// limit marker of a pending claim whose TTL ran out: no window.
    Purged,
}

/// A claim key's state and the revision to expect when changing it (0: no message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub key: String,
    pub revision: u64,
    pub slot: Slot,
}

impl Record {
    /// Decodes the last message of a claim key.
    pub(crate) fn of(
        key: String,
        revision: u64,
        at: i64,
        headers: &HeaderMap,
        value: &[u8],
    ) -> Self {
        let header = |name: &str| headers.get(name).map(|v| v.as_str().to_owned());
        let slot = match header(KV_OPERATION).as_deref() {
            // A pending claim that expired: nobody holds the key and no call ended on it.
            _ if header(MARKER_REASON).is_some() => Slot::Purged,
            Some("DEL") => Slot::Released {
                call: header(CALL),
                ended: header(ENDED).and_then(|e| e.parse().ok()).unwrap_or(at),
            },
            Some("PURGE") => Slot::Purged,
            _ => Slot::Held {
                call: String::from_utf8_lossy(value).into_owned(),
                phase: match header(STATE).as_deref() {
                    Some("pending") => Phase::Pending,
                    Some("bound") => Phase::Bound,
                    _ => Phase::Legacy,
                },
                campaign: header(CAMPAIGN).and_then(|c| c.parse().ok()),
                at,
            },
        };
        Self {
            key,
            revision,
            slot,
        }
    }

    pub(crate) fn held_by(&self, call: &str) -> bool {
        matches!(&self.slot, Slot::Held { call: c, .. } if c == call)
    }

    /// Whether `call` holds the key.
    pub fn held_by_call(&self, call: crate::CallId) -> bool {
        self.held_by(&call.to_string())
    }
}

/// Reads a claim key.
pub(crate) async fn read(stream: &Stream, key: &str) -> Result<Record, async_nats::Error> {
    match stream.direct_get_last_for_subject(subject(key)).await {
        Ok(m) => Ok(Record::of(
            key.to_owned(),
            m.sequence,
            m.time.unix_timestamp(),
            &m.headers,
            &m.payload,
        )),
        Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(Record {
            key: key.to_owned(),
            revision: 0,
            slot: Slot::Free,
        }),
        Err(e) => Err(e.into()),
    }
}

/// A change of a claim key.
#[derive(Debug, Clone)]
pub(crate) enum Write {
    Hold {
        call: String,
        phase: Phase,
        /// Absent only when binding a claim written before claims named their campaign.
        campaign: Option<CampaignId>,
    },
    Release {
        call: String,
        ended: i64,
    },
    Purge,
}

/// Why a write did not happen.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WriteError {
    /// The key changed since the expected revision: read it again and decide again.
    #[error("the claim changed meanwhile")]
    Conflict,
    /// No definite answer (timeout, no connection): the write may or may not be stored.
    #[error("no definite answer from JetStream")]
    Unanswered(#[source] async_nats::Error),
    /// JetStream refused the write for another reason (e.g. a bucket without TTLs).
    #[error("JetStream refused the write")]
    Refused(#[source] async_nats::Error),
}

/// Writes `change` to `key` if its last revision is still `expect`, with a TTL if given
/// (whole seconds, at least 1, as the server takes them).
pub(crate) async fn write(
    js: &jetstream::Context,
    key: &str,
    change: &Write,
    expect: u64,
    ttl: Option<Duration>,
) -> Result<u64, WriteError> {
    let mut headers = HeaderMap::new();
    headers.insert(
        "Nats-Expected-Last-Subject-Sequence",
        expect.to_string().as_str(),
    );
    if let Some(ttl) = ttl {
        headers.insert("Nats-TTL", ttl.as_secs().max(1).to_string().as_str());
    }
    let value = match change {
        Write::Hold {
            call,
            phase,
            campaign,
        } => {
            let phase = if *phase == Phase::Pending {
                "pending"
            } else {
                "bound"
            };
            headers.insert(STATE, phase);
            if let Some(campaign) = campaign {
                headers.insert(CAMPAIGN, campaign.to_string().as_str());
            }
            Bytes::from(call.clone())
        }
        Write::Release { call, ended } => {
            headers.insert(KV_OPERATION, "DEL");
            headers.insert(CALL, call.as_str());
            headers.insert(ENDED, ended.to_string().as_str());
            Bytes::new()
        }
        Write::Purge => {
            headers.insert(KV_OPERATION, "PURGE");
            headers.insert("Nats-Rollup", "sub");
            Bytes::new()
        }
    };
    let ack = js
        .publish_with_headers(subject(key), headers, value)
        .await
        .map_err(|e| WriteError::Unanswered(e.into()))?;
    match ack.await {
        Ok(ack) => Ok(ack.sequence),
        Err(e) => Err(match e.kind() {
            // A replicated stream may answer a lost race with a code that has no kind.
            _ if crate::nats::lost_race(&e) => WriteError::Conflict,
            // No responders (reported as a missing stream) is a server still starting.
            PublishErrorKind::TimedOut
            | PublishErrorKind::BrokenPipe
            | PublishErrorKind::StreamNotFound => WriteError::Unanswered(e.into()),
            _ => WriteError::Refused(e.into()),
        }),
    }
}
