//! # ccm-webhooks
//!
//! Delivers call lifecycle events (`completed`, `failed`, `retrying`, `cancelled`,
//! `dead_lettered`) to the HTTP endpoints subscribed through ingest's `/api/v1/webhooks`.
//!
//! [`run`] consumes the durable `webhooks` consumer of `CALL_EVENTS` (`calls.event.>`). For
//! each event it finds the matching subscriptions ([`subscriptions`], the `webhooks` bucket
//! in memory) and hands the event to each endpoint's own task ([`deliver`]), which POSTs it
//! signed as Standard Webhooks ([`sign`]) and retries with jittered exponential backoff.
//! The JetStream message is acked only when every endpoint has settled it, so a crash or
//! restart redelivers it: delivery is at least once, and receivers de-duplicate on
//! `webhook-id`.

pub mod deliver;
pub mod sign;
pub mod subscriptions;

use std::{
    collections::HashMap,
    sync::{Arc, Weak},
    time::Duration,
};

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use bytes::Bytes;
use ccm_core::{
    CallEvent, Config,
    config::WebhooksConfig,
    topology::{Topology, names},
};
use futures::StreamExt;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    deliver::{Job, Pending},
    subscriptions::Subscriptions,
};

/// The durable consumer (`nats/consumers/CALL_EVENTS/webhooks.json`).
const CONSUMER: &str = "webhooks";
/// How long a pull request waits for messages. Short, so shutdown is never held up long.
const PULL_EXPIRES: Duration = Duration::from_secs(1);
const BATCH: usize = 256;
/// Un-acked events get an in-progress ack this often, well inside the consumer's 60 s
/// `ack_wait`, so an event waiting behind a slow endpoint is not redelivered meanwhile.
const PROGRESS_EVERY: Duration = Duration::from_secs(20);
/// When an endpoint's queue is full the event comes back after this long.
const FULL_QUEUE_DELAY: Duration = Duration::from_secs(2);

