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
    /// IANA time zone used for the calling window when the callee's number does not tell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// Local hours during which calls may be placed; none means any time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calling_window: Option<CallingWindow>,
    /// A call with no outcome after this many seconds ends FAILED (`timeout`); none means
    /// the dialer's `max_call_duration_secs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_call_duration_secs: Option<u32>,
}

/// One phone number of a campaign, as kept in the `contacts` bucket under
/// `<campaign>.<digits>` (written by ingest, mirrored into `phone_numbers` by the projector).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contact {
    pub campaign_id: CampaignId,
    pub phone_number: crate::PhoneNumber,
    pub created_at: DateTime<Utc>,
}

/// Daily hours, local to the callee, during which a campaign may call (`start` < `end`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallingWindow {
    #[serde(with = "hhmm")]
    pub start: chrono::NaiveTime,
    #[serde(with = "hhmm")]
    pub end: chrono::NaiveTime,
}

/// `HH:MM`, as the old system's retry YAML wrote times.
mod hhmm {
    use chrono::NaiveTime;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(time: &NaiveTime, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&time.format("%H:%M"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<NaiveTime, D::Error> {
        let text = String::deserialize(d)?;
        NaiveTime::parse_from_str(&text, "%H:%M").map_err(serde::de::Error::custom)
    }
}

impl Campaign {
    /// Whether new calls may be accepted and dialled.
    pub fn accepts_calls(&self) -> bool {
        self.is_active && self.state != CampaignState::Cancelled
    }
}
