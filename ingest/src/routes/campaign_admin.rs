//! Changing a campaign: `PATCH /api/v1/campaigns/{id}` (settings),
//! `POST /api/v1/campaigns/{id}/pause|resume|cancel` (state), and `GET …/stats`.
//!
//! Changes are compare-and-set updates of the campaign document ([`crate::campaign_store`]),
//! so two concurrent edits never lose one. Ingest only changes the document: the dialer
//! watches the bucket and reacts (stops pulling when paused, terminates queued calls when
//! cancelled).

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use ccm_core::PolicyOverride;
use ccm_core::lifecycle::Action;
use ccm_core::{Campaign, CampaignId, CampaignState, campaign::CallingWindow, window::DayHours};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{
    AppState, campaign_store,
    error::{ApiJson, AppError},
    routes::campaigns::{self, MAX_NAME_CHARS},
};

/// The settings a PATCH may change; absent fields stay as they are.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CampaignPatch {
    pub name: Option<String>,
    pub description: Option<String>,
    pub is_active: Option<bool>,
    pub max_concurrent_calls: Option<u32>,
    pub max_attempts: Option<u32>,
    /// Seconds without an outcome before a call ends FAILED (`timeout`); 1 to 86,400.
    pub max_call_duration_secs: Option<u32>,
    pub time_zone: Option<String>,
    #[schema(value_type = Option<crate::openapi::CallingWindow>)]
    pub calling_window: Option<CallingWindow>,
    #[schema(value_type = Option<Object>)]
    pub retry_policy: Option<PolicyOverride>,
    /// Nothing is dialled before this instant (RFC 3339).
    pub starts_at: Option<DateTime<Utc>>,
    /// The campaign completes at this instant (RFC 3339).
    pub ends_at: Option<DateTime<Utc>>,
    /// Local hours per weekday (replace `calling_window`).
    #[schema(value_type = Option<Vec<crate::openapi::DayHours>>)]
    pub calling_hours: Option<Vec<DayHours>>,
    /// Local dates (`YYYY-MM-DD`) on which nobody is called; replaces the list.
    #[schema(value_type = Option<Vec<String>>)]
    pub blackout_dates: Option<Vec<chrono::NaiveDate>>,
    /// New calls per second across all dialers, 1 to 10,000.
    pub max_calls_per_second: Option<u32>,
    /// The campaign's share of the carrier account's rate against the other campaigns
    /// calling at the same time, 1 to 100.
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
    /// The consent a number must have to be called (see the creation); `null` removes the
    /// requirement.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, example = "prior_express_written")]
    pub required_consent: Option<Option<ccm_core::consent::ConsentType>>,
    /// Where a callee who opts out during a call is listed: `global` or `campaign`.
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "campaign")]
    pub opt_out_list: Option<ccm_core::campaign::OptOutList>,
    /// Replaces the caller-id pool; `null` removes it (calls then show the carrier
    /// adapter's `from`).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<crate::openapi::CallerIdPool>)]
    pub caller_id_pool: Option<Option<ccm_core::caller_id::PoolSpec>>,
    /// How calls move through a contact's several numbers; `null` removes the policy (only
    /// a contact's first number is dialled).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<crate::openapi::AlternateNumbers>)]
    pub alternate_numbers: Option<Option<ccm_core::contact_numbers::AlternateNumbers>>,
}

/// A field that may be sent as `null` to clear it: present (even `null`) is `Some`.
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    <Option<T> as serde::Deserialize>::deserialize(d).map(Some)
}

/// Checks a campaign's policy for contacts with several numbers.
pub(crate) fn alternate_numbers(
    policy: Option<ccm_core::contact_numbers::AlternateNumbers>,
) -> Result<Option<ccm_core::contact_numbers::AlternateNumbers>, AppError> {
    if let Some(p) = &policy {
        p.check()
            .map_err(|e| AppError::bad_request("invalid_alternate_numbers", e.to_string()))?;
    }
    Ok(policy)
}

/// The highest pacing a campaign may set.
const MAX_CALLS_PER_SECOND: u32 = 10_000;

