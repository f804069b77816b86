//! `POST /api/v1/calls`: accept one call, honouring `Idempotency-Key`.
//!
//! With a key, the first request reserves it in the `idempotency` bucket (create-if-absent)
//! before anything else happens, and stores the accepted call under it afterwards. A repeat
//! gets the stored call back (same status, same body) and publishes nothing; a repeat that
//! arrives while the first is still being handled gets 409; a first request that definitely
//! failed gives the key back so the client can retry it.
//!
//! The key is bound to the request: its record holds a SHA-256 of the canonical request
//! (campaign and normalised number), and the same key with another request is refused with
//! 422 `idempotency_key_reused` (as Stripe and the IETF Idempotency-Key draft do). The record
//! also holds the call id chosen up front, so a request whose publish went unanswered (503
//! `outcome_unknown`) or whose handler died is resumed by a retry with the same key: once the
//! record is older than [`PENDING_STALE_SECS`], the retry re-sends the same call (same claim,
//! same `Nats-Msg-Id`, so JetStream keeps one message) and answers with it.

use std::time::Duration;

use async_nats::jetstream::kv;
use axum::{
    extract::State,
    http::{HeaderMap, StatusCode},
};
use ccm_core::claims::ClaimError;
use ccm_core::{CallId, CallStatus, CampaignId, DialRequest, PhoneNumber};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa_axum::routes;

use crate::routes::table::{Entry, GET, POST, token};
use crate::{
    AppState,
    accept::{self, AcceptError},
    error::{ApiJson, AppError},
    routes::campaigns,
};

/// Longest `Idempotency-Key` accepted.
const MAX_KEY_CHARS: usize = 255;
/// A pending record untouched this long has no live handler: a first request's publish
/// budget (15 s) plus its claim round trip ends before this.
const PENDING_STALE_SECS: i64 = 20;
/// A pending call may be re-sent only while JetStream would still de-duplicate it against
/// the first send (the `CALLS` duplicate window is 120 s; the margin covers clock skew).
const RESUME_LIMIT_SECS: i64 = 100;

/// The body of a call request.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewCall {
    #[schema(value_type = u64)]
    pub campaign_id: CampaignId,
    pub phone_number: String,
    /// When the call expires (RFC 3339, in the future): not placed by then, it ends
    /// `EXPIRED`, and no retry is scheduled after it.
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "2026-12-31T18:00:00Z")]
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// What an accepted call looks like.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AcceptedCall {
    #[schema(value_type = uuid::Uuid)]
    pub call_id: CallId,
    #[schema(value_type = u64)]
    pub campaign_id: CampaignId,
    #[schema(value_type = String, example = "+15550000001")]
    pub phone_number: PhoneNumber,
    #[schema(value_type = String, example = "QUEUED")]
    pub status: CallStatus,
    pub attempt: u32,
    pub max_attempts: u32,
}

impl From<DialRequest> for AcceptedCall {
    fn from(r: DialRequest) -> Self {
        Self {
            call_id: r.call_id,
            campaign_id: r.campaign_id,
            phone_number: r.phone_number,
            status: CallStatus::Queued,
            attempt: r.attempt,
            max_attempts: r.max_attempts,
        }
    }
}

/// How long an Idempotency-Key lives, per key (the bucket has no age of its own): a pending
/// key only as long as a number's pending claim (`claims.pending_ttl_secs`), so a handler that
/// died leaves it for no longer; a completed key for `claims.idempotency_ttl_secs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdempotencyTtl {
    pub pending: Duration,
    pub done: Duration,
}

impl IdempotencyTtl {
    pub fn of(config: &ccm_core::Config) -> Self {
        Self {
            pending: Duration::from_secs(config.claims.pending_ttl_secs.max(1)),
            done: Duration::from_secs(config.claims.idempotency_ttl_secs.max(1)),
        }
    }
}

/// Writes a key's record with its TTL, if its last revision is `expect` (when given).
async fn write(
    state: &AppState,
    key: &str,
    record: &Stored,
    expect: Option<u64>,
) -> Result<u64, async_nats::jetstream::context::PublishError> {
    let ttl = match record {
        Stored::Pending { .. } => state.idempotency_ttl.pending,
        Stored::Done { .. } => state.idempotency_ttl.done,
    };
    let value = serde_json::to_vec(record).map_err(|e| {
        async_nats::jetstream::context::PublishError::with_source(
            async_nats::jetstream::context::PublishErrorKind::Other,
            e,
        )
    })?;
    ccm_core::kv_ttl::put(
        &state.js,
        ccm_core::topology::names::KV_IDEMPOTENCY,
        key,
        value.into(),
        expect,
        Some(ttl),
    )
    .await
}

