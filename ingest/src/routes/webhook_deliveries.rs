//! An endpoint's delivery log and manual redeliveries:
//! `GET /api/v1/webhooks/{id}/deliveries`, `POST /api/v1/webhooks/{id}/deliveries/{msg_id}/redeliver`
//! and `POST /api/v1/webhooks/{id}/replay`.
//!
//! ccm-webhooks keeps each endpoint's queue and log in PostgreSQL (`webhook_messages`,
//! `webhook_attempts`; the migration says why). A redelivery is a copy of a queued message
//! put on the endpoint's manual lane, which its own worker drains beside the live one: so a
//! replay of a day of events never holds up live deliveries, and it goes through the same
//! signing, retries and log as everything else. The table is ccm-webhooks'; ingest queues the
//! copies through `ccm_core::webhook_queue`, in one statement, rather than asking the
//! deliverer: the request is then durable as soon as it is answered, and works while the
//! deliverer is restarting.

use axum::{
    extract::{Path, State},
    http::StatusCode,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    AppState,
    error::{ApiJson, ApiQuery, AppError},
    routes::webhooks::load,
};

const DEFAULT_LIMIT: i64 = 100;
const MAX_LIMIT: i64 = 1000;

/// One HTTP attempt.
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct DeliveryAttempt {
    /// The attempt's id in the log (also the page cursor).
    pub id: i64,
    /// The `webhook-id` of the message (the same on every attempt and redelivery).
    pub msg_id: String,
    /// `call.completed`, `call.failed`, …
    pub event_type: String,
    pub call_id: Option<Uuid>,
    /// `live` or `manual` (a redelivery).
    pub lane: String,
    /// 1 for the message's first attempt.
    pub attempt: i32,
    /// Absent when no answer came (connection refused, timeout).
    pub status_code: Option<i32>,
    pub succeeded: bool,
    pub latency_ms: i32,
    pub error: Option<String>,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DeliveryQuery {
    /// `succeeded`, `failed`, or an HTTP status code such as `503`.
    pub status: Option<String>,
    /// 1 to 1000 (default 100).
    pub limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeliveryPage {
    /// Newest first.
    pub items: Vec<DeliveryAttempt>,
    /// Pass as `cursor` for the next (older) page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// What a status filter asks for.
enum StatusFilter {
    Succeeded(bool),
    Code(i32),
}

fn status_filter(status: Option<&str>) -> Result<Option<StatusFilter>, AppError> {
    Ok(match status {
        None => None,
        Some("succeeded") => Some(StatusFilter::Succeeded(true)),
        Some("failed") => Some(StatusFilter::Succeeded(false)),
        Some(code) => match code.parse::<i32>() {
            Ok(code) if (100..=599).contains(&code) => Some(StatusFilter::Code(code)),
            _ => {
                return Err(AppError::bad_request(
                    "invalid_status",
                    "status must be succeeded, failed or an HTTP status code (100-599)",
                ));
            }
        },
    })
}

/// The endpoint's delivery attempts, newest first, in keyset pages.
#[utoipa::path(get, path = "/api/v1/webhooks/{id}/deliveries", tag = "webhooks",
    params(("id" = String, Path, description = "The webhook id"), DeliveryQuery),
    responses(
        (status = 429, description = "Over the token's rate limit (`rate_limited`); see `Retry-After`", body = crate::openapi::Problem,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 200, body = DeliveryPage),
        (status = 400, description = "Invalid filter, limit or cursor", body = crate::openapi::Problem),
        (status = 404, description = "No such webhook", body = crate::openapi::Problem),
    ))]
pub(crate) async fn list(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<DeliveryQuery>,
) -> Result<ApiJson<DeliveryPage>, AppError> {
    let filter = status_filter(q.status.as_deref())?;
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(AppError::bad_request(
            "invalid_limit",
            format!("limit must be 1 to {MAX_LIMIT}"),
        ));
    }
    let cursor = q
        .cursor
        .as_deref()
        .map(|c| {
            c.parse::<i64>().map_err(|_| {
                AppError::bad_request("invalid_cursor", "the cursor is not one this API returned")
            })
        })
        .transpose()?;
    load(&state, &id).await?;
    let (succeeded, code) = match filter {
        None => (None, None),
        Some(StatusFilter::Succeeded(s)) => (Some(s), None),
        Some(StatusFilter::Code(c)) => (None, Some(c)),
    };
    let items: Vec<DeliveryAttempt> = sqlx::query_as(
        "SELECT id, msg_id, event_type, call_id, lane, attempt, status_code, succeeded,
             latency_ms, error, at
         FROM webhook_attempts
         WHERE endpoint_id = $1
           AND ($2::bool IS NULL OR succeeded = $2)
           AND ($3::int IS NULL OR status_code = $3)
           AND ($4::bigint IS NULL OR id < $4)
         ORDER BY id DESC LIMIT $5",
    )
    .bind(&id)
    .bind(succeeded)
    .bind(code)
    .bind(cursor)
    .bind(limit)
    .fetch_all(&state.pg)
    .await
    .map_err(AppError::unavailable)?;
    let next_cursor = (items.len() as i64 == limit)
        .then(|| items.last().map(|a| a.id.to_string()))
        .flatten();
    Ok(ApiJson(DeliveryPage { items, next_cursor }))
}

