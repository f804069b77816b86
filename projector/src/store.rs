//! The SQL that writes one batch: a handful of statements whatever the batch size.
//!
//! 1. All messages go into `call_events` with one `INSERT … SELECT FROM UNNEST(…) ON CONFLICT
//!    DO NOTHING RETURNING seq`: what comes back is what this transaction recorded first.
//! 2. Only those new messages are folded per call in memory ([`crate::fold`]), and the folded
//!    rows are merged into `calls` with one upsert whose `SET` applies the same join rules
//!    against the stored row. Counters therefore count each message once, and each fact
//!    (call, attempt, kind) once however many messages state it ([`counted`]).
//! 3. The daily counters and per-second concurrency are added with one upsert each.
//! 4. Dead letters and operators' actions on them go to `dead_letters` ([`dead_letters`]).
//!
//! Rows are written in key order, so two replicas applying overlapping batches lock rows in
//! the same order and wait for each other instead of deadlocking; the loser of an insert race
//! sees the winner's rows as conflicts and adds nothing.

use std::collections::{BTreeMap, HashSet};

use ccm_core::Campaign;
use chrono::{DateTime, NaiveDate, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::fold::{CallRow, Fold, Item};

pub mod audit;
mod counted;
pub mod dead_letters;

/// What a batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Written {
    /// Messages recorded for the first time.
    pub new: usize,
    /// Messages already recorded (redelivery, replay, another replica).
    pub duplicate: usize,
    /// State changes recorded for the first time, per (campaign, status).
    pub statuses: BTreeMap<(i64, &'static str), u64>,
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Writes a batch of messages of one stream (`CALLS`, `CALL_EVENTS`, or the campaigns bucket)
/// in one transaction.
pub async fn write_batch(
    pool: &PgPool,
    stream: &str,
    items: &[&Item],
) -> Result<Written, sqlx::Error> {
    if items.is_empty() {
        return Ok(Written::default());
    }
    let mut tx = pool.begin().await?;
    let written = write(&mut tx, stream, items).await?;
    tx.commit().await?;
    Ok(written)
}

/// As [`write_batch`], inside the caller's transaction.
pub async fn write(
    conn: &mut PgConnection,
    stream: &str,
    items: &[&Item],
) -> Result<Written, sqlx::Error> {
    // One entry per sequence, in sequence order: a message redelivered into the same batch
    // counts once, and rows are locked in a stable order.
    let by_seq: BTreeMap<u64, &Item> = items.iter().map(|item| (item.seq(), *item)).collect();
    let mut campaigns = Vec::new();
    let mut contacts = Vec::new();
    let mut letters = Vec::new();
    let mut audits = Vec::new();
    let mut events = Vec::with_capacity(by_seq.len());
    for item in by_seq.values() {
        match item {
            Item::Campaign { revision, campaign } => campaigns.push((*revision, &**campaign)),
            Item::Contact { contact, .. } => contacts.push(contact),
            Item::DeadLetter { seq, letter } => letters.push((*seq, letter)),
            Item::Audit {
                seq,
                audit,
                payload,
            } => audits.push((*seq, &**audit, payload.as_str())),
            _ => events.push(*item),
        }
    }
    dead_letters::upsert_letters(&letters, conn).await?;
    let new_audits = audit::insert(&audits, conn).await?;
    for (revision, campaign) in &campaigns {
        upsert_campaign(*revision, campaign, conn).await?;
    }
    for contact in &contacts {
        insert_contact(contact, conn).await?;
    }
    let new = record_events(stream, &events, conn).await?;
    let fresh: Vec<&Item> = events
        .iter()
        .filter(|item| new.contains(&to_i64(item.seq())))
        .copied()
        .collect();
    let counts = counted::record(&fresh, conn).await?;
    let mut fold = Fold::default();
    for item in &fresh {
        fold.add(item, counts.contains(&to_i64(item.seq())));
    }
    upsert_calls(fold.calls.values(), conn).await?;
    add_daily(&fold.daily, conn).await?;
    add_concurrency(&fold.concurrency, conn).await?;
    dead_letters::resolve(&fold.resolutions, conn).await?;
    Ok(Written {
        new: new.len() + campaigns.len() + contacts.len() + letters.len() + new_audits,
        duplicate: events.len() - new.len() + (audits.len() - new_audits),
        statuses: fold.statuses,
    })
}

/// Mirrors one phone number of a campaign; keyed like the bucket, so applying it twice is a
/// no-op.
async fn insert_contact(
    contact: &ccm_core::campaign::Contact,
    conn: &mut PgConnection,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO phone_numbers (campaign_id, phone_number, created_at) VALUES ($1, $2, $3) \
         ON CONFLICT (campaign_id, phone_number) DO NOTHING",
    )
    .bind(contact.campaign_id.as_i64())
    .bind(contact.phone_number.as_str())
    .bind(contact.created_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Inserts the messages into `call_events`; returns the sequences that were new.
async fn record_events(
    stream: &str,
    items: &[&Item],
    conn: &mut PgConnection,
) -> Result<HashSet<i64>, sqlx::Error> {
    if items.is_empty() {
        return Ok(HashSet::new());
    }
    let n = items.len();
    let (mut seqs, mut calls, mut campaigns, mut attempts) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut kinds, mut statuses, mut times, mut payloads) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for item in items {
        let (Some((call, campaign, attempt, kind, status)), Some(payload)) =
            (item.event_columns(), item.payload())
        else {
            continue;
        };
        seqs.push(to_i64(item.seq()));
        calls.push(call);
        campaigns.push(campaign);
        attempts.push(attempt);
        kinds.push(kind);
        statuses.push(status);
        times.push(item.occurred_at());
        payloads.push(payload);
    }
    let new: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO call_events
            (stream, seq, call_id, campaign_id, attempt, kind, status, occurred_at, payload)
         SELECT $1, t.seq, t.call_id, t.campaign_id, t.attempt, t.kind, t.status, t.occurred_at,
                t.payload::jsonb
         FROM UNNEST($2::int8[], $3::uuid[], $4::int8[], $5::int4[], $6::text[], $7::text[],
                     $8::timestamptz[], $9::text[])
              AS t(seq, call_id, campaign_id, attempt, kind, status, occurred_at, payload)
         ORDER BY t.seq
         ON CONFLICT (stream, seq) DO NOTHING
         RETURNING seq",
    )
    .bind(stream)
    .bind(&seqs)
    .bind(&calls)
    .bind(&campaigns)
    .bind(&attempts)
    .bind(&kinds)
    .bind(&statuses)
    .bind(&times)
    .bind(&payloads)
    .fetch_all(&mut *conn)
    .await?;
    Ok(new.into_iter().collect())
}

/// Merges folded rows into `calls` with the rules of [`CallRow::merge`]. In `ON CONFLICT …
/// SET` every expression sees the stored row as it was, so each condition is judged once
/// against the old state for all the columns it governs.
async fn upsert_calls<'a>(
    rows: impl ExactSizeIterator<Item = &'a CallRow>,
    conn: &mut PgConnection,
) -> Result<(), sqlx::Error> {
    let n = rows.len();
    if n == 0 {
        return Ok(());
    }
    let mut ids: Vec<Uuid> = Vec::with_capacity(n);
    let mut campaigns: Vec<i64> = Vec::with_capacity(n);
    let mut phones: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut max_attempts: Vec<Option<i32>> = Vec::with_capacity(n);
    let mut created: Vec<Option<DateTime<Utc>>> = Vec::with_capacity(n);
    let mut statuses: Vec<&str> = Vec::with_capacity(n);
    let mut attempts: Vec<i32> = Vec::with_capacity(n);
    let mut ranks: Vec<i16> = Vec::with_capacity(n);
    let mut updated: Vec<DateTime<Utc>> = Vec::with_capacity(n);
    let mut last_attempt: Vec<Option<DateTime<Utc>>> = Vec::with_capacity(n);
    let mut next_retry: Vec<Option<DateTime<Utc>>> = Vec::with_capacity(n);
    let mut call_time: Vec<i32> = Vec::with_capacity(n);
    let mut external: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut raw: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut outcome_keys: Vec<i32> = Vec::with_capacity(n);
    let mut errors: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut error_keys: Vec<i32> = Vec::with_capacity(n);
    let mut custom: Vec<Option<serde_json::Value>> = Vec::with_capacity(n);
    let mut caller_ids: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut caller_id_attempts: Vec<i32> = Vec::with_capacity(n);
    for row in rows {
        ids.push(row.call_id);
        campaigns.push(row.campaign_id);
        phones.push(row.phone_number.as_deref());
        max_attempts.push(row.max_attempts);
        created.push(row.created_at);
        statuses.push(row.status.as_str());
        attempts.push(row.attempt_count);
        ranks.push(row.phase_rank);
        updated.push(row.updated_at);
        last_attempt.push(row.last_attempt_at);
        next_retry.push(row.next_retry_at);
        call_time.push(row.total_call_time);
        external.push(row.external_call_id.as_deref());
        raw.push(row.raw_status.as_deref());
        outcome_keys.push(row.outcome_key);
        errors.push(row.error_message.as_deref());
        error_keys.push(row.error_key);
        caller_ids.push(row.caller_id.as_deref());
        caller_id_attempts.push(row.caller_id_attempt);
        custom.push(
            row.custom_fields
                .as_ref()
                .and_then(|f| serde_json::to_value(f).ok()),
        );
    }
    sqlx::query(
        "INSERT INTO calls AS c
            (call_id, campaign_id, phone_number, max_attempts, created_at, status, attempt_count,
             phase_rank, updated_at, last_attempt_at, next_retry_at, total_call_time,
             external_call_id, raw_status, outcome_key, error_message, error_key, custom_fields,
             caller_id, caller_id_attempt)
         SELECT * FROM UNNEST($1::uuid[], $2::int8[], $3::text[], $4::int4[], $5::timestamptz[],
                              $6::text[], $7::int4[], $8::int2[], $9::timestamptz[],
                              $10::timestamptz[], $11::timestamptz[], $12::int4[], $13::text[],
                              $14::text[], $15::int4[], $16::text[], $17::int4[],
                              $18::jsonb[], $19::text[], $20::int4[])
         ORDER BY 1
         ON CONFLICT (call_id) DO UPDATE SET
            phone_number = GREATEST(c.phone_number, EXCLUDED.phone_number),
            max_attempts = GREATEST(c.max_attempts, EXCLUDED.max_attempts),
            created_at = LEAST(c.created_at, EXCLUDED.created_at),
            updated_at = GREATEST(c.updated_at, EXCLUDED.updated_at),
            last_attempt_at = GREATEST(c.last_attempt_at, EXCLUDED.last_attempt_at),
            total_call_time = c.total_call_time + EXCLUDED.total_call_time,
            status = CASE WHEN ROW(EXCLUDED.attempt_count, EXCLUDED.phase_rank, EXCLUDED.status,
                                   COALESCE(EXCLUDED.next_retry_at, '-infinity'))
                             > ROW(c.attempt_count, c.phase_rank, c.status,
                                   COALESCE(c.next_retry_at, '-infinity'))
                          THEN EXCLUDED.status ELSE c.status END,
            attempt_count = CASE WHEN ROW(EXCLUDED.attempt_count, EXCLUDED.phase_rank,
                                   EXCLUDED.status, COALESCE(EXCLUDED.next_retry_at, '-infinity'))
                             > ROW(c.attempt_count, c.phase_rank, c.status,
                                   COALESCE(c.next_retry_at, '-infinity'))
                          THEN EXCLUDED.attempt_count ELSE c.attempt_count END,
            phase_rank = CASE WHEN ROW(EXCLUDED.attempt_count, EXCLUDED.phase_rank,
                                   EXCLUDED.status, COALESCE(EXCLUDED.next_retry_at, '-infinity'))
                             > ROW(c.attempt_count, c.phase_rank, c.status,
                                   COALESCE(c.next_retry_at, '-infinity'))
                          THEN EXCLUDED.phase_rank ELSE c.phase_rank END,
            next_retry_at = CASE WHEN ROW(EXCLUDED.attempt_count, EXCLUDED.phase_rank,
                                   EXCLUDED.status, COALESCE(EXCLUDED.next_retry_at, '-infinity'))
                             > ROW(c.attempt_count, c.phase_rank, c.status,
                                   COALESCE(c.next_retry_at, '-infinity'))
                          THEN EXCLUDED.next_retry_at ELSE c.next_retry_at END,
            external_call_id = CASE WHEN ROW(EXCLUDED.outcome_key,
                                   COALESCE(EXCLUDED.external_call_id, ''),
                                   COALESCE(EXCLUDED.raw_status, ''))
                             > ROW(c.outcome_key, COALESCE(c.external_call_id, ''),
                                   COALESCE(c.raw_status, ''))
                          THEN EXCLUDED.external_call_id ELSE c.external_call_id END,
            raw_status = CASE WHEN ROW(EXCLUDED.outcome_key,
                                   COALESCE(EXCLUDED.external_call_id, ''),
                                   COALESCE(EXCLUDED.raw_status, ''))
                             > ROW(c.outcome_key, COALESCE(c.external_call_id, ''),
                                   COALESCE(c.raw_status, ''))
                          THEN EXCLUDED.raw_status ELSE c.raw_status END,
            outcome_key = GREATEST(c.outcome_key, EXCLUDED.outcome_key),
            error_message = CASE WHEN ROW(EXCLUDED.error_key, COALESCE(EXCLUDED.error_message, ''))
                             > ROW(c.error_key, COALESCE(c.error_message, ''))
                          THEN EXCLUDED.error_message ELSE c.error_message END,
            error_key = GREATEST(c.error_key, EXCLUDED.error_key),
            custom_fields = COALESCE(c.custom_fields, EXCLUDED.custom_fields),
            caller_id = CASE WHEN ROW(EXCLUDED.caller_id_attempt, COALESCE(EXCLUDED.caller_id, ''))
                             > ROW(c.caller_id_attempt, COALESCE(c.caller_id, ''))
                          THEN EXCLUDED.caller_id ELSE c.caller_id END,
            caller_id_attempt = GREATEST(c.caller_id_attempt, EXCLUDED.caller_id_attempt)",
    )
    .bind(&ids)
    .bind(&campaigns)
    .bind(&phones)
    .bind(&max_attempts)
    .bind(&created)
    .bind(&statuses)
    .bind(&attempts)
    .bind(&ranks)
    .bind(&updated)
    .bind(&last_attempt)
    .bind(&next_retry)
    .bind(&call_time)
    .bind(&external)
    .bind(&raw)
    .bind(&outcome_keys)
    .bind(&errors)
    .bind(&error_keys)
    .bind(&custom)
    .bind(&caller_ids)
    .bind(&caller_id_attempts)
    .execute(conn)
    .await?;
    Ok(())
}

