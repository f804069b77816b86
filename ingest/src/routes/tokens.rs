//! API tokens made and revoked through the API, without a restart:
//! `POST/GET /api/v1/tokens`, `DELETE /api/v1/tokens/{id}` (an `admin` token's).
//!
//! A token is 32 random bytes, shown once in the creation's answer; the `tokens` bucket keeps
//! only its SHA-256, role, name and expiry ([`StoredToken`]). Every ingest replica follows the
//! bucket ([`crate::auth::Tokens::managed`]): the replica that made or revoked a token applies
//! the change at once, the others within the watch's latency. Tokens of the configuration are
//! not listed here and cannot be revoked here (they are revoked by changing the configuration).

use axum::{
    extract::{Path, State},
    http::StatusCode,
};
use base64::Engine as _;
use ccm_core::access::{Role, StoredToken};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa_axum::routes;

use crate::routes::table::{Entry, token};
use crate::{
    AppState,
    error::{ApiJson, AppError},
};

const MAX_NAME_CHARS: usize = 100;

/// The body of a creation.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// Who or what holds it (1-100 characters, no control characters), shown in lists and logs.
    pub name: String,
    /// `admin`, `operator`, `viewer` (read only) or `carrier` (outcome callbacks only).
    #[schema(value_type = String)]
    pub role: Role,
    /// After this instant the token is refused; absent: never.
    pub expires_at: Option<DateTime<Utc>>,
}

/// A token as the API shows it: the token itself only in the creation's answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TokenView {
    pub id: String,
    pub name: String,
    #[schema(value_type = String)]
    pub role: Role,
    pub created_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// `ccm_<base64url>`: shown only here, once; the server keeps its SHA-256.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl TokenView {
    fn of(stored: &StoredToken, token: Option<String>) -> Self {
        Self {
            id: stored.id.clone(),
            name: stored.name.clone(),
            role: stored.role,
            created_at: stored.created_at,
            expires_at: stored.expires_at,
            token,
        }
    }
}

/// Makes a token and answers it (shown only here).
#[utoipa::path(post, path = "/api/v1/tokens", tag = "tokens", request_body = NewToken,
    responses(
        (status = 201, description = "Created; the answer holds the token, shown only here", body = TokenView),
        (status = 400, description = "Invalid name or expiry", body = crate::openapi::Problem),
        (status = 403, description = "Only an admin token may manage tokens"),
        (status = 422, description = "An unknown role or field", body = crate::openapi::Problem),
    ))]
pub(crate) async fn create(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<NewToken>,
) -> Result<(StatusCode, ApiJson<TokenView>), AppError> {
    let name = body.name.trim();
    // Control characters are refused: the name is written to logs, where a line break would
    // let a token's holder forge a log line.
    if name.is_empty()
        || name.chars().count() > MAX_NAME_CHARS
        || name.chars().any(char::is_control)
    {
        return Err(AppError::bad_request(
            "invalid_name",
            format!(
                "name must be 1 to {MAX_NAME_CHARS} characters, none of them control characters"
            ),
        ));
    }
    let now = Utc::now();
    if body.expires_at.is_some_and(|at| at <= now) {
        return Err(AppError::bad_request(
            "invalid_expires_at",
            "expires_at must be in the future",
        ));
    }
    let secret: [u8; 32] = rand::random();
    let token = format!(
        "ccm_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
    );
    let sha256 = hex::encode(Sha256::digest(token.as_bytes()));
    let stored = StoredToken {
        id: uuid::Uuid::now_v7().to_string(),
        name: name.to_owned(),
        role: body.role,
        sha256,
        created_at: now,
        expires_at: body.expires_at,
    };
    let document = serde_json::to_vec(&stored).map_err(AppError::internal)?;
    let revision = state
        .api_tokens
        .create(&stored.id, document.into())
        .await
        .map_err(AppError::unavailable)?;
    // This replica honours it at once; the others when their watch brings it.
    state.tokens.managed().set(
        &stored.id,
        revision,
        Some(std::sync::Arc::new(stored.clone())),
    );
    tracing::info!(id = %stored.id, name = %stored.name, role = stored.role.as_str(), "API token created");
    Ok((
        StatusCode::CREATED,
        ApiJson(TokenView::of(&stored, Some(token))),
    ))
}

/// Every token made through the API (never the tokens themselves).
#[utoipa::path(get, path = "/api/v1/tokens", tag = "tokens",
    responses(
        (status = 200, body = Vec<TokenView>),
        (status = 403, description = "Only an admin token may manage tokens"),
    ))]
pub(crate) async fn list(State(state): State<AppState>) -> ApiJson<Vec<TokenView>> {
    let mut views: Vec<TokenView> = state
        .tokens
        .managed()
        .values()
        .iter()
        .map(|t| TokenView::of(t, None))
        .collect();
    views.sort_by(|a, b| a.id.cmp(&b.id));
    ApiJson(views)
}

/// Revokes a token: refused from now on by this replica, within the watch's latency by others.
#[utoipa::path(delete, path = "/api/v1/tokens/{id}", tag = "tokens",
    params(("id" = String, Path, description = "The token's id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 403, description = "Only an admin token may manage tokens"),
        (status = 404, description = "No such token", body = crate::openapi::Problem),
    ))]
pub(crate) async fn revoke(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, AppError> {
    let not_found = || AppError::not_found("token_not_found", format!("token {id} does not exist"));
    let entry = match state.api_tokens.entry(&id).await {
        Ok(entry) => entry,
        // An id the bucket cannot hold as a key names no token.
        Err(e) if e.kind() == async_nats::jetstream::kv::EntryErrorKind::InvalidKey => {
            return Err(not_found());
        }
        Err(e) => return Err(AppError::unavailable(e)),
    };
    let Some(entry) = entry.filter(|e| e.operation == async_nats::jetstream::kv::Operation::Put)
    else {
        return Err(not_found());
    };
    state
        .api_tokens
        .delete_expect_revision(&id, Some(entry.revision))
        .await
        .map_err(|e| {
            if ccm_core::nats::lost_race(&e) {
                not_found()
            } else {
                AppError::unavailable(e)
            }
        })?;
    // Ids are never reused, so this replica can hold the revocation above any revision.
    state.tokens.managed().set(&id, u64::MAX, None);
    tracing::info!(%id, "API token revoked");
    Ok(StatusCode::NO_CONTENT)
}

/// The tokens' routes: an admin's.
pub(crate) fn routes() -> Vec<Entry> {
    vec![
        token(routes!(create, list)).admin(),
        token(routes!(revoke)).admin(),
    ]
}
