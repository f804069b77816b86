//! The audit record of one admission decision: what the dialer checked before it placed, put
//! off or ended an attempt, and what it found.
//!
//! Published by the dialer on `calls.audit.<campaign>.<call>` in `CALL_EVENTS` (a subject of
//! its own, so it never moves the call's event subject that `Dialing` is published against),
//! before it acts on the decision: an attempt is never placed, put off or ended without its
//! record stored. The projector keeps every record in `call_audit` (one row per
//! [`AttemptAudit::audit_id`], so a redelivery or a repeated publish adds nothing).
//!
//! Extended by adding sections to [`Checks`]: each one an `Option` with
//! `#[serde(default, skip_serializing_if = "Option::is_none")]`, so records written before a
//! section existed still read, and the stored JSON (`call_audit.checks`) carries any new
//! section without a migration.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{
    events::DialRequest,
    ids::{CallId, CampaignId},
    phone::PhoneNumber,
    status::CallStatus,
    subjects,
};

/// One decision on one delivery of an attempt, with the facts it was made on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptAudit {
    pub call_id: CallId,
    pub campaign_id: CampaignId,
    pub attempt: u32,
    /// How many times the attempt had been put off before this decision (0: first look).
    pub deferrals: u32,
    /// The number this attempt dials, the one its checks were made for (a contact's further
    /// number when the attempt dials one: [`crate::DialRequest::dialled`]).
    pub phone_number: PhoneNumber,
    /// When the decision was made.
    pub at: DateTime<Utc>,
    /// The dialer replica that made it (`<host>:<pid>`).
    pub dialer: String,
    pub decision: AuditDecision,
    /// The call's expiry, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(flatten)]
    pub checks: Checks,
}

/// What was decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum AuditDecision {
    /// Admitted: the dialer goes on to publish `Dialing` and place it.
    Placed,
    /// Put off through `RETRIES` until then.
    Deferred { until: DateTime<Utc> },
    /// Ended unplaced, with this status and reason.
    Ended { status: CallStatus, reason: String },
}

impl AuditDecision {
    /// A short stable name (`placed`, `deferred`, `ended`), part of the record's id.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Placed => "placed",
            Self::Deferred { .. } => "deferred",
            Self::Ended { .. } => "ended",
        }
    }
}

/// The checks and what each saw. A check that was not made (the campaign was not being
/// dialled, so nothing further was read) is absent. Checks added later put what they saw here
/// as sections of their own (`rules` for the packs and frequency limits, `consent`, …), each an
/// `Option` with `#[serde(default, skip_serializing_if = "Option::is_none")]`; the dialer's
/// `Facts` carries this struct, so a check fills its section where it reads its facts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checks {
    pub campaign: CampaignSeen,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dnc: Option<DncSeen>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<TimeSeen>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<WindowSeen>,
    /// The callee's jurisdiction, the rule-pack rules applied and the frequency counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<RulesSeen>,
    /// The consent the campaign requires and the one relied on, or why there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consent: Option<crate::consent::ConsentSeen>,
}

/// The campaign as the decision saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CampaignSeen {
    /// The revision of the campaign's document in the `campaigns` bucket that was read (absent
    /// when the decision used the dialer's view of it, or it was deleted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    /// `dial`, `hold`, or `drain: <reason>`.
    pub dialling: String,
}

/// The do-not-call lists checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DncSeen {
    pub lists: Vec<DncListSeen>,
}

/// One list checked for the number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DncListSeen {
    /// `global` or `campaign:<id>`.
    pub list: String,
    /// The revision of the number's entry in the `dnc` bucket (a listing or its removal), or
    /// absent when the number was never on the list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    pub listed: bool,
}

/// Whose clock the callee was timed by: the one owner is the callee's resolution.
pub use crate::window::ZoneSource;

/// The callee's local time, as the window was checked in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeSeen {
    /// IANA zones (several when the prefix spans zones: the window must be open in all).
    pub zones: Vec<String>,
    pub source: ZoneSource,
    /// The local time in each zone at the decision, RFC 3339 with its offset.
    pub local: Vec<String>,
}

/// The calling window (calling hours and blackout dates of the campaign's revision).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowSeen {
    pub open: bool,
    /// When it opens, if closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opens_at: Option<DateTime<Utc>>,
}

/// What the calling rules saw ([`crate::rules`]): where the callee is by law, which pack
/// rules applied, and each frequency limit's count before this attempt.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RulesSeen {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jurisdiction: Option<crate::window::Jurisdiction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jurisdiction_source: Option<crate::window::PlaceSource>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub counts: Vec<crate::rules::frequency::Count>,
}

impl AttemptAudit {
    /// A record of `decision` on `request` (put off `deferrals` times before).
    pub fn of(
        request: &DialRequest,
        deferrals: u32,
        dialer: &str,
        decision: AuditDecision,
        checks: Checks,
        at: DateTime<Utc>,
    ) -> Self {
        Self {
            call_id: request.call_id,
            campaign_id: request.campaign_id,
            attempt: request.attempt,
            deferrals,
            phone_number: request.dialled().clone(),
            at,
            dialer: dialer.to_owned(),
            decision,
            expires_at: request.expires_at,
            checks,
        }
    }

    /// `<call>/<attempt>/audit/<deferrals>/<decision>`: the `Nats-Msg-Id` and the row's key.
    /// One decision of each kind per delivery of the attempt's dial message: a redelivery
    /// that decides the same is the same record.
    pub fn audit_id(&self) -> String {
        format!(
            "{}/{}/audit/{}/{}",
            self.call_id,
            self.attempt,
            self.deferrals,
            self.decision.name()
        )
    }

    /// `calls.audit.<campaign>.<call>`.
    pub fn subject(&self) -> String {
        subjects::audit(self.campaign_id, self.call_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_and_reads_without_sections_it_did_not_have() {
        let request = DialRequest {
            call_id: CallId::new(),
            campaign_id: CampaignId::new(4).expect("id"),
            phone_number: "+15550001".parse().expect("phone"),
            attempt: 2,
            max_attempts: 3,
            created_at: Utc::now(),
            queued_at: Utc::now(),
            custom_fields: Default::default(),
            expires_at: None,
            alternate: None,
            callback: None,
        };
        let record = AttemptAudit::of(
            &request,
            1,
            "host:1",
            AuditDecision::Deferred { until: Utc::now() },
            Checks {
                campaign: CampaignSeen {
                    revision: Some(9),
                    dialling: "dial".into(),
                },
                ..Checks::default()
            },
            Utc::now(),
        );
        let json = serde_json::to_value(&record).expect("json");
        assert_eq!(json["decision"]["outcome"], "deferred");
        assert_eq!(json["campaign"]["revision"], 9);
        assert!(json.get("dnc").is_none());
        assert_eq!(
            serde_json::from_value::<AttemptAudit>(json).expect("back"),
            record
        );
        assert!(record.audit_id().ends_with("/2/audit/1/deferred"));
        assert!(record.subject().starts_with("calls.audit.4."));
    }
}
