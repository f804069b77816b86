//! Token authentication: `X-Auth-Token` (the old API's header) or `Authorization: Bearer`.

use axum::{
    extract::{Request, State},
    http::{HeaderMap, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
};
use subtle::ConstantTimeEq;

use crate::AppState;

/// Rejects requests without a configured token, whatever their method. Tokens are compared
/// in constant time so the comparison leaks nothing about how much of a guess was right.
///
/// No method is let through: axum answers HEAD with the GET handler (its status and length
/// told who is on a do-not-call list), and the API serves no browser from another origin, so
/// there is no pre-flight to answer.
pub async fn require_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    match token(request.headers()) {
        None => unauthorized("Authentication token not provided"),
        Some(given) if is_known(&state, given) => next.run(request).await,
        Some(_) => unauthorized("Invalid authentication token"),
    }
}

/// Whether `given` is one of the configured tokens. An empty token is never one (ingest
/// refuses to start with one configured, and this holds even if it did).
pub(crate) fn is_known(state: &AppState, given: &str) -> bool {
    if given.is_empty() {
        return false;
    }
    let known = state.config.auth_tokens.iter().fold(0u8, |hit, t| {
        hit | t.expose().as_bytes().ct_eq(given.as_bytes()).unwrap_u8()
    });
    known == 1
}

/// The token a request carries in `X-Auth-Token` or `Authorization: Bearer`.
pub(crate) fn token(headers: &HeaderMap) -> Option<&str> {
    if let Some(value) = headers.get("x-auth-token").and_then(|v| v.to_str().ok()) {
        return Some(value.trim());
    }
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// The old API's 401 body, kept as it was for its clients.
pub(crate) fn unauthorized(message: &str) -> Response {
    let body = serde_json::json!({"error": {"code": "unauthorized", "message": message}});
    (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response()
}
