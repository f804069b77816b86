//! Outbound webhook subscriptions: the document ingest stores in the `webhooks` bucket and
//! ccm-webhooks reads, kept here because both services depend on its exact shape.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{events::EventKind, ids::CampaignId};

/// The lifecycle events a subscription may ask for (the `type` names of [`EventKind`]),
/// `campaign.completed` (a campaign has no call left) and `contact.opted_out`.
pub const EVENT_TYPES: &[&str] = &[
    "completed",
    "failed",
    "retrying",
    "cancelled",
    "dead_lettered",
    "expired",
    "limited",
    "campaign.completed",
    CONTACT_OPTED_OUT,
    CALLER_ID_FLAGGED,
];

/// Sent when a number of a campaign's caller-id pool answers far less than the rest of the
/// pool (see [`crate::caller_id::health`]); at most once a day per campaign and number.
pub const CALLER_ID_FLAGGED: &str = "caller_id.flagged";

/// Sent when a callee asks, during a call, not to be called again (queued by ingest when the
/// carrier's callback says so, through [`crate::webhook_queue::notify`]).
pub const CONTACT_OPTED_OUT: &str = "contact.opted_out";

/// One endpoint subscribed to call lifecycle events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Subscription {
    /// The key in the bucket (a UUID v7).
    pub id: String,
    /// Where events are POSTed (http or https).
    pub url: String,
    /// The signing secret, `whsec_<base64 key>` as Standard Webhooks writes it. Stored so the
    /// deliverer can sign; the API shows it only in the answer to the creation.
    pub secret: String,
    /// Event types delivered; see [`EVENT_TYPES`].
    pub events: Vec<String>,
    /// Only events of these campaigns; empty means every campaign.
    #[serde(default)]
    pub campaign_ids: Vec<CampaignId>,
    /// A disabled subscription receives nothing.
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub created_at: DateTime<Utc>,
    /// The secret replaced by the last rotation, still signing (beside the new one) until
    /// `previous_secret_until`, so receivers can switch without losing a message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_secret_until: Option<DateTime<Utc>>,
    /// Why the deliverer disabled the endpoint (410 Gone, or failing for the whole retry
    /// horizon); cleared when an operator enables it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled_at: Option<DateTime<Utc>>,
}

impl Subscription {
    /// Whether an event of `kind` in `campaign` goes to this endpoint.
    pub fn wants(&self, campaign: CampaignId, kind: &EventKind) -> bool {
        self.enabled && self.matches(campaign, kind)
    }

    /// Whether an event of `kind` in `campaign` is one this endpoint subscribed to, enabled
    /// or not.
    pub fn matches(&self, campaign: CampaignId, kind: &EventKind) -> bool {
        self.events.iter().any(|e| e == kind.name())
            && (self.campaign_ids.is_empty() || self.campaign_ids.contains(&campaign))
    }

    /// The key bytes of the secret: the base64 after `whsec_`.
    pub fn key(&self) -> Option<Vec<u8>> {
        secret_key(&self.secret)
    }

    /// Every key a message sent at `now` is signed with: the current one, then the previous
    /// one while its grace period lasts. None when the current secret is unreadable.
    pub fn signing_keys(&self, now: DateTime<Utc>) -> Option<Vec<Vec<u8>>> {
        let mut keys = vec![self.key()?];
        if let (Some(previous), Some(until)) = (&self.previous_secret, self.previous_secret_until)
            && now < until
        {
            keys.extend(secret_key(previous));
        }
        Some(keys)
    }
}

/// The key bytes of a `whsec_<base64>` secret.
fn secret_key(secret: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let encoded = secret.strip_prefix("whsec_")?;
    base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()
}

/// What ccm-webhooks publishes (core NATS, subject [`ENDPOINT_DISABLED_SUBJECT`]`.<id>`) when
/// it disables an endpoint, so an operator's tooling can alert on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointDisabled {
    /// Always `endpoint.disabled`.
    #[serde(rename = "type")]
    pub kind: String,
    pub endpoint_id: String,
    pub url: String,
    pub reason: String,
    pub at: DateTime<Utc>,
}

/// The subject prefix of [`EndpointDisabled`] notices.
pub const ENDPOINT_DISABLED_SUBJECT: &str = "webhooks.endpoint.disabled";
