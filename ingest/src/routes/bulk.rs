//! `POST /api/v1/calls/bulk?campaign_id=<id>`: up to `bulk_max_items` calls in one request.
//!
//! The body is a JSON array (of numbers as strings, or of `{"phone_number": …}` objects) or
//! `text/csv` (one number per line, or a `phone_number` column under a header line). Every
//! item gets its own result, in input order: accepted with its call id, or rejected with a
//! stable code. Claims run concurrently and publishes are pipelined (see [`crate::accept`]).

use std::collections::HashSet;

use axum::{
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode, header},
};
use ccm_core::claims::ClaimError;
use ccm_core::{CallId, CampaignId, PhoneNumber};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    AppState,
    accept::{self, AcceptError},
    error::{ApiJson, ApiQuery, AppError},
    routes::campaigns,
};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct BulkQuery {
    #[param(value_type = u64)]
    pub campaign_id: CampaignId,
    /// When every call of the request expires (RFC 3339, in the future).
    #[serde(default)]
    #[param(value_type = Option<String>)]
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// The result of one item.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ItemResult {
    pub index: usize,
    pub input: String,
    pub status: ItemStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<uuid::Uuid>)]
    pub call_id: Option<CallId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ItemStatus {
    Accepted,
    Rejected,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BulkResult {
    #[schema(value_type = u64)]
    pub campaign_id: CampaignId,
    pub accepted: usize,
    pub rejected: usize,
    pub results: Vec<ItemResult>,
}

fn rejected(index: usize, input: String, code: &'static str, detail: String) -> ItemResult {
    ItemResult {
        index,
        input,
        status: ItemStatus::Rejected,
        call_id: None,
        code: Some(code),
        detail: Some(detail),
    }
}

/// Many calls for one campaign; every item gets its own result.
#[utoipa::path(post, path = "/api/v1/calls/bulk", tag = "calls", params(BulkQuery),
    request_body(description = "A JSON array of numbers (strings or {\"phone_number\": …}), or text/csv with one number per line or a phone_number column",
        content((Vec<String> = "application/json"), (String = "text/csv"))),
    responses(
        (status = 429, description = "Over the token's rate limit (`rate_limited`); see `Retry-After`", body = crate::openapi::Problem,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 200, description = "Per-item results in input order", body = BulkResult),
        (status = 400, description = "Malformed body or no items", body = crate::openapi::Problem),
        (status = 404, description = "Unknown campaign", body = crate::openapi::Problem),
        (status = 413, description = "More items than bulk_max_items, or body too large", body = crate::openapi::Problem),
        (status = 415, description = "Neither application/json nor text/csv", body = crate::openapi::Problem),
        (status = 422, description = "`expires_at_in_past`", body = crate::openapi::Problem),
    ))]
