//! Folding decoded messages into rows, in memory, before one batched write.
//!
//! Every column of a call's row is merged as a *join*: a maximum by some key, a minimum, or a
//! sum over distinct events. A join is associative, commutative and (the sums aside)
//! idempotent, so folding a batch per call here and then merging the result into the stored
//! row in SQL (`store.rs` uses the same rules) gives the same row whatever the order and
//! grouping of the events. Sums stay exact because only events that were new in
//! `call_events` are folded.

use std::collections::BTreeMap;

use ccm_core::{
    CallEvent, Campaign, DialRequest, EventKind, OutcomeStatus, call_lifecycle::CallState,
    status::CallStatus,
};
use chrono::{DateTime, DurationRound, NaiveDate, TimeDelta, Utc};
use uuid::Uuid;

/// One decoded message, with its stream sequence and its payload as published.
#[derive(Debug, Clone)]
pub enum Item {
    /// A dial message from `CALLS`: the attempt is queued.
    Queued {
        seq: u64,
        request: DialRequest,
        payload: String,
    },
    /// An event or outcome from `CALL_EVENTS`.
    Event {
        seq: u64,
        event: CallEvent,
        payload: String,
        /// The DLQ sequence of the letter this event resolves (an operator's redrive or
        /// discard, named by the `Ccm-Dlq-Resolved` header).
        resolves: Option<u64>,
    },
    /// A dead letter from `DLQ`, at stream sequence `seq`.
    DeadLetter { seq: u64, letter: Letter },
    /// A campaign document from the `campaigns` bucket; `revision` is its stream sequence.
    Campaign {
        revision: u64,
        // Boxed: the document is far larger than the other items.
        campaign: Box<Campaign>,
    },
    /// A phone number added to a campaign (the `contacts` bucket), at stream sequence `seq`.
    Contact {
        seq: u64,
        contact: ccm_core::campaign::Contact,
    },
    /// An admission audit record from `CALL_EVENTS` (`calls.audit.…`), kept in `call_audit`.
    Audit {
        seq: u64,
        audit: Box<ccm_core::attempt_audit::AttemptAudit>,
        payload: String,
    },
}

impl Item {
    /// The stream sequence (for campaigns, the KV revision).
    pub fn seq(&self) -> u64 {
        match self {
            Self::Queued { seq, .. } | Self::Event { seq, .. } => *seq,
            Self::Campaign { revision, .. } => *revision,
            Self::Contact { seq, .. } | Self::DeadLetter { seq, .. } => *seq,
            Self::Audit { seq, .. } => *seq,
        }
    }

    /// The `call_events` columns of a call message: call, campaign, attempt, kind, status.
    /// `None` for a campaign document.
    pub fn event_columns(&self) -> Option<(Uuid, i64, i32, &'static str, &'static str)> {
        match self {
            Self::Queued { request, .. } => Some((
                request.call_id.as_uuid(),
                request.campaign_id.as_i64(),
                to_i32(request.attempt),
                "queued",
                CallStatus::Queued.as_str(),
            )),
            Self::Event { event, .. } => Some((
                event.call_id.as_uuid(),
                event.campaign_id.as_i64(),
                to_i32(event.attempt),
                event.kind.name(),
                event.kind.status().as_str(),
            )),
            Self::Campaign { .. }
            | Self::Contact { .. }
            | Self::DeadLetter { .. }
            | Self::Audit { .. } => None,
        }
    }

    /// The fact this message counts in the counters (`total_call_time`, daily metrics,
    /// concurrency): `(call, attempt, kind)`. A fact is counted once however many messages
    /// state it (`store::counted` keeps the first); `None` for messages that count nothing.
    pub fn counted_fact(&self) -> Option<(Uuid, i32, &'static str)> {
        let (call, _, attempt, kind, _) = self.event_columns()?;
        matches!(
            kind,
            "queued" | "dialing" | "outcome" | "retrying" | "dead_lettered"
        )
        .then_some((call, attempt, kind))
    }

