//! The read model's part: what it holds about a number, and its erasure.

use ccm_core::{CallId, PhoneNumber, privacy};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use super::{apply::Counts, plan::Known};

/// The number's calls in the read model, with their phase ranks, and the phase ranks of
/// `also` (calls found in the streams).
pub(crate) async fn known(
    pg: &PgPool,
    phone: &PhoneNumber,
    also: &[CallId],
) -> Result<Known, sqlx::Error> {
    let also: Vec<Uuid> = also.iter().map(|c| c.as_uuid()).collect();
    let rows: Vec<(Uuid, i16)> = sqlx::query_as(
        "SELECT call_id, phase_rank FROM calls WHERE phone_number = $1 OR call_id = ANY($2)",
    )
    .bind(phone.as_str())
    .bind(&also)
    .fetch_all(pg)
    .await?;
    let mut known: Known = also.into_iter().map(|id| (id.into(), None)).collect();
    known.extend(rows.into_iter().map(|(id, rank)| (id.into(), Some(rank))));
    Ok(known)
}

/// Everything the read model holds about the number and its calls, as JSON rows by table.
pub(crate) async fn export(
    pg: &PgPool,
    phone: &PhoneNumber,
    calls: &[CallId],
) -> Result<serde_json::Map<String, Value>, sqlx::Error> {
    let ids: Vec<Uuid> = calls.iter().map(|c| c.as_uuid()).collect();
    let queries = [
        (
            "calls",
            "SELECT to_jsonb(c) FROM calls c WHERE call_id = ANY($1) \
             ORDER BY created_at, call_id",
        ),
        (
            "call_events",
            "SELECT to_jsonb(e) FROM call_events e WHERE call_id = ANY($1) \
             ORDER BY occurred_at, stream, seq",
        ),
        (
            "call_audit",
            "SELECT to_jsonb(a) FROM call_audit a WHERE call_id = ANY($1) \
             OR phone_number = $2 ORDER BY decided_at, audit_id",
        ),
        (
            "phone_numbers",
            "SELECT to_jsonb(p) FROM phone_numbers p WHERE phone_number = $2 ORDER BY id",
        ),
        (
            "dead_letters",
            "SELECT to_jsonb(d) FROM dead_letters d WHERE call_id = ANY($1) \
             OR strpos(payload::text, $3) > 0 ORDER BY dlq_seq",
        ),
        (
            "webhook_messages",
            "SELECT to_jsonb(w) - 'body' || jsonb_build_object('body', \
             convert_from(body, 'UTF8')::jsonb) FROM webhook_messages w \
             WHERE call_id = ANY($1) OR position(convert_to($3, 'UTF8') in body) > 0 ORDER BY id",
        ),
        (
            "webhook_attempts",
            "SELECT to_jsonb(a) FROM webhook_attempts a WHERE call_id = ANY($1) ORDER BY id",
        ),
    ];
    let webhooks = webhook_tables_exist(pg).await?;
    let mut tables = serde_json::Map::new();
    for (table, sql) in queries {
        if table.starts_with("webhook_") && !webhooks {
            continue;
        }
        let rows: Vec<Value> = sqlx::query_scalar(sql)
            .bind(&ids)
            .bind(phone.as_str())
            .bind(phone.digits())
            .fetch_all(pg)
            .await?;
        tables.insert(table.into(), Value::Array(rows));
    }
    Ok(tables)
}

/// The number's consent records (ingest's `consents` table), revoked ones included; none
/// where the table does not exist yet.
pub(crate) async fn consents(pg: &PgPool, phone: &PhoneNumber) -> Result<Vec<Value>, sqlx::Error> {
    if !consents_table_exists(pg).await? {
        return Ok(Vec::new());
    }
    sqlx::query_scalar(
        "SELECT to_jsonb(c) FROM consents c WHERE phone_number = $1 ORDER BY given_at, id",
    )
    .bind(phone.as_str())
    .fetch_all(pg)
    .await
}