pub(crate) async fn create(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<BulkQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<ApiJson<BulkResult>, AppError> {
    accept::refuse_past_expiry(query.expires_at)?;
    let inputs = parse_body(&headers, &body)?;
    if inputs.is_empty() {
        return Err(AppError::bad_request(
            "empty_bulk",
            "the request carries no phone numbers",
        ));
    }
    if inputs.len() > state.config.bulk_max_items {
        return Err(AppError::Client {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: "too_many_items",
            detail: format!(
                "{} items; at most {} per request",
                inputs.len(),
                state.config.bulk_max_items
            ),
        });
    }
    let campaign = crate::campaign_store::load(&state, query.campaign_id)
        .await?
        .ok_or_else(|| campaigns::not_found(query.campaign_id))?;
    if let Some(why) = campaign.refusal_at(chrono::Utc::now()) {
        return Err(AppError::conflict(
            "campaign_inactive",
            format!("campaign {} is {why}", campaign.id),
        ));
    }

    let mut results: Vec<Option<ItemResult>> =
        std::iter::repeat_with(|| None).take(inputs.len()).collect();
    let mut seen = HashSet::with_capacity(inputs.len());
    let mut valid: Vec<(usize, PhoneNumber)> = Vec::with_capacity(inputs.len());
    for (index, input) in inputs.iter().enumerate() {
        match PhoneNumber::parse(input, state.config.phone_validation) {
            Ok(phone) if seen.insert(phone.clone()) => valid.push((index, phone)),
            Ok(phone) => {
                results[index] = Some(rejected(
                    index,
                    input.clone(),
                    "repeated_in_request",
                    format!("{phone} appears earlier in this request"),
                ));
            }
            Err(e) => {
                results[index] = Some(rejected(
                    index,
                    input.clone(),
                    "invalid_phone_number",
                    e.to_string(),
                ))
            }
        }
    }
    let phones: Vec<PhoneNumber> = valid.iter().map(|(_, p)| p.clone()).collect();
    let outcomes = accept::accept_many(&state, &campaign, phones, query.expires_at).await;
    let window = state.config.duplicate_call_window_minutes;
    for ((index, phone), outcome) in valid.into_iter().zip(outcomes) {
        let input = inputs[index].clone();
        results[index] = Some(match outcome {
            Ok(request) => ItemResult {
                index,
                input,
                status: ItemStatus::Accepted,
                call_id: Some(request.call_id),
                code: None,
                detail: None,
            },
            Err(AcceptError::Claim(ClaimError::InProgress)) => rejected(
                index,
                input,
                "call_in_progress",
                format!("a call to {phone} is already in progress"),
            ),
            Err(AcceptError::DoNotCall(list)) => {
                rejected(index, input, "do_not_call", list.refusal(&phone))
            }
            Err(AcceptError::Consent(seen)) => rejected(
                index,
                input,
                "consent_required",
                AcceptError::consent_detail(&seen, &phone),
            ),
            Err(AcceptError::Claim(ClaimError::WithinWindow)) => rejected(
                index,
                input,
                "duplicate_within_window",
                format!("a call to {phone} ended less than {window} minutes ago"),
            ),
            Err(e) => {
                tracing::warn!(error = %crate::error_chain(&e), "bulk item not accepted");
                rejected(
                    index,
                    input,
                    "unavailable",
                    "the broker did not store this call; retry it".into(),
                )
            }
        });
    }
    let results: Vec<ItemResult> = results.into_iter().flatten().collect();
    let accepted = results
        .iter()
        .filter(|r| r.status == ItemStatus::Accepted)
        .count();
    Ok(ApiJson(BulkResult {
        campaign_id: campaign.id,
        accepted,
        rejected: results.len() - accepted,
        results,
    }))
}

/// The numbers of the body, as given, by content type.
fn parse_body(headers: &HeaderMap, body: &[u8]) -> Result<Vec<String>, AppError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    match content_type.as_str() {
        "application/json" => parse_json(body),
        "text/csv" => parse_csv(body),
        other => Err(AppError::Client {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            code: "unsupported_media_type",
            detail: format!(
                "content type {other:?} is not supported; send application/json or text/csv"
            ),
        }),
    }
}

fn parse_json(body: &[u8]) -> Result<Vec<String>, AppError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        AppError::bad_request("malformed_json", format!("the body is not valid JSON: {e}"))
    })?;
    let Value::Array(items) = value else {
        return Err(AppError::bad_request(
            "invalid_body",
            "the body must be a JSON array",
        ));
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| match item {
            Value::String(s) => Ok(s),
            Value::Object(mut o) => match o.remove("phone_number") {
                Some(Value::String(s)) if o.is_empty() => Ok(s),
                _ => Err(AppError::bad_request(
                    "invalid_body",
                    format!(
                        "item {i}: an object must have exactly one field, phone_number (a string)"
                    ),
                )),
            },
            other => Err(AppError::bad_request(
                "invalid_body",
                format!("item {i}: expected a string or an object, got {other}"),
            )),
        })
        .collect()
}

fn parse_csv(body: &[u8]) -> Result<Vec<String>, AppError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| AppError::bad_request("invalid_csv", "the CSV body is not UTF-8"))?;
    let mut lines = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .peekable();
    // A header names the column; without one the first column holds the numbers.
    let mut column = 0;
    if let Some(first) = lines.peek()
        && first.chars().any(|c| c.is_ascii_alphabetic())
    {
        let header: Vec<&str> = first
            .split(',')
            .map(|h| h.trim().trim_matches('"'))
            .collect();
        column = header
            .iter()
            .position(|h| h.eq_ignore_ascii_case("phone_number"))
            .ok_or_else(|| {
                AppError::bad_request("invalid_csv", "the CSV header has no phone_number column")
            })?;
        lines.next();
    }
    Ok(lines
        .map(|line| {
            line.split(',')
                .nth(column)
                .unwrap_or_default()
                .trim()
                .trim_matches('"')
                .to_owned()
        })
        .collect())
}