fn conflict(e: &async_nats::jetstream::context::PublishError) -> bool {
    ccm_core::nats::lost_race(e)
}

/// What the idempotency bucket holds for a key.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
enum Stored {
    /// The first request with this key is being handled (or its outcome is unknown).
    Pending {
        /// [`request_digest`] of the request that took the key.
        request: String,
        /// The call the request publishes, chosen before anything is claimed.
        call_id: CallId,
        /// When the key was taken (unix seconds): the first send is no earlier.
        since: i64,
        /// When a handler last took the request on (unix seconds).
        touched: i64,
    },
    Done {
        /// Absent in records written before keys were bound to requests.
        #[serde(default)]
        request: Option<String>,
        call: AcceptedCall,
    },
}

/// SHA-256 (hex) of the canonical request: the campaign and the number as normalised, so
/// spelling the same number differently is the same request. Public for tests that write
/// the record a crashed handler leaves.
pub fn request_digest(campaign: CampaignId, phone: &PhoneNumber) -> String {
    let canonical = serde_json::json!({"campaign_id": campaign, "phone_number": phone.to_string()});
    hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
}

/// What a request does with a key that already has a record.
#[derive(Debug)]
enum KeyDecision {
    /// Answer with the stored call.
    Replay(AcceptedCall),
    /// The key belongs to another request: 422.
    Reused,
    /// The first request is still being handled: 409.
    InUse,
    /// The first request's handler is gone or its publish went unanswered: take the
    /// request over and re-send the same call.
    Resume(CallId),
    /// Pending past JetStream's duplicate window: re-sending could place a second call.
    Unresolvable,
}

fn decide(stored: Stored, digest: &str, now: i64) -> KeyDecision {
    match stored {
        Stored::Done {
            request: Some(r), ..
        } if r != digest => KeyDecision::Reused,
        Stored::Done { call, .. } => KeyDecision::Replay(call),
        Stored::Pending { request, .. } if request != digest => KeyDecision::Reused,
        Stored::Pending { touched, .. } if now - touched < PENDING_STALE_SECS => KeyDecision::InUse,
        Stored::Pending { since, call_id, .. } if now - since < RESUME_LIMIT_SECS => {
            KeyDecision::Resume(call_id)
        }
        Stored::Pending { .. } => KeyDecision::Unresolvable,
    }
}

/// Maps a refused claim or failed publish to the resource API's errors.
pub(crate) fn accept_error(phone: &PhoneNumber, e: AcceptError, window: u32) -> AppError {
    match e {
        AcceptError::Claim(ClaimError::InProgress) => AppError::conflict(
            "call_in_progress",
            format!("a call to {phone} is already in progress"),
        ),
        AcceptError::Claim(ClaimError::WithinWindow) => AppError::conflict(
            "duplicate_within_window",
            format!("a call to {phone} ended less than {window} minutes ago"),
        ),
        AcceptError::DoNotCall(list) => AppError::Client {
            status: axum::http::StatusCode::FORBIDDEN,
            code: "do_not_call",
            detail: list.refusal(phone),
        },
        AcceptError::Consent(seen) => AppError::Client {
            status: axum::http::StatusCode::FORBIDDEN,
            code: "consent_required",
            detail: AcceptError::consent_detail(&seen, phone),
        },
        AcceptError::ConsentUnavailable(e) => AppError::unavailable(e),
        AcceptError::OutcomeUnknown(_) => AppError::Client {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "outcome_unknown",
            detail: "the broker did not confirm whether the call was queued; retry with the same Idempotency-Key to get its outcome".into(),
        },
        AcceptError::Claim(ClaimError::Unavailable(e))
        | AcceptError::Publish(e)
        | AcceptError::DncUnavailable(e) => AppError::Unavailable(e),
    }
}

/// Validates, claims the number, publishes the first attempt and answers only after
/// JetStream has stored it: a 202 means the call is durable.
#[utoipa::path(post, path = "/api/v1/calls", tag = "calls", request_body = NewCall,
    params(("Idempotency-Key" = Option<String>, Header, description = "A repeat of the same request with the same key returns the same call; another request with it is 422")),
    responses(
        (status = 202, description = "Accepted and durably queued", body = AcceptedCall),
        (status = 400, description = "Malformed JSON or invalid number", body = crate::openapi::Problem),
        (status = 404, description = "Unknown campaign", body = crate::openapi::Problem),
        (status = 403, description = "Number on a do-not-call list (`do_not_call`, the list named), or without the consent the campaign requires (`consent_required`)", body = crate::openapi::Problem),
        (status = 409, description = "Number already live, within the duplicate window, or campaign inactive", body = crate::openapi::Problem),
        (status = 413, description = "Body too large", body = crate::openapi::Problem),
        (status = 415, description = "Not application/json", body = crate::openapi::Problem),
        (status = 422, description = "Wrong types, unknown or missing fields, `expires_at_in_past`, or `idempotency_key_reused` (the key was used with another request)", body = crate::openapi::Problem),
        (status = 503, description = "Broker unavailable, nothing accepted; or `outcome_unknown`: the call may be queued, retry with the same Idempotency-Key to learn its outcome", body = crate::openapi::Problem),
    ))]