/// Why the service stopped.
#[derive(Debug, thiserror::Error)]
pub enum WebhooksError {
    #[error(transparent)]
    Nats(#[from] ccm_core::nats::NatsError),
    #[error(transparent)]
    Topology(#[from] ccm_core::topology::TopologyError),
    #[error("cannot open {0}")]
    Open(&'static str, #[source] async_nats::Error),
    #[error("cannot build the HTTP client")]
    Client(#[source] reqwest::Error),
}

/// The body POSTed to endpoints.
#[derive(Debug, Serialize)]
struct Payload<'a> {
    /// `call.<event>`, e.g. `call.completed`.
    #[serde(rename = "type")]
    kind: String,
    timestamp: chrono::DateTime<chrono::Utc>,
    data: &'a CallEvent,
}

/// Runs the deliverer until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), WebhooksError> {
    let client = ccm_core::nats::connect(&config.nats_url, "webhooks").await?;
    let js = ccm_core::nats::jetstream(client.clone());
    Topology::load(&config.streams)?.provision(&js).await?;
    let store = ccm_core::nats::bucket(&js, names::KV_WEBHOOKS).await?;
    let subscriptions = Subscriptions::follow(store, shutdown.child_token())
        .await
        .map_err(|e| WebhooksError::Open(names::KV_WEBHOOKS, e))?;
    let consumer: PullConsumer = js
        .get_consumer_from_stream(CONSUMER, names::CALL_EVENTS)
        .await
        .map_err(|e| WebhooksError::Open(CONSUMER, e.into()))?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(config.webhooks.request_timeout_ms))
        // A redirect could lead to a target the URL check refused; it counts as a refusal.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("ccm-webhooks/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(WebhooksError::Client)?;
    let mut dispatcher = Dispatcher {
        endpoints: HashMap::new(),
        subscriptions,
        http,
        config: Arc::new(config.webhooks.clone()),
        // Endpoint tasks are stopped only once no pull is open any more: an event they NAK
        // while one is would be redelivered into it and stranded when it closes.
        shutdown: CancellationToken::new(),
        tasks: tokio::task::JoinSet::new(),
        in_flight: Vec::new(),
    };
    tracing::info!("webhooks running");
    let mut last_progress = tokio::time::Instant::now();
    while !shutdown.is_cancelled() {
        // Checked between pulls rather than raced against them: dropping a pull whose request
        // was already sent would strand its messages until `ack_wait`. A pull lasts at most
        // `PULL_EXPIRES` plus its handling, far inside the margin.
        if last_progress.elapsed() >= PROGRESS_EVERY {
            dispatcher.keep_alive().await;
            last_progress = tokio::time::Instant::now();
        }
        let batch = consumer
            .fetch()
            .max_messages(BATCH)
            .expires(PULL_EXPIRES)
            .messages()
            .await;
        let mut batch = match batch {
            Ok(batch) => batch,
            Err(e) => {
                tracing::warn!(error = %e, "pull failed");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        while let Some(message) = batch.next().await {
            match message {
                Ok(message) if shutdown.is_cancelled() => {
                    let _ = message.ack_with(AckKind::Nak(None)).await;
                }
                Ok(message) => dispatcher.dispatch(message).await,
                Err(e) => tracing::warn!(error = %e, "pull error"),
            }
        }
    }
    // Endpoint tasks NAK what they hold when they see the shutdown.
    dispatcher.shutdown.cancel();
    drop(dispatcher.endpoints);
    while dispatcher.tasks.join_next().await.is_some() {}
    // Flushed first: the NAKs just sent must reach the server, and drain alone was seen
    // (by the restart test) to close the connection with them still unsent.
    if let Err(e) = client.flush().await {
        tracing::warn!(error = %e, "flush at shutdown failed; unsettled events return after ack_wait");
    }
    let _ = client.drain().await;
    Ok(())
}

/// Fans events out to the endpoints' queues.
struct Dispatcher {
    endpoints: HashMap<String, mpsc::Sender<Job>>,
    subscriptions: Subscriptions,
    http: reqwest::Client,
    config: Arc<WebhooksConfig>,
    shutdown: CancellationToken,
    tasks: tokio::task::JoinSet<()>,
    /// Messages not yet settled by every endpoint, for [`Dispatcher::keep_alive`].
    in_flight: Vec<Weak<Pending>>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("endpoints", &self.endpoints.len())
            .finish_non_exhaustive()
    }
}

impl Dispatcher {
    async fn dispatch(&mut self, message: jetstream::Message) {
        let event: CallEvent = match serde_json::from_slice(&message.payload) {
            Ok(event) => event,
            Err(e) => {
                // Not ours to judge: the projector owns malformed events. Nothing to deliver.
                tracing::warn!(subject = %message.subject, error = %e, "undecodable event skipped");
                let _ = message.ack().await;
                return;
            }
        };
        let targets: Vec<String> = self
            .subscriptions
            .all()
            .into_iter()
            .filter(|s| s.wants(event.campaign_id, &event.kind))
            .map(|s| s.id.clone())
            .collect();
        if targets.is_empty() {
            let _ = message.ack().await;
            return;
        }
        // Reserve a place in every target queue first: an event goes to all its endpoints
        // or, when one queue is full, to none yet and comes back later, so a full queue
        // neither blocks the other endpoints nor duplicates the event to them.
        let mut permits = Vec::with_capacity(targets.len());
        for id in &targets {
            let sender = self.sender(id);
            match sender.try_reserve_owned() {
                Ok(permit) => permits.push(permit),
                Err(_) => {
                    tracing::debug!(endpoint = %id, "endpoint queue full; event deferred");
                    drop(permits);
                    let _ = message.ack_with(AckKind::Nak(Some(FULL_QUEUE_DELAY))).await;
                    return;
                }
            }
        }
        let payload = Payload {
            kind: format!("call.{}", event.kind.name()),
            timestamp: event.at,
            data: &event,
        };
        let body = match serde_json::to_vec(&payload) {
            Ok(body) => Bytes::from(body),
            Err(e) => {
                tracing::error!(error = %e, "cannot encode webhook payload");
                let _ = message.ack_with(AckKind::Nak(None)).await;
                return;
            }
        };
        let id = event.msg_id();
        let pending = Pending::new(message);
        self.in_flight.push(Arc::downgrade(&pending));
        for permit in permits {
            permit.send(Job {
                id: id.clone(),
                body: body.clone(),
                pending: pending.clone(),
            });
        }
    }

    /// The queue of endpoint `id`, its task started on first use.
    fn sender(&mut self, id: &str) -> mpsc::Sender<Job> {
        if let Some(sender) = self.endpoints.get(id).filter(|s| !s.is_closed()) {
            return sender.clone();
        }
        let (sender, jobs) = mpsc::channel(self.config.queue_per_endpoint.max(1));
        self.tasks.spawn(deliver::endpoint(
            id.to_owned(),
            jobs,
            self.subscriptions.clone(),
            self.http.clone(),
            self.config.clone(),
            self.shutdown.clone(),
        ));
        self.endpoints.insert(id.to_owned(), sender.clone());
        sender
    }

    /// Sends an in-progress ack for every message still being delivered.
    async fn keep_alive(&mut self) {
        self.in_flight.retain(|p| p.strong_count() > 0);
        for pending in self.in_flight.iter().filter_map(Weak::upgrade) {
            let _ = pending.message.ack_with(AckKind::Progress).await;
        }
    }
}
