//! `GET|POST /api/v1/campaigns/`, `GET /api/v1/campaigns/<id>/` and
//! `POST /api/v1/phone-numbers/` of the compatible API.

use axum::{
    extract::{Path, State},
    http::StatusCode,
};
use ccm_core::{Campaign, CampaignId, PhoneNumber};
use serde_json::{Value, json};

use super::campaign_id;
use crate::{
    AppState,
    compat_error::{CompatError, CompatJson},
    contacts,
    error::AppError,
    routes::campaigns::{self, NewCampaign},
};

/// The old API's campaign, with its phone numbers.
async fn campaign_json(state: &AppState, campaign: &Campaign) -> Result<Value, CompatError> {
    let phones = contacts::list(state, campaign.id)
        .await
        .map_err(CompatError::unavailable)?;
    let numbers: Vec<Value> = phones.iter().map(|p| json!({"phone_number": p})).collect();
    Ok(json!({
        "id": campaign.id,
        "name": campaign.name,
        "description": campaign.description,
        "is_active": campaign.is_active,
        "created_at": campaign.created_at,
        "updated_at": campaign.updated_at,
        "phone_numbers": numbers,
        "phone_count": phones.len(),
    }))
}

/// Active campaigns, oldest first.
#[utoipa::path(get, path = "/api/v1/campaigns/", tag = "compatible",
    responses((status = 200, description = "Array of campaigns with phone_numbers and phone_count", body = Vec<Object>)))]
pub(crate) async fn list(State(state): State<AppState>) -> Result<axum::Json<Value>, CompatError> {
    let all = crate::campaign_store::load_all(&state)
        .await
        .map_err(CompatError::unavailable)?;
    let mut answer = Vec::new();
    for campaign in all.iter().filter(|c| c.accepts_calls()) {
        answer.push(campaign_json(&state, campaign).await?);
    }
    Ok(axum::Json(Value::Array(answer)))
}

/// A DRF-style field error: `{"<field>": ["<message>"]}`.
fn field_error(field: &str, message: &str) -> CompatError {
    CompatError {
        status: StatusCode::BAD_REQUEST,
        body: json!({ field: [message] }),
    }
}

#[utoipa::path(post, path = "/api/v1/campaigns/", tag = "compatible", request_body = crate::openapi::CompatCampaign,
    responses(
        (status = 201, description = "{id, name, description, is_active, created_at, updated_at, phone_numbers, phone_count}", body = Object),
        (status = 400, description = "Field errors: {\"<field>\": [\"<message>\"]}", body = Object),
    ))]
pub(crate) async fn create(
    State(state): State<AppState>,
    CompatJson(body): CompatJson,
) -> Result<(StatusCode, axum::Json<Value>), CompatError> {
    let name = match body.get("name") {
        None | Some(Value::Null) => return Err(field_error("name", "This field is required.")),
        Some(Value::String(name)) if name.trim().is_empty() => {
            return Err(field_error("name", "This field may not be blank."));
        }
        Some(Value::String(name)) if name.trim().chars().count() > campaigns::MAX_NAME_CHARS => {
            return Err(field_error(
                "name",
                "Ensure this field has no more than 200 characters.",
            ));
        }
        Some(Value::String(name)) => name.trim().to_owned(),
        Some(_) => return Err(field_error("name", "Not a valid string.")),
    };
    let description = match body.get("description") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(d)) => d.clone(),
        Some(_) => return Err(field_error("description", "Not a valid string.")),
    };
    let is_active = match body.get("is_active") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => return Err(field_error("is_active", "Must be a valid boolean.")),
    };
    let new = NewCampaign {
        name,
        description,
        is_active,
        max_concurrent_calls: None,
        max_attempts: None,
        time_zone: None,
        calling_window: None,
        max_call_duration_secs: None,
        retry_policy: None,
        // The old API's campaigns are running at once and take calls until cancelled.
        draft: false,
        starts_at: None,
        ends_at: None,
        calling_hours: None,
        blackout_dates: None,
        max_calls_per_second: None,
        answering_machine: None,
        purpose: None,
        ring_timeout_secs: None,
        required_consent: None,
        opt_out_list: Default::default(),
        caller_id_pool: None,
        carrier_weight: None,
        alternate_numbers: None,
    };
    let campaign = campaigns::create_campaign(&state, new)
        .await
        .map_err(|e| match e {
            AppError::Client { detail, .. } => CompatError::bad_request(detail),
            e => CompatError::unavailable(crate::error_chain(&e)),
        })?;
    Ok((
        StatusCode::CREATED,
        axum::Json(campaign_json(&state, &campaign).await?),
    ))
}

#[utoipa::path(get, path = "/api/v1/campaigns/{id}/", tag = "compatible", params(("id" = u64, Path)),
    responses((status = 200, body = Object), (status = 404, description = "Campaign not found", body = crate::openapi::CompatError)))]
pub(crate) async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, CompatError> {
    let not_found = || CompatError::not_found("Campaign not found");
    let id: CampaignId = id.parse().map_err(|_| not_found())?;
    let campaign = crate::campaign_store::load(&state, id)
        .await
        .map_err(CompatError::unavailable)?
        .ok_or_else(not_found)?;
    Ok(axum::Json(campaign_json(&state, &campaign).await?))
}

/// Adds numbers to a campaign; adding a number it already has is a no-op.
#[utoipa::path(post, path = "/api/v1/phone-numbers/", tag = "compatible", request_body = crate::openapi::PhoneNumbers,
    responses(
        (status = 201, description = "{created_count, created_numbers, errors}", body = Object),
        (status = 400, body = crate::openapi::CompatError),
        (status = 404, description = "Campaign not found", body = crate::openapi::CompatError),
    ))]
pub(crate) async fn add_phone_numbers(
    State(state): State<AppState>,
    CompatJson(body): CompatJson,
) -> Result<(StatusCode, axum::Json<Value>), CompatError> {
    let (Some(id), Some(Value::Array(items))) = (campaign_id(&body), body.get("phone_numbers"))
    else {
        return Err(CompatError::bad_request(
            "campaign_id and phone_numbers are required",
        ));
    };
    let not_found = || CompatError::not_found("Campaign not found");
    let id = id.ok_or_else(not_found)?;
    let campaign = crate::campaign_store::load(&state, id)
        .await
        .map_err(CompatError::unavailable)?
        .ok_or_else(not_found)?;
    if items.len() > state.config.bulk_max_items {
        return Err(CompatError::bad_request(format!(
            "Too many phone numbers: at most {} per request",
            state.config.bulk_max_items
        )));
    }
    let mut seen = std::collections::HashSet::with_capacity(items.len());
    let mut valid: Vec<PhoneNumber> = Vec::with_capacity(items.len());
    let mut errors = Vec::new();
    for item in items {
        let text = item
            .as_str()
            .map_or_else(|| item.to_string(), str::to_owned);
        match PhoneNumber::parse(&text, state.config.phone_validation) {
            Ok(phone) => {
                if seen.insert(phone.clone()) {
                    valid.push(phone);
                }
            }
            Err(_) => errors.push(format!("Invalid phone number format: {text}")),
        }
    }
    let created = contacts::add(&state, campaign.id, valid)
        .await
        .map_err(|e| CompatError::unavailable(e.to_string()))?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({
            "created_count": created.len(),
            "created_numbers": created,
            "errors": errors,
        })),
    ))
}
