//! Duplicate prevention: one live call per number, and no new call within the duplicate
//! window after the last one ended.
//!
//! A claim is a key in the `active_calls` bucket (see [`DuplicateScope::claim_key`]) holding
//! the call id. It is written with an expected last revision, so of concurrent requests for
//! one number exactly one wins. The retrier deletes the key when the call ends; the delete
//! marker it leaves carries the time the call ended, which is what the window is checked
//! against. The common case, a number never called (or whose marker has aged out), costs a
//! single publish.

use async_nats::jetstream::kv;
use ccm_core::{CallId, CampaignId, PhoneNumber, config::DuplicateScope};
use chrono::Utc;

use crate::AppState;

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

/// A successful claim: the key to release if the call is not published after all.
#[derive(Debug, Clone)]
pub struct Claim {
    pub key: String,
}

/// Claims `phone` for `call` under the configured scope and window.
pub async fn claim(
    state: &AppState,
    campaign: CampaignId,
    phone: &PhoneNumber,
    call: CallId,
) -> Result<Claim, ClaimError> {
    let scope: DuplicateScope = state.config.duplicate_scope;
    let key = scope.claim_key(campaign, phone);
    let value = bytes::Bytes::from(call.to_string());
    // Revision 0 means "the key has no message": true for a number never called.
    match state.active_calls.update(&key, value.clone(), 0).await {
        Ok(_) => return Ok(Claim { key }),
        Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {}
        Err(e) => return Err(ClaimError::Unavailable(e.into())),
    }
    let entry = state
        .active_calls
        .entry(key.clone())
        .await
        .map_err(|e| ClaimError::Unavailable(e.into()))?;
    let Some(entry) = entry else {
        // The marker aged out between the two requests; try once more from scratch.
        return take(state, &key, value, 0).await;
    };
    if entry.operation == kv::Operation::Put {
        // A claim already held by this very call is this call's: a request resumed under
        // the same Idempotency-Key after an unanswered publish kept it.
        if entry.value == value {
            return Ok(Claim { key });
        }
        return Err(ClaimError::InProgress);
    }
    let window_secs = i64::from(state.config.duplicate_call_window_minutes) * 60;
    let ended = entry.created.unix_timestamp();
    if entry.operation == kv::Operation::Delete
        && window_secs > 0
        && Utc::now().timestamp() - ended < window_secs
    {
        return Err(ClaimError::WithinWindow);
    }
    take(state, &key, value, entry.revision).await
}

async fn take(
    state: &AppState,
    key: &str,
    value: bytes::Bytes,
    revision: u64,
) -> Result<Claim, ClaimError> {
    match state.active_calls.update(key, value, revision).await {
        Ok(_) => Ok(Claim {
            key: key.to_owned(),
        }),
        // Someone claimed it between our read and our write.
        Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Err(ClaimError::InProgress),
        Err(e) => Err(ClaimError::Unavailable(e.into())),
    }
}

/// Gives a claim back because its call was not published. A purge (rather than a delete)
/// leaves no marker for the window to count: the call never happened.
pub async fn release(state: &AppState, claim: &Claim) {
    if let Err(e) = state.active_calls.purge(&claim.key).await {
        tracing::error!(error = %e, key = %claim.key, "cannot release a claim; it expires with the bucket's max_age");
    }
}