    /// The payload as published (`None` for a campaign document, stored parsed instead).
    pub fn payload(&self) -> Option<&str> {
        match self {
            Self::Queued { payload, .. } | Self::Event { payload, .. } => Some(payload),
            Self::Campaign { .. }
            | Self::Contact { .. }
            | Self::DeadLetter { .. }
            | Self::Audit { .. } => None,
        }
    }

    /// When the message's fact happened, for the projection lag.
    pub fn occurred_at(&self) -> DateTime<Utc> {
        match self {
            Self::Queued { request, .. } => request.queued_at,
            Self::Event { event, .. } => event.at,
            Self::Campaign { campaign, .. } => campaign.updated_at,
            Self::Contact { contact, .. } => contact.created_at,
            Self::DeadLetter { letter, .. } => letter.created_at,
            Self::Audit { audit, .. } => audit.at,
        }
    }
}

/// A dead letter as its `Ccm-Dlq-*` headers describe it (see `ccm_core::dlq`).
#[derive(Debug, Clone, PartialEq)]
pub struct Letter {
    pub source_stream: String,
    pub source_seq: Option<i64>,
    pub subject: String,
    pub consumer: Option<String>,
    pub call_id: Option<Uuid>,
    pub campaign_id: Option<i64>,
    pub reason: String,
    pub deliveries: Option<i32>,
    /// The original payload when it is JSON.
    pub payload: Option<serde_json::Value>,
    /// When it was dead-lettered.
    pub created_at: DateTime<Utc>,
}

/// Reads a letter from its `Ccm-Dlq-*` headers (`header` looks one up) and payload;
/// `stored_nanos` is when `DLQ` stored it, used when the letter names no time itself.
pub fn letter(
    header: &dyn Fn(&str) -> Option<String>,
    payload: &[u8],
    stored_nanos: i64,
) -> Letter {
    let h = ccm_core::dlq::Headers::read(header);
    let created_at = h
        .dead_at
        .as_deref()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map_or_else(
            || DateTime::from_timestamp_nanos(stored_nanos),
            |t| t.with_timezone(&Utc),
        );
    Letter {
        source_stream: h.stream,
        source_seq: h.source_seq.and_then(|s| i64::try_from(s).ok()),
        subject: h.subject,
        consumer: h.consumer,
        call_id: h.call_id.map(|c| c.as_uuid()),
        campaign_id: h.campaign_id.map(|c| c.as_i64()),
        reason: h.reason,
        deliveries: h.deliveries.and_then(|d| i32::try_from(d).ok()),
        // Postgres' jsonb refuses `\u0000`: stored with its NULs replaced (see `crate::nul`).
        payload: serde_json::from_slice::<serde_json::Value>(&crate::nul::replaced(payload)).ok(),
        created_at,
    }
}

/// An operator's action on a letter, recorded by an event of the letter's call.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolution {
    pub dlq_seq: i64,
    pub call_id: Uuid,
    pub campaign_id: i64,
    /// `redriven` or `discarded`.
    pub state: &'static str,
    pub at: DateTime<Utc>,
}

/// The rank of an event within its attempt ([`CallState::rank`]).
pub fn rank(kind: &EventKind) -> i16 {
    i16::from(CallState::of(kind).rank())
}

/// Orders facts of a call across attempts: `attempt * 8 + rank`.
pub fn key(attempt: i32, rank: i16) -> i32 {
    attempt.saturating_mul(8).saturating_add(i32::from(rank))
}

/// A call's custom fields as a row holds them: `None` when there are none.
fn fields(custom: &ccm_core::CustomFields) -> Option<ccm_core::CustomFields> {
    (!custom.is_empty()).then(|| custom.clone())
}

fn to_i32(value: u32) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}

