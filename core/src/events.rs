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
    call_lifecycle::CallState,
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
    /// When the call must have been placed by (the earlier of the call's and its contact's
    /// `expires_at`): not placed by then, it ends `EXPIRED` ([`crate::expiry`]). Absent when
    /// the call has none, so older messages still parse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// The contact's number this attempt dials when it is not `phone_number` (the contact's
    /// first, which the call is known and claimed by): see [`crate::contact_numbers`].
    /// Absent otherwise, so older messages still parse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alternate: Option<crate::contact_numbers::Alternate>,
    /// Set on an attempt the callee asked for ([`crate::callback`]): the tag of the
    /// `Rescheduled` event that planned it. The dialer places it only while that event is
    /// still the call's plan, and the retry policy does not count it against its limit.
    /// Absent otherwise, so older messages still parse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback: Option<u64>,
}

/// A contact's custom fields, by column name. Sorted, so the same contact always serialises
/// the same way (de-duplicated publishes of it then carry identical bodies).
pub type CustomFields = std::collections::BTreeMap<String, String>;

impl DialRequest {
    /// The subject this attempt is published on.
    pub fn subject(&self) -> String {
        subjects::dial(self.campaign_id)
    }

    /// The de-duplication id of this attempt: `<call>/<attempt>`, or `<call>/<attempt>/c<tag>`
    /// for an attempt the callee asked for (the policy's own retry of the same attempt may be
    /// published within the server's duplicate window and must not swallow it).
    pub fn msg_id(&self) -> String {
        match self.callback {
            None => subjects::dial_msg_id(self.call_id, self.attempt),
            Some(tag) => format!(
                "{}/c{tag}",
                subjects::dial_msg_id(self.call_id, self.attempt)
            ),
        }
    }

    /// The number this attempt dials: the alternate's, else the call's own. Do-not-call,
    /// consent, frequency limits and the carrier apply to it.
    pub fn dialled(&self) -> &PhoneNumber {
        self.alternate
            .as_ref()
            .map_or(&self.phone_number, |a| &a.number)
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
        match (self.window_deferral, self.request.callback) {
            (None, None) => {
                subjects::event_msg_id(self.request.call_id, self.request.attempt, "retry")
            }
            (None, Some(tag)) => subjects::event_msg_id(
                self.request.call_id,
                self.request.attempt,
                &format!("callback/{tag}"),
            ),
            (Some(n), _) => format!("{}/window/{n}", self.request.msg_id()),
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

/// A callback time the callee asked for, as the carrier reported it: read by
/// [`crate::callback::parse_asked`] (`at` RFC 3339, or a local time in `time_zone`, else in the
/// callee's own zone).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AskedCallback {
    pub at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
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
        /// The call's expiry, copied from the dial request (absent when it has none): the
        /// retrier schedules no retry after it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at: Option<DateTime<Utc>>,
        /// The number dialled when it is not `phone_number`, copied from the dial request.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        alternate: Option<crate::contact_numbers::Alternate>,
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
        /// The callee asked to be called back (an AI voice agent's "call me back at five",
        /// reported with the outcome): the retrier schedules that callback instead of the
        /// policy's decision ([`crate::callback`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        callback: Option<AskedCallback>,
    },
    /// Another attempt is scheduled.
    Retrying {
        next_retry_at: DateTime<Utc>,
        reason: String,
    },
    /// The next attempt is moved to the time the callee asked for ([`crate::callback`]): it
    /// replaces the attempt's `Retrying` (or an earlier `Rescheduled`) as the call's plan,
    /// and the attempt it plans does not count against the retry policy's limit.
    Rescheduled {
        /// When the next attempt is placed: `asked_for`, or the first time the calling rules
        /// allow after it.
        next_retry_at: DateTime<Utc>,
        /// The time the callee asked for.
        asked_for: DateTime<Utc>,
        /// The zone `asked_for` was given in (absent: it carried its own offset).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        time_zone: Option<String>,
        /// Why `next_retry_at` is later than `asked_for` (absent when it is not).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        moved: Option<String>,
        /// Names this plan: the next attempt's dial message carries it
        /// ([`DialRequest::callback`]), so only the latest plan is ever placed.
        tag: u64,
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
    /// Terminal: a frequency limit kept the number from being called before the call's
    /// `expires_at` (`reason` says which limit and until when).
    Limited { reason: String },
}

impl EventKind {
    /// A short stable name, used in de-duplication ids and the `call_events.kind` column.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Dialing { .. } => "dialing",
            Self::Outcome { .. } => "outcome",
            Self::Retrying { .. } => "retrying",
            Self::Rescheduled { .. } => "rescheduled",
            Self::Completed => "completed",
            Self::Failed { .. } => "failed",
            Self::Cancelled { .. } => "cancelled",
            Self::DeadLettered { .. } => "dead_lettered",
            Self::Expired { .. } => "expired",
            Self::Limited { .. } => "limited",
        }
    }

