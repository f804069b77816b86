//! `GET /api/v1/metrics/`: the old API's system metrics, computed from the read model.

use axum::extract::State;
use chrono::NaiveDate;
use serde_json::{Value, json};

use crate::{AppState, compat_error::CompatError};

/// Per-day figures of the last seven days (UTC), today first. Live calls are the attempts
/// dialled and not yet answered by an outcome; the daily peak is the maximum of that running
/// count over the day's events.
const DAILY: &str = r#"
WITH days AS (
    SELECT generate_series(current_date - 6, current_date, interval '1 day')::date AS day
), ev AS (
    SELECT (occurred_at AT TIME ZONE 'UTC')::date AS day,
        count(*) FILTER (WHERE kind = 'queued' AND attempt = 1) AS initiated,
        count(*) FILTER (WHERE kind = 'outcome' AND status = 'PICKED') AS picked,
        count(*) FILTER (WHERE kind = 'outcome' AND status = 'DISCONNECTED') AS disconnected,
        count(*) FILTER (WHERE kind = 'outcome' AND status = 'RNR') AS rnr,
        count(*) FILTER (WHERE kind = 'outcome' AND status = 'FAILED') AS failed,
        count(*) FILTER (WHERE kind = 'retrying') AS retries,
        coalesce(sum((payload->>'duration_secs')::bigint) FILTER (WHERE kind = 'outcome'), 0)::bigint
            AS duration
    FROM call_events
    WHERE occurred_at >= current_date - 6
    GROUP BY 1
), live AS (
    SELECT (occurred_at AT TIME ZONE 'UTC')::date AS day,
        sum(CASE WHEN kind = 'dialing' THEN 1 ELSE -1 END)
            OVER (ORDER BY occurred_at, stream, seq ROWS UNBOUNDED PRECEDING) AS live
    FROM call_events
    WHERE kind IN ('dialing', 'outcome') AND occurred_at >= current_date - 6
), peaks AS (
    SELECT day, greatest(max(live), 0)::bigint AS peak FROM live GROUP BY day
), dlq AS (
    SELECT (created_at AT TIME ZONE 'UTC')::date AS day, count(*) AS n
    FROM dead_letters WHERE created_at >= current_date - 6 GROUP BY 1
)
SELECT days.day,
    coalesce(ev.initiated, 0), coalesce(ev.picked, 0), coalesce(ev.disconnected, 0),
    coalesce(ev.rnr, 0), coalesce(ev.failed, 0), coalesce(ev.retries, 0),
    coalesce(peaks.peak, 0), coalesce(ev.duration, 0), coalesce(dlq.n, 0)
FROM days
LEFT JOIN ev USING (day) LEFT JOIN peaks USING (day) LEFT JOIN dlq USING (day)
ORDER BY days.day DESC
"#;

type DailyRow = (NaiveDate, i64, i64, i64, i64, i64, i64, i64, i64, i64);

#[utoipa::path(get, path = "/api/v1/metrics/", tag = "compatible",
    responses((status = 200, description = "current_concurrent_calls, max_concurrent_calls, recent_metrics (7 days), system_status", body = Object)))]
pub async fn metrics(State(state): State<AppState>) -> Result<axum::Json<Value>, CompatError> {
    let current: i64 = sqlx::query_scalar("SELECT count(*) FROM calls WHERE status = 'PROCESSING'")
        .fetch_one(&state.pg)
        .await
        .map_err(CompatError::unavailable)?;
    let campaigns = crate::routes::campaigns::load_all(&state)
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
