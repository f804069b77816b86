//! The pull loops: [`run`] (one handler per message), [`fetch`] (one batch) and [`Messages`]
//! (a continuous pull cut into batches).

use std::{future::Future, sync::Arc, time::Duration};

use async_nats::jetstream::consumer::{PullConsumer, pull};
use futures::{FutureExt, StreamExt};
use tokio::{task::JoinSet, time::Instant};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{Delivery, Options, metrics};
use crate::telemetry::chain;

/// Why a pull request could not be made.
#[derive(Debug, thiserror::Error)]
#[error("cannot pull from consumer {consumer}")]
pub struct PullError {
    pub consumer: &'static str,
    #[source]
    pub source: async_nats::Error,
}

/// How long to wait after a failed pull before the next one.
const PULL_RETRY: Duration = Duration::from_secs(1);

/// Pulls from `consumer` and runs `handler` on each message, at most `options.concurrency`
/// at a time, until `shutdown`; then waits for the handlers in flight.
///
/// Pulls are explicit batches with a short `expires`, each read to its end: on shutdown the
/// last batch is finished and what it still brings is settled by `options.on_shutdown`, so no
/// message is left buffered in a stopped client, invisible to other replicas until its
/// `ack_wait` runs out. With tracing on, each message is handled in a span of the trace its
/// headers carry.
pub async fn run<H, Fut>(
    consumer: &PullConsumer,
    options: &Options,
    mut handler: H,
    shutdown: &CancellationToken,
) where
    H: FnMut(Delivery) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let limit = Arc::new(tokio::sync::Semaphore::new(options.concurrency.max(1)));
    let mut tasks = JoinSet::new();
    while !shutdown.is_cancelled() {
        let mut batch = match request(consumer, options).await {
            Ok(batch) => batch,
            Err(e) => {
                warn_pull(&e);
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(PULL_RETRY) => continue,
                }
            }
        };
        while let Some(message) = batch.next().await {
            let delivery = match message {
                Ok(message) => options.delivery(message),
                Err(e) => {
                    metrics::pull_failed(options.name);
                    tracing::warn!(consumer = options.name, error = %chain(&*e), "pull error");
                    continue;
                }
            };
            if shutdown.is_cancelled() {
                options.settle_on_shutdown(delivery).await;
                continue;
            }
            let Ok(permit) = limit.clone().acquire_owned().await else {
                break;
            };
            let span = (options.span)(options.name, &delivery);
            let work = handler(delivery);
            tasks.spawn(
                async move {
                    work.await;
                    drop(permit);
                }
                .instrument(span),
            );
            while tasks.try_join_next().is_some() {}
        }
    }
    while tasks.join_next().await.is_some() {}
}

/// One pull request of up to `options.batch` messages, read to its end (at most
/// `options.expires`).
pub async fn fetch(consumer: &PullConsumer, options: &Options) -> Result<Vec<Delivery>, PullError> {
    let mut batch = request(consumer, options).await.inspect_err(warn_pull)?;
    let mut deliveries = Vec::new();
    while let Some(message) = batch.next().await {
        match message {
            Ok(message) => deliveries.push(options.delivery(message)),
            Err(e) => {
                metrics::pull_failed(options.name);
                tracing::warn!(consumer = options.name, error = %chain(&*e), "pull error");
            }
        }
    }
    Ok(deliveries)
}

async fn request(consumer: &PullConsumer, options: &Options) -> Result<pull::Batch, PullError> {
    let mut fetch = consumer
        .fetch()
        .max_messages(options.batch.max(1))
        .expires(options.expires);
    if let Some(heartbeat) = options.heartbeat {
        fetch = fetch.heartbeat(heartbeat);
    }
    fetch.messages().await.map_err(|e| PullError {
        consumer: options.name,
        source: e.into(),
    })
}

fn warn_pull(e: &PullError) {
    metrics::pull_failed(e.consumer);
    tracing::warn!(consumer = e.consumer, error = %chain(e), "pull failed");
}

/// A continuous pull (the client keeps a request open and renews it), cut into batches by
/// [`Messages::next_batch`]. The next messages are already buffered while a batch is handled.
pub struct Messages {
    stream: pull::Stream,
    options: Options,
}

impl std::fmt::Debug for Messages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Messages")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Messages {
    /// Opens the continuous pull of `consumer`, `options.batch` messages per request.
    pub async fn open(consumer: &PullConsumer, options: Options) -> Result<Self, PullError> {
        let mut builder = consumer
            .stream()
            .max_messages_per_batch(options.batch.max(1))
            .expires(options.expires);
        if let Some(heartbeat) = options.heartbeat {
            builder = builder.heartbeat(heartbeat);
        }
        let stream = builder.messages().await.map_err(|e| PullError {
            consumer: options.name,
            source: e.into(),
        })?;
        Ok(Self { stream, options })
    }

    /// Waits for a first message, then collects until `max` messages or `wait` after the
    /// first. `None` on shutdown, when the batch being collected and whatever the client
    /// already buffered are settled by `on_shutdown`, or when the pull ends.
    pub async fn next_batch(
        &mut self,
        max: usize,
        wait: Duration,
        shutdown: &CancellationToken,
    ) -> Option<Vec<Delivery>> {
        let mut batch = Vec::with_capacity(max.max(1));
        let mut deadline = None;
        while batch.len() < max.max(1) {
            let next = tokio::select! {
                _ = shutdown.cancelled() => {
                    self.settle_on_shutdown(batch).await;
                    return None;
                }
                next = self.stream.next() => next,
                _ = sleep_until(deadline) => break,
            };
            match next {
                Some(Ok(message)) => {
                    batch.push(self.options.delivery(message));
                    deadline.get_or_insert_with(|| Instant::now() + wait);
                }
                Some(Err(e)) => {
                    metrics::pull_failed(self.options.name);
                    tracing::warn!(consumer = self.options.name, error = %chain(&e),
                        "pull error; continuing");
                }
                None if batch.is_empty() => return None,
                None => break,
            }
        }
        Some(batch)
    }

    async fn settle_on_shutdown(&mut self, mut batch: Vec<Delivery>) {
        while let Some(Some(Ok(message))) = self.stream.next().now_or_never() {
            batch.push(self.options.delivery(message));
        }
        for delivery in batch {
            self.options.settle_on_shutdown(delivery).await;
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
