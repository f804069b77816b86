//! Consent records: `POST /api/v1/consents` records one, `GET /api/v1/consents/{phone}` lists a
//! number's (revoked ones included), `POST /api/v1/consents/{id}/revoke` revokes one. A
//! consent belongs to a number, with or without a contact; a campaign with `required_consent`
//! calls only numbers holding a valid consent of that type (see [`ccm_core::consent`]).
//! Records are never deleted: a revocation records who, when and how, and applies at once to
//! every campaign (queued calls included: the dialer checks again right before placing).

use axum::{
    Extension,
    extract::{Path, State},
    http::StatusCode,
};
use ccm_core::{CampaignId, PhoneNumber, consent::ConsentType};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::consent_store::{self, ConsentRecord, NewConsent, Revoke, StoreError};
use crate::routes::table::{Entry, token};
use crate::{
    AppState,
    auth::Identity,
    error::{ApiJson, AppError},
    routes::campaigns,
};

/// Longest `source` and `purpose` kept.
const MAX_TEXT_CHARS: usize = 500;
/// Longest `evidence_ref` kept.
const MAX_EVIDENCE_CHARS: usize = 2_000;
/// How far in the future `given_at` may be (clock skew between systems).
const GIVEN_AT_SKEW_SECS: i64 = 300;

/// A consent to record.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewConsentBody {
    pub phone_number: String,
    /// `prior_express_written`, `prior_express`, `informational`, `ai_voice` or `recording`.
    #[serde(rename = "type")]
    #[schema(value_type = String, example = "prior_express_written")]
    pub kind: ConsentType,
    /// What the callee agreed to be called about.
    pub purpose: Option<String>,
    /// Where the consent was collected (`web_form`, `ivr`, `paper`, …).
    pub source: String,
    /// When it was given (RFC 3339); absent: now.
    pub given_at: Option<DateTime<Utc>>,
    /// Where the evidence is (a form submission id, a recording's URL, …).
    pub evidence_ref: Option<String>,
    /// The campaign whose contact gave it, if it was given for one.
    pub campaign_id: Option<u64>,
}

/// Why a consent is revoked.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeBody {
    pub reason: Option<String>,
}

/// The API token that made a change, named by its fingerprint (never the token).
fn who(identity: &Identity) -> String {
    format!("token:{}", hex::encode(identity.id.as_bytes()))
}

fn text(
    field: &'static str,
    value: Option<String>,
    max: usize,
) -> Result<Option<String>, AppError> {
    let value = value.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
    if value.as_ref().is_some_and(|v| v.chars().count() > max) {
        return Err(AppError::bad_request(
            "invalid_consent",
            format!("{field} must be at most {max} characters"),
        ));
    }
    Ok(value)
}

fn store_error(e: StoreError) -> AppError {
    match e {
        StoreError::UnknownType(_) => AppError::internal(e),
        e => AppError::unavailable(e),
    }
}

/// Records a consent.
#[utoipa::path(post, path = "/api/v1/consents", tag = "consents", request_body = NewConsentBody,
    responses(
        (status = 201, body = ConsentRecord),
        (status = 400, description = "Invalid number, empty source, text too long, given_at in the future", body = crate::openapi::Problem),
        (status = 404, description = "Unknown campaign", body = crate::openapi::Problem),
        (status = 422, description = "Unknown type, wrong types or unknown fields", body = crate::openapi::Problem),
        (status = 503, description = "PostgreSQL or NATS unavailable", body = crate::openapi::Problem),
    ))]
