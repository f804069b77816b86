//! Which attempt a carrier's call id belongs to, kept in the `placements` KV bucket.
//!
//! The old contract's callback (`PUT /api/v1/callback/`) names the call and, as the old
//! system's carriers sent it, the carrier's own id of the call (`external_call_id`), but not
//! the attempt. Ingest would otherwise take the attempt from the call's latest lifecycle
//! event, and a callback of attempt n that arrives after attempt n+1 was placed would become
//! n+1's outcome. The dialer learns the carrier's id when it places an attempt and records it
//! here; ingest reads it back and credits the callback to the attempt that id was placed for.
//!
//! Keys are the carrier's id encoded as base64url without padding: a KV key allows only
//! `[-/_=.a-zA-Z0-9]`, a carrier's id may hold anything, and this alphabet is a subset of the
//! allowed one with no `.` (a token separator) at all, so every id has exactly one key and
//! two ids never share one. Ids longer than [`MAX_ID_LEN`] bytes are not recorded: their key
//! would approach the server's limit on a subject, and no carrier's id is that long.

use async_nats::jetstream::kv;
use serde::{Deserialize, Serialize};

use crate::ids::{CallId, CampaignId};

/// The longest carrier id recorded, in bytes.
pub const MAX_ID_LEN: usize = 256;

/// What the bucket holds for a carrier's id: the attempt it was placed for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacedAttempt {
    pub call_id: CallId,
    pub campaign_id: CampaignId,
    pub attempt: u32,
}

/// Why the bucket could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum PlacementError {
    #[error("cannot record the placement")]
    Put(#[source] kv::PutError),
    #[error("cannot read the placement")]
    Get(#[source] kv::EntryError),
}

/// The bucket key of a carrier's call id, or `None` for an id that is empty or longer than
/// [`MAX_ID_LEN`] (never recorded, so never looked up).
pub fn key(external_call_id: &str) -> Option<String> {
    use base64::Engine as _;
    if external_call_id.is_empty() || external_call_id.len() > MAX_ID_LEN {
        return None;
    }
    Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(external_call_id))
}

/// Records that the carrier placed `placed` under `external_call_id`. An id with no key is
/// skipped: its callbacks are credited as if nothing had been recorded.
pub async fn record(
    bucket: &kv::Store,
    external_call_id: &str,
    placed: &PlacedAttempt,
) -> Result<(), PlacementError> {
    let Some(key) = key(external_call_id) else {
        return Ok(());
    };
    // Serializing three plain fields cannot fail.
    let value = serde_json::to_vec(placed).unwrap_or_default();
    bucket
        .put(key, value.into())
        .await
        .map(|_| ())
        .map_err(PlacementError::Put)
}

/// The key under which an attempt's carrier id is kept, for the dialer to hang the call up
/// when a redelivery of its message finds it past its maximum duration. It holds a `.`,
/// which no key of [`key`] (base64url) does, so the two kinds never meet.
pub fn attempt_key(call: CallId, attempt: u32) -> String {
    format!("attempt.{call}.{attempt}")
}

/// Records the carrier's id of `placed`'s attempt under [`attempt_key`].
pub async fn record_attempt(
    bucket: &kv::Store,
    placed: &PlacedAttempt,
    external_call_id: &str,
) -> Result<(), PlacementError> {
    if external_call_id.is_empty() || external_call_id.len() > MAX_ID_LEN {
        return Ok(());
    }
    bucket
        .put(
            attempt_key(placed.call_id, placed.attempt),
            external_call_id.to_owned().into_bytes().into(),
        )
        .await
        .map(|_| ())
        .map_err(PlacementError::Put)
}

/// The carrier's id recorded for an attempt, if any.
pub async fn attempt_external_id(
    bucket: &kv::Store,
    call: CallId,
    attempt: u32,
) -> Result<Option<String>, PlacementError> {
    let value = bucket
        .get(attempt_key(call, attempt))
        .await
        .map_err(PlacementError::Get)?;
    Ok(value.and_then(|v| String::from_utf8(v.to_vec()).ok()))
}

/// The attempt `external_call_id` was placed for, if it was recorded (and is still kept). A
/// value that does not parse counts as none.
pub async fn lookup(
    bucket: &kv::Store,
    external_call_id: &str,
) -> Result<Option<PlacedAttempt>, PlacementError> {
    let Some(key) = key(external_call_id) else {
        return Ok(None);
    };
    let value = bucket.get(key).await.map_err(PlacementError::Get)?;
    Ok(value.and_then(|v| serde_json::from_slice(&v).ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_id_gets_a_valid_distinct_key() {
        let ids = [
            "CA0123456789abcdef0123456789abcdef",
            "sim-0190c0de-0000-7000-8000-000000000000-2",
            "a.b",
            "a/b",
            "a b*>",
            "ünïcödé",
            "=",
        ];
        let keys: Vec<String> = ids.iter().map(|id| key(id).expect("a key")).collect();
        for k in &keys {
            assert!(
                k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "{k}"
            );
        }
        let distinct: std::collections::HashSet<_> = keys.iter().collect();
        assert_eq!(distinct.len(), keys.len());
        assert_eq!(key(""), None);
        assert_eq!(key(&"x".repeat(MAX_ID_LEN + 1)), None);
        assert!(key(&"x".repeat(MAX_ID_LEN)).is_some());
        let attempt = attempt_key(CallId::new(), 3);
        assert!(
            attempt.contains('.') && !keys.contains(&attempt),
            "{attempt}"
        );
    }
}
