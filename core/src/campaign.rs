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
    /// This campaign's share of the carrier account's rate against the other campaigns
    /// calling at the same time (1 to 100; none: 1): with weights 3 and 1 a saturated
    /// account places three calls of the first for one of the second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub carrier_weight: Option<u32>,
    /// Why the campaign calls; telemarketing gets the ring-time floor (see [`RingTime`]).
    #[serde(default)]
    pub purpose: Purpose,
    /// Seconds a phone may ring before the attempt counts as unanswered; none: the carrier
    /// adapter's `ring_timeout_secs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring_timeout_secs: Option<u32>,
    /// The consent a number must have for this campaign to call it; none: no consent is
    /// checked (see [`crate::consent`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required_consent: Option<crate::consent::ConsentType>,
    /// The do-not-call list a callee who opts out during one of this campaign's calls is put on.
    #[serde(default, skip_serializing_if = "OptOutList::is_default")]
    pub opt_out_list: OptOutList,
    /// The numbers calls are placed from; none: the carrier adapter's `from` (see
    /// [`crate::caller_id`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller_id_pool: Option<crate::caller_id::CallerIdPool>,
    /// How calls to contacts with several numbers move from one number to the next; none:
    /// only a contact's first number is dialled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alternate_numbers: Option<crate::contact_numbers::AlternateNumbers>,
    /// When the campaign reached `COMPLETED` or `CANCELLED`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<DateTime<Utc>>,
}

/// Where an opt-out heard during a campaign's call is listed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptOutList {
    /// The global do-not-call list: no campaign calls the number again.
    #[default]
    Global,
    /// The campaign's own list: only this campaign stops calling the number.
    Campaign,
}

impl OptOutList {
    fn is_default(&self) -> bool {
        *self == Self::Global
    }

    /// The do-not-call list it means for `campaign`.
    pub fn list(self, campaign: CampaignId) -> crate::dnc::DncList {
        match self {
            Self::Global => crate::dnc::DncList::Global,
            Self::Campaign => crate::dnc::DncList::Campaign(campaign),
        }
    }
}

/// Why a campaign calls, as far as calling rules care.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    /// Not selling anything (reminders, notifications, surveys): no ring-time floor.
    #[default]
    Informational,
    /// Selling: the FCC's rule (47 CFR 64.1200(a)(6)) says an unanswered call must ring for
    /// at least 15 seconds before it is abandoned.
    Telemarketing,
}

/// How long a campaign's phones ring: the one rule the API and every adapter apply.
pub mod ring_time {
    use super::Purpose;

    /// The shortest ring a campaign may set (Twilio's own minimum).
    pub const MIN_SECS: u32 = 5;
    /// The longest ring a campaign may set: nobody answers after two minutes of ringing.
    pub const MAX_SECS: u32 = 120;
    /// The shortest ring of a telemarketing campaign (FCC, 47 CFR 64.1200(a)(6)).
    pub const TELEMARKETING_FLOOR_SECS: u32 = 15;

    /// The ring time to ask the carrier for: the campaign's setting, else the adapter's
    /// default, never under the floor of its purpose (an adapter default of 10 s still
    /// rings a telemarketing call for 15; with neither, a telemarketing call asks for the
    /// floor). None: ask for nothing, the carrier's own default applies.
    pub fn requested_secs(
        purpose: Purpose,
        setting: Option<u32>,
        adapter_default: Option<u32>,
    ) -> Option<u32> {
        let secs = setting.or(adapter_default);
        match purpose {
            Purpose::Telemarketing => Some(secs.map_or(TELEMARKETING_FLOOR_SECS, |s| {
                s.max(TELEMARKETING_FLOOR_SECS)
            })),
            Purpose::Informational => secs,
        }
    }

    /// Checks a campaign's setting against the range and its purpose's floor.
    pub fn check(purpose: Purpose, setting: Option<u32>) -> Result<(), Refused> {
        let Some(secs) = setting else { return Ok(()) };
        if !(MIN_SECS..=MAX_SECS).contains(&secs) {
            return Err(Refused::OutOfRange(secs));
        }
        if purpose == Purpose::Telemarketing && secs < TELEMARKETING_FLOOR_SECS {
            return Err(Refused::BelowFloor(secs));
        }
        Ok(())
    }

    /// A ring time a campaign may not have.
    #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
    pub enum Refused {
        #[error("ring_timeout_secs must be {MIN_SECS} to {MAX_SECS} (got {0})")]
        OutOfRange(u32),
        #[error(
            "a telemarketing campaign must let the phone ring at least {TELEMARKETING_FLOOR_SECS} seconds (47 CFR 64.1200(a)(6)); got {0}"
        )]
        BelowFloor(u32),
    }

    #[cfg(test)]
    mod tests {
        use proptest::prelude::*;

        use super::*;

        fn purpose() -> impl Strategy<Value = Purpose> {
            prop_oneof![Just(Purpose::Informational), Just(Purpose::Telemarketing)]
        }

        proptest! {
            /// Whatever the setting and the adapter's default, a telemarketing call rings
            /// at least the floor, and a setting the API accepted is what the call gets.
            #[test]
            fn a_telemarketing_call_never_rings_less_than_the_floor(
                purpose in purpose(),
                setting in proptest::option::of(0u32..200),
                adapter_default in proptest::option::of(0u32..200),
            ) {
                let secs = requested_secs(purpose, setting, adapter_default);
                if purpose == Purpose::Telemarketing {
                    prop_assert!(secs.is_some_and(|s| s >= TELEMARKETING_FLOOR_SECS));
                }
                if check(purpose, setting).is_ok() && let Some(set) = setting {
                    prop_assert_eq!(secs, Some(set));
                }
                if setting.is_none() && purpose == Purpose::Informational {
                    prop_assert_eq!(secs, adapter_default);
                }
            }
        }

        #[test]
        fn the_edges_of_the_range_and_the_floor() {
            use Purpose::*;
            assert_eq!(check(Informational, Some(5)), Ok(()));
            assert_eq!(check(Informational, Some(4)), Err(Refused::OutOfRange(4)));
            assert_eq!(check(Informational, Some(120)), Ok(()));
            assert_eq!(
                check(Informational, Some(121)),
                Err(Refused::OutOfRange(121))
            );
            assert_eq!(check(Telemarketing, Some(14)), Err(Refused::BelowFloor(14)));
            assert_eq!(check(Telemarketing, Some(15)), Ok(()));
            assert_eq!(check(Telemarketing, None), Ok(()));
            assert_eq!(requested_secs(Telemarketing, None, Some(10)), Some(15));
            assert_eq!(requested_secs(Telemarketing, None, None), Some(15));
            assert_eq!(requested_secs(Informational, None, Some(10)), Some(10));
            assert_eq!(requested_secs(Informational, None, None), None);
            assert_eq!(requested_secs(Telemarketing, Some(40), Some(10)), Some(40));
        }
    }
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
    /// The callee's postal code (a US ZIP code, a Canadian postal code or its first three
    /// characters): their state or province and, where it tells, their zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postal_code: Option<String>,
    /// Custom fields of the contact (the extra columns of a CSV import).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub fields: std::collections::BTreeMap<String, String>,
    /// When calls made from this contact expire (the earlier of this and the call's own
    /// `expires_at` applies: [`crate::expiry::earliest`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// All the contact's numbers in the order they are tried, `phone_number` first, when it
    /// has more than one (empty otherwise, and in contacts written before; see
    /// [`crate::contact_numbers::of_contact`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub numbers: Vec<crate::contact_numbers::ContactNumber>,
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