/// A call's row as some set of events describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct CallRow {
    pub call_id: Uuid,
    pub campaign_id: i64,
    pub phone_number: Option<String>,
    pub max_attempts: Option<i32>,
    pub created_at: Option<DateTime<Utc>>,
    pub status: CallStatus,
    pub attempt_count: i32,
    pub phase_rank: i16,
    pub updated_at: DateTime<Utc>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub next_retry_at: Option<DateTime<Utc>>,
    pub total_call_time: i32,
    pub external_call_id: Option<String>,
    pub raw_status: Option<String>,
    pub outcome_key: i32,
    pub error_message: Option<String>,
    pub error_key: i32,
    /// The contact's custom fields (`None` when the call has none). They are the same in
    /// every message of a call, so the first one known is kept.
    pub custom_fields: Option<ccm_core::CustomFields>,
    /// The caller id of the latest attempt that showed one from its campaign's pool, and
    /// that attempt (-1: none yet); the higher `(attempt, caller id)` wins a merge.
    pub caller_id: Option<String>,
    pub caller_id_attempt: i32,
}

impl CallRow {
    fn base(call_id: Uuid, campaign_id: i64, status: CallStatus, attempt: i32, rank: i16) -> Self {
        Self {
            call_id,
            campaign_id,
            phone_number: None,
            max_attempts: None,
            created_at: None,
            status,
            attempt_count: attempt,
            phase_rank: rank,
            updated_at: DateTime::<Utc>::MIN_UTC,
            last_attempt_at: None,
            next_retry_at: None,
            total_call_time: 0,
            external_call_id: None,
            raw_status: None,
            outcome_key: -1,
            error_message: None,
            error_key: -1,
            custom_fields: None,
            caller_id: None,
            caller_id_attempt: -1,
        }
    }

    /// The row a queued attempt describes.
    pub fn queued(request: &DialRequest) -> Self {
        let attempt = to_i32(request.attempt);
        let mut row = Self::base(
            request.call_id.as_uuid(),
            request.campaign_id.as_i64(),
            CallStatus::Queued,
            attempt,
            i16::from(CallState::Queued.rank()),
        );
        row.phone_number = Some(request.phone_number.as_str().to_owned());
        row.max_attempts = Some(to_i32(request.max_attempts));
        row.custom_fields = fields(&request.custom_fields);
        row.created_at = Some(request.created_at);
        row.updated_at = request.queued_at;
        row
    }

    /// The row an event describes.
    pub fn from_event(event: &CallEvent) -> Self {
        let attempt = to_i32(event.attempt);
        let rank = rank(&event.kind);
        let mut row = Self::base(
            event.call_id.as_uuid(),
            event.campaign_id.as_i64(),
            event.kind.status(),
            attempt,
            rank,
        );
        row.updated_at = event.at;
        let mut reason = None;
        match &event.kind {
            EventKind::Dialing {
                phone_number,
                max_attempts,
                created_at,
                custom_fields,
                caller_id,
                ..
            } => {
                if let Some(caller_id) = caller_id {
                    row.caller_id = Some(caller_id.as_str().to_owned());
                    row.caller_id_attempt = attempt;
                }
                row.phone_number = Some(phone_number.as_str().to_owned());
                row.custom_fields = fields(custom_fields);
                row.max_attempts = Some(to_i32(*max_attempts));
                row.created_at = Some(*created_at);
                row.last_attempt_at = Some(event.at);
            }
            EventKind::Outcome {
                raw_status,
                duration_secs,
                external_call_id,
                reason: why,
                ..
            } => {
                row.total_call_time = duration_secs.map(to_i32).unwrap_or(0);
                row.external_call_id.clone_from(external_call_id);
                row.raw_status.clone_from(raw_status);
                row.outcome_key = key(attempt, rank);
                reason = why.clone();
            }
            EventKind::Retrying {
                next_retry_at,
                reason: why,
            } => {
                row.next_retry_at = Some(*next_retry_at);
                reason = Some(why.clone());
            }
            EventKind::Rescheduled {
                next_retry_at,
                moved,
                ..
            } => {
                row.next_retry_at = Some(*next_retry_at);
                reason = Some(
                    moved
                        .clone()
                        .unwrap_or_else(|| "callback requested".to_owned()),
                );
            }
            EventKind::Failed { reason: why }
            | EventKind::Cancelled { reason: why }
            | EventKind::DeadLettered { reason: why }
            | EventKind::Expired { reason: why }
            | EventKind::Limited { reason: why } => reason = Some(why.clone()),
            EventKind::Completed => {}
        }
        if reason.is_some() {
            row.error_message = reason;
            row.error_key = key(attempt, rank);
        }
        row
    }

