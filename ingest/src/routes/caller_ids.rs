//! Pausing and resuming one number of a campaign's caller-id pool:
//! `POST /api/v1/campaigns/{id}/caller-ids/{number}/pause|resume`.
//!
//! A compare-and-set update of the campaign document like any other setting
//! ([`crate::campaign_store`]); dialers follow the document, and a paused number is left out of
//! [`ccm_core::caller_id::choice::preference`] from then on. Calls placed already keep theirs.

use axum::extract::{Path, State};
use ccm_core::{Campaign, PhoneNumber};
use utoipa_axum::routes;

use crate::{
    AppState, campaign_store,
    error::{ApiJson, AppError},
    routes::{
        campaign_admin::parse_id,
        table::{Entry, token},
    },
};

/// Stops showing `number` to callees.
#[utoipa::path(post, path = "/api/v1/campaigns/{id}/caller-ids/{number}/pause", tag = "campaigns",
    params(("id" = u64, Path), ("number" = String, Path, description = "A number of the pool, E.164 (`+` may be sent as `%2B`)")),
    responses(
        (status = 200, body = crate::openapi::Campaign),
        (status = 400, description = "Not a phone number", body = crate::openapi::Problem),
        (status = 404, description = "No such campaign, or the number is not in its pool", body = crate::openapi::Problem),
    ))]
pub(crate) async fn pause(
    State(state): State<AppState>,
    Path((id, number)): Path<(String, String)>,
) -> Result<ApiJson<Campaign>, AppError> {
    set_paused(&state, &id, &number, true).await
}

/// Shows `number` again.
#[utoipa::path(post, path = "/api/v1/campaigns/{id}/caller-ids/{number}/resume", tag = "campaigns",
    params(("id" = u64, Path), ("number" = String, Path, description = "A number of the pool, E.164 (`+` may be sent as `%2B`)")),
    responses(
        (status = 200, body = crate::openapi::Campaign),
        (status = 400, description = "Not a phone number", body = crate::openapi::Problem),
        (status = 404, description = "No such campaign, or the number is not in its pool", body = crate::openapi::Problem),
    ))]
pub(crate) async fn resume(
    State(state): State<AppState>,
    Path((id, number)): Path<(String, String)>,
) -> Result<ApiJson<Campaign>, AppError> {
    set_paused(&state, &id, &number, false).await
}

async fn set_paused(
    state: &AppState,
    id: &str,
    number: &str,
    paused: bool,
) -> Result<ApiJson<Campaign>, AppError> {
    let id = parse_id(id)?;
    // Stored numbers are E.164 whatever rule admitted them: the lenient rule finds them.
    let number: PhoneNumber = number.parse().map_err(|e: ccm_core::phone::PhoneError| {
        AppError::bad_request("invalid_phone_number", e.to_string())
    })?;
    campaign_store::update(state, id, |c| {
        let found = c
            .caller_id_pool
            .as_mut()
            .is_some_and(|pool| pool.set_paused(&number, paused));
        if found {
            Ok(())
        } else {
            Err(AppError::not_found(
                "caller_id_not_found",
                format!("{number} is not in campaign {id}'s caller-id pool"),
            ))
        }
    })
    .await
    .map(ApiJson)
}

/// The pool's routes.
pub(crate) fn routes() -> Vec<Entry> {
    vec![token(routes!(pause)), token(routes!(resume))]
}