    /// The call status this event puts the call in, as clients see it (a FAILED outcome
    /// and a FAILED end are both `FAILED`; [`CallState`] tells them apart).
    pub fn status(&self) -> CallStatus {
        CallState::of(self).status()
    }

    /// Whether the call ends with this event.
    pub fn is_terminal(&self) -> bool {
        CallState::of(self).is_terminal()
    }

    /// This event's place within its attempt ([`CallState::rank`]).
    pub fn phase_rank(&self) -> u8 {
        CallState::of(self).rank()
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
    /// The event as it happens now: the one constructor, so every producer stamps `at` the
    /// same way.
    pub fn now(call_id: CallId, campaign_id: CampaignId, attempt: u32, kind: EventKind) -> Self {
        Self::at(call_id, campaign_id, attempt, Utc::now(), kind)
    }

    /// The event as it happened at `at`.
    pub fn at(
        call_id: CallId,
        campaign_id: CampaignId,
        attempt: u32,
        at: DateTime<Utc>,
        kind: EventKind,
    ) -> Self {
        Self {
            call_id,
            campaign_id,
            attempt,
            at,
            kind,
        }
    }

    /// The event of `request`'s attempt, as it happens now.
    pub fn of_request(request: &DialRequest, kind: EventKind) -> Self {
        Self::now(request.call_id, request.campaign_id, request.attempt, kind)
    }

    /// The subject the event belongs on: outcomes and lifecycle events are kept apart so the
    /// retrier can consume outcomes alone.
    pub fn subject(&self) -> String {
        match self.kind {
            EventKind::Outcome { .. } => subjects::outcome(self.campaign_id, self.call_id),
            _ => subjects::event(self.campaign_id, self.call_id),
        }
    }

    /// The de-duplication id: one event of each kind per attempt (and one `Rescheduled` per
    /// plan: an attempt may be rescheduled several times).
    pub fn msg_id(&self) -> String {
        match &self.kind {
            EventKind::Rescheduled { tag, .. } => {
                subjects::event_msg_id(self.call_id, self.attempt, &format!("rescheduled/{tag}"))
            }
            kind => subjects::event_msg_id(self.call_id, self.attempt, kind.name()),
        }
    }
}

/// Kept here for the callers that knew it as `events::CALL_IS_OPEN_SQL`.
pub use crate::call_lifecycle::CALL_IS_OPEN_SQL;

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: EventKind) -> CallEvent {
        CallEvent::now(CallId::new(), CampaignId::new(3).expect("valid"), 1, kind)
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
            callback: None,
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
            expires_at: None,
            alternate: None,
            callback: None,
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
            callback: None,
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
            callback: None,
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
        use crate::call_lifecycle::End;
        assert!(CallState::Queued.supersedes(2, CallState::Retrying, 1));
        assert!(CallState::Ended(End::Completed).supersedes(
            1,
            CallState::Outcome(OutcomeStatus::Picked),
            1
        ));
    }
}