    /// Merges `other` into `self` (the same call). The SQL upsert in `store.rs` applies the
    /// very same rules against the stored row.
    pub fn merge(&mut self, other: CallRow) {
        let newer_state = other.state_key() > self.state_key();
        let newer_outcome = other.outcome_order() > self.outcome_order();
        let newer_error = other.error_order() > self.error_order();
        self.phone_number = self.phone_number.take().max(other.phone_number);
        self.max_attempts = self.max_attempts.max(other.max_attempts);
        self.created_at = match (self.created_at, other.created_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.updated_at = self.updated_at.max(other.updated_at);
        self.last_attempt_at = self.last_attempt_at.max(other.last_attempt_at);
        self.total_call_time = self.total_call_time.saturating_add(other.total_call_time);
        if self.custom_fields.is_none() {
            self.custom_fields = other.custom_fields;
        }
        if (other.caller_id_attempt, &other.caller_id) > (self.caller_id_attempt, &self.caller_id) {
            self.caller_id = other.caller_id;
            self.caller_id_attempt = other.caller_id_attempt;
        }
        if newer_state {
            self.status = other.status;
            self.attempt_count = other.attempt_count;
            self.phase_rank = other.phase_rank;
            self.next_retry_at = other.next_retry_at;
        }
        if newer_outcome {
            self.external_call_id = other.external_call_id;
            self.raw_status = other.raw_status;
            self.outcome_key = other.outcome_key;
        }
        if newer_error {
            self.error_message = other.error_message;
            self.error_key = other.error_key;
        }
    }

    /// Which state wins: SQL compares `(attempt_count, phase_rank, status,
    /// coalesce(next_retry_at, '-infinity'))`.
    fn state_key(&self) -> (i32, i16, &'static str, DateTime<Utc>) {
        (
            self.attempt_count,
            self.phase_rank,
            self.status.as_str(),
            self.next_retry_at.unwrap_or(DateTime::<Utc>::MIN_UTC),
        )
    }

    fn outcome_order(&self) -> (i32, &str, &str) {
        (
            self.outcome_key,
            self.external_call_id.as_deref().unwrap_or(""),
            self.raw_status.as_deref().unwrap_or(""),
        )
    }

    fn error_order(&self) -> (i32, &str) {
        (self.error_key, self.error_message.as_deref().unwrap_or(""))
    }
}

/// The old CallMetrics counters of one campaign on one UTC day.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DailyCounters {
    pub initiated: i64,
    pub picked: i64,
    pub disconnected: i64,
    pub rnr: i64,
    pub failed: i64,
    pub retries: i64,
    pub duration_seconds: i64,
    pub dlq_entries: i64,
}