pub(crate) async fn grant(
    State(state): State<AppState>,
    Extension(identity): Extension<Identity>,
    ApiJson(body): ApiJson<NewConsentBody>,
) -> Result<(StatusCode, ApiJson<ConsentRecord>), AppError> {
    let phone = phone(&state, &body.phone_number)?;
    let source = text("source", Some(body.source), MAX_TEXT_CHARS)?
        .ok_or_else(|| AppError::bad_request("invalid_consent", "source must not be empty"))?;
    let purpose = text("purpose", body.purpose, MAX_TEXT_CHARS)?;
    let evidence_ref = text("evidence_ref", body.evidence_ref, MAX_EVIDENCE_CHARS)?;
    let now = Utc::now();
    let given_at = body.given_at.unwrap_or(now);
    if given_at > now + chrono::Duration::seconds(GIVEN_AT_SKEW_SECS) {
        return Err(AppError::bad_request(
            "invalid_consent",
            "given_at is in the future",
        ));
    }
    let campaign_id = match body.campaign_id {
        None => None,
        Some(id) => {
            let id = CampaignId::new(id)
                .map_err(|e| AppError::bad_request("invalid_campaign_id", e.to_string()))?;
            crate::campaign_store::load(&state, id)
                .await?
                .ok_or_else(|| campaigns::not_found(id))?;
            Some(id.as_i64())
        }
    };
    let record = consent_store::grant(
        &state,
        NewConsent {
            phone,
            kind: body.kind,
            purpose,
            source,
            given_at,
            evidence_ref,
            campaign_id,
            recorded_by: who(&identity),
        },
    )
    .await
    .map_err(store_error)?;
    Ok((StatusCode::CREATED, ApiJson(record)))
}

/// A number's consent records, revoked ones included, oldest first.
#[utoipa::path(get, path = "/api/v1/consents/{phone}", tag = "consents",
    params(("phone" = String, Path, description = "E.164 (`%2B` for `+`)")),
    responses(
        (status = 200, body = Vec<ConsentRecord>),
        (status = 400, description = "Invalid number", body = crate::openapi::Problem),
        (status = 503, description = "PostgreSQL unavailable", body = crate::openapi::Problem),
    ))]
pub(crate) async fn list(
    State(state): State<AppState>,
    Path(input): Path<String>,
) -> Result<ApiJson<Vec<ConsentRecord>>, AppError> {
    let phone = phone(&state, &input)?;
    consent_store::list(&state, phone.as_str())
        .await
        .map(ApiJson)
        .map_err(AppError::unavailable)
}

/// Revokes a consent: calls relying on it stop at once, queued ones included (they end
/// `CANCELLED`, `consent_revoked`). Revoking a revoked consent answers its first revocation.
#[utoipa::path(post, path = "/api/v1/consents/{id}/revoke", tag = "consents",
    params(("id" = uuid::Uuid, Path)),
    request_body(content = RevokeBody, description = "Optional"),
    responses(
        (status = 200, body = ConsentRecord),
        (status = 400, description = "Not a consent id, or reason too long", body = crate::openapi::Problem),
        (status = 404, description = "No such consent", body = crate::openapi::Problem),
        (status = 503, description = "PostgreSQL or NATS unavailable; the revocation was not made", body = crate::openapi::Problem),
    ))]
pub(crate) async fn revoke(
    State(state): State<AppState>,
    Extension(identity): Extension<Identity>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<ApiJson<ConsentRecord>, AppError> {
    let id: Uuid = id
        .parse()
        .map_err(|_| AppError::bad_request("invalid_consent_id", "not a consent id"))?;
    // The body is optional: an empty one revokes without a reason.
    let body: RevokeBody = if body.iter().all(u8::is_ascii_whitespace) {
        RevokeBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| AppError::bad_request("invalid_body", format!("not a revocation: {e}")))?
    };
    let reason = text("reason", body.reason, MAX_TEXT_CHARS)?;
    let how = Revoke {
        by: who(&identity),
        how: "api",
        reason,
    };
    consent_store::revoke(&state, id, &how)
        .await
        .map_err(store_error)?
        .map(ApiJson)
        .ok_or_else(|| AppError::not_found("consent_not_found", format!("no consent {id}")))
}

fn phone(state: &AppState, input: &str) -> Result<PhoneNumber, AppError> {
    PhoneNumber::parse(input, state.config.phone_validation)
        .map_err(|e| AppError::bad_request("invalid_phone_number", e.to_string()))
}

/// The consent routes.
pub(crate) fn routes() -> Vec<Entry> {
    vec![
        token(routes!(grant)),
        token(routes!(list)),
        token(routes!(revoke)),
    ]
}