pub(crate) async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<NewCall>,
) -> Result<(StatusCode, ApiJson<AcceptedCall>), AppError> {
    let phone = PhoneNumber::parse(&body.phone_number, state.config.phone_validation)
        .map_err(|e| AppError::bad_request("invalid_phone_number", e.to_string()))?;
    accept::refuse_past_expiry(body.expires_at)?;
    let campaign = crate::campaign_store::load(&state, body.campaign_id)
        .await?
        .ok_or_else(|| campaigns::not_found(body.campaign_id))?;
    if let Some(why) = campaign.refusal_at(chrono::Utc::now()) {
        return Err(AppError::conflict(
            "campaign_inactive",
            format!("campaign {} is {why}", campaign.id),
        ));
    }
    let key = idempotency_key(&headers)?;
    let digest = request_digest(campaign.id, &phone);
    let mut call_id = CallId::new();
    let mut since = 0;
    if let Some(key) = &key {
        match reserve(&state, key, &digest, call_id).await? {
            Reserved::Fresh(at) => since = at,
            Reserved::Replay(call) => return Ok((StatusCode::ACCEPTED, ApiJson(call))),
            Reserved::Resume(id, at) => (call_id, since) = (id, at),
        }
    }
    let window = state.config.duplicate_call_window_minutes;
    let accepted =
        accept::accept_one(&state, &campaign, phone.clone(), call_id, body.expires_at).await;
    let call = match accepted {
        Ok(request) => AcceptedCall::from(request),
        // The call may exist: the key stays pending so that a retry with it resumes this
        // very call instead of starting another.
        Err(e @ AcceptError::OutcomeUnknown(_)) => {
            if let Some(key) = &key {
                // No handler holds the request any more (`touched` 0), so the client's retry
                // resumes it at once rather than waiting out the staleness bound.
                let open = Stored::Pending {
                    request: digest,
                    call_id,
                    since,
                    touched: 0,
                };
                let _ = write(&state, key, &open, None).await;
            }
            return Err(accept_error(&phone, e, window));
        }
        Err(e) => {
            if let Some(key) = &key {
                // The request definitely failed: the key is free for the client's retry.
                // A purge marker that goes by itself; the pending TTL covers a failed purge.
                let _ = state
                    .idempotency
                    .purge_with_ttl(key, Duration::from_secs(1))
                    .await;
            }
            return Err(accept_error(&phone, e, window));
        }
    };
    if let Some(key) = &key {
        let stored = Stored::Done {
            request: Some(digest),
            call: call.clone(),
        };
        if let Err(e) = write(&state, key, &stored, None).await {
            // The call is accepted and durable; only a repeat of this request could now be
            // accepted twice (as a 409 duplicate, since the number is claimed).
            tracing::warn!(error = %ccm_core::telemetry::chain(&e), "cannot record the idempotency key");
        }
    }
    Ok((StatusCode::ACCEPTED, ApiJson(call)))
}

/// The header as a bucket key (hex, so any printable key is a valid KV key).
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, AppError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|t| !t.is_empty() && t.len() <= MAX_KEY_CHARS);
    let Some(text) = text else {
        return Err(AppError::bad_request(
            "invalid_idempotency_key",
            format!("Idempotency-Key must be 1 to {MAX_KEY_CHARS} visible ASCII characters"),
        ));
    };
    Ok(Some(hex::encode(text)))
}

/// What [`reserve`] found.
enum Reserved {
    /// The key is this request's now, taken at this time (unix seconds).
    Fresh(i64),
    /// The key's call, to answer with.
    Replay(AcceptedCall),
    /// This request took over a pending one taken at the given time: carry on with its call.
    Resume(CallId, i64),
}

