//! The endpoints' queues and the delivery log in PostgreSQL (tables `webhook_messages` and
//! `webhook_attempts`, migration `1100_webhook_deliveries.sql`, which says why they live
//! there).
//!
//! Writes are batched where order allows: a pulled batch of events is queued for all its
//! endpoints in one statement, and attempts are logged by [`LogWriter`] in one statement per
//! flush. A message's own state is updated as soon as its attempt is over, because the next
//! read of the queue must not see a delivered message as pending.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::lease::Lease;

/// Attempts logged per statement at most.
const LOG_BATCH: usize = 500;
/// How long an attempt may wait in memory before it is logged.
const LOG_EVERY: Duration = Duration::from_millis(200);

/// The two queues of an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lane {
    /// Events as they come from `CALL_EVENTS`.
    Live,
    /// Redeliveries asked for through the API.
    Manual,
}

impl Lane {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Live => "live",
            Self::Manual => "manual",
        }
    }
}

/// One message to queue for one endpoint.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub endpoint_id: String,
    pub msg_id: String,
    pub event_type: String,
    /// None for campaign events.
    pub call_id: Option<Uuid>,
    pub campaign_id: i64,
    pub body: Vec<u8>,
    /// Queued as `skipped` (kept for replays, not sent) when the endpoint is disabled.
    pub skipped: bool,
}

/// Why messages could not be queued.
#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// The dispatch lease expired: another replica may be queueing now, so this one must not.
    #[error("the dispatch lease is no longer held")]
    LeaseLost,
}

/// Queues messages on their endpoints' live lanes, provided this replica still holds the
/// `fence` lease (the dispatch lease). A message already queued (the event was redelivered by
/// JetStream) is left as it is.
///
/// The lease row is locked, shared, in the same transaction as the insert: a replica taking
/// the lease over waits for this transaction, so messages are never queued by two replicas
/// at once, which would interleave their ids and break each call's order.
pub async fn enqueue(
    pg: &PgPool,
    messages: &[NewMessage],
    fence: &Lease,
) -> Result<(), EnqueueError> {
    if messages.is_empty() {
        return Ok(());
    }
    let mut tx = pg.begin().await?;
    let held: Option<i32> = sqlx::query_scalar(
        "SELECT 1 FROM webhook_leases WHERE name = $1 AND holder = $2 AND expires_at > now()
         FOR SHARE",
    )
    .bind(fence.name())
    .bind(fence.holder())
    .fetch_optional(&mut *tx)
    .await?;
    if held.is_none() {
        return Err(EnqueueError::LeaseLost);
    }
    // Owned columns: borrowed ones would make the caller's future non-Send for the runtime.
    let endpoint: Vec<String> = messages.iter().map(|m| m.endpoint_id.clone()).collect();
    let msg_id: Vec<String> = messages.iter().map(|m| m.msg_id.clone()).collect();
    let kind: Vec<String> = messages.iter().map(|m| m.event_type.clone()).collect();
    let call: Vec<Option<Uuid>> = messages.iter().map(|m| m.call_id).collect();
    let campaign: Vec<i64> = messages.iter().map(|m| m.campaign_id).collect();
    let body: Vec<Vec<u8>> = messages.iter().map(|m| m.body.clone()).collect();
    let state: Vec<String> = messages
        .iter()
        .map(|m| if m.skipped { "skipped" } else { "pending" }.to_owned())
        .collect();
    // WITH ORDINALITY keeps the batch's order in the ids, which is the delivery order.
    sqlx::query(
        "INSERT INTO webhook_messages
             (endpoint_id, msg_id, event_type, call_id, campaign_id, body, state)
         SELECT e, m, k, c, g, b, s FROM UNNEST($1::text[], $2::text[], $3::text[],
             $4::uuid[], $5::bigint[], $6::bytea[], $7::text[])
             WITH ORDINALITY AS t(e, m, k, c, g, b, s, n)
         ORDER BY n
         ON CONFLICT (endpoint_id, msg_id) WHERE lane = 'live' DO NOTHING",
    )
    .bind(endpoint)
    .bind(msg_id)
    .bind(kind)
    .bind(call)
    .bind(campaign)
    .bind(body)
    .bind(state)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// A queued message as a worker holds it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Queued {
    pub id: i64,
    pub msg_id: String,
    pub event_type: String,
    pub call_id: Option<Uuid>,
    pub body: Vec<u8>,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub first_attempt_at: Option<DateTime<Utc>>,
}

/// The oldest pending messages of one lane of an endpoint, in queue order.
pub async fn pending(
    pg: &PgPool,
    endpoint: &str,
    lane: Lane,
    limit: usize,
) -> Result<Vec<Queued>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, msg_id, event_type, call_id, body, attempts, next_attempt_at, first_attempt_at
         FROM webhook_messages
         WHERE endpoint_id = $1 AND lane = $2 AND state = 'pending'
         ORDER BY id LIMIT $3",
    )
    .bind(endpoint)
    .bind(lane.as_str())
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .fetch_all(pg)
    .await
}

/// Where a message stands after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Pending,
    Delivered,
    Failed,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }
}

