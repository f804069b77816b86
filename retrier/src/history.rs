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
    /// The call's expiry: no retry is scheduled after it.
    pub expires_at: Option<DateTime<Utc>>,
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
        let lifecycle = walk(events, subjects::event(campaign, call), None, None).await?;
        let outcomes = walk(events, subjects::outcome(campaign, call), None, None).await?;
        Ok(Self::assemble(lifecycle, outcomes))
    }

    /// Reads what deciding the outcome of `attempt`, stored at stream sequence `seq`, needs.
    ///
    /// Walking a subject from the start of the stream makes nats-server scan its message
    /// blocks for the subject's first message: profiled under load, that was two thirds of
    /// its CPU. Most outcomes are of a first attempt whose `Dialing` is still the call's
    /// latest event. Then nothing before that `Dialing` can settle the attempt (the dialer
    /// never places an attempt already settled), its facts are the call's, and every
    /// outcome of the attempt lies between it and this one: one last-by-subject get and a
    /// short walk, with the same result as [`CallHistory::read`] up to this outcome.
    /// Anything else is read whole.
    pub async fn read_for(
        events: &Stream,
        campaign: CampaignId,
        call: CallId,
        attempt: u32,
        seq: Option<u64>,
    ) -> Result<Self, HistoryError> {
        if let (1, Some(seq)) = (attempt, seq) {
            let subject = subjects::event(campaign, call);
            if let Some((dialing_seq, last)) = last_on(events, subject).await?
                && last.attempt == 1
                && matches!(last.kind, EventKind::Dialing { .. })
                && dialing_seq < seq
            {
                let outcomes = walk(
                    events,
                    subjects::outcome(campaign, call),
                    Some(dialing_seq + 1),
                    Some(seq),
                )
                .await?;
                return Ok(Self::assemble(vec![last], outcomes));
            }
        }
        Self::read(events, campaign, call).await
    }

    fn assemble(lifecycle: Vec<CallEvent>, outcomes: Vec<CallEvent>) -> Self {
        let (outcomes, outcome_reasons) = outcomes
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
        Self {
            events: lifecycle,
            outcomes,
            outcome_reasons,
        }
    }

    /// The latest `Dialing` event's facts (any attempt: the phone never changes).
    pub fn facts(&self) -> Option<CallFacts> {
        self.events.iter().rev().find_map(|e| match &e.kind {
            EventKind::Dialing {
                phone_number,
                max_attempts,
                created_at,
                custom_fields,
                expires_at,
                ..
            } => Some(CallFacts {
                phone_number: phone_number.clone(),
                max_attempts: *max_attempts,
                created_at: *created_at,
                custom_fields: custom_fields.clone(),
                expires_at: *expires_at,
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
                    && (e.kind.is_terminal()
                        || matches!(
                            e.kind,
                            EventKind::Retrying { .. } | EventKind::Rescheduled { .. }
                        )))
        })
    }
}

/// The messages on `subject`, oldest first: from sequence `from` (else the stream's start)
/// up to and including sequence `until` (else the last).
async fn walk(
    stream: &Stream,
    subject: String,
    mut from: Option<u64>,
    until: Option<u64>,
) -> Result<Vec<CallEvent>, HistoryError> {
    let mut found = Vec::new();
    loop {
        match stream
            .direct_get_next_for_subject(subject.clone(), from)
            .await
        {
            Ok(message) => {
                if until.is_some_and(|until| message.sequence > until) {
                    return Ok(found);
                }
                from = Some(message.sequence + 1);
                match serde_json::from_slice::<CallEvent>(&message.payload) {
                    Ok(event) => found.push(event),
                    Err(e) => {
                        tracing::warn!(%subject, seq = message.sequence, error = %ccm_core::telemetry::chain(&e),
                        "undecodable event skipped")
                    }
                }
                if until == Some(message.sequence) {
                    return Ok(found);
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

/// The last message on `subject` with its stream sequence, if there is one that decodes.
async fn last_on(
    stream: &Stream,
    subject: String,
) -> Result<Option<(u64, CallEvent)>, HistoryError> {
    match ccm_core::call_log::last_on(stream, subject.clone()).await {
        Ok(last) => Ok(last.and_then(|l| l.event.ok().map(|event| (l.sequence, event)))),
        Err(source) => Err(HistoryError { subject, source }),
    }
}
