//! # ccm-webhooks
//!
//! Delivers call lifecycle events (`completed`, `failed`, `retrying`, `cancelled`,
//! `dead_lettered`) to the HTTP endpoints subscribed through ingest's `/api/v1/webhooks`.
//!
//! [`run`] consumes the durable `webhooks` consumer of `CALL_EVENTS` (`calls.event.>`). For
//! each pulled batch it finds the matching subscriptions ([`subscriptions`], the `webhooks`
//! bucket in memory), builds each event's body once ([`payload`]), queues it for every
//! endpoint that wants it in PostgreSQL ([`queue`], one statement per batch) and only then
//! acks the batch. Each endpoint has two workers ([`deliver`]): one drains its live queue,
//! one the redeliveries asked for through the API, each in order, signing every attempt as
//! Standard Webhooks ([`sign`]), retrying with jittered exponential backoff over the retry
//! horizon, and logging every attempt. [`health`] disables endpoints that are gone or have
//! failed for the whole horizon.
//!
//! Delivery is at least once: a crash between the queue insert and the ack redelivers the
//! batch, which the queue's unique index absorbs; a crash between a delivery and recording
//! it repeats that one delivery. Receivers de-duplicate on `webhook-id`.

pub mod campaigns;
pub mod deliver;
pub mod health;
pub mod payload;
pub mod queue;
pub mod sign;
pub mod subscriptions;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer, stream::Stream};
use ccm_core::{
    CallEvent, Config,
    topology::{Topology, names},
};
use futures::StreamExt;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{
    deliver::{Shared, Worker},
    health::Health,
    payload::Enrichment,
    queue::{Lane, LogWriter, NewMessage},
    subscriptions::Subscriptions,
};

