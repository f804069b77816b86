//! One campaign's pull loop: fetch dial messages while trunk capacity is free, and hand each
//! to its own call task.

use std::{sync::Arc, time::Duration};

use async_nats::jetstream::consumer::PullConsumer;
use ccm_core::CampaignId;
use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::call::{self, CallContext};

/// Most messages asked for in one pull.
const MAX_BATCH: usize = 100;
/// Every pull carries an expiry: nats-server 2.9 can stall a pull request without one.
const PULL_EXPIRES: Duration = Duration::from_secs(5);

/// Pulls from the campaign's dial consumer until `stop` (campaign paused or finished) or the
/// dialer shuts down. Calls in flight are tracked by `calls`, so shutdown can wait for them.
pub async fn run(
    campaign: CampaignId,
    consumer: PullConsumer,
    trunk: Arc<Semaphore>,
    ctx: CallContext,
    calls: TaskTracker,
    stop: CancellationToken,
) {
    tracing::info!(%campaign, "dialling campaign");
    while !stop.is_cancelled() {
        // Wait for at least one free trunk line before asking for work, so messages are never
        // pulled (and their AckWait started) without a line to carry them.
        let first = tokio::select! {
            _ = stop.cancelled() => break,
            permit = trunk.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let mut permits = vec![first];
        while permits.len() < MAX_BATCH {
            match trunk.clone().try_acquire_owned() {
                Ok(permit) => permits.push(permit),
                Err(_) => break,
            }
        }
        let batch = consumer
            .batch()
            .max_messages(permits.len())
            .expires(PULL_EXPIRES)
            .messages();
        let mut messages = match batch.await {
            Ok(messages) => messages,
            Err(e) => {
                tracing::warn!(%campaign, error = %e, "pull failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => break,
                next = messages.next() => next,
            };
            let Some(next) = next else { break };
            let message = match next {
                Ok(message) => message,
                Err(e) => {
                    tracing::warn!(%campaign, error = %e, "pull error");
                    break;
                }
            };
            let Some(permit) = permits.pop() else { break };
            let ctx = ctx.clone();
            calls.spawn(async move {
                call::handle(ctx, message).await;
                drop(permit);
            });
        }
    }
    tracing::info!(%campaign, "stopped dialling campaign");
}
