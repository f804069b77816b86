//! The webhook queue (`webhook_messages`) as other services may touch it.
//!
//! The table is ccm-webhooks' (its migration set, `webhooks/migrations/`, says why the queue
//! lives in PostgreSQL): the deliverer fills the live lane and drains both lanes. Ingest puts
//! copies of live messages on the manual lane for the API's redelivery and replay, in one
//! statement, so the request is durable once answered and works while the deliverer
//! restarts. It also queues the notices that come from no call event ([`notify`]: a callee's
//! opt-out). These are the only writes to the table outside ccm-webhooks.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// Queues the live message `msg_id` of `endpoint` again on its manual lane (same
/// `webhook-id` and body); answers how many were queued (0: no such message).
pub async fn redeliver(pg: &PgPool, endpoint: &str, msg_id: &str) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "INSERT INTO webhook_messages
             (endpoint_id, msg_id, event_type, call_id, campaign_id, body, lane)
         SELECT endpoint_id, msg_id, event_type, call_id, campaign_id, body, 'manual'
         FROM webhook_messages WHERE endpoint_id = $1 AND msg_id = $2 AND lane = 'live'",
    )
    .bind(endpoint)
    .bind(msg_id)
    .execute(pg)
    .await?
    .rows_affected())
}

/// Queues every live message of `endpoint` since `since` again on its manual lane, oldest
/// first; answers how many were queued.
pub async fn replay(pg: &PgPool, endpoint: &str, since: DateTime<Utc>) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "INSERT INTO webhook_messages
             (endpoint_id, msg_id, event_type, call_id, campaign_id, body, lane)
         SELECT endpoint_id, msg_id, event_type, call_id, campaign_id, body, 'manual'
         FROM webhook_messages
         WHERE endpoint_id = $1 AND lane = 'live' AND created_at >= $2
         ORDER BY id",
    )
    .bind(endpoint)
    .bind(since)
    .execute(pg)
    .await?
    .rows_affected())
}

/// An endpoint a notice goes to, and whether it is enabled (a disabled one gets it recorded
/// as skipped, as the deliverer records call events).
#[derive(Debug, Clone)]
pub struct Target {
    pub endpoint_id: String,
    pub enabled: bool,
}

/// Queues one notice (`event_type`, `body`) on the live lane of each target, once: a notice
/// queued again with the same `msg_id` (a repeated callback) is left as it is. Answers how many
/// were queued now; `Ok(0)` too when the webhook tables do not exist (no webhooks service was
/// ever deployed, so nobody can be subscribed).
pub async fn notify(
    pg: &PgPool,
    targets: &[Target],
    msg_id: &str,
    event_type: &str,
    call_id: Option<uuid::Uuid>,
    campaign_id: i64,
    body: &[u8],
) -> Result<u64, sqlx::Error> {
    if targets.is_empty() {
        return Ok(0);
    }
    let endpoint: Vec<String> = targets.iter().map(|t| t.endpoint_id.clone()).collect();
    let state: Vec<String> = targets
        .iter()
        .map(|t| if t.enabled { "pending" } else { "skipped" }.to_owned())
        .collect();
    let result = sqlx::query(
        "INSERT INTO webhook_messages
             (endpoint_id, msg_id, event_type, call_id, campaign_id, body, state)
         SELECT e, $2, $3, $4, $5, $6, s FROM UNNEST($1::text[], $7::text[]) AS t(e, s)
         ON CONFLICT (endpoint_id, msg_id) WHERE lane = 'live' DO NOTHING",
    )
    .bind(endpoint)
    .bind(msg_id)
    .bind(event_type)
    .bind(call_id)
    .bind(campaign_id)
    .bind(body)
    .bind(state)
    .execute(pg)
    .await;
    match result {
        Ok(done) => Ok(done.rows_affected()),
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => Ok(0),
        Err(e) => Err(e),
    }
}
