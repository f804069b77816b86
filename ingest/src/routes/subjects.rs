//! A person's data: `GET /api/v1/subjects/{phone}/export` and
//! `POST /api/v1/subjects/{phone}/erase` (an `admin` token's). The work is in
//! [`crate::erase`]; the rules are in `docs/privacy.md`.

use axum::extract::{Path, State};
use ccm_core::PhoneNumber;

use crate::{
    AppState,
    erase::{self, EraseError},
    error::{ApiJson, AppError},
};

fn phone(state: &AppState, input: &str) -> Result<PhoneNumber, AppError> {
    PhoneNumber::parse(input, state.config.phone_validation)
        .map_err(|e| AppError::bad_request("invalid_phone_number", e.to_string()))
}

fn answer(e: EraseError) -> AppError {
    match e {
        EraseError::Live(live) => AppError::conflict(
            "call_in_progress",
            format!(
                "calls of this number have not ended (calls: {}; claims: {}); it is now on \
                 the global do-not-call list, so they end without being placed: erase again \
                 once they have ended",
                serde_json::to_string(&live.calls).unwrap_or_default(),
                serde_json::to_string(&live.claims).unwrap_or_default(),
            ),
        ),
        EraseError::Pg(e) => AppError::unavailable(e),
        e => AppError::unavailable(e),
    }
}

/// Everything ccm holds about a number.
#[utoipa::path(get, path = "/api/v1/subjects/{phone}/export", tag = "subjects",
    params(("phone" = String, Path, description = "The number, parsed as everywhere else")),
    responses(
        (status = 200, body = erase::Export),
        (status = 400, description = "Not a phone number", body = crate::openapi::Problem),
        (status = 403, description = "Only an admin token may export a person's data"),
    ))]
pub async fn export(
    State(state): State<AppState>,
    Path(input): Path<String>,
) -> Result<ApiJson<erase::Export>, AppError> {
    let phone = phone(&state, &input)?;
    erase::export(&state, &phone)
        .await
        .map(ApiJson)
        .map_err(answer)
}

/// Erases a number from every stream, bucket and table, but its do-not-call entry.
#[utoipa::path(post, path = "/api/v1/subjects/{phone}/erase", tag = "subjects",
    params(("phone" = String, Path, description = "The number, parsed as everywhere else")),
    responses(
        (status = 200, description = "What was erased where, and what was kept and why", body = erase::Report),
        (status = 400, description = "Not a phone number", body = crate::openapi::Problem),
        (status = 403, description = "Only an admin token may erase a person's data"),
        (status = 409, description = "Calls of the number have not ended (`call_in_progress`, listed); the number is put on the global do-not-call list anyway", body = crate::openapi::Problem),
    ))]
pub async fn erase(
    State(state): State<AppState>,
    Path(input): Path<String>,
) -> Result<ApiJson<erase::Report>, AppError> {
    let phone = phone(&state, &input)?;
    erase::erase(&state, &phone)
        .await
        .map(ApiJson)
        .map_err(answer)
}