/// How many messages a redelivery queued.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Redelivery {
    pub queued: i64,
}

/// Sends one message to the endpoint again (same `webhook-id` and body, new signature).
#[utoipa::path(post, path = "/api/v1/webhooks/{id}/deliveries/{msg_id}/redeliver", tag = "webhooks",
    params(
        ("id" = String, Path, description = "The webhook id"),
        ("msg_id" = String, Path, description = "The message's `webhook-id`, URL-encoded (`/` as `%2F`)"),
    ),
    responses(
        (status = 202, description = "Queued on the endpoint's manual lane", body = Redelivery),
        (status = 404, description = "No such webhook or message", body = crate::openapi::Problem),
    ))]
pub(crate) async fn redeliver(
    State(state): State<AppState>,
    Path((id, msg_id)): Path<(String, String)>,
) -> Result<(StatusCode, ApiJson<Redelivery>), AppError> {
    load(&state, &id).await?;
    let queued = ccm_core::webhook_queue::redeliver(&state.pg, &id, &msg_id)
        .await
        .map_err(AppError::unavailable)?;
    if queued == 0 {
        return Err(AppError::not_found(
            "message_not_found",
            format!("webhook {id} has no message {msg_id:?}"),
        ));
    }
    Ok((
        StatusCode::ACCEPTED,
        ApiJson(Redelivery {
            queued: queued as i64,
        }),
    ))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Replay {
    /// Every message for this endpoint since then is sent again, oldest first, including
    /// those that came while the endpoint was disabled.
    pub since: DateTime<Utc>,
}

/// Sends every message since a time to the endpoint again.
#[utoipa::path(post, path = "/api/v1/webhooks/{id}/replay", tag = "webhooks",
    params(("id" = String, Path, description = "The webhook id")),
    request_body = Replay,
    responses(
        (status = 202, description = "Queued on the endpoint's manual lane", body = Redelivery),
        (status = 400, description = "`since` is in the future", body = crate::openapi::Problem),
        (status = 404, description = "No such webhook", body = crate::openapi::Problem),
    ))]
pub(crate) async fn replay(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<Replay>,
) -> Result<(StatusCode, ApiJson<Redelivery>), AppError> {
    if body.since > Utc::now() {
        return Err(AppError::bad_request(
            "invalid_since",
            "since is in the future: there is nothing to replay",
        ));
    }
    load(&state, &id).await?;
    let queued = ccm_core::webhook_queue::replay(&state.pg, &id, body.since)
        .await
        .map_err(AppError::unavailable)?;
    Ok((
        StatusCode::ACCEPTED,
        ApiJson(Redelivery {
            queued: queued as i64,
        }),
    ))
}
