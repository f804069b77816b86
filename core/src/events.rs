//! The messages that flow through JetStream.
//!
//! There are two payload types. A [`DialRequest`] on `calls.dial.<campaign>` is one call
//! attempt waiting for a dialer; because the projector reads `CALLS` too, publishing it *is*
//! the call's `QUEUED` state. A [`CallEvent`] on `calls.event.…` or `calls.outcome.…` is
//! everything that happens to an attempt afterwards. Both are JSON; unknown fields are
//! ignored so that a newer producer does not break an older consumer during a rolling upgrade.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{
    ids::{CallId, CampaignId},
    phone::PhoneNumber,
    status::{CallStatus, OutcomeStatus},
    subjects,
};

/// One call attempt, queued for a dialer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DialRequest {
    pub call_id: CallId,
    pub campaign_id: CampaignId,
    pub phone_number: PhoneNumber,
    /// 1 for the first attempt; the retrier publishes n+1.
    pub attempt: u32,
    pub max_attempts: u32,
    /// When the call (not this attempt) was accepted.
    pub created_at: DateTime<Utc>,
    /// When this attempt was queued.
    pub queued_at: DateTime<Utc>,
    /// The contact's custom fields (the extra columns of its CSV import), for the carrier and
    /// for every later stage. Absent when empty, so messages without it still parse.
    #[serde(default, skip_serializing_if = "CustomFields::is_empty")]
    pub custom_fields: CustomFields,
}

/// A contact's custom fields, by column name. Sorted, so the same contact always serialises
/// the same way (de-duplicated publishes of it then carry identical bodies).
pub type CustomFields = std::collections::BTreeMap<String, String>;

impl DialRequest {
    /// The subject this attempt is published on.
    pub fn subject(&self) -> String {
        subjects::dial(self.campaign_id)
    }

    /// The de-duplication id of this attempt.
    pub fn msg_id(&self) -> String {
        subjects::dial_msg_id(self.call_id, self.attempt)
    }
}

/// A call attempt due later, waiting in `RETRIES` (subject `calls.retry.<campaign>`) until
/// the retrier re-publishes its dial request to `CALLS` at `due_at`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetryEntry {
    pub due_at: DateTime<Utc>,
    /// The attempt to publish when due (already numbered n+1).
    pub request: DialRequest,
    /// Set when the dialer put the attempt off (until its calling window opens, or until its
    /// number's daily attempt cap resets): how many times this attempt has been put off. The attempt's dial message was already published
    /// once under `<call>/<attempt>`, so the re-publication needs an id of its own
    /// ([`RetryEntry::dial_msg_id`]) or the server would drop it as a duplicate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_deferral: Option<u32>,
}

impl RetryEntry {
    /// The subject of the entry.
    pub fn subject(&self) -> String {
        subjects::retry(self.request.campaign_id)
    }

    /// `<call>/<attempt>/retry`: one entry per scheduled attempt, whoever schedules it
    /// (`<call>/<attempt>/window/<n>` for the n-th deferral to the calling window).
    pub fn msg_id(&self) -> String {
        match self.window_deferral {
            None => subjects::event_msg_id(self.request.call_id, self.request.attempt, "retry"),
            Some(n) => format!("{}/window/{n}", self.request.msg_id()),
        }
    }

    /// The `Nats-Msg-Id` of the dial message published when the entry is due:
    /// `<call>/<attempt>`, or `<call>/<attempt>/w<n>` after the n-th deferral.
    pub fn dial_msg_id(&self) -> String {
        match self.window_deferral {
            None => self.request.msg_id(),
            Some(n) => format!("{}/w{n}", self.request.msg_id()),
        }
    }

    /// How many times the attempt carried by a dial message with this `Nats-Msg-Id` was put
    /// off for its calling window (0 for an id without the `/w<n>` suffix).
    pub fn deferrals_in(dial_msg_id: &str) -> u32 {
        dial_msg_id
            .rsplit_once("/w")
            .and_then(|(_, n)| n.parse().ok())
            .unwrap_or(0)
    }
}

/// Where an outcome came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeSource {
    /// Reported by the carrier (callback or in-process simulator).
    Carrier,
    /// Synthesised by the dialer when no outcome arrived within the maximum call duration.
    Timeout,
    /// Synthesised by the dialer when the carrier refused the attempt (4xx).
    Rejected,
}

