//! The campaign document kept in the `campaigns` KV bucket.
//!
//! The bucket is the source of truth for campaign settings and state: ingest writes it, the
//! dialer and retrier watch it, and the projector mirrors it into Postgres for queries.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{ids::CampaignId, policy::PolicyOverride};

/// Where a campaign is in its life: `DRAFT → RUNNING ⇄ PAUSED → COMPLETED | CANCELLED`
/// (see [`crate::lifecycle`] for the transitions).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CampaignState {
    /// Being prepared: calls may be added and wait queued; nothing is dialled until started.
    Draft,
    /// Calls are dialled. Documents written before the lifecycle existed say `active`.
    #[default]
    #[serde(alias = "active")]
    Running,
    /// Calls wait queued; dialers stop pulling.
    Paused,
    /// Ended by itself (no call left, or its end date passed); accepts no calls.
    Completed,
    /// Stopped by an operator: queued and scheduled calls end `CANCELLED`.
    Cancelled,
}

impl CampaignState {
    /// Whether the campaign's life is over.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Completed | Self::Cancelled)
    }

    /// The state's wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Draft => "draft",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Completed => "completed",
            Self::Cancelled => "cancelled",
        }
    }
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
    /// Local hours per weekday; when set they replace `calling_window` (see
    /// [`crate::window`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calling_hours: Option<Vec<crate::window::DayHours>>,
    /// Local dates on which nobody is called.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blackout_dates: Vec<chrono::NaiveDate>,
    /// A call with no outcome after this many seconds ends FAILED (`timeout`); none means
    /// the dialer's `max_call_duration_secs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_call_duration_secs: Option<u32>,
    /// Nothing is dialled before this instant (calls accepted earlier wait queued).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starts_at: Option<DateTime<Utc>>,
    /// At this instant the campaign completes: no new calls, queued ones end `CANCELLED`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ends_at: Option<DateTime<Utc>>,
    /// Set when a draft is started: the campaign then completes by itself once no call of
    /// it is left. Campaigns created running (the old API's way) keep taking calls instead.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub complete_when_empty: bool,
    /// What a call answered by a machine (Twilio's `AnsweredBy`) counts as.
    #[serde(default, skip_serializing_if = "AnsweringMachine::is_default")]
    pub answering_machine: AnsweringMachine,
    /// New calls per second of this campaign across all dialers; none: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_calls_per_second: Option<u32>,
    /// When the campaign reached `COMPLETED` or `CANCELLED`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<DateTime<Utc>>,
}

/// What an answer by a machine (voicemail, fax) counts as, per campaign.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnsweringMachine {
    /// Answered: the call completes (the old behaviour).
    #[default]
    Answered,
    /// Not reached: retried like `RNR`, under the `RNR` rules of the retry policy.
    Retry,
}

impl AnsweringMachine {
    fn is_default(&self) -> bool {
        *self == Self::Answered
    }

    /// The status the retry policy decides on for an outcome of `status` whose reason is
    /// `reason` (the Twilio callback route writes `answered_by=<AnsweredBy>` for machines).
    pub fn effective_status(
        self,
        status: crate::OutcomeStatus,
        reason: Option<&str>,
    ) -> crate::OutcomeStatus {
        let by_machine = reason.is_some_and(|r| {
            r.strip_prefix("answered_by=")
                .is_some_and(|who| who.starts_with("machine") || who == "fax")
        });
        if self == Self::Retry && status == crate::OutcomeStatus::Picked && by_machine {
            crate::OutcomeStatus::Rnr
        } else {
            status
        }
    }
}

/// One phone number of a campaign, as kept in the `contacts` bucket under
/// `<campaign>.<digits>` (written by ingest, mirrored into `phone_numbers` by the projector).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contact {
    pub campaign_id: CampaignId,
    pub phone_number: crate::PhoneNumber,
    pub created_at: DateTime<Utc>,
    /// The callee's own IANA time zone, for calling windows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// Custom fields of the contact (the extra columns of a CSV import).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub fields: std::collections::BTreeMap<String, String>,
}

/// Daily hours, local to the callee, during which a campaign may call (`start` < `end`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallingWindow {
    #[serde(with = "hhmm")]
    pub start: chrono::NaiveTime,
    #[serde(with = "hhmm")]
    pub end: chrono::NaiveTime,
}

/// `HH:MM` as the old system's retry YAML wrote times, or `HH:MM:SS` where seconds matter.
pub(crate) mod hhmm {
    use chrono::{NaiveTime, Timelike};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(time: &NaiveTime, s: S) -> Result<S::Ok, S::Error> {
        if time.second() == 0 {
            s.collect_str(&time.format("%H:%M"))
        } else {
            s.collect_str(&time.format("%H:%M:%S"))
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<NaiveTime, D::Error> {
        let text = String::deserialize(d)?;
        NaiveTime::parse_from_str(&text, "%H:%M")
            .or_else(|_| NaiveTime::parse_from_str(&text, "%H:%M:%S"))
            .map_err(|_| serde::de::Error::custom(format!("{text:?} is not HH:MM or HH:MM:SS")))
    }
}

impl Campaign {
    /// Whether new calls may be accepted now.
    pub fn accepts_calls(&self) -> bool {
        self.accepts_calls_at(Utc::now())
    }

    /// Whether new calls may be accepted at `now`: the campaign is active, its life is not
    /// over and its end date has not passed (a draft or paused campaign queues them).
    pub fn accepts_calls_at(&self, now: DateTime<Utc>) -> bool {
        self.is_active && !self.state.is_final() && self.ends_at.is_none_or(|end| now < end)
    }
}