/// Erases the number and anonymises its calls (`ended`, all ended) in one transaction.
/// Consent records are kept as evidence (see `docs/privacy.md`): their number becomes
/// `pseudonym` and those still valid are revoked by the erasure.
pub(crate) async fn erase(
    pg: &PgPool,
    phone: &PhoneNumber,
    pseudonym: &str,
    ended: &[CallId],
    counts: &mut Counts,
) -> Result<(), sqlx::Error> {
    let ids: Vec<Uuid> = ended.iter().map(|c| c.as_uuid()).collect();
    let mut tx = pg.begin().await?;
    if consents_table_exists(&mut *tx).await? {
        let n = sqlx::query(
            "UPDATE consents SET phone_number = $2,
                 revoked_at = COALESCE(revoked_at, now()),
                 revoked_by = COALESCE(revoked_by, 'erasure'),
                 revoked_how = COALESCE(revoked_how, 'erasure')
             WHERE phone_number = $1",
        )
        .bind(phone.as_str())
        .bind(pseudonym)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        counts.add("table", "consents", "anonymised", n);
    }
    let n = sqlx::query(privacy::ANONYMISE_CALLS_SQL)
        .bind(&ids)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    counts.add("table", "calls", "anonymised", n);
    let n = sqlx::query(&privacy::anonymise_events_sql())
        .bind(&ids)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    counts.add("table", "call_events", "anonymised", n);
    // The audit trail keeps each decision and what it checked (the proof a call was allowed),
    // without the number.
    let n = sqlx::query(privacy::ANONYMISE_AUDIT_SQL)
        .bind(&ids)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    counts.add("table", "call_audit", "anonymised", n);
    let n = sqlx::query("DELETE FROM phone_numbers WHERE phone_number = $1")
        .bind(phone.as_str())
        .execute(&mut *tx)
        .await?
        .rows_affected();
    counts.add("table", "phone_numbers", "deleted", n);
    // A letter's row stays (the day's dead-letter figure counts it); its copy of the message goes.
    let n = sqlx::query(
        "UPDATE dead_letters SET payload = NULL WHERE payload IS NOT NULL \
         AND (call_id = ANY($1) OR strpos(payload::text, $2) > 0)",
    )
    .bind(&ids)
    .bind(phone.digits())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    counts.add("table", "dead_letters", "anonymised", n);
    if !webhook_tables_exist(&mut *tx).await? {
        tx.commit().await?;
        return Ok(());
    }
    // The delivery log of a webhook is its body: the rows go (a delivery still pending for an
    // ended call is dropped with them).
    let n = sqlx::query(
        "DELETE FROM webhook_attempts WHERE call_id = ANY($1) OR message_id IN \
         (SELECT id FROM webhook_messages WHERE position(convert_to($2, 'UTF8') in body) > 0)",
    )
    .bind(&ids)
    .bind(phone.digits())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    counts.add("table", "webhook_attempts", "deleted", n);
    let n = sqlx::query(
        "DELETE FROM webhook_messages WHERE call_id = ANY($1) \
         OR position(convert_to($2, 'UTF8') in body) > 0",
    )
    .bind(&ids)
    .bind(phone.digits())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    counts.add("table", "webhook_messages", "deleted", n);
    tx.commit().await?;
    Ok(())
}

/// Whether ingest's consent table exists (ingest migrates it in the background at start).
async fn consents_table_exists<'e>(
    executor: impl sqlx::PgExecutor<'e>,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT to_regclass('consents') IS NOT NULL")
        .fetch_one(executor)
        .await
}

/// Whether the webhooks service's tables exist: it migrates them itself, so a deployment that
/// never ran it (or has not yet) has none, and an erase must not fail for that.
async fn webhook_tables_exist<'e>(
    executor: impl sqlx::PgExecutor<'e>,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT to_regclass('webhook_messages') IS NOT NULL \
         AND to_regclass('webhook_attempts') IS NOT NULL",
    )
    .fetch_one(executor)
    .await
}
