//! Outbound webhook subscriptions: `POST/GET /api/v1/webhooks`,
//! `GET/PATCH/DELETE /api/v1/webhooks/{id}`, `POST /api/v1/webhooks/{id}/rotate-secret`.
//!
//! A subscription is a document in the `webhooks` bucket; ccm-webhooks watches the bucket and
//! delivers. The signing secret is generated here and shown only in the answers to the
//! creation and to a rotation. After a rotation the previous secret keeps signing beside the
//! new one for `webhooks.secret_grace_secs`, so receivers can switch without a gap.
//! Target URLs must be http(s) and, unless `webhooks.allow_private_targets` is set, must not
//! name an address that is not public ([`ccm_core::ssrf`]) nor `localhost`: otherwise any API
//! user could make ccm send requests into its own network. Host names are not resolved here
//! (their answers can change); ccm-webhooks judges the addresses when it connects.

use async_nats::jetstream::kv;
use axum::{
    extract::{Path, State},
    http::StatusCode,
};
use base64::Engine as _;
use ccm_core::{
    CampaignId,
    webhooks::{EVENT_TYPES, Subscription},
};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use utoipa_axum::routes;

use crate::routes::table::{Entry, GET, token};
use crate::{
    AppState,
    error::{ApiJson, AppError},
};

const MAX_URL_CHARS: usize = 2048;
const MAX_DESCRIPTION_CHARS: usize = 500;

/// The body of a creation.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewWebhook {
    /// http or https; private and loopback addresses are refused unless allowed in config.
    pub url: String,
    /// Event types (`completed`, `failed`, `retrying`, `cancelled`, `dead_lettered`, `expired`);
    /// absent means all.
    pub events: Option<Vec<String>>,
    /// Only events of these campaigns; empty or absent means every campaign.
    #[serde(default)]
    #[schema(value_type = Vec<u64>)]
    pub campaign_ids: Vec<CampaignId>,
    pub description: Option<String>,
    pub enabled: Option<bool>,
}

/// The fields a PATCH may change; absent ones stay.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookPatch {
    pub url: Option<String>,
    pub events: Option<Vec<String>>,
    #[schema(value_type = Option<Vec<u64>>)]
    pub campaign_ids: Option<Vec<CampaignId>>,
    pub description: Option<String>,
    pub enabled: Option<bool>,
}

/// A subscription as the API shows it: the secret only at creation and rotation.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WebhookView {
    pub id: String,
    pub url: String,
    pub events: Vec<String>,
    #[schema(value_type = Vec<u64>)]
    pub campaign_ids: Vec<CampaignId>,
    pub enabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// `whsec_<base64>`: shown only in the answers to the creation and to a rotation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Until when the previous secret also signs, after a rotation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_secret_until: Option<chrono::DateTime<chrono::Utc>>,
    /// Why the deliverer disabled the endpoint (410 Gone, or failing for the whole horizon).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disabled_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disabled_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl WebhookView {
    fn of(sub: Subscription, show_secret: bool) -> Self {
        Self {
            secret: show_secret.then_some(sub.secret),
            id: sub.id,
            url: sub.url,
            events: sub.events,
            campaign_ids: sub.campaign_ids,
            enabled: sub.enabled,
            description: sub.description,
            created_at: sub.created_at,
            previous_secret_until: sub
                .previous_secret_until
                .filter(|until| *until > chrono::Utc::now()),
            disabled_reason: sub.disabled_reason,
            disabled_at: sub.disabled_at,
        }
    }
}

/// Creates a subscription and answers its secret (shown only here and after a rotation).
#[utoipa::path(post, path = "/api/v1/webhooks", tag = "webhooks", request_body = NewWebhook,
    responses(
        (status = 201, description = "Created; the answer holds the secret", body = WebhookView),
        (status = 400, description = "Invalid URL, events or description", body = crate::openapi::Problem),
        (status = 422, description = "A private target, or an unknown field", body = crate::openapi::Problem),
    ))]
pub(crate) async fn create(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<NewWebhook>,
) -> Result<(StatusCode, ApiJson<WebhookView>), AppError> {
    let url = check_url(&body.url, state.allow_private_webhook_targets)?;
    let events = check_events(body.events)?;
    let description = check_description(body.description)?;
    let sub = Subscription {
        id: uuid::Uuid::now_v7().to_string(),
        url,
        secret: new_secret(),
        events,
        campaign_ids: body.campaign_ids,
        enabled: body.enabled.unwrap_or(true),
        description,
        created_at: chrono::Utc::now(),
        previous_secret: None,
        previous_secret_until: None,
        disabled_reason: None,
        disabled_at: None,
    };
    let document = serde_json::to_vec(&sub).map_err(AppError::internal)?;
    state
        .webhooks
        .create(&sub.id, document.into())
        .await
        .map_err(AppError::unavailable)?;
    Ok((StatusCode::CREATED, ApiJson(WebhookView::of(sub, true))))
}

/// Every subscription, secrets left out.
#[utoipa::path(get, path = "/api/v1/webhooks", tag = "webhooks",
    responses((status = 200, body = Vec<WebhookView>)))]
