//! The compatible API: the old Django system's routes, bodies, status codes and messages,
//! kept exactly so its clients work unchanged. Errors are `{"error": …}`, not problem JSON.

pub mod callback;
pub mod calls;
pub mod campaigns;
pub mod metrics;

use ccm_core::{Campaign, CampaignId};
use serde_json::Value;

use utoipa_axum::routes;

use crate::{
    AppState,
    compat_error::CompatError,
    routes::table::{Entry, POST, token},
};

/// Reads `campaign_id` as the old API did: a number or a numeric string. `None` when absent
/// or null; `Some(None)` when present but not a valid id (such a campaign cannot exist).
pub(crate) fn campaign_id(body: &Value) -> Option<Option<CampaignId>> {
    match body.get("campaign_id") {
        None | Some(Value::Null) => None,
        Some(value) => Some(serde_json::from_value(value.clone()).ok()),
    }
}

/// A campaign that exists and accepts calls, or the old API's 404.
pub(crate) async fn active_campaign(
    state: &AppState,
    id: Option<CampaignId>,
) -> Result<Campaign, CompatError> {
    let not_found = || CompatError::not_found("Campaign not found or inactive");
    let id = id.ok_or_else(not_found)?;
    let campaign = crate::campaign_store::load(state, id)
        .await
        .map_err(CompatError::unavailable)?
        .ok_or_else(not_found)?;
    if campaign.accepts_calls() {
        Ok(campaign)
    } else {
        Err(not_found())
    }
}

/// A non-empty string field, trimmed.
pub(crate) fn text<'a>(body: &'a Value, field: &str) -> Option<&'a str> {
    body.get(field)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// The optional `expires_at` (RFC 3339, in the future), an extension of the old contract;
/// a bad or past one is the old API's 400.
pub(crate) fn expires_at(
    body: &Value,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, CompatError> {
    let Some(raw) = text(body, "expires_at") else {
        return Ok(None);
    };
    let at = chrono::DateTime::parse_from_rfc3339(raw)
        .map_err(|_| CompatError::bad_request("expires_at must be an RFC 3339 date-time"))?
        .with_timezone(&chrono::Utc);
    ccm_core::expiry::check_not_past(Some(at), chrono::Utc::now())
        .map_err(|e| CompatError::bad_request(e.to_string()))?;
    Ok(Some(at))
}

/// The compatible API's routes: the old system's paths, trailing slashes included.
pub(crate) fn routes() -> Vec<Entry> {
    vec![
        token(routes!(calls::initiate)),
        token(routes!(calls::bulk)).expensive(POST),
        token(routes!(callback::callback)).callback(),
        token(routes!(campaigns::list, campaigns::create)),
        token(routes!(campaigns::get)),
        token(routes!(campaigns::add_phone_numbers)),
        token(routes!(metrics::metrics)),
    ]
}
