//! The retention job: calls that ended more than `projector.retention_days` ago are
//! anonymised in the read model (the rule of [`ccm_core::privacy`]: the call keeps its
//! status, attempts and times, loses the number, custom fields, carrier id and error text;
//! its history keeps kinds, statuses and times). Off by default (0 days).
//!
//! Deployment-wide (there are no tenants yet). Every replica runs it; the statements touch
//! only rows that still hold something, so replicas running at once neither double the work
//! nor the figures. JetStream keeps its copies of a call only for `CALLS` and `CALL_EVENTS`'
//! `max_age` (7 days), so a retention of 7 days or more leaves nothing there either.

use std::time::Duration;

use ccm_core::{metrics::counter, privacy};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Calls anonymised per statement, so a first run over a large table holds no long lock.
const BATCH: i64 = 1000;

/// Runs a round every `every` until `shutdown`; `days` 0 turns it off.
pub async fn run(pool: PgPool, days: u32, every: Duration, shutdown: CancellationToken) {
    if days == 0 {
        return;
    }
    loop {
        match round(&pool, days).await {
            Ok((calls, events)) => {
                counter!("ccm_projector_retention_runs_total", "result" => "ok").increment(1);
                if calls > 0 {
                    tracing::info!(calls, events, days, "retention: call histories anonymised");
                }
            }
            Err(e) => {
                counter!("ccm_projector_retention_runs_total", "result" => "failed").increment(1);
                tracing::warn!(error = %ccm_core::telemetry::chain(&e), "retention round failed; the next one retries");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// One round: every call ended more than `days` ago that still holds personal data.
/// Returns the calls and events anonymised.
pub async fn round(pool: &PgPool, days: u32) -> Result<(u64, u64), sqlx::Error> {
    let (mut calls, mut events) = (0, 0);
    let days = i32::try_from(days).unwrap_or(i32::MAX);
    loop {
        let ids: Vec<Uuid> = sqlx::query_scalar(&format!(
            "SELECT call_id FROM calls WHERE {} \
             AND updated_at < now() - make_interval(days => $1) \
             AND (phone_number IS NOT NULL OR custom_fields IS NOT NULL \
                  OR external_call_id IS NOT NULL OR error_message IS NOT NULL) \
             LIMIT $2",
            ccm_core::call_lifecycle::CALL_HAS_ENDED_SQL
        ))
        .bind(days)
        .bind(BATCH)
        .fetch_all(pool)
        .await?;
        if ids.is_empty() {
            break;
        }
        let mut tx = pool.begin().await?;
        // The history first: a call whose row is anonymised is no longer selected, so its
        // events must be done in the same transaction.
        let e = sqlx::query(&privacy::anonymise_events_sql())
            .bind(&ids)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query(privacy::ANONYMISE_AUDIT_SQL)
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        let c = sqlx::query(privacy::ANONYMISE_CALLS_SQL)
            .bind(&ids)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        counter!("ccm_projector_retention_anonymised_total", "table" => "calls").increment(c);
        counter!("ccm_projector_retention_anonymised_total", "table" => "call_events").increment(e);
        calls += c;
        events += e;
        if ids.len() < usize::try_from(BATCH).unwrap_or(usize::MAX) {
            break;
        }
    }
    Ok((calls, events))
}
