//! `POST /api/v1/campaigns` and `GET /api/v1/campaigns/{id}` of the resource API.

use axum::{
    extract::{Path, State},
    http::StatusCode,
};
use ccm_core::{Campaign, CampaignId, CampaignState};
use chrono::Utc;
use serde::Deserialize;
use utoipa_axum::routes;

use crate::routes::table::{Entry, GET, POST, token};
use crate::{
    AppState,
    campaign_store::{StoreError, load, load_all},
    error::{ApiJson, AppError},
};

/// Longest campaign name, as the old API's model allowed.
pub(crate) const MAX_NAME_CHARS: usize = 200;

/// The body of a campaign creation.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
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
    /// Seconds without an outcome before a call ends FAILED (`timeout`); 1 to 86,400.
    #[serde(default)]
    pub max_call_duration_secs: Option<u32>,
    #[serde(default)]
    pub time_zone: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<crate::openapi::CallingWindow>)]
    pub calling_window: Option<ccm_core::campaign::CallingWindow>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub retry_policy: Option<ccm_core::PolicyOverride>,
    /// Create the campaign as a `draft`: calls may be added, nothing is dialled until
    /// `POST /api/v1/campaigns/{id}/start`, and once started it completes by itself when no
    /// call is left. Otherwise it is `running` at once (the old API's behaviour).
    #[serde(default)]
    pub draft: bool,
    /// Nothing is dialled before this instant (RFC 3339).
    #[serde(default)]
    pub starts_at: Option<chrono::DateTime<Utc>>,
    /// The campaign completes at this instant (RFC 3339); queued calls then end CANCELLED.
    #[serde(default)]
    pub ends_at: Option<chrono::DateTime<Utc>>,
    /// Local hours per weekday, in the callee's zone (replace `calling_window`).
    #[serde(default)]
    #[schema(value_type = Option<Vec<crate::openapi::DayHours>>)]
    pub calling_hours: Option<Vec<ccm_core::window::DayHours>>,
    /// Local dates (`YYYY-MM-DD`) on which nobody is called.
    #[serde(default)]
    #[schema(value_type = Option<Vec<String>>)]
    pub blackout_dates: Option<Vec<chrono::NaiveDate>>,
    /// New calls per second across all dialers, 1 to 10,000; absent: no limit.
    #[serde(default)]
    pub max_calls_per_second: Option<u32>,
    /// The campaign's share of the carrier account's rate against the other campaigns
    /// calling at the same time, 1 to 100; absent: 1.
    #[serde(default)]
    pub carrier_weight: Option<u32>,
    /// `answered` (default: a machine's answer completes the call) or `retry` (retried like
    /// RNR), from Twilio's `AnsweredBy`.
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "retry")]
    pub answering_machine: Option<ccm_core::campaign::AnsweringMachine>,
    /// `informational` (default) or `telemarketing`: a telemarketing campaign's phones
    /// ring at least 15 seconds (FCC, 47 CFR 64.1200(a)(6)).
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "telemarketing")]
    pub purpose: Option<ccm_core::campaign::Purpose>,
    /// Seconds a phone rings before the attempt counts as unanswered, 5 to 120 (at least 15
    /// for telemarketing); absent: the carrier adapter's `ring_timeout_secs`.
    #[serde(default)]
    pub ring_timeout_secs: Option<u32>,
    /// The consent a number must have to be called: `prior_express_written`,
    /// `prior_express`, `informational`, `ai_voice` or `recording`; absent: none is checked.
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "prior_express_written")]
    pub required_consent: Option<ccm_core::consent::ConsentType>,
    /// Where a callee who opts out during a call is listed: `global` (default) or `campaign`
    /// (this campaign's do-not-call list).
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "global")]
    pub opt_out_list: Option<ccm_core::campaign::OptOutList>,
    /// The numbers calls are placed from, chosen per call (local presence, caps, a
    /// consistent number per callee); absent: the carrier adapter's `from`.
    #[serde(default)]
    #[schema(value_type = Option<crate::openapi::CallerIdPool>)]
    pub caller_id_pool: Option<ccm_core::caller_id::PoolSpec>,
    /// How calls move through a contact's several numbers (see the contacts route's
    /// `numbers`); absent: only a contact's first number is dialled.
    #[serde(default)]
    #[schema(value_type = Option<crate::openapi::AlternateNumbers>)]
    pub alternate_numbers: Option<ccm_core::contact_numbers::AlternateNumbers>,
}

/// Creates a campaign: stores it in the `campaigns` bucket and creates its dial consumer, so
/// calls accepted a moment later are dialled.
/// Creates a campaign and its dial consumer.
#[utoipa::path(post, path = "/api/v1/campaigns", tag = "campaigns", request_body = NewCampaign,
    responses(
        (status = 201, body = crate::openapi::Campaign),
        (status = 400, description = "Invalid name, limits or schedule", body = crate::openapi::Problem),
        (status = 422, description = "Wrong types or unknown fields", body = crate::openapi::Problem),
    ))]
pub(crate) async fn create(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<NewCampaign>,
) -> Result<(StatusCode, ApiJson<Campaign>), AppError> {
    create_campaign(&state, body)
        .await
        .map(|c| (StatusCode::CREATED, ApiJson(c)))
}