/// Checks a campaign's pacing.
pub(crate) fn calls_per_second(rate: Option<u32>) -> Result<Option<u32>, AppError> {
    match rate {
        Some(r) if r == 0 || r > MAX_CALLS_PER_SECOND => Err(AppError::bad_request(
            "invalid_pacing",
            format!("max_calls_per_second must be 1 to {MAX_CALLS_PER_SECOND}"),
        )),
        other => Ok(other),
    }
}

/// Parses a campaign's caller-id pool under the deployment's phone rule.
pub(crate) fn caller_id_pool(
    state: &AppState,
    spec: Option<ccm_core::caller_id::PoolSpec>,
) -> Result<Option<ccm_core::caller_id::CallerIdPool>, AppError> {
    spec.map(|spec| {
        ccm_core::caller_id::CallerIdPool::parse(spec, state.config.phone_validation)
            .map_err(|e| AppError::bad_request("invalid_caller_id_pool", e.to_string()))
    })
    .transpose()
}

/// The highest carrier weight a campaign may set.
const MAX_CARRIER_WEIGHT: u32 = 100;

/// Checks a campaign's share of the carrier account's rate.
pub(crate) fn carrier_weight(weight: Option<u32>) -> Result<Option<u32>, AppError> {
    match weight {
        Some(w) if w == 0 || w > MAX_CARRIER_WEIGHT => Err(AppError::bad_request(
            "invalid_carrier_weight",
            format!("carrier_weight must be 1 to {MAX_CARRIER_WEIGHT}"),
        )),
        other => Ok(other),
    }
}

/// Validates and sets the start and end dates (shared with creation): the end must be in
/// the future and after the start.
pub(crate) fn apply_dates(
    campaign: &mut Campaign,
    starts_at: Option<DateTime<Utc>>,
    ends_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<(), AppError> {
    let starts = starts_at.or(campaign.starts_at);
    let ends = ends_at.or(campaign.ends_at);
    if let Some(end) = ends_at
        && end <= now
    {
        return Err(AppError::bad_request(
            "invalid_dates",
            "ends_at must be in the future",
        ));
    }
    if let (Some(start), Some(end)) = (starts, ends)
        && start >= end
    {
        return Err(AppError::bad_request(
            "invalid_dates",
            "starts_at must be before ends_at",
        ));
    }
    campaign.starts_at = starts;
    campaign.ends_at = ends;
    Ok(())
}

/// Validates and sets the scheduling settings (shared with creation).
pub(crate) fn apply_schedule(
    campaign: &mut Campaign,
    time_zone: Option<String>,
    window: Option<CallingWindow>,
    retry_policy: Option<PolicyOverride>,
) -> Result<(), AppError> {
    if let Some(zone) = time_zone {
        zone.parse::<chrono_tz::Tz>().map_err(|_| {
            AppError::bad_request(
                "invalid_time_zone",
                format!("{zone:?} is not an IANA time zone"),
            )
        })?;
        campaign.time_zone = Some(zone);
    }
    if let Some(window) = window {
        if window.start >= window.end {
            return Err(AppError::bad_request(
                "invalid_calling_window",
                "calling_window.start must be before calling_window.end",
            ));
        }
        campaign.calling_window = Some(window);
    }
    // The override's shape was checked when the body was parsed.
    if let Some(policy) = retry_policy {
        campaign.retry_policy = Some(policy);
    }
    Ok(())
}

/// Validates and sets weekday calling hours and blackout dates (shared with creation).
pub(crate) fn apply_hours(
    campaign: &mut Campaign,
    hours: Option<Vec<DayHours>>,
    blackout_dates: Option<Vec<chrono::NaiveDate>>,
) -> Result<(), AppError> {
    if let Some(hours) = hours {
        ccm_core::window::validate(&hours)
            .map_err(|e| AppError::bad_request("invalid_calling_hours", e.to_string()))?;
        campaign.calling_hours = Some(hours);
    }
    if let Some(mut dates) = blackout_dates {
        const MAX_BLACKOUT_DATES: usize = 1000;
        if dates.len() > MAX_BLACKOUT_DATES {
            return Err(AppError::bad_request(
                "invalid_blackout_dates",
                format!("at most {MAX_BLACKOUT_DATES} blackout dates"),
            ));
        }
        dates.sort_unstable();
        dates.dedup();
        campaign.blackout_dates = dates;
    }
    Ok(())
}

/// Checks the campaign's ring time against its purpose (after every change to either).
pub(crate) fn check_ring_time(campaign: &Campaign) -> Result<(), AppError> {
    ccm_core::campaign::ring_time::check(campaign.purpose, campaign.ring_timeout_secs).map_err(
        |e| {
            let code = match e {
                ccm_core::campaign::ring_time::Refused::OutOfRange(_) => "invalid_ring_timeout",
                ccm_core::campaign::ring_time::Refused::BelowFloor(_) => "ring_timeout_below_floor",
            };
            AppError::bad_request(code, e.to_string())
        },
    )
}

/// The longest call a campaign may set: a day.
const MAX_CALL_DURATION_SECS: u32 = 86_400;

/// Checks a campaign's maximum call duration.
pub(crate) fn call_duration(secs: Option<u32>) -> Result<Option<u32>, AppError> {
    match secs {
        Some(s) if s == 0 || s > MAX_CALL_DURATION_SECS => Err(AppError::bad_request(
            "invalid_call_duration",
            format!("max_call_duration_secs must be 1 to {MAX_CALL_DURATION_SECS}"),
        )),
        other => Ok(other),
    }
}

pub(crate) fn parse_id(id: &str) -> Result<CampaignId, AppError> {
    id.parse()
        .map_err(|e: ccm_core::ids::IdError| AppError::bad_request("invalid_id", e.to_string()))
}

/// Changes settings; absent fields stay.
#[utoipa::path(patch, path = "/api/v1/campaigns/{id}", tag = "campaigns", params(("id" = u64, Path)),
    request_body = CampaignPatch,
    responses(
        (status = 200, body = crate::openapi::Campaign),
        (status = 400, body = crate::openapi::Problem),
        (status = 404, body = crate::openapi::Problem),
        (status = 422, body = crate::openapi::Problem),
    ))]
