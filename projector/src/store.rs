//! The SQL that folds messages into the read model.
//!
//! Every write is idempotent: a message's `(stream, seq)` is recorded in `call_events` first
//! and the call's row is touched only when that insert was new, and a state replaces the
//! stored one only when it is newer by `(attempt, phase_rank)`. Redelivery, replay and several
//! projector replicas therefore leave identical tables.

use ccm_core::{
    Campaign, CallEvent, DialRequest, EventKind,
    events::phase_rank,
    status::CallStatus,
};
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, postgres::PgQueryResult};
use uuid::Uuid;

/// One decoded message, with where it came from.
#[derive(Debug, Clone)]
pub enum Item {
    /// A dial message from `CALLS`: the attempt is queued.
    Queued { seq: u64, request: DialRequest },
    /// An event or outcome from `CALL_EVENTS`.
    Event { seq: u64, event: CallEvent },
    /// A campaign document from the `campaigns` bucket; `revision` is its stream sequence.
    Campaign { revision: u64, campaign: Campaign },
}

/// The state of a call as one message describes it.
struct CallState<'a> {
    call_id: Uuid,
    campaign_id: i64,
    phone_number: Option<&'a str>,
    max_attempts: Option<i32>,
    created_at: Option<DateTime<Utc>>,
    status: CallStatus,
    attempt: i32,
    at: DateTime<Utc>,
    last_attempt_at: Option<DateTime<Utc>>,
    next_retry_at: Option<DateTime<Utc>>,
    call_time: i32,
    external_call_id: Option<&'a str>,
    error_message: Option<&'a str>,
    raw_status: Option<&'a str>,
}

fn to_i32(value: u32) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl<'a> CallState<'a> {
    fn queued(request: &'a DialRequest) -> Self {
        Self {
            call_id: request.call_id.as_uuid(),
            campaign_id: request.campaign_id.as_i64(),
            phone_number: Some(request.phone_number.as_str()),
            max_attempts: Some(to_i32(request.max_attempts)),
            created_at: Some(request.created_at),
            status: CallStatus::Queued,
            attempt: to_i32(request.attempt),
            at: request.queued_at,
            last_attempt_at: None,
            next_retry_at: None,
            call_time: 0,
            external_call_id: None,
            error_message: None,
            raw_status: None,
        }
    }

    fn from_event(event: &'a CallEvent) -> Self {
        let mut state = Self {
            call_id: event.call_id.as_uuid(),
            campaign_id: event.campaign_id.as_i64(),
            phone_number: None,
            max_attempts: None,
            created_at: None,
            status: event.kind.status(),
            attempt: to_i32(event.attempt),
            at: event.at,
            last_attempt_at: None,
            next_retry_at: None,
            call_time: 0,
            external_call_id: None,
            error_message: None,
            raw_status: None,
        };
        match &event.kind {
            EventKind::Dialing { phone_number, max_attempts, created_at } => {
                state.phone_number = Some(phone_number.as_str());
                state.max_attempts = Some(to_i32(*max_attempts));
                state.created_at = Some(*created_at);
                state.last_attempt_at = Some(event.at);
            }
            EventKind::Outcome { raw_status, duration_secs, external_call_id, reason, .. } => {
                state.call_time = duration_secs.map(to_i32).unwrap_or(0);
                state.external_call_id = external_call_id.as_deref();
                state.error_message = reason.as_deref();
                state.raw_status = raw_status.as_deref();
            }
            EventKind::Retrying { next_retry_at, reason } => {
                state.next_retry_at = Some(*next_retry_at);
                state.error_message = Some(reason);
            }
            EventKind::Failed { reason }
            | EventKind::Cancelled { reason }
            | EventKind::DeadLettered { reason } => state.error_message = Some(reason),
            EventKind::Completed => {}
        }
        state
    }
}

/// Applies one item inside the caller's transaction.
pub async fn apply(conn: &mut PgConnection, item: &Item) -> Result<(), sqlx::Error> {
    match item {
        Item::Queued { seq, request } => {
            let payload = serde_json::to_value(request).unwrap_or_default();
            let state = CallState::queued(request);
            if record("CALLS", *seq, &state, "queued", &payload, conn).await?.rows_affected() == 1 {
                upsert_call(&state, conn).await?;
            }
        }
        Item::Event { seq, event } => {
            let payload = serde_json::to_value(event).unwrap_or_default();
            let state = CallState::from_event(event);
            let kind = event.kind.name();
            if record("CALL_EVENTS", *seq, &state, kind, &payload, conn).await?.rows_affected() == 1
            {
                upsert_call(&state, conn).await?;
            }
        }
        Item::Campaign { revision, campaign } => upsert_campaign(*revision, campaign, conn).await?,
    }
    Ok(())
}

