//! `GET /api/v1/metrics/`: the old API's system metrics, computed from the read model.

use axum::extract::State;
use chrono::NaiveDate;
use serde_json::{Value, json};

use crate::{AppState, compat_error::CompatError};

/// Per-day figures of the last seven days (UTC), today first, from the projector's
/// `call_metrics_daily` view (daily counters and the daily peak of live calls).
const DAILY: &str = r#"
WITH days AS (
    SELECT generate_series(
        (now() AT TIME ZONE 'UTC')::date - 6, (now() AT TIME ZONE 'UTC')::date, interval '1 day'
    )::date AS day
)
SELECT days.day,
    coalesce(m.total_calls_initiated, 0)::bigint, coalesce(m.total_calls_picked, 0)::bigint,
    coalesce(m.total_calls_disconnected, 0)::bigint, coalesce(m.total_calls_rnr, 0)::bigint,
    coalesce(m.total_calls_failed, 0)::bigint, coalesce(m.total_retries, 0)::bigint,
    coalesce(m.peak_concurrent_calls, 0)::bigint, coalesce(m.total_call_duration_seconds, 0)::bigint,
    coalesce(m.dlq_entries_created, 0)::bigint
FROM days LEFT JOIN call_metrics_daily m USING (day)
ORDER BY days.day DESC
"#;

type DailyRow = (NaiveDate, i64, i64, i64, i64, i64, i64, i64, i64, i64);

#[utoipa::path(get, path = "/api/v1/metrics/", tag = "compatible",
    responses((status = 200, description = "current_concurrent_calls, max_concurrent_calls, recent_metrics (7 days), system_status", body = Object)))]
pub(crate) async fn metrics(
    State(state): State<AppState>,
) -> Result<axum::Json<Value>, CompatError> {
    let current: i64 = sqlx::query_scalar("SELECT count(*) FROM calls WHERE status = 'PROCESSING'")
        .fetch_one(&state.pg)
        .await
        .map_err(CompatError::unavailable)?;
    let campaigns = crate::campaign_store::load_all(&state)
        .await
        .map_err(CompatError::unavailable)?;
    let max: u64 = campaigns
        .iter()
        .filter(|c| c.accepts_calls())
        .map(|c| u64::from(c.max_concurrent_calls))
        .sum();
    let rows: Vec<DailyRow> = sqlx::query_as(DAILY)
        .fetch_all(&state.pg)
        .await
        .map_err(CompatError::unavailable)?;
    let recent: Vec<Value> = rows
        .into_iter()
        .map(
            |(date, initiated, picked, disconnected, rnr, failed, retries, peak, duration, dlq)| {
                json!({
                    "date": date,
                    "total_calls_initiated": initiated,
                    "total_calls_picked": picked,
                    "total_calls_disconnected": disconnected,
                    "total_calls_rnr": rnr,
                    "total_calls_failed": failed,
                    "total_retries": retries,
                    "peak_concurrent_calls": peak,
                    "total_call_duration_seconds": duration,
                    "dlq_entries_created": dlq,
                })
            },
        )
        .collect();
    let at_capacity = max > 0 && u64::try_from(current).unwrap_or(0) >= max;
    Ok(axum::Json(json!({
        "current_concurrent_calls": current,
        "max_concurrent_calls": max,
        "recent_metrics": recent,
        "system_status": if at_capacity { "at_capacity" } else { "healthy" },
    })))
}