pub(crate) async fn patch(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(patch): ApiJson<CampaignPatch>,
) -> Result<ApiJson<Campaign>, AppError> {
    let id = parse_id(&id)?;
    if let Some(name) = &patch.name {
        let chars = name.trim().chars().count();
        if chars == 0 || chars > MAX_NAME_CHARS {
            return Err(AppError::bad_request(
                "invalid_name",
                format!("name must be 1 to {MAX_NAME_CHARS} characters"),
            ));
        }
    }
    if patch.max_concurrent_calls == Some(0) || patch.max_attempts == Some(0) {
        return Err(AppError::bad_request(
            "invalid_limits",
            "max_concurrent_calls and max_attempts must be at least 1",
        ));
    }
    let pool = match patch.caller_id_pool.clone() {
        Some(spec) => Some(caller_id_pool(&state, spec)?),
        None => None,
    };
    campaign_store::update(&state, id, |c| {
        if c.state.is_final() {
            return Err(AppError::conflict(
                "campaign_ended",
                format!(
                    "campaign {id} is {}; its settings are final",
                    c.state.as_str()
                ),
            ));
        }
        apply_dates(c, patch.starts_at, patch.ends_at, Utc::now())?;
        apply_hours(c, patch.calling_hours.clone(), patch.blackout_dates.clone())?;
        if let Some(choice) = patch.answering_machine {
            c.answering_machine = choice;
        }
        if patch.max_calls_per_second.is_some() {
            c.max_calls_per_second = calls_per_second(patch.max_calls_per_second)?;
        }
        if patch.carrier_weight.is_some() {
            c.carrier_weight = carrier_weight(patch.carrier_weight)?;
        }
        if let Some(name) = &patch.name {
            c.name = name.trim().to_owned();
        }
        if let Some(description) = &patch.description {
            c.description = description.clone();
        }
        if let Some(active) = patch.is_active {
            c.is_active = active;
        }
        if let Some(cap) = patch.max_concurrent_calls {
            c.max_concurrent_calls = cap;
        }
        if let Some(attempts) = patch.max_attempts {
            c.max_attempts = attempts;
        }
        if patch.max_call_duration_secs.is_some() {
            c.max_call_duration_secs = call_duration(patch.max_call_duration_secs)?;
        }
        if let Some(purpose) = patch.purpose {
            c.purpose = purpose;
        }
        if patch.ring_timeout_secs.is_some() {
            c.ring_timeout_secs = patch.ring_timeout_secs;
        }
        if let Some(required) = patch.required_consent {
            c.required_consent = required;
        }
        if let Some(list) = patch.opt_out_list {
            c.opt_out_list = list;
        }
        if let Some(pool) = &pool {
            c.caller_id_pool = pool.clone();
        }
        if let Some(policy) = &patch.alternate_numbers {
            c.alternate_numbers = alternate_numbers(policy.clone())?;
        }
        // Checked on the result: turning a campaign with a 10 s ring into telemarketing is
        // refused as setting 10 s on a telemarketing campaign is.
        check_ring_time(c)?;
        apply_schedule(
            c,
            patch.time_zone.clone(),
            patch.calling_window,
            patch.retry_policy.clone(),
        )
    })
    .await
    .map(ApiJson)
}