/// Adds the counters of new messages to `daily_metrics`.
async fn add_daily(
    daily: &BTreeMap<(NaiveDate, i64), crate::fold::DailyCounters>,
    conn: &mut PgConnection,
) -> Result<(), sqlx::Error> {
    if daily.is_empty() {
        return Ok(());
    }
    let mut columns: [Vec<i64>; 8] = Default::default();
    let (mut days, mut campaigns) = (Vec::new(), Vec::new());
    for ((day, campaign), c) in daily {
        days.push(*day);
        campaigns.push(*campaign);
        let values = [
            c.initiated,
            c.picked,
            c.disconnected,
            c.rnr,
            c.failed,
            c.retries,
            c.duration_seconds,
            c.dlq_entries,
        ];
        for (column, value) in columns.iter_mut().zip(values) {
            column.push(value);
        }
    }
    let [
        initiated,
        picked,
        disconnected,
        rnr,
        failed,
        retries,
        duration,
        dlq,
    ] = &columns;
    sqlx::query(
        "INSERT INTO daily_metrics AS m
            (day, campaign_id, total_calls_initiated, total_calls_picked,
             total_calls_disconnected, total_calls_rnr, total_calls_failed, total_retries,
             total_call_duration_seconds, dlq_entries_created)
         SELECT * FROM UNNEST($1::date[], $2::int8[], $3::int8[], $4::int8[], $5::int8[],
                              $6::int8[], $7::int8[], $8::int8[], $9::int8[], $10::int8[])
         ORDER BY 1, 2
         ON CONFLICT (day, campaign_id) DO UPDATE SET
            total_calls_initiated = m.total_calls_initiated + EXCLUDED.total_calls_initiated,
            total_calls_picked = m.total_calls_picked + EXCLUDED.total_calls_picked,
            total_calls_disconnected =
                m.total_calls_disconnected + EXCLUDED.total_calls_disconnected,
            total_calls_rnr = m.total_calls_rnr + EXCLUDED.total_calls_rnr,
            total_calls_failed = m.total_calls_failed + EXCLUDED.total_calls_failed,
            total_retries = m.total_retries + EXCLUDED.total_retries,
            total_call_duration_seconds =
                m.total_call_duration_seconds + EXCLUDED.total_call_duration_seconds,
            dlq_entries_created = m.dlq_entries_created + EXCLUDED.dlq_entries_created",
    )
    .bind(&days)
    .bind(&campaigns)
    .bind(initiated)
    .bind(picked)
    .bind(disconnected)
    .bind(rnr)
    .bind(failed)
    .bind(retries)
    .bind(duration)
    .bind(dlq)
    .execute(conn)
    .await?;
    Ok(())
}