/// What happened to one attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    /// The dialer is placing the attempt. Carries what later stages need to know about the
    /// call, so they never have to look anything up elsewhere.
    Dialing {
        phone_number: PhoneNumber,
        max_attempts: u32,
        created_at: DateTime<Utc>,
        /// The contact's custom fields, copied from the dial request (absent when empty).
        #[serde(default, skip_serializing_if = "CustomFields::is_empty")]
        custom_fields: CustomFields,
    },
    /// The carrier's verdict on the attempt (published on `calls.outcome.…`).
    Outcome {
        status: OutcomeStatus,
        source: OutcomeSource,
        /// The carrier's own status word (e.g. Twilio's `busy`), kept for reporting.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        raw_status: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        duration_secs: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        external_call_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// Another attempt is scheduled.
    Retrying {
        next_retry_at: DateTime<Utc>,
        reason: String,
    },
    /// Terminal: answered.
    Completed,
    /// Terminal: failed for good.
    Failed { reason: String },
    /// Terminal: stopped by an operator.
    Cancelled { reason: String },
    /// Terminal: technical failures exhausted redelivery; the message is in the DLQ.
    DeadLettered { reason: String },
    /// Terminal: the attempt waited in `CALLS` longer than the maximum queue age and was
    /// ended before retention could drop it (`reason` says how long it waited and the limit).
    Expired { reason: String },
}

impl EventKind {
    /// A short stable name, used in de-duplication ids and the `call_events.kind` column.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Dialing { .. } => "dialing",
            Self::Outcome { .. } => "outcome",
            Self::Retrying { .. } => "retrying",
            Self::Completed => "completed",
            Self::Failed { .. } => "failed",
            Self::Cancelled { .. } => "cancelled",
            Self::DeadLettered { .. } => "dead_lettered",
            Self::Expired { .. } => "expired",
        }
    }

    /// The call status this event puts the call in.
    pub fn status(&self) -> CallStatus {
        match self {
            Self::Dialing { .. } => CallStatus::Processing,
            Self::Outcome { status, .. } => status.call_status(),
            Self::Retrying { .. } => CallStatus::Retrying,
            Self::Completed => CallStatus::Completed,
            Self::Failed { .. } => CallStatus::Failed,
            Self::Cancelled { .. } => CallStatus::Cancelled,
            Self::DeadLettered { .. } => CallStatus::DeadLettered,
            Self::Expired { .. } => CallStatus::Expired,
        }
    }

    /// Whether the call ends with this event.
    pub fn is_terminal(&self) -> bool {
        self.phase_rank() == TERMINAL_RANK
    }

    /// This event's place within its attempt. Ranked by the event, not by the status it
    /// shows: every outcome is "the carrier answered" (3), so a FAILED outcome never outranks
    /// the `Retrying` or terminal `Failed` the retrier decides from it.
    pub fn phase_rank(&self) -> u8 {
        match self {
            Self::Outcome { .. } => OUTCOME_RANK,
            other => phase_rank(other.status()),
        }
    }
}

/// Something that happened to one attempt of a call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallEvent {
    pub call_id: CallId,
    pub campaign_id: CampaignId,
    pub attempt: u32,
    pub at: DateTime<Utc>,
    #[serde(flatten)]
    pub kind: EventKind,
}

impl CallEvent {
    /// The subject the event belongs on: outcomes and lifecycle events are kept apart so the
    /// retrier can consume outcomes alone.
    pub fn subject(&self) -> String {
        match self.kind {
            EventKind::Outcome { .. } => subjects::outcome(self.campaign_id, self.call_id),
            _ => subjects::event(self.campaign_id, self.call_id),
        }
    }

    /// The de-duplication id: one event of each kind per attempt.
    pub fn msg_id(&self) -> String {
        subjects::event_msg_id(self.call_id, self.attempt, self.kind.name())
    }
}

const OUTCOME_RANK: u8 = 3;
/// The phase rank of an ended call (every rank below is open).
pub const TERMINAL_RANK: u8 = 5;

/// The read model's test for "this call has not ended", for every query that decides a
/// campaign is finished (ingest's completion, webhooks' `campaign.completed`). It is the phase,
/// not the status: a retryable FAILED *outcome* is stored with status `FAILED` and an outcome's
/// phase, and only the terminal phase is an end.
pub const CALL_IS_OPEN_SQL: &str = "phase_rank < 5";