/// Records a message's state after an attempt.
pub async fn settle(
    pg: &PgPool,
    message: &Queued,
    state: State,
    last_status: Option<u16>,
    last_error: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE webhook_messages SET state = $2, attempts = $3, next_attempt_at = $4,
             first_attempt_at = $5, last_status = $6, last_error = $7, updated_at = now()
         WHERE id = $1",
    )
    .bind(message.id)
    .bind(state.as_str())
    .bind(message.attempts)
    .bind(message.next_attempt_at)
    .bind(message.first_attempt_at)
    .bind(last_status.map(i32::from))
    .bind(last_error)
    .execute(pg)
    .await?;
    Ok(())
}

/// When an endpoint's current run of failures began: its first failed attempt after its last
/// successful one, if every attempt since has failed. Read when a worker starts, so the
/// horizon survives restarts.
pub async fn failing_since(
    pg: &PgPool,
    endpoint: &str,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT min(at) FROM webhook_attempts
         WHERE endpoint_id = $1 AND NOT succeeded AND id > coalesce(
             (SELECT max(id) FROM webhook_attempts WHERE endpoint_id = $1 AND succeeded), 0)",
    )
    .bind(endpoint)
    .fetch_one(pg)
    .await
}

/// One attempt, as the log keeps it.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub endpoint_id: String,
    pub message_id: i64,
    pub msg_id: String,
    pub event_type: String,
    pub call_id: Option<Uuid>,
    pub lane: Lane,
    pub attempt: i32,
    pub status_code: Option<u16>,
    pub succeeded: bool,
    pub latency: Duration,
    pub error: Option<String>,
    pub at: DateTime<Utc>,
}

/// Hands attempts to the task that logs them in batches.
#[derive(Debug, Clone)]
pub struct LogWriter(mpsc::UnboundedSender<AttemptRecord>);

impl LogWriter {
    /// Starts the logging task; it writes what it holds and ends once every writer is dropped.
    pub fn start(pg: PgPool) -> (Self, tokio::task::JoinHandle<()>) {
        let (sender, receiver) = mpsc::unbounded_channel();
        (Self(sender), tokio::spawn(log_task(pg, receiver)))
    }

    pub fn record(&self, attempt: AttemptRecord) {
        // The task only ends after every sender is gone, so this cannot fail.
        let _ = self.0.send(attempt);
    }
}

async fn log_task(pg: PgPool, mut receiver: mpsc::UnboundedReceiver<AttemptRecord>) {
    let mut batch = Vec::with_capacity(LOG_BATCH);
    loop {
        let open = receiver.recv_many(&mut batch, LOG_BATCH).await > 0;
        if !open {
            return;
        }
        // Let a few more arrive, so a busy deliverer writes few large statements.
        let deadline = tokio::time::Instant::now() + LOG_EVERY;
        while batch.len() < LOG_BATCH {
            let room = LOG_BATCH - batch.len();
            tokio::select! {
                n = receiver.recv_many(&mut batch, room) => if n == 0 { break },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        // The log is a record, not a queue: after a few failed writes (PostgreSQL down) the
        // batch is dropped with a warning rather than holding deliveries back.
        let mut tries = 0;
        while let Err(e) = write_log(&pg, &batch).await {
            tries += 1;
            if tries == 5 {
                tracing::warn!(error = %ccm_core::telemetry::chain(&e), lost = batch.len(), "delivery log write failed; entries dropped");
                break;
            }
            tokio::time::sleep(Duration::from_millis(200 * tries)).await;
        }
        batch.clear();
    }
}

async fn write_log(pg: &PgPool, batch: &[AttemptRecord]) -> Result<(), sqlx::Error> {
    let endpoint: Vec<String> = batch.iter().map(|a| a.endpoint_id.clone()).collect();
    let message: Vec<i64> = batch.iter().map(|a| a.message_id).collect();
    let msg_id: Vec<String> = batch.iter().map(|a| a.msg_id.clone()).collect();
    let kind: Vec<String> = batch.iter().map(|a| a.event_type.clone()).collect();
    let call: Vec<Option<Uuid>> = batch.iter().map(|a| a.call_id).collect();
    let lane: Vec<String> = batch.iter().map(|a| a.lane.as_str().to_owned()).collect();
    let attempt: Vec<i32> = batch.iter().map(|a| a.attempt).collect();
    let status: Vec<Option<i32>> = batch.iter().map(|a| a.status_code.map(i32::from)).collect();
    let succeeded: Vec<bool> = batch.iter().map(|a| a.succeeded).collect();
    let latency: Vec<i32> = batch
        .iter()
        .map(|a| i32::try_from(a.latency.as_millis()).unwrap_or(i32::MAX))
        .collect();
    let error: Vec<Option<String>> = batch.iter().map(|a| a.error.clone()).collect();
    let at: Vec<DateTime<Utc>> = batch.iter().map(|a| a.at).collect();
    sqlx::query(
        "INSERT INTO webhook_attempts (endpoint_id, message_id, msg_id, event_type, call_id,
             lane, attempt, status_code, succeeded, latency_ms, error, at)
         SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::text[], $5::uuid[],
             $6::text[], $7::int[], $8::int[], $9::bool[], $10::int[], $11::text[],
             $12::timestamptz[])",
    )
    .bind(endpoint)
    .bind(message)
    .bind(msg_id)
    .bind(kind)
    .bind(call)
    .bind(lane)
    .bind(attempt)
    .bind(status)
    .bind(succeeded)
    .bind(latency)
    .bind(error)
    .bind(at)
    .execute(pg)
    .await?;
    Ok(())
}

/// Waits for `duration`, or less if `shutdown` comes first; false on shutdown.
pub async fn pause(duration: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(duration) => true,
    }
}