async fn set_state(
    state: &AppState,
    id: &str,
    action: Action,
) -> Result<ApiJson<Campaign>, AppError> {
    let id = parse_id(id)?;
    campaign_store::update(state, id, |c| {
        c.apply(action, Utc::now()).map_err(|e| {
            let code = match e.from {
                CampaignState::Cancelled => "campaign_cancelled",
                CampaignState::Completed => "campaign_completed",
                _ => "invalid_transition",
            };
            AppError::conflict(code, format!("campaign {id}: {e}"))
        })
    })
    .await
    .map(ApiJson)
}

/// `?call_contacts=true`: start by calling every contact of the campaign.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct StartQuery {
    #[serde(default)]
    pub call_contacts: bool,
    /// With `call_contacts`: when the calls expire (RFC 3339, in the future); a contact's own
    /// earlier `expires_at` wins.
    #[serde(default)]
    #[param(value_type = Option<String>)]
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// The started campaign, and what calling its contacts gave.
#[derive(Debug, Serialize)]
pub struct Started {
    #[serde(flatten)]
    pub campaign: Campaign,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contacts_called: Option<crate::routes::contact_calls::Called>,
}

/// A draft campaign starts dialling; once started it completes when no call is left. With
/// `call_contacts=true` a call is first accepted for each of its contacts (do-not-call and
/// duplicate refusals counted), so the campaign cannot complete before they are queued.
#[utoipa::path(post, path = "/api/v1/campaigns/{id}/start", tag = "campaigns", params(("id" = u64, Path), StartQuery),
    responses((status = 200, description = "The campaign, with `contacts_called` counts when asked", body = crate::openapi::Campaign), (status = 404, body = crate::openapi::Problem), (status = 409, description = "Not a draft", body = crate::openapi::Problem)))]
pub(crate) async fn start(
    State(state): State<AppState>,
    Path(id): Path<String>,
    crate::error::ApiQuery(query): crate::error::ApiQuery<StartQuery>,
) -> Result<ApiJson<Started>, AppError> {
    let mut contacts_called = None;
    crate::accept::refuse_past_expiry(query.expires_at)?;
    if query.call_contacts {
        let campaign_id = parse_id(&id)?;
        let campaign = crate::campaign_store::load(&state, campaign_id)
            .await?
            .ok_or_else(|| campaigns::not_found(campaign_id))?;
        if let Err(e) = campaign.transition(Action::Start) {
            return Err(AppError::conflict(
                "invalid_transition",
                format!("campaign {campaign_id}: {e}"),
            ));
        }
        // Only a draft's start calls its contacts: a start repeated once the campaign runs
        // (a client retrying after a lost answer) must not call them again. A start that
        // failed half-way left it a draft, and its retry finishes the job (see
        // `contact_calls`: each contact's call keeps its id, so none is doubled).
        if campaign.state == CampaignState::Draft {
            contacts_called = Some(
                crate::routes::contact_calls::call_all(&state, &campaign, query.expires_at).await?,
            );
        }
    }
    let ApiJson(campaign) = set_state(&state, &id, Action::Start).await?;
    Ok(ApiJson(Started {
        campaign,
        contacts_called,
    }))
}

