//! A call's history, read back from `CALL_EVENTS`.
//!
//! Each call has two subjects there: its lifecycle events and its carrier outcomes. Walking a
//! subject with direct gets ("next message on this subject from sequence s") reads exactly
//! that call's messages without creating a consumer, and works on any replica.

use async_nats::jetstream::stream::{DirectGetErrorKind, Stream};
use ccm_core::{
    CallEvent, CallId, CampaignId, CustomFields, EventKind, PhoneNumber, policy::PastOutcome,
    subjects,
};
use chrono::{DateTime, Utc};

/// What the retrier needs to know about a call.
#[derive(Debug, Clone, Default)]
pub struct CallHistory {
    /// Lifecycle events, oldest first.
    pub events: Vec<CallEvent>,
    /// Carrier outcomes, oldest first.
    pub outcomes: Vec<PastOutcome>,
    /// Each outcome's reason (e.g. `answered_by=machine_start`), in the same order.
    pub outcome_reasons: Vec<Option<String>>,
}

/// What a `Dialing` event says about the call.
#[derive(Debug, Clone, PartialEq)]
pub struct CallFacts {
    pub phone_number: PhoneNumber,
    pub max_attempts: u32,
    pub created_at: DateTime<Utc>,
    /// The contact's custom fields, which every later attempt carries on.
    pub custom_fields: CustomFields,
}

/// The call's events could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {subject}")]
pub struct HistoryError {
    subject: String,
    #[source]
    source: async_nats::Error,
}

impl CallHistory {
    /// Reads both subjects of a call.
    pub async fn read(
        events: &Stream,
        campaign: CampaignId,
        call: CallId,
    ) -> Result<Self, HistoryError> {
        let lifecycle = walk(events, subjects::event(campaign, call)).await?;
        let (outcomes, outcome_reasons) = walk(events, subjects::outcome(campaign, call))
            .await?
            .into_iter()
            .filter_map(|e| match e.kind {
                EventKind::Outcome { status, reason, .. } => Some((
                    PastOutcome {
                        attempt: e.attempt,
                        status,
                        at: e.at,
                    },
                    reason,
                )),
                _ => None,
            })
            .unzip();
        Ok(Self {
            events: lifecycle,
            outcomes,
            outcome_reasons,
        })
    }

    /// The latest `Dialing` event's facts (any attempt: the phone never changes).
    pub fn facts(&self) -> Option<CallFacts> {
        self.events.iter().rev().find_map(|e| match &e.kind {
            EventKind::Dialing {
                phone_number,
                max_attempts,
                created_at,
                custom_fields,
            } => Some(CallFacts {
                phone_number: phone_number.clone(),
                max_attempts: *max_attempts,
                created_at: *created_at,
                custom_fields: custom_fields.clone(),
            }),
            _ => None,
        })
    }

    /// The event that already settled attempt `attempt`, if any: a retry, a terminal state,
    /// or anything of a later attempt.
    pub fn settled(&self, attempt: u32) -> Option<&CallEvent> {
        self.events.iter().find(|e| {
            e.attempt > attempt
                || (e.attempt == attempt
                    && (e.kind.is_terminal() || matches!(e.kind, EventKind::Retrying { .. })))
        })
    }
}

/// Every message on `subject`, oldest first.
async fn walk(stream: &Stream, subject: String) -> Result<Vec<CallEvent>, HistoryError> {
    let mut found = Vec::new();
    let mut from = None;
    loop {
        match stream
            .direct_get_next_for_subject(subject.clone(), from)
            .await
        {
            Ok(message) => {
                from = Some(message.sequence + 1);
                match serde_json::from_slice::<CallEvent>(&message.payload) {
                    Ok(event) => found.push(event),
                    Err(e) => tracing::warn!(%subject, seq = message.sequence, error = %e,
                        "undecodable event skipped"),
                }
            }
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => return Ok(found),
            Err(e) => {
                return Err(HistoryError {
                    subject,
                    source: e.into(),
                });
            }
        }
    }
}
