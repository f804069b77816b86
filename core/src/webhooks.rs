//! Outbound webhook subscriptions: the document ingest stores in the `webhooks` bucket and
//! ccm-webhooks reads, kept here because both services depend on its exact shape.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{events::EventKind, ids::CampaignId};

/// The lifecycle events a subscription may ask for (the `type` names of [`EventKind`]).
pub const EVENT_TYPES: &[&str] = &[
    "completed",
    "failed",
    "retrying",
    "cancelled",
    "dead_lettered",
];

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
}

impl Subscription {
    /// Whether an event of `kind` in `campaign` goes to this endpoint.
    pub fn wants(&self, campaign: CampaignId, kind: &EventKind) -> bool {
        self.enabled
            && self.events.iter().any(|e| e == kind.name())
            && (self.campaign_ids.is_empty() || self.campaign_ids.contains(&campaign))
    }

    /// The key bytes of the secret: the base64 after `whsec_`.
    pub fn key(&self) -> Option<Vec<u8>> {
        use base64::Engine as _;
        let encoded = self.secret.strip_prefix("whsec_")?;
        base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .ok()
    }
}