/// The order of states within one attempt. The projector lets a state replace the stored one
/// only when `(attempt, phase_rank)` is greater, which makes applying events idempotent and
/// insensitive to order. `FAILED` here is the terminal state; for events use
/// [`EventKind::phase_rank`], which tells a FAILED outcome from a FAILED end.
pub fn phase_rank(status: CallStatus) -> u8 {
    match status {
        CallStatus::Initiated | CallStatus::Queued => 1,
        CallStatus::Processing => 2,
        CallStatus::Picked | CallStatus::Disconnected | CallStatus::Rnr => OUTCOME_RANK,
        CallStatus::Retrying => 4,
        CallStatus::Failed
        | CallStatus::Completed
        | CallStatus::Cancelled
        | CallStatus::DeadLettered
        | CallStatus::Expired => TERMINAL_RANK,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_call_test_is_the_terminal_phase() {
        assert_eq!(CALL_IS_OPEN_SQL, format!("phase_rank < {TERMINAL_RANK}"));
        let failed_outcome = EventKind::Outcome {
            status: crate::OutcomeStatus::Failed,
            source: OutcomeSource::Carrier,
            raw_status: None,
            duration_secs: None,
            external_call_id: None,
            reason: None,
        };
        assert_eq!(failed_outcome.status(), CallStatus::Failed);
        assert!(
            failed_outcome.phase_rank() < TERMINAL_RANK,
            "an outcome is not an end"
        );
    }

    fn event(kind: EventKind) -> CallEvent {
        CallEvent {
            call_id: CallId::new(),
            campaign_id: CampaignId::new(3).expect("valid"),
            attempt: 1,
            at: Utc::now(),
            kind,
        }
    }

    #[test]
    fn events_round_trip_as_tagged_json() {
        let e = event(EventKind::Outcome {
            status: OutcomeStatus::Rnr,
            source: OutcomeSource::Carrier,
            raw_status: Some("no-answer".into()),
            duration_secs: None,
            external_call_id: Some("CA1".into()),
            reason: None,
        });
        let json = serde_json::to_value(&e).expect("serialize");
        assert_eq!(json["type"], "outcome");
        assert_eq!(json["status"], "RNR");
        let back: CallEvent = serde_json::from_value(json).expect("deserialize");
        assert_eq!(back, e);
        assert!(e.subject().starts_with("calls.outcome.3."));
        assert!(e.msg_id().ends_with("/1/outcome"));
    }

    #[test]
    fn a_deferred_entry_and_its_dial_message_have_ids_of_their_own() {
        let request = DialRequest {
            call_id: CallId::new(),
            campaign_id: CampaignId::new(3).expect("valid"),
            phone_number: "+15550001".parse().expect("phone"),
            attempt: 2,
            max_attempts: 3,
            created_at: Utc::now(),
            queued_at: Utc::now(),
            custom_fields: CustomFields::new(),
        };
        let retry = RetryEntry {
            due_at: Utc::now(),
            request: request.clone(),
            window_deferral: None,
        };
        assert_eq!(retry.dial_msg_id(), request.msg_id());
        assert!(retry.msg_id().ends_with("/2/retry"));
        let deferred = RetryEntry {
            window_deferral: Some(1),
            ..retry
        };
        assert_eq!(deferred.dial_msg_id(), format!("{}/2/w1", request.call_id));
        assert_eq!(deferred.msg_id(), format!("{}/2/window/1", request.call_id));
        assert_eq!(RetryEntry::deferrals_in(&deferred.dial_msg_id()), 1);
        assert_eq!(RetryEntry::deferrals_in(&request.msg_id()), 0);
        let json = serde_json::to_value(&deferred).expect("json");
        assert_eq!(
            serde_json::from_value::<RetryEntry>(json).expect("back"),
            deferred
        );
    }

    #[test]
    fn outcome_failed_is_not_terminal_but_failed_event_is() {
        let outcome = EventKind::Outcome {
            status: OutcomeStatus::Failed,
            source: OutcomeSource::Carrier,
            raw_status: None,
            duration_secs: None,
            external_call_id: None,
            reason: None,
        };
        assert!(!outcome.is_terminal());
        assert!(EventKind::Failed { reason: "x".into() }.is_terminal());
        assert!(EventKind::Completed.is_terminal());
        assert!(
            !EventKind::Retrying {
                next_retry_at: Utc::now(),
                reason: "RNR".into()
            }
            .is_terminal()
        );
    }

    #[test]
    fn a_failed_outcome_ranks_below_the_decision_taken_from_it() {
        let outcome = EventKind::Outcome {
            status: OutcomeStatus::Failed,
            source: OutcomeSource::Carrier,
            raw_status: None,
            duration_secs: None,
            external_call_id: None,
            reason: None,
        };
        let retrying = EventKind::Retrying {
            next_retry_at: Utc::now(),
            reason: "FAILED".into(),
        };
        let failed = EventKind::Failed {
            reason: "Max retry attempts reached (3)".into(),
        };
        assert!(outcome.phase_rank() < retrying.phase_rank());
        assert!(retrying.phase_rank() < failed.phase_rank());
    }

    #[test]
    fn a_later_attempt_outranks_any_state_of_an_earlier_one() {
        let retrying = (1, phase_rank(CallStatus::Retrying));
        let requeued = (2, phase_rank(CallStatus::Queued));
        assert!(requeued > retrying);
        assert!(phase_rank(CallStatus::Completed) > phase_rank(CallStatus::Picked));
    }
}
