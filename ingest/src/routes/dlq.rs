//! Dead letters: `GET /api/v1/dead-letters` (filters `stream`, `campaign`, `call`, `after`,
//! `limit`), `GET /api/v1/dead-letters/{seq}`, `POST /api/v1/dead-letters/{seq}/redrive` and
//! `DELETE /api/v1/dead-letters/{seq}` (discard). The actions are those of
//! [`ccm_core::dlq`], which `ccm-retrier dlq` runs too; each is recorded as an event of the
//! letter's call.

use axum::extract::{Path, Query, State};
use ccm_core::{
    CallId, CampaignId,
    dlq::{DeadLetter, Dlq, DlqError, Filter, Redriven},
};
use serde::Deserialize;
use utoipa_axum::routes;

use crate::routes::table::{Entry, GET, token};
use crate::{
    AppState,
    error::{ApiJson, AppError},
};

/// Most letters one list returns.
const MAX_LIMIT: usize = 1000;

/// The list's query string; ids are parsed here so a bad one is a 400 with its reason.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only letters taken from this stream (e.g. `CALLS`).
    pub stream: Option<String>,
    /// Only letters of this campaign (its id).
    pub campaign: Option<String>,
    /// Only letters of this call (its UUID).
    pub call: Option<String>,
    /// Only letters after this DLQ sequence (paging).
    pub after: Option<u64>,
    /// At most this many letters, 1 to 1000 (default 100).
    pub limit: Option<usize>,
}

/// Lists letters, oldest first.
#[utoipa::path(get, path = "/api/v1/dead-letters", tag = "dead-letters", params(ListQuery),
    responses(
        (status = 429, description = "Over the token's rate limit (`rate_limited`); see `Retry-After`", body = crate::openapi::Problem,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 200, body = Vec<crate::openapi::DeadLetter>),
        (status = 400, description = "Invalid filter or limit", body = crate::openapi::Problem),
        (status = 503, description = "NATS unavailable", body = crate::openapi::Problem),
    ))]
pub(crate) async fn list(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<ApiJson<Vec<DeadLetter>>, AppError> {
    let Query(query) = query.map_err(|e| AppError::bad_request("invalid_query", e.body_text()))?;
    let campaign = query
        .campaign
        .map(|c| c.parse::<CampaignId>())
        .transpose()
        .map_err(|e| AppError::bad_request("invalid_id", e.to_string()))?;
    let call = query
        .call
        .map(|c| c.parse::<CallId>())
        .transpose()
        .map_err(|e| AppError::bad_request("invalid_id", e.to_string()))?;
    let limit = query.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(AppError::bad_request(
            "invalid_limit",
            format!("limit must be 1 to {MAX_LIMIT}"),
        ));
    }
    // The name becomes a token of a subject filter (`calls.dlq.<stream>`). ccm's streams are
    // named with ASCII letters, digits, `_` and `-` only; anything else (a dot, a wildcard,
    // whitespace, a control character, non-ASCII text) is not a stream a letter came from,
    // and nats-server would refuse the filter, which must not look like an outage.
    if query.stream.as_deref().is_some_and(|s| {
        s.is_empty()
            || s.len() > 255
            || !s
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    }) {
        return Err(AppError::bad_request(
            "invalid_stream",
            "stream must be a stream name",
        ));
    }
    let filter = Filter {
        stream: query.stream,
        campaign,
        call,
        after: query.after,
        limit,
    };
    let letters = open(&state).await?.list(&filter).await.map_err(problem)?;
    Ok(ApiJson(letters))
}

/// One letter.
#[utoipa::path(get, path = "/api/v1/dead-letters/{seq}", tag = "dead-letters",
    params(("seq" = u64, Path, description = "The letter's sequence in DLQ")),
    responses(
        (status = 200, body = crate::openapi::DeadLetter),
        (status = 400, description = "Not a letter number", body = crate::openapi::Problem),
        (status = 404, description = "No such letter", body = crate::openapi::Problem),
        (status = 503, description = "NATS unavailable", body = crate::openapi::Problem),
    ))]