/// Reserves the key for the request with `digest`, or settles what its record says.
async fn reserve(
    state: &AppState,
    key: &str,
    digest: &str,
    call_id: CallId,
) -> Result<Reserved, AppError> {
    let now = chrono::Utc::now().timestamp();
    let pending = |call_id, since| Stored::Pending {
        request: digest.to_owned(),
        call_id,
        since,
        touched: now,
    };
    let fresh = pending(call_id, now);
    // Revision 0: the key has no message (never used, or its TTL ran out).
    match write(state, key, &fresh, Some(0)).await {
        Ok(_) => return Ok(Reserved::Fresh(now)),
        Err(e) if conflict(&e) => {}
        Err(e) => return Err(AppError::unavailable(e)),
    }
    let in_use = || {
        AppError::conflict(
            "idempotency_key_in_use",
            "a request with this Idempotency-Key is still being handled; retry shortly",
        )
    };
    let Some(entry) = state
        .idempotency
        .entry(key)
        .await
        .map_err(AppError::unavailable)?
    else {
        return Err(in_use());
    };
    if entry.operation != kv::Operation::Put {
        // Given back by a request that definitely failed: the key is free again.
        return match write(state, key, &fresh, Some(entry.revision)).await {
            Ok(_) => Ok(Reserved::Fresh(now)),
            Err(e) if conflict(&e) => Err(in_use()),
            Err(e) => Err(AppError::unavailable(e)),
        };
    }
    let stored = serde_json::from_slice::<Stored>(&entry.value).map_err(|_| in_use())?;
    let since = match &stored {
        Stored::Pending { since, .. } => *since,
        Stored::Done { .. } => now,
    };
    match decide(stored, digest, now) {
        KeyDecision::Replay(call) => Ok(Reserved::Replay(call)),
        KeyDecision::Reused => Err(AppError::Client {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "idempotency_key_reused",
            detail: "this Idempotency-Key was used with a different request".into(),
        }),
        KeyDecision::InUse => Err(in_use()),
        KeyDecision::Unresolvable => Err(AppError::conflict(
            "idempotency_key_unresolved",
            "the request with this Idempotency-Key never completed and can no longer be resumed safely",
        )),
        KeyDecision::Resume(id) => {
            // Taking the record over with its revision lets one retry resume at a time.
            match write(state, key, &pending(id, since), Some(entry.revision)).await {
                Ok(_) => Ok(Reserved::Resume(id, since)),
                Err(e) if conflict(&e) => Err(in_use()),
                Err(e) => Err(AppError::unavailable(e)),
            }
        }
    }
}

/// The calls' routes.
pub(crate) fn routes() -> Vec<Entry> {
    use super::{bulk, call_queries};
    vec![
        // Creating a call is the hot path and stays unlimited; listing is a query.
        token(routes!(create, call_queries::list)).expensive(GET),
        token(routes!(call_queries::get)),
        token(routes!(super::call_audit::call)),
        // An operator's (a write): the callee asked to be called back.
        token(routes!(super::reschedule::reschedule)),
        token(routes!(bulk::create)).expensive(POST),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(id: CallId) -> AcceptedCall {
        AcceptedCall {
            call_id: id,
            campaign_id: CampaignId::new(1).expect("id"),
            phone_number: PhoneNumber::parse("+15550001234", ccm_core::phone::PhoneRule::Lenient)
                .expect("phone"),
            status: CallStatus::Queued,
            attempt: 1,
            max_attempts: 1,
        }
    }

    #[test]
    fn a_key_replays_its_own_request_refuses_another_and_resumes_a_stale_pending_one() {
        let (mine, other, now) = ("a".to_owned(), "b", 1_000_000);
        let id = CallId::new();
        let done = |request: Option<String>| Stored::Done {
            request,
            call: call(id),
        };
        let pending = |since: i64, touched: i64| Stored::Pending {
            request: mine.clone(),
            call_id: id,
            since,
            touched,
        };
        let d = |stored, digest: &str| format!("{:?}", decide(stored, digest, now));
        let replay = format!("{:?}", KeyDecision::Replay(call(id)));
        assert_eq!(d(done(Some(mine.clone())), &mine), replay);
        assert_eq!(
            d(done(None), other),
            replay,
            "records from before binding replay"
        );
        assert_eq!(d(done(Some(mine.clone())), other), "Reused");
        assert_eq!(d(pending(now, now), other), "Reused");
        assert_eq!(d(pending(now - 5, now - 5), &mine), "InUse");
        assert_eq!(
            d(
                pending(now - PENDING_STALE_SECS, now - PENDING_STALE_SECS),
                &mine
            ),
            format!("Resume({id:?})")
        );
        assert_eq!(
            d(pending(now - 1, 0), &mine),
            format!("Resume({id:?})"),
            "a request answered outcome_unknown is resumed at once"
        );
        assert_eq!(
            d(pending(now - RESUME_LIMIT_SECS, now - 5), &mine),
            "InUse",
            "a live handler is never raced, however old the key"
        );
        assert_eq!(
            d(
                pending(now - RESUME_LIMIT_SECS, now - PENDING_STALE_SECS),
                &mine
            ),
            "Unresolvable",
            "past the duplicate window a re-send could place a second call"
        );
    }
}