/// Everything a batch of new messages adds to the read model.
#[derive(Debug, Default)]
pub struct Fold {
    /// One merged row per call, ordered by id (the order rows are locked in).
    pub calls: BTreeMap<Uuid, CallRow>,
    pub daily: BTreeMap<(NaiveDate, i64), DailyCounters>,
    /// Calls started and ended per second.
    pub concurrency: BTreeMap<DateTime<Utc>, (i64, i64)>,
    /// New state changes per (campaign, status), for the `ccm_projector_calls_total` metric.
    pub statuses: BTreeMap<(i64, &'static str), u64>,
    /// Letters resolved by an operator, by the new events that say so.
    pub resolutions: Vec<Resolution>,
}

impl Fold {
    /// Adds one message that was new in `call_events`; `counts` when it is the first message
    /// of its [`Item::counted_fact`] (a repeat only merges its state, which is idempotent).
    pub fn add(&mut self, item: &Item, counts: bool) {
        let (mut row, campaign, at) = match item {
            Item::Queued { request, .. } => {
                let row = CallRow::queued(request);
                if counts && request.attempt == 1 {
                    self.counters(request.queued_at, row.campaign_id).initiated += 1;
                }
                (row, request.campaign_id.as_i64(), request.queued_at)
            }
            Item::Event { event, .. } => (
                CallRow::from_event(event),
                event.campaign_id.as_i64(),
                event.at,
            ),
            Item::Campaign { .. }
            | Item::Contact { .. }
            | Item::DeadLetter { .. }
            | Item::Audit { .. } => return,
        };
        if !counts {
            row.total_call_time = 0;
        }
        *self
            .statuses
            .entry((campaign, row.status.as_str()))
            .or_default() += 1;
        if let Item::Event {
            event, resolves, ..
        } = item
        {
            if counts {
                self.count_event(event, campaign, at);
            }
            // A redrive records the next attempt as `Retrying`, a discard ends the call
            // `Failed` (`ccm_core::dlq`).
            let state = match event.kind {
                EventKind::Retrying { .. } => Some("redriven"),
                EventKind::Failed { .. } => Some("discarded"),
                _ => None,
            };
            if let (Some(seq), Some(state)) = (resolves, state) {
                self.resolutions.push(Resolution {
                    dlq_seq: i64::try_from(*seq).unwrap_or(i64::MAX),
                    call_id: event.call_id.as_uuid(),
                    campaign_id: campaign,
                    state,
                    at,
                });
            }
        }
        match self.calls.get_mut(&row.call_id) {
            Some(existing) => existing.merge(row),
            None => {
                self.calls.insert(row.call_id, row);
            }
        }
    }

    fn count_event(&mut self, event: &CallEvent, campaign: i64, at: DateTime<Utc>) {
        match &event.kind {
            EventKind::Dialing { .. } => self.concurrency.entry(second(at)).or_default().0 += 1,
            EventKind::Outcome {
                status,
                duration_secs,
                ..
            } => {
                self.concurrency.entry(second(at)).or_default().1 += 1;
                let counters = self.counters(at, campaign);
                match status {
                    OutcomeStatus::Picked => counters.picked += 1,
                    OutcomeStatus::Disconnected => counters.disconnected += 1,
                    OutcomeStatus::Rnr => counters.rnr += 1,
                    OutcomeStatus::Failed => counters.failed += 1,
                }
                counters.duration_seconds += i64::from(duration_secs.unwrap_or(0));
            }
            EventKind::Retrying { .. } => self.counters(at, campaign).retries += 1,
            EventKind::DeadLettered { .. } => self.counters(at, campaign).dlq_entries += 1,
            // A callback is the callee's request, not a retry of the policy's.
            EventKind::Rescheduled { .. }
            | EventKind::Completed
            | EventKind::Failed { .. }
            | EventKind::Cancelled { .. }
            | EventKind::Expired { .. }
            | EventKind::Limited { .. } => {}
        }
    }

    fn counters(&mut self, at: DateTime<Utc>, campaign: i64) -> &mut DailyCounters {
        self.daily.entry((at.date_naive(), campaign)).or_default()
    }
}

fn second(at: DateTime<Utc>) -> DateTime<Utc> {
    at.duration_trunc(TimeDelta::seconds(1)).unwrap_or(at)
}

#[cfg(test)]
mod tests;
