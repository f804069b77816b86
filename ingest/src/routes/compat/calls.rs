//! `POST /api/v1/initiate-call/` and `POST /api/v1/bulk-initiate-calls/`.

use std::collections::HashSet;

use axum::{extract::State, http::StatusCode};
use ccm_core::claims::ClaimError;
use ccm_core::{CallStatus, Campaign, DialRequest, PhoneNumber};
use chrono::Utc;
use serde_json::{Value, json};

use super::{active_campaign, campaign_id};
use crate::{
    AppState,
    accept::{self, AcceptError},
    compat_error::{CompatError, CompatJson},
    contacts,
};

/// How many invalid numbers a bulk 400 names.
const INVALID_NAMED: usize = 5;

/// The old API's CallLog as it serialised a freshly queued call.
pub(crate) fn call_log(campaign: &Campaign, request: &DialRequest) -> Value {
    json!({
        "call_id": request.call_id,
        "campaign": campaign.id,
        "campaign_name": campaign.name,
        "phone_number": request.phone_number,
        "status": CallStatus::Queued,
        "attempt_count": request.attempt,
        "max_attempts": request.max_attempts,
        "created_at": request.created_at,
        "updated_at": request.queued_at,
        "last_attempt_at": null,
        "next_retry_at": null,
        "total_call_time": 0,
        "external_call_id": null,
        "error_message": null,
    })
}

/// Accepts one call. Over the campaign's concurrency cap the call is still accepted: it
/// waits queued in the stream.
#[utoipa::path(post, path = "/api/v1/initiate-call/", tag = "compatible", request_body = crate::openapi::InitiateCall,
    responses(
        (status = 201, description = "The call, in the old CallLog shape", body = Object),
        (status = 400, description = "phone_number and campaign_id are required | Invalid phone number format | Invalid JSON", body = crate::openapi::CompatError),
        (status = 403, description = "The number lacks the consent the campaign requires", body = crate::openapi::CompatError),
        (status = 404, description = "Campaign not found or inactive", body = crate::openapi::CompatError),
        (status = 429, description = "Call to <number> already in progress (or within the duplicate window)", body = crate::openapi::CompatError),
        (status = 503, description = "Broker unavailable", body = crate::openapi::CompatError),
    ))]
pub(crate) async fn initiate(
    State(state): State<AppState>,
    CompatJson(body): CompatJson,
) -> Result<(StatusCode, axum::Json<Value>), CompatError> {
    let (Some(raw_phone), Some(id)) = (super::text(&body, "phone_number"), campaign_id(&body))
    else {
        return Err(CompatError::bad_request(
            "phone_number and campaign_id are required",
        ));
    };
    let phone = PhoneNumber::parse(raw_phone, state.config.phone_validation)
        .map_err(|_| CompatError::bad_request("Invalid phone number format"))?;
    let expires_at = super::expires_at(&body)?;
    let campaign = active_campaign(&state, id).await?;
    let request = accept::accept_one(
        &state,
        &campaign,
        phone.clone(),
        ccm_core::CallId::new(),
        expires_at,
    )
    .await
    .map_err(|e| match e {
        AcceptError::Claim(ClaimError::InProgress) => CompatError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("Call to {phone} already in progress"),
        ),
        AcceptError::Claim(ClaimError::WithinWindow) => CompatError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "Call to {phone} was made within the last {} minutes",
                state.config.duplicate_call_window_minutes
            ),
        ),
        AcceptError::DoNotCall(list) => CompatError::bad_request(list.refusal(&phone)),
        AcceptError::Consent(seen) => CompatError::new(
            StatusCode::FORBIDDEN,
            AcceptError::consent_detail(&seen, &phone),
        ),
        e => CompatError::unavailable(crate::error_chain(&e)),
    })?;
    Ok((
        StatusCode::CREATED,
        axum::Json(call_log(&campaign, &request)),
    ))
}

/// Accepts a batch of calls for one campaign: either the numbers given or all the numbers
/// stored for the campaign. Duplicates are reported per number and the rest go on.
#[utoipa::path(post, path = "/api/v1/bulk-initiate-calls/", tag = "compatible", request_body = crate::openapi::BulkInitiate,
    responses(
        (status = 429, description = "Over the token's rate limit (`rate_limited`); see `Retry-After`", body = crate::openapi::Problem,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 201, description = "success, batch_id, counts, call_ids, calls (each call_id with its phone_number), queue_info, failed_numbers (every failure)", body = Object),
        (status = 400, description = "Missing campaign_id, no numbers, or invalid numbers (up to 5 named)", body = crate::openapi::CompatError),
        (status = 404, description = "Campaign not found or inactive", body = crate::openapi::CompatError),
    ))]
