//! The `RETRIES` consumer: holds each scheduled attempt until it is due, then publishes it.
//!
//! nats-server 2.9 has no scheduled messages, so an entry waits by delayed redelivery: the
//! retrier NAKs it with a delay. Long waits are NAKed in steps of at most the policy's
//! `scheduler.check_interval_minutes`. An entry that comes back within [`HOLD`] of its time
//! is held here and published at the exact moment, which keeps the firing precise whatever
//! the server's redelivery timer granularity. When due, attempt n+1 is published to `CALLS`
//! with `Nats-Msg-Id` `<call>/<n+1>` (a crash between publish and ack cannot make two
//! attempts; `<call>/<n+1>/w<k>` for an attempt the dialer put off until its calling window
//! opened) and only then acked, which removes the entry from the work-queue stream.
//!
//! A NAK-delayed message keeps its `max_ack_pending` slot, which is why the consumer's limit
//! is very large. Several replicas pull from the same consumer and share the entries.

use std::{sync::Arc, time::Duration};

use ccm_core::{
    RetryEntry,
    consumer::{Delivery, Options, Poison},
    metrics::counter,
    telemetry::chain,
};
use chrono::Utc;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::{RetrierError, Shared, dlq};

/// Entries due within this are held in memory rather than NAKed again. It stays below the
/// consumer's `ack_wait` (60 s) so a held entry is never redelivered elsewhere meanwhile.
pub const HOLD: Duration = Duration::from_secs(20);

/// Entries held or being published at once by one replica.
const IN_FLIGHT: usize = 10_000;

/// Consumes `retrier_retries` until `shutdown`.
pub async fn run(ctx: Arc<Shared>, shutdown: CancellationToken) -> Result<(), RetrierError> {
    let scheduler = ctx.policy.scheduler.clone();
    let publishing = Arc::new(Semaphore::new(scheduler.max_concurrent_retries.max(1)));
    let step = Duration::from_secs(u64::from(scheduler.check_interval_minutes.max(1)) * 60);
    // An entry nobody can read is kept as a letter by the handler, then TERMed.
    let options = Options {
        concurrency: IN_FLIGHT,
        poison: Poison::Term,
        ..Options::new("retrier_retries", scheduler.batch_size, crate::PULL_EXPIRES)
    };
    let stop = shutdown.clone();
    let stream = ccm_core::topology::names::RETRIES;
    crate::consume(ctx, shutdown, stream, options, move |ctx, message| {
        let (publishing, shutdown) = (publishing.clone(), stop.clone());
        async move { handle(&ctx, message, step, &publishing, &shutdown).await }
    })
    .await
}

async fn handle(
    ctx: &Shared,
    message: Delivery,
    step: Duration,
    publishing: &Semaphore,
    shutdown: &CancellationToken,
) {
    let mut entry: RetryEntry = match serde_json::from_slice(&message.payload) {
        Ok(entry) => entry,
        Err(e) => {
            // An entry nobody can read would be redelivered for ever (max_deliver is
            // unlimited): keep it as a dead letter, then TERM it, which removes it from the
            // work queue (its advisory then finds nothing left to park).
            tracing::error!(error = %ccm_core::telemetry::chain(&e), subject = %message.subject, "undecodable retry entry");
            let reason = format!("undecodable retry entry: {e}");
            match dlq::store_message(ctx, &message, &reason).await {
                Ok(()) => {
                    let _ = message.term(&reason).await;
                }
                Err(e) => {
                    tracing::warn!(error = %chain(&e), "cannot dead-letter the entry yet");
                    let _ = message.nak(Some(Duration::from_secs(5))).await;
                }
            }
            return;
        }
    };
    let remaining = (entry.due_at - Utc::now()).to_std().unwrap_or_default();
    if remaining > HOLD {
        // Come back half a hold early, so the entry is held and fired on time.
        let delay = (remaining - HOLD / 2).min(step);
        if let Err(e) = message.nak(Some(delay)).await {
            tracing::warn!(error = %chain(&e), "NAK failed; the entry comes back after ack_wait");
        }
        return;
    }
    tokio::select! {
        _ = tokio::time::sleep(remaining) => {}
        _ = shutdown.cancelled() => {
            let _ = message.nak(None).await;
            return;
        }
    }
    let Ok(_permit) = publishing.acquire().await else {
        return;
    };
    entry.request.queued_at = Utc::now();
    // Under the entry's own id: an attempt put off for its calling window was published once
    // already under `<call>/<attempt>`.
    let msg_id = entry.dial_msg_id();
    let published = ccm_core::nats::publish_json(
        &ctx.js,
        entry.request.subject(),
        &msg_id,
        None,
        &entry.request,
    );
    match published.await {
        Ok(_) => {
            counter!("ccm_retrier_retries_fired_total").increment(1);
            let late = Utc::now() - entry.due_at;
            tracing::debug!(call = %entry.request.call_id, attempt = entry.request.attempt,
                late_ms = late.num_milliseconds(), "retry published");
            if let Err(e) = message.double_ack().await {
                tracing::warn!(error = %chain(&e), "ack of a published retry failed; it is de-duplicated");
            }
        }
        Err(e) => {
            tracing::warn!(error = %chain(&e), call = %entry.request.call_id, "retry publish failed");
            let _ = message.nak(Some(Duration::from_secs(1))).await;
        }
    }
}
