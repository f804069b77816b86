//! `POST /api/v1/calls`: accept one call.

use axum::{extract::State, http::StatusCode};
use ccm_core::{CallId, CallStatus, CampaignId, DialRequest, PhoneNumber};
use chrono::Utc;
use serde::{Deserialize, Serialize};

use crate::{
    AppState,
    error::{ApiJson, AppError},
    routes::campaigns,
};

/// The body of a call request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewCall {
    pub campaign_id: CampaignId,
    pub phone_number: String,
}

/// What an accepted call looks like.
#[derive(Debug, Serialize, Deserialize)]
pub struct AcceptedCall {
    pub call_id: CallId,
    pub campaign_id: CampaignId,
    pub phone_number: PhoneNumber,
    pub status: CallStatus,
    pub attempt: u32,
    pub max_attempts: u32,
}

/// Validates, claims the number, publishes the first attempt and answers only after
/// JetStream has stored it: a 202 means the call is durable.
pub async fn create(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<NewCall>,
) -> Result<(StatusCode, ApiJson<AcceptedCall>), AppError> {
    let phone = PhoneNumber::parse(&body.phone_number, state.config.phone_validation)
        .map_err(|e| AppError::bad_request("invalid_phone_number", e.to_string()))?;
    let campaign = campaigns::load(&state, body.campaign_id)
        .await?
        .ok_or_else(|| campaigns::not_found(body.campaign_id))?;
    if !campaign.accepts_calls() {
        return Err(AppError::conflict(
            "campaign_inactive",
            format!("campaign {} is not active", campaign.id),
        ));
    }
    let call_id = CallId::new();
    claim(&state, &phone, call_id).await?;
    let now = Utc::now();
    let request = DialRequest {
        call_id,
        campaign_id: campaign.id,
        phone_number: phone.clone(),
        attempt: 1,
        max_attempts: campaign.max_attempts,
        created_at: now,
        queued_at: now,
    };
    if let Err(e) = ccm_core::nats::publish_dial(&state.js, &request).await {
        // Nothing half-accepted: give the number back before answering 503.
        if let Err(release) = state.active_calls.delete(phone.digits()).await {
            tracing::error!(error = %release, phone = %phone, "cannot release the claim");
        }
        return Err(AppError::unavailable(e));
    }
    Ok((
        StatusCode::ACCEPTED,
        ApiJson(AcceptedCall {
            call_id,
            campaign_id: campaign.id,
            phone_number: phone,
            status: CallStatus::Queued,
            attempt: 1,
            max_attempts: campaign.max_attempts,
        }),
    ))
}

/// Claims the number in `active_calls` with create-if-absent: of concurrent requests for one
/// number exactly one wins, and the retrier releases the claim on the terminal state.
async fn claim(state: &AppState, phone: &PhoneNumber, call_id: CallId) -> Result<(), AppError> {
    use async_nats::jetstream::kv::CreateErrorKind;
    match state
        .active_calls
        .create(phone.digits(), call_id.to_string().into())
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == CreateErrorKind::AlreadyExists => Err(AppError::conflict(
            "call_in_progress",
            format!("a call to {phone} is already in progress"),
        )),
        Err(e) => Err(AppError::unavailable(e)),
    }
}
