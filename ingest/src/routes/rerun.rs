//! `POST /api/v1/campaigns/{id}/rerun`: a new campaign over the numbers a campaign did not
//! reach (issue 22 item 6, as the batch-call APIs' `retry` does).
//!
//! The plan is made first ([`Selection`], from the read model), then carried out in three
//! short steps: the new campaign is created as a draft with the source's settings, the
//! selected numbers' contacts are copied into it (time zone and custom fields with them), and
//! unless the client asks for a draft it is started with `call_contacts`, through the same
//! path as `POST …/start?call_contacts=true` (do-not-call, claims, publish acknowledged). A
//! rerun that fails after the campaign was created leaves a draft holding the copied
//! contacts, which `start?call_contacts=true` finishes.

use axum::{
    extract::{Path, State},
    http::StatusCode,
};
use ccm_core::{
    CallStatus, Campaign, CampaignState, PhoneNumber, call_lifecycle::CALL_HAS_ENDED_SQL,
    campaign::Contact,
};
use chrono::Utc;
use futures::{StreamExt, TryStreamExt, stream};
use serde::{Deserialize, Serialize};

use crate::{
    AppState,
    error::{ApiJson, AppError},
    routes::{
        campaign_admin::parse_id,
        campaigns::{MAX_NAME_CHARS, not_found},
        contact_calls::{self, Called},
    },
};

/// The outcomes a rerun may select: how an unreached call ended (its final state), or what
/// its last attempt gave. An answered call is never selected.
const SELECTABLE: [CallStatus; 7] = [
    CallStatus::Rnr,
    CallStatus::Disconnected,
    CallStatus::Failed,
    CallStatus::Cancelled,
    CallStatus::Expired,
    CallStatus::Limited,
    CallStatus::DeadLettered,
];

/// The body of a rerun.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RerunRequest {
    /// The outcomes to call again: `RNR`, `DISCONNECTED`, `FAILED`, `CANCELLED`, `EXPIRED`,
    /// `LIMITED`, `DEAD_LETTERED`. A call is selected when it ended in one of them or its last attempt
    /// gave one (a call that ended `FAILED` after three unanswered attempts matches `RNR`).
    #[schema(value_type = Vec<String>, example = json!(["RNR", "FAILED"]))]
    pub outcomes: Vec<String>,
    /// The new campaign's name; default `<source name> (rerun)`.
    #[serde(default)]
    pub name: Option<String>,
    /// Create the new campaign as a draft holding the contacts, without calling them.
    #[serde(default)]
    pub draft: bool,
}

/// What a rerun created.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Rerun {
    #[schema(value_type = crate::openapi::Campaign)]
    pub campaign: Campaign,
    pub source_campaign_id: u64,
    /// Numbers selected (one per number, however many calls it had).
    pub selected: usize,
    /// What calling them gave; absent for a draft.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contacts_called: Option<Called>,
}

/// The parsed request: which statuses select a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Selection {
    statuses: Vec<&'static str>,
}

impl Selection {
    /// Parses the outcome names; an empty, unknown or answered one is a 400.
    pub(crate) fn parse(outcomes: &[String]) -> Result<Self, AppError> {
        if outcomes.is_empty() {
            return Err(invalid("outcomes must name at least one outcome"));
        }
        let mut statuses = Vec::new();
        for name in outcomes {
            let status = SELECTABLE
                .iter()
                .find(|s| s.as_str() == name.trim().to_ascii_uppercase())
                .ok_or_else(|| {
                    let allowed: Vec<&str> = SELECTABLE.iter().map(CallStatus::as_str).collect();
                    invalid(&format!(
                        "{name:?} is not an outcome a rerun can select; one of {allowed:?}"
                    ))
                })?;
            if !statuses.contains(&status.as_str()) {
                statuses.push(status.as_str());
            }
        }
        Ok(Self { statuses })
    }
}

fn invalid(detail: &str) -> AppError {
    AppError::bad_request("invalid_outcomes", detail.to_owned())
}

/// The numbers of `campaign` to call again: each number with an ended call selected by
/// `selection`, and none that any call of the campaign reached (`COMPLETED`). Calls still
/// open are left out: they may yet be answered.
pub(crate) async fn select(
    pg: &sqlx::PgPool,
    campaign: ccm_core::CampaignId,
    selection: &Selection,
) -> Result<Vec<PhoneNumber>, sqlx::Error> {
    let rows: Vec<(String,)> = sqlx::query_as(&format!(
        "WITH last_outcome AS ( \
             SELECT DISTINCT ON (call_id) call_id, status FROM call_events \
             WHERE campaign_id = $1 AND kind = 'outcome' \
             ORDER BY call_id, attempt DESC, occurred_at DESC) \
         SELECT DISTINCT c.phone_number FROM calls c LEFT JOIN last_outcome o USING (call_id) \
         WHERE c.campaign_id = $1 AND c.phone_number IS NOT NULL AND c.{CALL_HAS_ENDED_SQL} \
           AND (c.status = ANY($2) OR o.status = ANY($2)) \
           AND NOT EXISTS (SELECT 1 FROM calls d WHERE d.campaign_id = $1 \
                           AND d.phone_number = c.phone_number AND d.status = 'COMPLETED') \
         ORDER BY 1"
    ))
    .bind(campaign.as_i64())
    .bind(&selection.statuses)
    .fetch_all(pg)
    .await?;
    // A number the read model holds was parsed when its call was accepted.
    Ok(rows
        .into_iter()
        .filter_map(|(phone,)| phone.parse().ok())
        .collect())
}

