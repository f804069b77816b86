//! `POST /api/v1/campaigns` and `GET /api/v1/campaigns/{id}` of the resource API.

use async_nats::jetstream::kv;
use axum::{
    extract::{Path, State},
    http::StatusCode,
};
use ccm_core::{Campaign, CampaignId, CampaignState};
use chrono::Utc;
use serde::Deserialize;

use crate::{
    AppState,
    error::{ApiJson, AppError},
};

/// Longest campaign name, as the old API's model allowed.
const MAX_NAME_CHARS: usize = 200;

/// The body of a campaign creation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewCampaign {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub is_active: Option<bool>,
    #[serde(default)]
    pub max_concurrent_calls: Option<u32>,
    #[serde(default)]
    pub max_attempts: Option<u32>,
    #[serde(default)]
    pub retry_policy: Option<ccm_core::PolicyOverride>,
}

/// Creates a campaign: stores it in the `campaigns` bucket and creates its dial consumer, so
/// calls accepted a moment later are dialled.
pub async fn create(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<NewCampaign>,
) -> Result<(StatusCode, ApiJson<Campaign>), AppError> {
    let name = body.name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
        return Err(AppError::bad_request(
            "invalid_name",
            format!("name must be 1 to {MAX_NAME_CHARS} characters"),
        ));
    }
    let max_concurrent_calls = body
        .max_concurrent_calls
        .unwrap_or(state.config.default_max_concurrent_calls);
    let max_attempts = body
        .max_attempts
        .unwrap_or(state.config.default_max_attempts);
    if max_concurrent_calls == 0 || max_attempts == 0 {
        return Err(AppError::bad_request(
            "invalid_limits",
            "max_concurrent_calls and max_attempts must be at least 1",
        ));
    }
    let id = next_campaign_id(&state.counters).await?;
    let now = Utc::now();
    let campaign = Campaign {
        id,
        name: name.to_owned(),
        description: body.description,
        is_active: body.is_active.unwrap_or(true),
        state: CampaignState::Active,
        max_concurrent_calls,
        max_attempts,
        retry_policy: body.retry_policy,
        created_at: now,
        updated_at: now,
    };
    // The consumer first: a campaign visible in the bucket must already have somewhere for
    // its calls to go.
    state
        .topology
        .ensure_dial_consumer(&state.js, id, max_concurrent_calls)
        .await
        .map_err(AppError::unavailable)?;
    let document = serde_json::to_vec(&campaign).map_err(AppError::internal)?;
    state
        .campaigns
        .create(id.to_string(), document.into())
        .await
        .map_err(AppError::unavailable)?;
    Ok((StatusCode::CREATED, ApiJson(campaign)))
}

/// Reads one campaign from the bucket.
pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<ApiJson<Campaign>, AppError> {
    let id: CampaignId = id
        .parse()
        .map_err(|e: ccm_core::ids::IdError| AppError::bad_request("invalid_id", e.to_string()))?;
    load(&state, id)
        .await?
        .map(ApiJson)
        .ok_or_else(|| not_found(id))
}

pub(crate) fn not_found(id: CampaignId) -> AppError {
    AppError::not_found(
        "campaign_not_found",
        format!("campaign {id} does not exist"),
    )
}

/// The campaign document, if it exists.
pub(crate) async fn load(state: &AppState, id: CampaignId) -> Result<Option<Campaign>, AppError> {
    let Some(bytes) = state
        .campaigns
        .get(id.to_string())
        .await
        .map_err(AppError::unavailable)?
    else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(AppError::internal)
}

/// Allocates the next campaign id with compare-and-set on the `counters` bucket, so several
/// ingest replicas never hand out the same id.
async fn next_campaign_id(counters: &kv::Store) -> Result<CampaignId, AppError> {
    const KEY: &str = "campaign";
    for _ in 0..100 {
        let entry = counters.entry(KEY).await.map_err(AppError::unavailable)?;
        let result = match entry.filter(|e| e.operation == kv::Operation::Put) {
            None => counters.create(KEY, "1".into()).await.map(|_| 1),
            Some(entry) => {
                let current: u64 = std::str::from_utf8(&entry.value)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                let next = current + 1;
                counters
                    .update(KEY, next.to_string().into(), entry.revision)
                    .await
                    .map(|_| next)
                    // A wrong revision becomes `AlreadyExists`: someone else moved the counter.
                    .map_err(kv::CreateError::from)
            }
        };
        match result {
            Ok(id) => return CampaignId::new(id).map_err(AppError::internal),
            // Another replica took this id; read the counter again.
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => continue,
            Err(e) => return Err(AppError::unavailable(e)),
        }
    }
    Err(AppError::unavailable(std::io::Error::other(
        "campaign id allocation kept conflicting",
    )))
}
