//! The webhook queue (`webhook_messages`) as other services may touch it.
//!
//! The table is ccm-webhooks' (its migration set, `webhooks/migrations/`, says why the queue
//! lives in PostgreSQL): the deliverer fills the live lane and drains both lanes. Ingest puts
//! copies of live messages on the manual lane for the API's redelivery and replay, in one
//! statement, so the request is durable once answered and works while the deliverer
//! restarts. These are the only writes to the table outside ccm-webhooks.

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