/// Validates and stores a new campaign (both APIs).
pub(crate) async fn create_campaign(
    state: &AppState,
    body: NewCampaign,
) -> Result<Campaign, AppError> {
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
    let now = Utc::now();
    crate::campaign_store::create(state, |id| {
        let mut campaign = Campaign {
            id,
            name: name.to_owned(),
            description: body.description,
            is_active: body.is_active.unwrap_or(true),
            state: if body.draft {
                CampaignState::Draft
            } else {
                CampaignState::Running
            },
            max_concurrent_calls,
            max_attempts,
            created_at: now,
            updated_at: now,
            time_zone: None,
            calling_window: None,
            calling_hours: None,
            blackout_dates: Vec::new(),
            max_call_duration_secs: super::campaign_admin::call_duration(
                body.max_call_duration_secs,
            )?,
            retry_policy: None,
            starts_at: None,
            ends_at: None,
            complete_when_empty: false,
            max_calls_per_second: super::campaign_admin::calls_per_second(
                body.max_calls_per_second,
            )?,
            answering_machine: body.answering_machine.unwrap_or_default(),
            purpose: body.purpose.unwrap_or_default(),
            ring_timeout_secs: body.ring_timeout_secs,
            required_consent: body.required_consent,
            opt_out_list: body.opt_out_list.unwrap_or_default(),
            caller_id_pool: super::campaign_admin::caller_id_pool(state, body.caller_id_pool)?,
            carrier_weight: super::campaign_admin::carrier_weight(body.carrier_weight)?,
            alternate_numbers: super::campaign_admin::alternate_numbers(body.alternate_numbers)?,
            ended_at: None,
        };
        super::campaign_admin::check_ring_time(&campaign)?;
        super::campaign_admin::apply_dates(&mut campaign, body.starts_at, body.ends_at, now)?;
        super::campaign_admin::apply_hours(&mut campaign, body.calling_hours, body.blackout_dates)?;
        super::campaign_admin::apply_schedule(
            &mut campaign,
            body.time_zone,
            body.calling_window,
            body.retry_policy,
        )?;
        Ok(campaign)
    })
    .await
}

/// Every campaign (the resource API's list).
#[utoipa::path(get, path = "/api/v1/campaigns", tag = "campaigns",
    responses(
        (status = 200, body = Vec<crate::openapi::Campaign>),
        (status = 429, description = "Over the token's rate limit (`rate_limited`); see `Retry-After`", body = crate::openapi::Problem,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    ))]
pub(crate) async fn list(
    State(state): State<AppState>,
) -> Result<ApiJson<Vec<Campaign>>, AppError> {
    Ok(ApiJson(load_all(&state).await?))
}

/// Reads one campaign from the bucket.
#[utoipa::path(get, path = "/api/v1/campaigns/{id}", tag = "campaigns",
    params(("id" = u64, Path)),
    responses(
        (status = 200, body = crate::openapi::Campaign),
        (status = 404, body = crate::openapi::Problem),
    ))]
pub(crate) async fn get(
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

/// How the store's errors are answered.
impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(id) => not_found(id),
            StoreError::Contended => {
                AppError::conflict("concurrent_update", "the campaign kept changing; retry")
            }
            StoreError::Document { .. } | StoreError::InvalidId(_) => AppError::internal(e),
            StoreError::Unavailable(_) | StoreError::Consumer(_) | StoreError::IdContended => {
                AppError::unavailable(e)
            }
        }
    }
}

/// Free slots under the campaign's cap and calls waiting in its queue, from its dial
/// consumer: live calls are the messages it holds un-acked, queued ones those not delivered.
pub(crate) async fn live_and_queued(
    state: &AppState,
    campaign: &Campaign,
) -> Result<(usize, usize), AppError> {
    let stream = state
        .js
        .get_stream(ccm_core::topology::names::CALLS)
        .await
        .map_err(AppError::unavailable)?;
    let info = stream
        .consumer_info(ccm_core::subjects::dial_consumer(campaign.id))
        .await
        .map_err(AppError::unavailable)?;
    let cap = usize::try_from(campaign.max_concurrent_calls).unwrap_or(usize::MAX);
    let queued = usize::try_from(info.num_pending).unwrap_or(usize::MAX);
    Ok((cap.saturating_sub(info.num_ack_pending), queued))
}

/// The campaigns' routes: documents, state changes, contacts.
pub(crate) fn routes() -> Vec<Entry> {
    use super::{campaign_admin as admin, contact_import, contacts};
    vec![
        token(routes!(create, list)).expensive(GET),
        token(routes!(get, admin::patch)),
        token(routes!(contacts::add)),
        token(routes!(contact_import::import)).expensive(POST),
        token(routes!(admin::start)),
        token(routes!(admin::pause)),
        token(routes!(admin::resume)),
        token(routes!(admin::cancel)),
        token(routes!(admin::stats)),
        token(routes!(super::call_audit::campaign_csv)).expensive(GET),
        token(routes!(super::rerun::rerun)).expensive(POST),
    ]
    .into_iter()
    .chain(super::caller_ids::routes())
    .collect()
}