/// Adds calls started and ended per second to `call_concurrency`.
async fn add_concurrency(
    seconds: &BTreeMap<DateTime<Utc>, (i64, i64)>,
    conn: &mut PgConnection,
) -> Result<(), sqlx::Error> {
    if seconds.is_empty() {
        return Ok(());
    }
    let times: Vec<DateTime<Utc>> = seconds.keys().copied().collect();
    let started: Vec<i64> = seconds.values().map(|(s, _)| *s).collect();
    let ended: Vec<i64> = seconds.values().map(|(_, e)| *e).collect();
    sqlx::query(
        "INSERT INTO call_concurrency AS k (second, started, ended)
         SELECT * FROM UNNEST($1::timestamptz[], $2::int8[], $3::int8[])
         ORDER BY 1
         ON CONFLICT (second) DO UPDATE SET
            started = k.started + EXCLUDED.started,
            ended = k.ended + EXCLUDED.ended",
    )
    .bind(&times)
    .bind(&started)
    .bind(&ended)
    .execute(conn)
    .await?;
    Ok(())
}

/// Mirrors a campaign document; a revision only ever replaces an older one.
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
    .bind(i32::try_from(campaign.max_concurrent_calls).unwrap_or(i32::MAX))
    .bind(i32::try_from(campaign.max_attempts).unwrap_or(i32::MAX))
    .bind(campaign.created_at)
    .bind(campaign.updated_at)
    .bind(document)
    .bind(to_i64(revision))
    .execute(conn)
    .await?;
    Ok(())
}
