//! `POST /api/v1/calls`: accept one call, honouring `Idempotency-Key`.
//!
//! With a key, the first request reserves it in the `idempotency` bucket (create-if-absent)
//! before anything else happens, and stores the accepted call under it afterwards. A repeat
//! gets the stored call back (same status, same body) and publishes nothing; a repeat that
//! arrives while the first is still being handled gets 409; a first request that fails gives
//! the key back so the client can retry it.

use async_nats::jetstream::kv;
use axum::{
    extract::State,
    http::{HeaderMap, StatusCode},
};
use ccm_core::{CallId, CallStatus, CampaignId, DialRequest, PhoneNumber};
use serde::{Deserialize, Serialize};

use crate::{
    AppState,
    accept::{self, AcceptError},
    claim::ClaimError,
    error::{ApiJson, AppError},
    routes::campaigns,
};

/// Longest `Idempotency-Key` accepted.
const MAX_KEY_CHARS: usize = 255;

/// The body of a call request.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewCall {
    #[schema(value_type = u64)]
    pub campaign_id: CampaignId,
    pub phone_number: String,
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

/// What the idempotency bucket holds for a key.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
enum Stored {
    /// The first request with this key is being handled.
    Pending,
    Done {
        call: AcceptedCall,
    },
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
        AcceptError::Claim(ClaimError::Unavailable(e))
        | AcceptError::Publish(e)
        | AcceptError::DncUnavailable(e) => AppError::Unavailable(e),
    }
}

/// Validates, claims the number, publishes the first attempt and answers only after
/// JetStream has stored it: a 202 means the call is durable.
#[utoipa::path(post, path = "/api/v1/calls", tag = "calls", request_body = NewCall,
    params(("Idempotency-Key" = Option<String>, Header, description = "A repeat with the same key returns the same call")),
    responses(
        (status = 202, description = "Accepted and durably queued", body = AcceptedCall),
        (status = 400, description = "Malformed JSON or invalid number", body = crate::openapi::Problem),
        (status = 404, description = "Unknown campaign", body = crate::openapi::Problem),
        (status = 403, description = "Number on a do-not-call list (`do_not_call`, the list named)", body = crate::openapi::Problem),
        (status = 409, description = "Number already live, within the duplicate window, or campaign inactive", body = crate::openapi::Problem),
        (status = 413, description = "Body too large", body = crate::openapi::Problem),
        (status = 415, description = "Not application/json", body = crate::openapi::Problem),
        (status = 422, description = "Wrong types, unknown or missing fields", body = crate::openapi::Problem),
        (status = 503, description = "Broker unavailable; nothing accepted", body = crate::openapi::Problem),
    ))]
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<NewCall>,
) -> Result<(StatusCode, ApiJson<AcceptedCall>), AppError> {
    let phone = PhoneNumber::parse(&body.phone_number, state.config.phone_validation)
        .map_err(|e| AppError::bad_request("invalid_phone_number", e.to_string()))?;
    let campaign = campaigns::load(&state, body.campaign_id)
        .await?
        .ok_or_else(|| campaigns::not_found(body.campaign_id))?;
    if let Some(why) = campaign.refusal_at(chrono::Utc::now()) {
        return Err(AppError::conflict(
            "campaign_inactive",
            format!("campaign {} is {why}", campaign.id),
        ));
    }
    let key = idempotency_key(&headers)?;
    if let Some(key) = &key {
        if let Some(call) = reserve(&state, key).await? {
            return Ok((StatusCode::ACCEPTED, ApiJson(call)));
        }
    }
    let window = state.config.duplicate_call_window_minutes;
    let accepted = accept::accept_one(&state, &campaign, phone.clone(), CallId::new()).await;
    let call = match accepted {
        Ok(request) => AcceptedCall::from(request),
        Err(e) => {
            if let Some(key) = &key {
                // The request failed: the key is free for the client's retry.
                let _ = state.idempotency.purge(key).await;
            }
            return Err(accept_error(&phone, e, window));
        }
    };
    if let Some(key) = &key {
        let stored =
            serde_json::to_vec(&Stored::Done { call: call.clone() }).map_err(AppError::internal)?;
        if let Err(e) = state.idempotency.put(key, stored.into()).await {
            // The call is accepted and durable; only a repeat of this request could now be
            // accepted twice (as a 409 duplicate, since the number is claimed).
            tracing::warn!(error = %e, "cannot record the idempotency key");
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
    Ok(Some(text.bytes().map(|b| format!("{b:02x}")).collect()))
}

/// Reserves the key; returns the stored call when the key was used before.
async fn reserve(state: &AppState, key: &str) -> Result<Option<AcceptedCall>, AppError> {
    let pending = serde_json::to_vec(&Stored::Pending).map_err(AppError::internal)?;
    match state.idempotency.create(key, pending.into()).await {
        Ok(_) => Ok(None),
        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
            let stored = state
                .idempotency
                .get(key)
                .await
                .map_err(AppError::unavailable)?;
            match stored.map(|b| serde_json::from_slice::<Stored>(&b)) {
                Some(Ok(Stored::Done { call })) => Ok(Some(call)),
                _ => Err(AppError::conflict(
                    "idempotency_key_in_use",
                    "a request with this Idempotency-Key is still being handled; retry shortly",
                )),
            }
        }
        Err(e) => Err(AppError::unavailable(e)),
    }
}