pub(crate) async fn show(
    State(state): State<AppState>,
    Path(seq): Path<String>,
) -> Result<ApiJson<DeadLetter>, AppError> {
    let seq = parse_seq(&seq)?;
    Ok(ApiJson(
        open(&state).await?.show(seq).await.map_err(problem)?,
    ))
}

/// Re-publishes a letter to its source, once.
#[utoipa::path(post, path = "/api/v1/dead-letters/{seq}/redrive", tag = "dead-letters",
    params(("seq" = u64, Path, description = "The letter's sequence in DLQ")),
    responses(
        (status = 200, body = crate::openapi::Redriven),
        (status = 400, description = "Not a letter number, or not a call's letter", body = crate::openapi::Problem),
        (status = 404, description = "No such letter", body = crate::openapi::Problem),
        (status = 409, description = "The call's number is in another live call, or a parked message must be replayed by hand", body = crate::openapi::Problem),
        (status = 503, description = "NATS unavailable", body = crate::openapi::Problem),
    ))]
pub(crate) async fn redrive(
    State(state): State<AppState>,
    Path(seq): Path<String>,
) -> Result<ApiJson<Redriven>, AppError> {
    let seq = parse_seq(&seq)?;
    Ok(ApiJson(
        open(&state).await?.redrive(seq).await.map_err(problem)?,
    ))
}

/// Deletes a letter for good.
#[utoipa::path(delete, path = "/api/v1/dead-letters/{seq}", tag = "dead-letters",
    params(("seq" = u64, Path, description = "The letter's sequence in DLQ")),
    responses(
        (status = 200, description = "The discarded letter", body = crate::openapi::DeadLetter),
        (status = 400, description = "Not a letter number", body = crate::openapi::Problem),
        (status = 404, description = "No such letter", body = crate::openapi::Problem),
        (status = 503, description = "NATS unavailable", body = crate::openapi::Problem),
    ))]
pub(crate) async fn discard(
    State(state): State<AppState>,
    Path(seq): Path<String>,
) -> Result<ApiJson<DeadLetter>, AppError> {
    let seq = parse_seq(&seq)?;
    Ok(ApiJson(
        open(&state).await?.discard(seq).await.map_err(problem)?,
    ))
}

fn parse_seq(seq: &str) -> Result<u64, AppError> {
    seq.parse::<u64>().ok().filter(|s| *s > 0).ok_or_else(|| {
        AppError::bad_request("invalid_id", format!("{seq:?} is not a letter number"))
    })
}

async fn open(state: &AppState) -> Result<Dlq, AppError> {
    Dlq::open(state.js.clone())
        .await
        .map(|dlq| {
            dlq.with_scope(state.config.duplicate_scope)
                .with_claim_settings(state.claims.settings())
        })
        .map_err(AppError::unavailable)
}

fn problem(e: DlqError) -> AppError {
    match e {
        DlqError::NotFound(seq) => {
            AppError::not_found("dead_letter_not_found", format!("no dead letter #{seq}"))
        }
        e @ DlqError::NumberBusy { .. } => AppError::conflict("number_busy", e.to_string()),
        e @ DlqError::NumberInWindow(_) => AppError::conflict("number_in_window", e.to_string()),
        e @ DlqError::NotACall(_) => AppError::bad_request("not_a_call", e.to_string()),
        e @ DlqError::ReplayByHand { .. } => AppError::conflict("replay_by_hand", e.to_string()),
        e => AppError::unavailable(e),
    }
}

/// The dead letters' routes.
pub(crate) fn routes() -> Vec<Entry> {
    vec![
        token(routes!(list)).expensive(GET),
        token(routes!(show, discard)),
        token(routes!(redrive)),
    ]
}
