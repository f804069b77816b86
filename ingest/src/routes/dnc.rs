//! Do-not-call lists: `POST /api/v1/dnc` lists numbers (many at once: the bulk import),
//! `GET|DELETE /api/v1/dnc/{phone}` reads or removes one listing. Without `campaign_id` the
//! global list is meant, with it that campaign's. A listing applies at once: ingest refuses
//! the number and dialers skip calls to it already queued (see [`ccm_core::dnc`]). Each write
//! is recorded in this replica's [`crate::dnc_cache`] as soon as the bucket took it, so the
//! next call here sees it; other replicas see it when their watch delivers it.

use async_nats::jetstream::kv;
use axum::{
    extract::{Path, State},
    http::StatusCode,
};
use ccm_core::{
    CampaignId, PhoneNumber,
    dnc::{DncEntry, DncList},
};
use chrono::Utc;
use futures::{StreamExt, TryStreamExt, stream};
use serde::{Deserialize, Serialize};
use utoipa_axum::routes;

use crate::routes::table::{Entry, token};
use crate::{
    AppState,
    error::{ApiJson, ApiQuery, AppError},
    routes::campaigns,
};

/// Most numbers listed by one request.
const MAX_NUMBERS: usize = 100_000;
/// Longest reason kept.
const MAX_REASON_CHARS: usize = 500;

/// Numbers to list.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewListing {
    pub phone_numbers: Vec<String>,
    /// The campaign's list; absent: the global list.
    pub campaign_id: Option<u64>,
    pub reason: Option<String>,
}

/// How many numbers are now listed.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Listed {
    /// `global`, or the campaign id.
    #[schema(value_type = Object)]
    pub list: DncList,
    pub listed: usize,
}

/// Which list a single-number route means.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// The campaign's list; absent: the global list.
    pub campaign_id: Option<u64>,
}

/// One listing.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Listing {
    pub phone_number: String,
    #[schema(value_type = Object)]
    pub list: DncList,
    #[schema(value_type = Object)]
    pub entry: DncEntry,
}

async fn list_of(state: &AppState, campaign: Option<u64>) -> Result<DncList, AppError> {
    let Some(id) = campaign else {
        return Ok(DncList::Global);
    };
    let id = CampaignId::new(id)
        .map_err(|e| AppError::bad_request("invalid_campaign_id", e.to_string()))?;
    crate::campaign_store::load(state, id)
        .await?
        .ok_or_else(|| campaigns::not_found(id))?;
    Ok(DncList::Campaign(id))
}

fn phone(state: &AppState, input: &str) -> Result<PhoneNumber, AppError> {
    PhoneNumber::parse(input, state.config.phone_validation)
        .map_err(|e| AppError::bad_request("invalid_phone_number", e.to_string()))
}

/// Lists numbers (all or nothing: any invalid number refuses the request, each one named).
#[utoipa::path(post, path = "/api/v1/dnc", tag = "campaigns", request_body = NewListing,
    responses(
        (status = 200, body = Listed),
        (status = 400, description = "Invalid numbers (each named), too many, or a bad reason", body = crate::openapi::Problem),
        (status = 404, description = "Unknown campaign", body = crate::openapi::Problem),
    ))]
