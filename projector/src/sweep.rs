//! Letters that left `DLQ` without an event saying so: expired by the stream's `max_age`, or
//! redriven or discarded when they were not a call's (only a call's letter has an event to
//! record the action). A periodic sweep checks the open rows of `dead_letters` against the
//! stream and marks those it no longer holds `removed`, so the table follows the DLQ.
//!
//! Everything below the stream's first sequence is gone in one statement; rows above it are
//! checked one direct get each, [`CHECKS`] per round, resuming after the last one checked,
//! so a large backlog of open letters is covered over several rounds without a burst. An
//! operator's event that arrives later still names the action (`redriven`, `discarded`):
//! `removed` is the weakest resolution.

use std::time::Duration;

use async_nats::jetstream::{self, stream::LastRawMessageErrorKind};
use ccm_core::topology::names;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// How often a round runs.
pub const EVERY: Duration = Duration::from_secs(5);
/// Open letters checked per round.
pub const CHECKS: i64 = 200;

/// Sweeps until `shutdown`.
pub async fn run(js: jetstream::Context, pool: PgPool, shutdown: CancellationToken) {
    let mut after = 0_i64;
    loop {
        match round(&js, &pool, after).await {
            Ok(next) => after = next,
            Err(e) => {
                tracing::debug!(error = %ccm_core::telemetry::chain(e.as_ref()), "dead-letter sweep failed; next round retries")
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(EVERY) => {}
        }
    }
}

/// One round; returns where the next one resumes (0: from the start).
async fn round(
    js: &jetstream::Context,
    pool: &PgPool,
    after: i64,
) -> Result<i64, async_nats::Error> {
    let mut stream = js.get_stream(names::DLQ).await?;
    let first = i64::try_from(stream.info().await?.state.first_sequence).unwrap_or(i64::MAX);
    sqlx::query(
        "UPDATE dead_letters SET state = 'removed', resolved_at = now()
         WHERE state = 'open' AND created_at IS NOT NULL AND dlq_seq < $1",
    )
    .bind(first)
    .execute(pool)
    .await?;
    let open: Vec<i64> = sqlx::query_scalar(
        "SELECT dlq_seq FROM dead_letters
         WHERE state = 'open' AND created_at IS NOT NULL AND dlq_seq > $1
         ORDER BY dlq_seq LIMIT $2",
    )
    .bind(after)
    .bind(CHECKS)
    .fetch_all(pool)
    .await?;
    let mut gone = Vec::new();
    for seq in &open {
        match stream
            .get_raw_message(u64::try_from(*seq).unwrap_or(0))
            .await
        {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => gone.push(*seq),
            Err(e) => return Err(e.into()),
        }
    }
    if !gone.is_empty() {
        sqlx::query(
            "UPDATE dead_letters SET state = 'removed', resolved_at = now()
             WHERE state = 'open' AND dlq_seq = ANY($1)",
        )
        .bind(&gone)
        .execute(pool)
        .await?;
    }
    Ok(if open.len() < CHECKS as usize {
        0
    } else {
        open.last().copied().unwrap_or(0)
    })
}

fn is_not_found(e: &jetstream::stream::LastRawMessageError) -> bool {
    match e.kind() {
        LastRawMessageErrorKind::NoMessageFound => true,
        LastRawMessageErrorKind::JetStream(j) => {
            j.error_code() == jetstream::ErrorCode::NO_MESSAGE_FOUND
        }
        _ => false,
    }
}