pub(crate) async fn list(
    State(state): State<AppState>,
) -> Result<ApiJson<Vec<WebhookView>>, AppError> {
    let mut keys = state.webhooks.keys().await.map_err(AppError::unavailable)?;
    let mut views = Vec::new();
    while let Some(key) = keys.next().await {
        let key = key.map_err(AppError::unavailable)?;
        if let Some(value) = state
            .webhooks
            .get(&key)
            .await
            .map_err(AppError::unavailable)?
        {
            let sub: Subscription = serde_json::from_slice(&value).map_err(AppError::internal)?;
            views.push(WebhookView::of(sub, false));
        }
    }
    views.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(ApiJson(views))
}

/// One subscription, its secret left out.
#[utoipa::path(get, path = "/api/v1/webhooks/{id}", tag = "webhooks",
    params(("id" = String, Path, description = "The webhook id")),
    responses(
        (status = 200, body = WebhookView),
        (status = 404, description = "No such webhook", body = crate::openapi::Problem),
    ))]
pub(crate) async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<ApiJson<WebhookView>, AppError> {
    let (sub, _) = load(&state, &id).await?;
    Ok(ApiJson(WebhookView::of(sub, false)))
}

/// Changes a subscription (compare-and-set, so concurrent edits never lose one). Enabling
/// an endpoint the deliverer disabled clears the reason and gives it a fresh horizon.
#[utoipa::path(patch, path = "/api/v1/webhooks/{id}", tag = "webhooks",
    params(("id" = String, Path, description = "The webhook id")),
    request_body = WebhookPatch,
    responses(
        (status = 200, body = WebhookView),
        (status = 400, description = "Invalid URL, events or description", body = crate::openapi::Problem),
        (status = 404, description = "No such webhook", body = crate::openapi::Problem),
        (status = 409, description = "Changed meanwhile; retry", body = crate::openapi::Problem),
    ))]
pub(crate) async fn patch(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<WebhookPatch>,
) -> Result<ApiJson<WebhookView>, AppError> {
    // Checked before any read, so bad input never depends on the stored state.
    let url = body
        .url
        .map(|u| check_url(&u, state.allow_private_webhook_targets))
        .transpose()?;
    let events = body.events.map(|e| check_events(Some(e))).transpose()?;
    let description = check_description(body.description)?;
    let (mut sub, revision) = load(&state, &id).await?;
    if let Some(url) = url {
        sub.url = url;
    }
    if let Some(events) = events {
        sub.events = events;
    }
    if let Some(campaign_ids) = body.campaign_ids {
        sub.campaign_ids = campaign_ids;
    }
    if description.is_some() {
        sub.description = description;
    }
    if let Some(enabled) = body.enabled {
        sub.enabled = enabled;
        if enabled {
            sub.disabled_reason = None;
            sub.disabled_at = None;
        }
    }
    store(&state, sub, revision, false).await
}

/// Writes a changed subscription if nobody changed it since `revision`.
async fn store(
    state: &AppState,
    sub: Subscription,
    revision: u64,
    show_secret: bool,
) -> Result<ApiJson<WebhookView>, AppError> {
    let document = serde_json::to_vec(&sub).map_err(AppError::internal)?;
    match state
        .webhooks
        .update(&sub.id, document.into(), revision)
        .await
    {
        Ok(_) => Ok(ApiJson(WebhookView::of(sub, show_secret))),
        Err(e) if ccm_core::nats::lost_race(&e) => Err(AppError::conflict(
            "concurrent_update",
            "the subscription changed meanwhile; retry",
        )),
        Err(e) => Err(AppError::unavailable(e)),
    }
}

/// Replaces the signing secret and answers the new one (the only time it is shown). The old
/// one keeps signing beside it for `webhooks.secret_grace_secs`: every request carries both
/// signatures meanwhile, so a receiver may switch to the new secret whenever it likes.
#[utoipa::path(post, path = "/api/v1/webhooks/{id}/rotate-secret", tag = "webhooks",
    params(("id" = String, Path, description = "The webhook id")),
    responses(
        (status = 200, description = "The new secret, and until when the old one still signs", body = WebhookView),
        (status = 404, description = "No such webhook", body = crate::openapi::Problem),
        (status = 409, description = "Changed meanwhile; retry", body = crate::openapi::Problem),
    ))]
pub(crate) async fn rotate_secret(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<ApiJson<WebhookView>, AppError> {
    let (mut sub, revision) = load(&state, &id).await?;
    let grace = chrono::Duration::seconds(
        i64::try_from(state.webhook_secret_grace_secs).unwrap_or(i64::MAX / 1000),
    );
    sub.previous_secret = Some(std::mem::replace(&mut sub.secret, new_secret()));
    sub.previous_secret_until = Some(chrono::Utc::now() + grace);
    store(&state, sub, revision, true).await
}

/// A fresh `whsec_<base64 of 32 random bytes>`.
fn new_secret() -> String {
    let key: [u8; 32] = rand::random();
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    )
}