pub(crate) async fn add(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<NewListing>,
) -> Result<ApiJson<Listed>, AppError> {
    if body.phone_numbers.is_empty() || body.phone_numbers.len() > MAX_NUMBERS {
        return Err(AppError::bad_request(
            "invalid_phone_numbers",
            format!("phone_numbers must hold 1 to {MAX_NUMBERS} numbers"),
        ));
    }
    if body
        .reason
        .as_ref()
        .is_some_and(|r| r.chars().count() > MAX_REASON_CHARS)
    {
        return Err(AppError::bad_request(
            "invalid_reason",
            format!("reason must be at most {MAX_REASON_CHARS} characters"),
        ));
    }
    let list = list_of(&state, body.campaign_id).await?;
    let mut phones = Vec::with_capacity(body.phone_numbers.len());
    let mut errors = Vec::new();
    for (i, input) in body.phone_numbers.iter().enumerate() {
        match PhoneNumber::parse(input, state.config.phone_validation) {
            Ok(phone) => phones.push(phone),
            Err(e) => errors.push(format!("phone_numbers[{i}]: {e}")),
        }
    }
    if !errors.is_empty() {
        errors.truncate(20);
        return Err(AppError::bad_request(
            "invalid_phone_numbers",
            errors.join("; "),
        ));
    }
    phones.sort();
    phones.dedup();
    let entry = serde_json::to_vec(&DncEntry {
        added_at: Utc::now(),
        reason: body.reason,
        opted_out: None,
    })
    .map_err(AppError::internal)?;
    let listed = phones.len();
    stream::iter(phones)
        .map(|phone| {
            let (state, value) = (&state, entry.clone());
            async move {
                let revision = state.dnc.put(list.key(&phone), value.into()).await?;
                state.dnc_cache.record(list, &phone, true, revision);
                Ok::<_, kv::PutError>(())
            }
        })
        .buffer_unordered(256)
        .try_collect::<Vec<_>>()
        .await
        .map_err(AppError::unavailable)?;
    Ok(ApiJson(Listed { list, listed }))
}

/// Whether a number is on the global list (or the campaign's).
#[utoipa::path(get, path = "/api/v1/dnc/{phone}", tag = "campaigns",
    params(("phone" = String, Path), ListQuery),
    responses((status = 200, body = Listing), (status = 404, description = "Not listed", body = crate::openapi::Problem)))]
pub(crate) async fn get(
    State(state): State<AppState>,
    Path(input): Path<String>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<ApiJson<Listing>, AppError> {
    let phone = phone(&state, &input)?;
    let list = list_of(&state, query.campaign_id).await?;
    let value = state
        .dnc
        .get(list.key(&phone))
        .await
        .map_err(AppError::unavailable)?
        .ok_or_else(|| not_listed(&phone))?;
    let entry = serde_json::from_slice(&value).map_err(AppError::internal)?;
    Ok(ApiJson(Listing {
        phone_number: phone.as_str().to_owned(),
        list,
        entry,
    }))
}

/// Removes a number from the global list (or the campaign's).
#[utoipa::path(delete, path = "/api/v1/dnc/{phone}", tag = "campaigns",
    params(("phone" = String, Path), ListQuery),
    responses((status = 204), (status = 404, description = "Not listed", body = crate::openapi::Problem)))]
pub(crate) async fn remove(
    State(state): State<AppState>,
    Path(input): Path<String>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<StatusCode, AppError> {
    let phone = phone(&state, &input)?;
    let list = list_of(&state, query.campaign_id).await?;
    let key = list.key(&phone);
    if state
        .dnc
        .get(key.as_str())
        .await
        .map_err(AppError::unavailable)?
        .is_none()
    {
        return Err(not_listed(&phone));
    }
    state
        .dnc
        .purge(key.as_str())
        .await
        .map_err(AppError::unavailable)?;
    // A purge does not return its revision, which the cache needs to order this removal
    // against its watch; the purge marker (or whatever was written since) carries it.
    match state.dnc.entry(key).await {
        Ok(Some(entry)) => state.dnc_cache.record(
            list,
            &phone,
            entry.operation == kv::Operation::Put,
            entry.revision,
        ),
        // The number is unlisted either way; until the watch delivers the removal this
        // replica keeps refusing it, the safe side.
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(error = %crate::error_chain(&e), "cannot read back a do-not-call removal")
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

fn not_listed(phone: &PhoneNumber) -> AppError {
    AppError::not_found("not_listed", format!("{phone} is not on this list"))
}

/// The do-not-call lists' routes.
pub(crate) fn routes() -> Vec<Entry> {
    vec![token(routes!(add)), token(routes!(get, remove))]
}