/// Creates a campaign over the numbers `id` did not reach, and calls them.
#[utoipa::path(post, path = "/api/v1/campaigns/{id}/rerun", tag = "campaigns",
    params(("id" = u64, Path)), request_body = RerunRequest,
    responses(
        (status = 201, body = Rerun),
        (status = 400, description = "No, unknown or answered outcomes (`invalid_outcomes`), or an invalid name", body = crate::openapi::Problem),
        (status = 404, body = crate::openapi::Problem),
        (status = 422, description = "Wrong types or unknown fields", body = crate::openapi::Problem),
        (status = 503, description = "Broker or read model unavailable; a campaign created before the failure is left a draft holding the copied contacts", body = crate::openapi::Problem),
    ))]
pub(crate) async fn rerun(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<RerunRequest>,
) -> Result<(StatusCode, ApiJson<Rerun>), AppError> {
    let source_id = parse_id(&id)?;
    let selection = Selection::parse(&body.outcomes)?;
    let source = crate::campaign_store::load(&state, source_id)
        .await?
        .ok_or_else(|| not_found(source_id))?;
    let name = body
        .name
        .unwrap_or_else(|| format!("{} (rerun)", source.name));
    let name = name.trim().to_owned();
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
        return Err(AppError::bad_request(
            "invalid_name",
            format!("name must be 1 to {MAX_NAME_CHARS} characters"),
        ));
    }
    let phones = select(&state.pg, source_id, &selection)
        .await
        .map_err(AppError::unavailable)?;
    let phones = off_own_list(&state, source_id, phones).await?;

    let campaign = crate::campaign_store::create::<AppError>(&state, |new_id| {
        Ok(copy_of(&source, new_id, name))
    })
    .await?;
    copy_contacts(&state, &source, &campaign, &phones).await?;
    let mut contacts_called = None;
    let campaign = if body.draft {
        campaign
    } else {
        contacts_called = Some(contact_calls::call_all(&state, &campaign, None).await?);
        crate::campaign_store::update::<AppError>(&state, campaign.id, |c| {
            c.apply(ccm_core::lifecycle::Action::Start, Utc::now())
                .map_err(|e| AppError::conflict("invalid_transition", e.to_string()))
        })
        .await?
    };
    Ok((
        StatusCode::CREATED,
        ApiJson(Rerun {
            campaign,
            source_campaign_id: source_id.get(),
            selected: phones.len(),
            contacts_called,
        }),
    ))
}

/// `phones` without those on `source`'s own do-not-call list. The rerun has a new id, so that
/// list (where the source's opt-outs go with `opt_out_list: campaign`) would not bind it; the
/// global list binds every campaign and is checked when the calls are accepted.
async fn off_own_list(
    state: &AppState,
    source: ccm_core::CampaignId,
    phones: Vec<PhoneNumber>,
) -> Result<Vec<PhoneNumber>, AppError> {
    let list = ccm_core::dnc::DncList::Campaign(source);
    let checked: Vec<(PhoneNumber, bool)> = stream::iter(phones)
        .map(|phone| async move {
            let listed = state.dnc.get(list.key(&phone)).await?.is_some();
            Ok::<_, async_nats::jetstream::kv::EntryError>((phone, listed))
        })
        .buffered(64)
        .try_collect()
        .await
        .map_err(AppError::unavailable)?;
    Ok(checked
        .into_iter()
        .filter_map(|(phone, listed)| (!listed).then_some(phone))
        .collect())
}

/// The new campaign: the source's settings, a draft, nothing of its history.
fn copy_of(source: &Campaign, id: ccm_core::CampaignId, name: String) -> Campaign {
    let now = Utc::now();
    Campaign {
        id,
        name,
        state: CampaignState::Draft,
        is_active: true,
        created_at: now,
        updated_at: now,
        // The source's dates belonged to its run.
        starts_at: None,
        ends_at: None,
        complete_when_empty: false,
        ended_at: None,
        ..source.clone()
    }
}

/// Copies each selected number's contact (zone, custom fields) into `campaign`; a number
/// without one (called by the call API, not imported) gets a bare contact.
async fn copy_contacts(
    state: &AppState,
    source: &Campaign,
    campaign: &Campaign,
    phones: &[PhoneNumber],
) -> Result<(), AppError> {
    let contacts: Vec<Contact> = stream::iter(phones.iter().cloned())
        .map(|phone| async move {
            let found = ccm_core::contacts::get(&state.contacts, source.id, &phone).await?;
            let mut contact = found.unwrap_or_else(|| Contact {
                campaign_id: source.id,
                phone_number: phone,
                created_at: Utc::now(),
                time_zone: None,
                postal_code: None,
                fields: Default::default(),
                expires_at: None,
                numbers: Vec::new(),
            });
            contact.campaign_id = campaign.id;
            contact.created_at = Utc::now();
            // The source's expiry was for the source's calls: the rerun's are new calls.
            contact.expires_at = None;
            Ok::<_, ccm_core::contacts::ContactReadError>(contact)
        })
        .buffered(256)
        .try_collect()
        .await
        .map_err(AppError::unavailable)?;
    crate::contacts::put(state, contacts)
        .await
        .map_err(|e| AppError::unavailable(std::io::Error::other(e.to_string())))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_parse_case_insensitively_without_duplicates() {
        let s = Selection::parse(&["rnr".into(), "FAILED".into(), "RNR".into()]).expect("valid");
        assert_eq!(s.statuses, vec!["RNR", "FAILED"]);
    }

    #[test]
    fn an_answered_unknown_or_missing_outcome_is_refused() {
        for bad in [
            vec![],
            vec!["COMPLETED".to_owned()],
            vec!["PICKED".into()],
            vec!["nope".into()],
        ] {
            assert!(Selection::parse(&bad).is_err(), "{bad:?} was accepted");
        }
    }
}
