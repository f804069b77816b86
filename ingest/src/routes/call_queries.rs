//! `GET /api/v1/calls/{id}` and `GET /api/v1/calls`: calls as the read model has them.
//!
//! The list is paginated by keyset on `(created_at, call_id)` (the `calls_created` index):
//! the cursor is the last row's key, so a page costs the same wherever it is and rows added
//! meanwhile never shift a page.

use axum::extract::{Path, State};
use ccm_core::{CallId, CallStatus, CampaignId, PhoneNumber};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    AppState,
    error::{ApiJson, ApiQuery, AppError},
};

const DEFAULT_LIMIT: i64 = 100;
const MAX_LIMIT: i64 = 1000;

/// A call's current state, in the old CallLog's fields.
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct CallView {
    pub call_id: Uuid,
    pub campaign_id: i64,
    pub phone_number: Option<String>,
    pub status: String,
    pub attempt_count: i32,
    pub max_attempts: Option<i32>,
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub next_retry_at: Option<DateTime<Utc>>,
    pub total_call_time: i32,
    pub external_call_id: Option<String>,
    pub error_message: Option<String>,
    pub raw_status: Option<String>,
    /// The contact's custom fields (the extra columns of its CSV import); absent when none.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub custom_fields: Option<serde_json::Value>,
}

/// One recorded event of a call.
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct HistoryEntry {
    pub attempt: i32,
    pub kind: String,
    pub status: String,
    pub occurred_at: DateTime<Utc>,
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CallDetail {
    #[serde(flatten)]
    pub call: CallView,
    pub history: Vec<HistoryEntry>,
}

const COLUMNS: &str = "call_id, campaign_id, phone_number, status, attempt_count, max_attempts, \
    created_at, updated_at, last_attempt_at, next_retry_at, total_call_time, external_call_id, \
    error_message, raw_status, custom_fields";

fn read_error(e: sqlx::Error) -> AppError {
    AppError::unavailable(crate::readmodel::ReadError::Database(e))
}

/// A call's current state and every event recorded for it.
#[utoipa::path(get, path = "/api/v1/calls/{id}", tag = "calls",
    params(("id" = uuid::Uuid, Path, description = "The call id")),
    responses(
        (status = 200, body = CallDetail),
        (status = 400, description = "Not a UUID", body = crate::openapi::Problem),
        (status = 404, description = "Unknown (or not yet projected) call", body = crate::openapi::Problem),
    ))]
pub(crate) async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<ApiJson<CallDetail>, AppError> {
    let id: CallId = id
        .parse()
        .map_err(|e: ccm_core::ids::IdError| AppError::bad_request("invalid_id", e.to_string()))?;
    let call: Option<CallView> =
        sqlx::query_as(&format!("SELECT {COLUMNS} FROM calls WHERE call_id = $1"))
            .bind(id.as_uuid())
            .fetch_optional(&state.pg)
            .await
            .map_err(read_error)?;
    let call = call.ok_or_else(|| {
        AppError::not_found("call_not_found", format!("call {id} is not known (yet)"))
    })?;
    let history: Vec<HistoryEntry> = sqlx::query_as(
        "SELECT attempt, kind, status, occurred_at, payload FROM call_events \
         WHERE call_id = $1 ORDER BY occurred_at, stream, seq",
    )
    .bind(id.as_uuid())
    .fetch_all(&state.pg)
    .await
    .map_err(read_error)?;
    Ok(ApiJson(CallDetail { call, history }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    #[param(value_type = Option<u64>)]
    pub campaign_id: Option<CampaignId>,
    pub status: Option<String>,
    pub phone: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CallPage {
    pub items: Vec<CallView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Calls, oldest first, filtered, in keyset pages.
#[utoipa::path(get, path = "/api/v1/calls", tag = "calls", params(ListQuery),
    responses(
        (status = 429, description = "Over the token's rate limit (`rate_limited`); see `Retry-After`", body = crate::openapi::Problem,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 200, body = CallPage),
        (status = 400, description = "Invalid filter, limit or cursor", body = crate::openapi::Problem),
    ))]
pub(crate) async fn list(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<ApiJson<CallPage>, AppError> {
    let status = q
        .status
        .as_deref()
        .map(|s| {
            s.parse::<CallStatus>()
                .map_err(|e| AppError::bad_request("invalid_status", e.to_string()))
        })
        .transpose()?;
    let phone = q
        .phone
        .as_deref()
        .map(|p| {
            PhoneNumber::parse(p, state.config.phone_validation)
                .map_err(|e| AppError::bad_request("invalid_phone_number", e.to_string()))
        })
        .transpose()?;
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(AppError::bad_request(
            "invalid_limit",
            format!("limit must be 1 to {MAX_LIMIT}"),
        ));
    }
    let cursor = q.cursor.as_deref().map(decode_cursor).transpose()?;
    let items: Vec<CallView> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM calls WHERE created_at IS NOT NULL \
         AND ($1::bigint IS NULL OR campaign_id = $1) \
         AND ($2::text IS NULL OR status = $2) \
         AND ($3::text IS NULL OR phone_number = $3) \
         AND ($4::timestamptz IS NULL OR created_at >= $4) \
         AND ($5::timestamptz IS NULL OR (created_at, call_id) > ($5, $6)) \
         ORDER BY created_at, call_id LIMIT $7"
    ))
    .bind(q.campaign_id.map(|c| c.as_i64()))
    .bind(status.map(|s| s.as_str()))
    .bind(phone.as_ref().map(PhoneNumber::as_str))
    .bind(q.since)
    .bind(cursor.map(|(at, _)| at))
    .bind(cursor.map(|(_, id)| id))
    .bind(limit)
    .fetch_all(&state.pg)
    .await
    .map_err(read_error)?;
    let next_cursor = (items.len() as i64 == limit)
        .then(|| {
            items
                .last()
                .and_then(|c| c.created_at.map(|at| encode_cursor(at, c.call_id)))
        })
        .flatten();
    Ok(ApiJson(CallPage { items, next_cursor }))
}

/// `<microseconds since the epoch>_<uuid>`: opaque to clients, readable in logs.
fn encode_cursor(at: DateTime<Utc>, id: Uuid) -> String {
    format!("{}_{id}", at.timestamp_micros())
}

fn decode_cursor(cursor: &str) -> Result<(DateTime<Utc>, Uuid), AppError> {
    let bad = || AppError::bad_request("invalid_cursor", "the cursor is not one this API returned");
    let (micros, id) = cursor.split_once('_').ok_or_else(bad)?;
    let at = micros
        .parse()
        .ok()
        .and_then(DateTime::from_timestamp_micros)
        .ok_or_else(bad)?;
    Ok((at, id.parse().map_err(|_| bad())?))
}