/// Dialers stop pulling the campaign's calls; they wait queued.
#[utoipa::path(post, path = "/api/v1/campaigns/{id}/pause", tag = "campaigns", params(("id" = u64, Path)),
    responses((status = 200, body = crate::openapi::Campaign), (status = 404, body = crate::openapi::Problem), (status = 409, body = crate::openapi::Problem)))]
pub(crate) async fn pause(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<ApiJson<Campaign>, AppError> {
    set_state(&state, &id, Action::Pause).await
}

/// Dialing continues.
#[utoipa::path(post, path = "/api/v1/campaigns/{id}/resume", tag = "campaigns", params(("id" = u64, Path)),
    responses((status = 200, body = crate::openapi::Campaign), (status = 404, body = crate::openapi::Problem), (status = 409, description = "Cancelled for good", body = crate::openapi::Problem)))]
pub(crate) async fn resume(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<ApiJson<Campaign>, AppError> {
    set_state(&state, &id, Action::Resume).await
}

/// Queued calls end CANCELLED; no new calls are accepted.
#[utoipa::path(post, path = "/api/v1/campaigns/{id}/cancel", tag = "campaigns", params(("id" = u64, Path)),
    responses((status = 200, body = crate::openapi::Campaign), (status = 404, body = crate::openapi::Problem), (status = 409, description = "Completed", body = crate::openapi::Problem)))]
pub(crate) async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<ApiJson<Campaign>, AppError> {
    set_state(&state, &id, Action::Cancel).await
}

/// A campaign's progress.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CampaignStats {
    #[schema(value_type = u64)]
    pub campaign_id: CampaignId,
    #[schema(value_type = String, example = "running")]
    pub state: CampaignState,
    /// Calls by current status, from the read model.
    pub by_status: BTreeMap<String, i64>,
    /// Calls being dialled now (the dial consumer's un-acked messages).
    pub live_calls: usize,
    /// Calls waiting for a slot (the dial consumer's undelivered messages).
    pub queued: usize,
    pub retrying: i64,
    pub dead_letters: i64,
}

/// Progress: calls by status, live, queued, retrying, dead letters.
#[utoipa::path(get, path = "/api/v1/campaigns/{id}/stats", tag = "campaigns", params(("id" = u64, Path)),
    responses((status = 200, body = CampaignStats), (status = 404, body = crate::openapi::Problem)))]
pub(crate) async fn stats(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<ApiJson<CampaignStats>, AppError> {
    let id = parse_id(&id)?;
    let campaign = crate::campaign_store::load(&state, id)
        .await?
        .ok_or_else(|| campaigns::not_found(id))?;
    let (free, queued) = campaigns::live_and_queued(&state, &campaign).await?;
    let cap = usize::try_from(campaign.max_concurrent_calls).unwrap_or(usize::MAX);
    let read = |e| AppError::unavailable(crate::readmodel::ReadError::Database(e));
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM calls WHERE campaign_id = $1 GROUP BY status")
            .bind(id.as_i64())
            .fetch_all(&state.pg)
            .await
            .map_err(read)?;
    let dead_letters: i64 =
        sqlx::query_scalar("SELECT count(*) FROM dead_letters WHERE campaign_id = $1")
            .bind(id.as_i64())
            .fetch_one(&state.pg)
            .await
            .map_err(read)?;
    let by_status: BTreeMap<String, i64> = rows.into_iter().collect();
    Ok(ApiJson(CampaignStats {
        campaign_id: id,
        state: campaign.state,
        retrying: by_status.get("RETRYING").copied().unwrap_or(0),
        by_status,
        live_calls: cap.saturating_sub(free),
        queued,
        dead_letters,
    }))
}