/// The durable consumer (`nats/consumers/CALL_EVENTS/webhooks.json`).
const CONSUMER: &str = "webhooks";
/// How long a pull request waits for messages. Short, so shutdown is never held up long.
const PULL_EXPIRES: Duration = Duration::from_secs(1);
const BATCH: usize = 256;
/// How often campaigns with new terminal events are checked for completion.
const COMPLETION_CHECK_EVERY: Duration = Duration::from_secs(1);
/// When a batch cannot be queued (PostgreSQL down) it comes back after this long.
const RETRY_BATCH_DELAY: Duration = Duration::from_secs(1);

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
    #[error("invalid database URL")]
    Database(#[source] sqlx::Error),
    #[error("cannot apply the database migrations")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    #[error(transparent)]
    Metrics(#[from] ccm_core::metrics::MetricsError),
}

/// The read model's migrations, which include the webhook tables: applied here too (when
/// `provision` is on), so the deliverer does not depend on the projector having started
/// first (sqlx serialises concurrent runs with an advisory lock).
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../projector/migrations");

/// An error and its sources on one line, for the delivery log.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// Runs the deliverer until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), WebhooksError> {
    let readiness = ccm_core::metrics::Readiness::new();
    if let Some(addr) = config.webhooks.metrics_listen {
        ccm_core::metrics::serve(addr, readiness.clone(), shutdown.clone()).await?;
    } else {
        ccm_core::metrics::install()?;
    }
    let client = ccm_core::nats::connect(&config.nats_url, "webhooks").await?;
    readiness.add_nats(&client);
    let js = ccm_core::nats::jetstream(client.clone());
    let topology = Topology::load(&config.streams)?;
    if config.provision {
        topology.provision(&js).await?;
    }
    let pg = sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy(config.database_url.expose())
        .map_err(WebhooksError::Database)?;
    // The queue and the delivery log live in PostgreSQL: without it nothing is delivered.
    let probe = pg.clone();
    readiness.add("postgres", move || {
        let pg = probe.clone();
        async move {
            sqlx::query("SELECT 1")
                .execute(&pg)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    });
    // Like the topology, the migrations are left to the provisioning step when `provision`
    // is off. Retried: PostgreSQL may be starting along with this service.
    if config.provision {
        let mut tries = 0;
        while let Err(e) = MIGRATOR.run(&pg).await {
            tries += 1;
            if tries >= 30 || shutdown.is_cancelled() {
                return Err(WebhooksError::Migrate(e));
            }
            tracing::warn!(error = %e, "migrations failed; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    let store = ccm_core::nats::bucket(&js, names::KV_WEBHOOKS).await?;
    let subscriptions = Subscriptions::follow(store.clone(), shutdown.child_token())
        .await
        .map_err(|e| WebhooksError::Open(names::KV_WEBHOOKS, e))?;
    let consumer: PullConsumer = js
        .get_consumer_from_stream(CONSUMER, names::CALL_EVENTS)
        .await
        .map_err(|e| WebhooksError::Open(CONSUMER, e.into()))?;
    let events_stream = js
        .get_stream(names::CALL_EVENTS)
        .await
        .map_err(|e| WebhooksError::Open(names::CALL_EVENTS, e.into()))?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(config.webhooks.request_timeout_ms))
        // A redirect could lead to a target the URL check refused; it counts as a refusal.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("ccm-webhooks/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(WebhooksError::Client)?;
    let (log, log_task) = LogWriter::start(pg.clone());
    let shared = Arc::new(Shared {
        pg: pg.clone(),
        http,
        subscriptions: subscriptions.clone(),
        store,
        nats: client.clone(),
        config: config.webhooks.clone(),
        log,
    });
    let mut dispatcher = Dispatcher {
        workers: Workers {
            shared,
            running: HashMap::new(),
            shutdown: shutdown.child_token(),
            tasks: tokio::task::JoinSet::new(),
        },
        subscriptions,
        pg,
        events_stream,
        js,
        candidates: campaigns::Candidates::default(),
    };
    tracing::info!("webhooks running");
    let mut last_check = tokio::time::Instant::now();
    while !shutdown.is_cancelled() {
        dispatcher.workers.sync(&dispatcher.subscriptions);
        if last_check.elapsed() >= COMPLETION_CHECK_EVERY {
            dispatcher.check_completions().await;
            last_check = tokio::time::Instant::now();
        }
        // Checked between pulls rather than raced against them: dropping a pull whose request
        // was already sent would strand its messages until `ack_wait`.
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
        let mut messages = Vec::new();
        while let Some(message) = batch.next().await {
            match message {
                Ok(message) => messages.push(message),
                Err(e) => tracing::warn!(error = %e, "pull error"),
            }
        }
        if !messages.is_empty() {
            dispatcher.dispatch(messages).await;
        }
    }
    dispatcher.workers.shutdown.cancel();
    while dispatcher.workers.tasks.join_next().await.is_some() {}
    // Every worker (and its copy of the log writer) is gone: the log task writes what it
    // holds and ends.
    drop(dispatcher.workers.shared);
    let _ = log_task.await;
    if let Err(e) = client.flush().await {
        tracing::warn!(error = %e, "flush at shutdown failed; unsettled events return after ack_wait");
    }
    let _ = client.drain().await;
    Ok(())
}

/// Queues pulled events for their endpoints.
struct Dispatcher {
    workers: Workers,
    subscriptions: Subscriptions,
    pg: sqlx::PgPool,
    events_stream: Stream,
    js: jetstream::Context,
    /// Campaigns to check for `campaign.completed`.
    candidates: campaigns::Candidates,
}

impl Dispatcher {
    /// Queues `campaign.completed` for the campaigns that have no call left.
    async fn check_completions(&mut self) {
        let subscriptions = self.subscriptions.all();
        let rows = self
            .candidates
            .check(&self.pg, &self.js, &subscriptions)
            .await;
        if let Err(e) = queue::enqueue(&self.pg, &rows).await {
            tracing::warn!(error = %e, "cannot queue campaign.completed messages");
            return;
        }
        count_skipped(&rows);
        for row in rows.iter().filter(|r| !r.skipped) {
            self.workers.wake(&row.endpoint_id);
        }
    }

    async fn dispatch(&mut self, messages: Vec<jetstream::Message>) {
        let subscriptions = self.subscriptions.all();
        // Each event with the subscriptions it matches (enabled or not: a disabled endpoint's
        // messages are kept as skipped, for a later replay).
        let mut wanted: Vec<(CallEvent, Vec<(String, bool)>)> = Vec::new();
        for message in &messages {
            let event: CallEvent = match serde_json::from_slice(&message.payload) {
                Ok(event) => event,
                Err(e) => {
                    // Not ours to judge: the projector owns malformed events.
                    tracing::warn!(subject = %message.subject, error = %e, "undecodable event skipped");
                    continue;
                }
            };
            if event.kind.is_terminal()
                && subscriptions
                    .iter()
                    .any(|s| campaigns::wants(s, event.campaign_id))
            {
                self.candidates
                    .add(event.campaign_id, event.call_id.as_uuid());
            }
            let targets: Vec<(String, bool)> = subscriptions
                .iter()
                .filter(|s| s.matches(event.campaign_id, &event.kind))
                .map(|s| (s.id.clone(), s.enabled))
                .collect();
            if !targets.is_empty() {
                wanted.push((event, targets));
            }
        }
        let mut rows = Vec::new();
        if !wanted.is_empty() {
            let events: Vec<&CallEvent> = wanted.iter().map(|(e, _)| e).collect();
            let enrichment = Enrichment::load(&self.pg, &self.events_stream, &events).await;
            for (event, targets) in &wanted {
                let body = match enrichment.body(event) {
                    Ok(body) => body,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot encode a webhook payload; event skipped");
                        continue;
                    }
                };
                for (endpoint, enabled) in targets {
                    rows.push(NewMessage {
                        endpoint_id: endpoint.clone(),
                        msg_id: event.msg_id(),
                        event_type: payload::event_type(&event.kind),
                        call_id: Some(event.call_id.as_uuid()),
                        campaign_id: i64::try_from(event.campaign_id.get()).unwrap_or(i64::MAX),
                        body: body.clone(),
                        skipped: !enabled,
                    });
                }
            }
        }
        if let Err(e) = queue::enqueue(&self.pg, &rows).await {
            tracing::warn!(error = %e, events = messages.len(), "cannot queue webhook messages; batch comes back");
            for message in messages {
                let _ = message
                    .ack_with(AckKind::Nak(Some(RETRY_BATCH_DELAY)))
                    .await;
            }
            return;
        }
        count_skipped(&rows);
        for message in messages {
            if let Err(e) = message.ack().await {
                tracing::warn!(error = %e, "event ack failed; it comes again and is queued once");
            }
        }
        for row in rows.iter().filter(|r| !r.skipped) {
            self.workers.wake(&row.endpoint_id);
        }
    }
}

/// Counts the messages queued as skipped because their endpoint is disabled: they are not
/// delivered unless replayed, which is what `outcome="endpoint_disabled"` reports.
fn count_skipped(rows: &[NewMessage]) {
    let skipped = rows.iter().filter(|r| r.skipped).count();
    if skipped > 0 {
        ccm_core::metrics::counter!("ccm_webhooks_deliveries_total", "outcome" => "endpoint_disabled")
            .increment(skipped as u64);
    }
}

/// The endpoint workers: one task per subscription, running its two lanes.
struct Workers {
    shared: Arc<Shared>,
    /// Endpoint id → the live lane's wake-up.
    running: HashMap<String, Arc<Notify>>,
    shutdown: CancellationToken,
    tasks: tokio::task::JoinSet<String>,
}

impl Workers {
    /// Starts workers for new subscriptions and forgets those whose workers ended.
    fn sync(&mut self, subscriptions: &Subscriptions) {
        while let Some(ended) = self.tasks.try_join_next() {
            if let Ok(ended) = ended {
                self.running.remove(&ended);
            }
        }
        for sub in subscriptions.all() {
            if !self.running.contains_key(&sub.id) {
                self.start(&sub.id);
            }
        }
    }

    fn start(&mut self, endpoint: &str) {
        let live_wake = Arc::new(Notify::new());
        let (shared, shutdown) = (self.shared.clone(), self.shutdown.clone());
        let (id, wake) = (endpoint.to_owned(), live_wake.clone());
        self.tasks.spawn(async move {
            // The run of failures survives restarts: it is read from the log before either
            // lane makes an attempt.
            let since = queue::failing_since(&shared.pg, &id)
                .await
                .unwrap_or_else(|e| {
                    tracing::warn!(endpoint = %id, error = %e, "cannot read the endpoint's failures");
                    None
                });
            let health = Arc::new(Mutex::new(Health::failing_since(since)));
            let worker = |lane, wake| Worker {
                endpoint: id.clone(),
                lane,
                shared: shared.clone(),
                health: health.clone(),
                wake,
            };
            let live = worker(Lane::Live, wake);
            let manual = worker(Lane::Manual, Arc::new(Notify::new()));
            tokio::join!(live.run(shutdown.clone()), manual.run(shutdown));
            id
        });
        self.running.insert(endpoint.to_owned(), live_wake);
    }

    fn wake(&self, endpoint: &str) {
        if let Some(wake) = self.running.get(endpoint) {
            wake.notify_one();
        }
    }
}