pub(crate) async fn bulk(
    State(state): State<AppState>,
    CompatJson(body): CompatJson,
) -> Result<(StatusCode, axum::Json<Value>), CompatError> {
    let Some(id) = campaign_id(&body) else {
        return Err(CompatError::bad_request("campaign_id is required"));
    };
    let use_campaign_numbers = body
        .get("use_campaign_numbers")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let expires_at = super::expires_at(&body)?;
    let campaign = active_campaign(&state, id).await?;
    let raw: Vec<String> = if use_campaign_numbers {
        contacts::list(&state, campaign.id)
            .await
            .map_err(CompatError::unavailable)?
            .into_iter()
            .map(|p| p.to_string())
            .collect()
    } else {
        match body.get("phone_numbers") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                .collect(),
            Some(_) => return Err(CompatError::bad_request("phone_numbers must be a list")),
        }
    };
    if raw.is_empty() {
        return Err(CompatError::bad_request("No phone numbers provided"));
    }
    if raw.len() > state.config.bulk_max_items {
        return Err(CompatError::bad_request(format!(
            "Too many phone numbers: at most {} per request",
            state.config.bulk_max_items
        )));
    }
    let phones = parse_unique(&raw, &state)?;
    let total_requested = phones.len();
    let (available_slots, _) = crate::routes::campaigns::live_and_queued(&state, &campaign)
        .await
        .map_err(CompatError::unavailable)?;
    let results = accept::accept_many(&state, &campaign, phones.clone(), expires_at).await;

    let mut call_ids = Vec::new();
    // Each accepted id with its number: `call_ids` alone cannot say which number got which id
    // once some numbers failed.
    let mut calls = Vec::new();
    let mut failed = Vec::new();
    for (phone, result) in phones.iter().zip(results) {
        match result {
            Ok(request) => {
                call_ids.push(request.call_id);
                calls.push(json!({"call_id": request.call_id, "phone_number": phone}));
            }
            Err(AcceptError::DoNotCall(list)) => {
                failed.push(json!({"phone_number": phone, "reason": list.refusal(phone)}));
            }
            Err(AcceptError::Consent(seen)) => {
                failed.push(json!({"phone_number": phone, "code": "consent_required",
                    "reason": AcceptError::consent_detail(&seen, phone)}));
            }
            Err(AcceptError::Claim(ClaimError::InProgress | ClaimError::WithinWindow)) => {
                failed
                    .push(json!({"phone_number": phone, "reason": "Duplicate call within window"}));
            }
            Err(e) => {
                tracing::warn!(error = %crate::error_chain(&e), "bulk item not accepted");
                failed.push(
                    json!({"phone_number": phone, "reason": "Service temporarily unavailable"}),
                );
            }
        }
    }
    let accepted = call_ids.len();
    let immediate = accepted.min(available_slots);
    let queued = accepted - immediate;
    let (_, total_in_queue) = crate::routes::campaigns::live_and_queued(&state, &campaign)
        .await
        .unwrap_or((0, queued));
    let mut answer = json!({
        "success": accepted > 0,
        "batch_id": format!("batch_{}_{}", Utc::now().timestamp(), campaign.id),
        "campaign_id": campaign.id,
        "campaign_name": campaign.name,
        "total_requested": total_requested,
        "immediate_processed": immediate,
        "queued_for_later": queued,
        "failed": failed.len(),
        "call_ids": call_ids,
        "calls": calls,
        "queue_info": {
            "available_slots": available_slots,
            "immediate_processed": immediate,
            "queued_pending": queued,
            "total_in_queue": total_in_queue,
            "message": format!(
                "{immediate} calls started immediately, {queued} queued until a slot frees up"
            ),
        },
    });
    // Every failure is listed (the old API listed ten, so a client could not tell which of the
    // others to retry); old clients read the same field with the same items.
    if !failed.is_empty() {
        answer["failed_count"] = json!(failed.len());
        answer["failed_numbers"] = Value::Array(failed);
    }
    Ok((StatusCode::CREATED, axum::Json(answer)))
}

/// Parses every number, keeping the input order and dropping repeats after the first. Any
/// invalid number rejects the whole request, naming up to five of them.
fn parse_unique(raw: &[String], state: &AppState) -> Result<Vec<PhoneNumber>, CompatError> {
    let mut seen = HashSet::with_capacity(raw.len());
    let mut phones = Vec::with_capacity(raw.len());
    let mut invalid = Vec::new();
    for text in raw {
        match PhoneNumber::parse(text, state.config.phone_validation) {
            Ok(phone) => {
                if seen.insert(phone.clone()) {
                    phones.push(phone);
                }
            }
            Err(_) => invalid.push(text.as_str()),
        }
    }
    if invalid.is_empty() {
        return Ok(phones);
    }
    let named = invalid
        .iter()
        .take(INVALID_NAMED)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    let more = invalid.len().saturating_sub(INVALID_NAMED);
    let suffix = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    Err(CompatError::bad_request(format!(
        "Invalid phone numbers: {named}{suffix}"
    )))
}