/// Removes a subscription; events not yet delivered to it are dropped.
#[utoipa::path(delete, path = "/api/v1/webhooks/{id}", tag = "webhooks",
    params(("id" = String, Path, description = "The webhook id")),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "No such webhook", body = crate::openapi::Problem),
    ))]
pub(crate) async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, AppError> {
    load(&state, &id).await?;
    state
        .webhooks
        .delete(&id)
        .await
        .map_err(AppError::unavailable)?;
    Ok(StatusCode::NO_CONTENT)
}

/// The subscription `id` and its revision; 404 when there is none.
pub(crate) async fn load(state: &AppState, id: &str) -> Result<(Subscription, u64), AppError> {
    let not_found = || AppError::not_found("webhook_not_found", format!("no webhook {id}"));
    // Ids are UUIDs; anything else could not be a key (and may not even be a valid subject).
    if uuid::Uuid::parse_str(id).is_err() {
        return Err(not_found());
    }
    let entry = state
        .webhooks
        .entry(id)
        .await
        .map_err(AppError::unavailable)?;
    let entry = entry
        .filter(|e| e.operation == kv::Operation::Put)
        .ok_or_else(not_found)?;
    let sub = serde_json::from_slice(&entry.value).map_err(AppError::internal)?;
    Ok((sub, entry.revision))
}

fn check_events(events: Option<Vec<String>>) -> Result<Vec<String>, AppError> {
    let Some(mut events) = events else {
        return Ok(EVENT_TYPES.iter().map(|e| (*e).to_owned()).collect());
    };
    if events.is_empty() {
        return Err(AppError::bad_request(
            "invalid_events",
            "events must name at least one event type (or be left out for all)",
        ));
    }
    if let Some(bad) = events.iter().find(|e| !EVENT_TYPES.contains(&e.as_str())) {
        return Err(AppError::bad_request(
            "invalid_events",
            format!(
                "unknown event type {bad:?}; known: {}",
                EVENT_TYPES.join(", ")
            ),
        ));
    }
    events.sort();
    events.dedup();
    Ok(events)
}

fn check_description(description: Option<String>) -> Result<Option<String>, AppError> {
    if description
        .as_ref()
        .is_some_and(|d| d.chars().count() > MAX_DESCRIPTION_CHARS)
    {
        return Err(AppError::bad_request(
            "invalid_description",
            format!("description is longer than {MAX_DESCRIPTION_CHARS} characters"),
        ));
    }
    Ok(description)
}

/// Checks a target URL; answers it normalised.
pub fn check_url(raw: &str, allow_private: bool) -> Result<String, AppError> {
    let invalid = |detail: String| AppError::bad_request("invalid_url", detail);
    if raw.chars().count() > MAX_URL_CHARS {
        return Err(invalid(format!(
            "url is longer than {MAX_URL_CHARS} characters"
        )));
    }
    let url = url::Url::parse(raw).map_err(|e| invalid(format!("url is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("url must be http or https".into()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid("url must not carry credentials".into()));
    }
    let refused = match url.host() {
        None => return Err(invalid("url has no host".into())),
        Some(url::Host::Ipv4(ip)) => ccm_core::ssrf::check(ip.into())
            .err()
            .map(|r| r.to_string()),
        Some(url::Host::Ipv6(ip)) => ccm_core::ssrf::check(ip.into())
            .err()
            .map(|r| r.to_string()),
        Some(url::Host::Domain(name)) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            (name == "localhost" || name.ends_with(".localhost"))
                .then(|| format!("{name} is a loopback name"))
        }
    };
    if let Some(refused) = refused.filter(|_| !allow_private) {
        return Err(AppError::Client {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "private_target",
            detail: format!("url must point at a public address: {refused}"),
        });
    }
    Ok(url.to_string())
}

/// The webhook subscriptions' routes, with their delivery log.
pub(crate) fn routes() -> Vec<Entry> {
    use super::webhook_deliveries as deliveries;
    vec![
        token(routes!(create, list)),
        token(routes!(get, patch, delete)),
        token(routes!(rotate_secret)),
        token(routes!(deliveries::list)).expensive(GET),
        token(routes!(deliveries::redeliver)),
        token(routes!(deliveries::replay)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_targets_are_refused_unless_allowed() {
        for url in [
            "http://127.0.0.1:8080/x",
            "http://10.1.2.3/",
            "http://192.168.0.1/",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]/",
            "http://[fd00::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://localhost/",
            "http://0.0.0.0/",
            "http://[64:ff9b::7f00:1]/",
            "http://[2002:a00:1::]/",
            "http://[::127.0.0.1]/",
            "http://[fec0::1]/",
            "http://198.18.0.1/",
            "http://240.0.0.1/",
            "http://224.0.0.1/",
            "http://0.1.2.3/",
        ] {
            assert!(check_url(url, false).is_err(), "{url} accepted");
            assert!(check_url(url, true).is_ok(), "{url} refused though allowed");
        }
        assert!(check_url("https://hooks.example.com/ccm", false).is_ok());
        assert!(check_url("ftp://example.com/", true).is_err());
        assert!(check_url("https://user:pw@example.com/", true).is_err());
        assert!(check_url("not a url", true).is_err());
    }
}
