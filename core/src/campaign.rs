//! The campaign document kept in the `campaigns` KV bucket.
//!
//! The bucket is the source of truth for campaign settings and state: ingest writes it, the
//! dialer and retrier watch it, and the projector mirrors it into Postgres for queries.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{ids::CampaignId, policy::PolicyOverride};

/// Where a campaign is in its life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CampaignState {
    /// Calls are dialled.
    #[default]
    Active,
    /// Calls wait queued; dialers stop pulling.
    Paused,
    /// Queued calls are terminated as `CANCELLED`.
    Cancelled,
}

/// A campaign's settings and state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Campaign {
    pub id: CampaignId,
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// The old API's flag: an inactive campaign accepts no calls.
    pub is_active: bool,
    #[serde(default)]
    pub state: CampaignState,
    /// The campaign's concurrency cap: its dial consumer's `max_ack_pending`.
    pub max_concurrent_calls: u32,
    /// Attempts per call, including the first.
    pub max_attempts: u32,
    /// Changes to the global retry policy for this campaign's calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_policy: Option<PolicyOverride>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Campaign {
    /// Whether new calls may be accepted and dialled.
    pub fn accepts_calls(&self) -> bool {
        self.is_active && self.state != CampaignState::Cancelled
    }
}