async fn record(
    stream: &str,
    seq: u64,
    state: &CallState<'_>,
    kind: &str,
    payload: &serde_json::Value,
    conn: &mut PgConnection,
) -> Result<PgQueryResult, sqlx::Error> {
    sqlx::query(
        "INSERT INTO call_events
            (stream, seq, call_id, campaign_id, attempt, kind, status, occurred_at, payload)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT (stream, seq) DO NOTHING",
    )
    .bind(stream)
    .bind(to_i64(seq))
    .bind(state.call_id)
    .bind(state.campaign_id)
    .bind(state.attempt)
    .bind(kind)
    .bind(state.status.as_str())
    .bind(state.at)
    .bind(payload)
    .execute(conn)
    .await
}

async fn upsert_call(state: &CallState<'_>, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    // In ON CONFLICT ... SET every expression sees the stored row as it was, so `newer` is
    // judged once against the old state for all columns.
    sqlx::query(
        "INSERT INTO calls AS c
            (call_id, campaign_id, phone_number, max_attempts, created_at, status, attempt_count,
             phase_rank, updated_at, last_attempt_at, next_retry_at, total_call_time,
             external_call_id, error_message, raw_status)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
         ON CONFLICT (call_id) DO UPDATE SET
            phone_number = COALESCE(c.phone_number, EXCLUDED.phone_number),
            max_attempts = COALESCE(c.max_attempts, EXCLUDED.max_attempts),
            created_at = LEAST(c.created_at, EXCLUDED.created_at),
            updated_at = GREATEST(c.updated_at, EXCLUDED.updated_at),
            last_attempt_at = GREATEST(c.last_attempt_at, EXCLUDED.last_attempt_at),
            total_call_time = c.total_call_time + EXCLUDED.total_call_time,
            external_call_id = COALESCE(EXCLUDED.external_call_id, c.external_call_id),
            status = CASE WHEN (EXCLUDED.attempt_count, EXCLUDED.phase_rank)
                               > (c.attempt_count, c.phase_rank)
                          THEN EXCLUDED.status ELSE c.status END,
            next_retry_at = CASE WHEN (EXCLUDED.attempt_count, EXCLUDED.phase_rank)
                                      > (c.attempt_count, c.phase_rank)
                                 THEN EXCLUDED.next_retry_at ELSE c.next_retry_at END,
            error_message = CASE WHEN (EXCLUDED.attempt_count, EXCLUDED.phase_rank)
                                      > (c.attempt_count, c.phase_rank)
                                 THEN COALESCE(EXCLUDED.error_message, c.error_message)
                                 ELSE COALESCE(c.error_message, EXCLUDED.error_message) END,
            raw_status = COALESCE(EXCLUDED.raw_status, c.raw_status),
            attempt_count = GREATEST(c.attempt_count, EXCLUDED.attempt_count),
            phase_rank = CASE WHEN (EXCLUDED.attempt_count, EXCLUDED.phase_rank)
                                   > (c.attempt_count, c.phase_rank)
                              THEN EXCLUDED.phase_rank ELSE c.phase_rank END",
    )
    .bind(state.call_id)
    .bind(state.campaign_id)
    .bind(state.phone_number)
    .bind(state.max_attempts)
    .bind(state.created_at)
    .bind(state.status.as_str())
    .bind(state.attempt)
    .bind(i16::from(phase_rank(state.status)))
    .bind(state.at)
    .bind(state.last_attempt_at)
    .bind(state.next_retry_at)
    .bind(state.call_time)
    .bind(state.external_call_id)
    .bind(state.error_message)
    .bind(state.raw_status)
    .execute(conn)
    .await?;
    Ok(())
}

async fn upsert_campaign(
    revision: u64,
    campaign: &Campaign,
    conn: &mut PgConnection,
) -> Result<(), sqlx::Error> {
    let document = serde_json::to_value(campaign).unwrap_or_default();
    let state = serde_json::to_value(campaign.state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    sqlx::query(
        "INSERT INTO campaigns AS c
            (id, name, description, is_active, state, max_concurrent_calls, max_attempts,
             created_at, updated_at, document, kv_revision)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
         ON CONFLICT (id) DO UPDATE SET
            name = EXCLUDED.name, description = EXCLUDED.description,
            is_active = EXCLUDED.is_active, state = EXCLUDED.state,
            max_concurrent_calls = EXCLUDED.max_concurrent_calls,
            max_attempts = EXCLUDED.max_attempts, updated_at = EXCLUDED.updated_at,
            document = EXCLUDED.document, kv_revision = EXCLUDED.kv_revision
         WHERE c.kv_revision < EXCLUDED.kv_revision",
    )
    .bind(campaign.id.as_i64())
    .bind(&campaign.name)
    .bind(&campaign.description)
    .bind(campaign.is_active)
    .bind(state)
    .bind(to_i32(campaign.max_concurrent_calls))
    .bind(to_i32(campaign.max_attempts))
    .bind(campaign.created_at)
    .bind(campaign.updated_at)
    .bind(document)
    .bind(to_i64(revision))
    .execute(conn)
    .await?;
    Ok(())
}
