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
//! horizon, and logging every attempt; [`target`] refuses, when connecting, targets that are
//! not public. [`health`] disables endpoints that are gone or have
//! failed for the whole horizon.
//!
//! Several replicas can run side by side: leases in PostgreSQL ([`lease`]) let exactly one
//! of them dispatch (pull and queue) and exactly one work each lane of each endpoint
//! ([`workers`]); a replica that stops gives its leases up, and a crashed one's expire after
//! `webhooks.lease_ttl_ms` and are taken over.
//!
//! Delivery is at least once: a crash between the queue insert and the ack redelivers the
//! batch, which the queue's unique index absorbs; a crash between a delivery and recording
//! it repeats that one delivery. Receivers de-duplicate on `webhook-id`.

mod caller_ids;
pub mod campaigns;
pub(crate) mod deliver;
pub(crate) mod health;
pub mod lease;
pub(crate) mod payload;
pub mod queue;
pub(crate) mod sign;
pub mod subscriptions;
pub(crate) mod target;
pub(crate) mod workers;

use std::{sync::Arc, time::Duration};

use async_nats::jetstream::{self, consumer::PullConsumer, stream::Stream};
use ccm_core::{
    CallEvent, Config,
    consumer::{Delivery, OnShutdown, Options, Poison},
    service::Started,
    telemetry::chain,
    topology::names,
};
use tokio_util::sync::CancellationToken;

use crate::{
    deliver::Shared,
    lease::{Lease, Leases},
    payload::Enrichment,
    queue::{LogWriter, NewMessage},
    subscriptions::Subscriptions,
    workers::Workers,
};

/// The durable consumer (`nats/consumers/CALL_EVENTS/webhooks.json`).
const CONSUMER: &str = "webhooks";
/// How long a pull request waits for messages. Short, so shutdown is never held up long.
const PULL_EXPIRES: Duration = Duration::from_secs(1);
const BATCH: usize = 256;
/// The consumer's policy in the shared runtime (`ccm_core::consumer`): one explicit batch per
/// pull, read to its end and dispatched whole even after the shutdown signal; an event nobody
/// can decode is skipped (acked with its batch: the projector owns malformed events).
const OPTIONS: Options = Options {
    name: CONSUMER,
    batch: BATCH,
    expires: PULL_EXPIRES,
    heartbeat: None,
    concurrency: 1,
    poison: Poison::Skip,
    on_shutdown: OnShutdown::Nak(None),
    span: consumer_span,
};
// Spans of its deliveries, opened in this crate (see `Options::span`).
ccm_core::consumer_span!();
/// How often campaigns with new terminal events are checked for completion.
const COMPLETION_CHECK_EVERY: Duration = Duration::from_secs(1);
/// How often a replica that does not dispatch tries to take the dispatch lease.
const ACQUIRE_EVERY: Duration = Duration::from_secs(1);
/// How long an idle main loop waits between looks at the leases.
const IDLE_TICK: Duration = Duration::from_millis(500);
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
    Start(#[from] ccm_core::service::StartError),
    #[error(
        "webhooks.lease_ttl_ms ({ttl} ms) must be at least 2 × (request_timeout_ms + 1000) \
         ({min} ms): a lane's lease must outlast a request between renewals"
    )]
    LeaseTooShort { ttl: u64, min: u64 },
}

/// This service's own tables (`migrations/`: queues, delivery log, leases), applied when
/// `provision` is on; the read model it reads for `campaign.completed` is the projector's.
/// The set lives in `ccm_core::schema` so that provisioning can apply every service's.
pub use ccm_core::schema::WEBHOOKS as MIGRATOR;

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
    // Renewed every third of the time to live, a lease has about two thirds of it left,
    // which must cover a whole request and recording it, with room for a slow renewal.
    let min_ttl = (config.webhooks.request_timeout_ms + 1000) * 2;
    if config.webhooks.lease_ttl_ms < min_ttl {
        return Err(WebhooksError::LeaseTooShort {
            ttl: config.webhooks.lease_ttl_ms,
            min: min_ttl,
        });
    }
    let lease_ttl = Duration::from_millis(config.webhooks.lease_ttl_ms);
    let Started {
        readiness,
        client,
        js,
        ..
    } = ccm_core::service::start(
        "webhooks",
        &config,
        config.webhooks.metrics_listen,
        &shutdown,
    )
    .await?;
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
            tracing::warn!(error = %ccm_core::telemetry::chain(&e), "migrations failed; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    let store = ccm_core::nats::bucket(&js, names::KV_WEBHOOKS).await?;
    let subscriptions = Subscriptions::follow(js.clone(), shutdown.child_token())
        .await
        .map_err(|e| WebhooksError::Open(names::KV_WEBHOOKS, e.into()))?;
    let consumer: PullConsumer = js
        .get_consumer_from_stream(CONSUMER, names::CALL_EVENTS)
        .await
        .map_err(|e| WebhooksError::Open(CONSUMER, e.into()))?;
    let events_stream = js
        .get_stream(names::CALL_EVENTS)
        .await
        .map_err(|e| WebhooksError::Open(names::CALL_EVENTS, e.into()))?;
    let http = target::client(&config.webhooks).map_err(WebhooksError::Client)?;
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
    let leases = Leases::new(pg.clone(), Leases::holder_name(), lease_ttl);
    let keeper_stop = CancellationToken::new();
    let keeper = tokio::spawn(leases.clone().keep(keeper_stop.clone()));
    let mut dispatcher = Dispatcher {
        workers: Workers::new(shared, leases.clone(), shutdown.child_token()),
        subscriptions,
        pg,
        events_stream,
        js,
        candidates: campaigns::Candidates::default(),
        config: config.webhooks.clone(),
    };
    let mut last_caller_id_check: Option<tokio::time::Instant> = None;
    tracing::info!(holder = leases.holder(), "webhooks running");
    let mut last_check = tokio::time::Instant::now();
    let mut dispatch: Option<Lease> = None;
    let mut last_dispatch_try: Option<tokio::time::Instant> = None;
    // Bounded: a pull or a dispatch waiting on a server that is gone would hold the process
    // for its time-outs. Abandoned after the grace, a pull strands its messages until
    // `ack_wait` at worst; nothing is lost.
    {
        let pull_loop = async {
            while !shutdown.is_cancelled() {
                dispatcher.workers.sync(&dispatcher.subscriptions).await;
                if dispatch.as_ref().is_some_and(|l| l.lost().is_cancelled()) {
                    dispatch = None;
                }
                if dispatch.is_none()
                    && last_dispatch_try.is_none_or(|t| t.elapsed() >= ACQUIRE_EVERY)
                {
                    last_dispatch_try = Some(tokio::time::Instant::now());
                    match leases.acquire(&[lease::DISPATCH.to_owned()]).await {
                        Ok(mut taken) => {
                            dispatch = taken.pop();
                            if dispatch.is_some() {
                                tracing::info!("dispatching: this replica queues the events");
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %ccm_core::telemetry::chain(&e), "cannot take the dispatch lease")
                        }
                    }
                }
                // Only the holder of the dispatch lease pulls, and only while the lease certainly
                // outlasts the pull (queueing what it brought checks the lease again, in the same
                // transaction); the others keep working their lanes and wait to take over.
                let Some(lease) = dispatch.clone().filter(|l| l.remaining() > PULL_EXPIRES) else {
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(IDLE_TICK) => continue,
                    }
                };
                if last_check.elapsed() >= COMPLETION_CHECK_EVERY {
                    dispatcher.check_completions(&lease).await;
                    last_check = tokio::time::Instant::now();
                }
                let every = Duration::from_millis(dispatcher.config.caller_id_check_ms);
                if !every.is_zero() && last_caller_id_check.is_none_or(|t| t.elapsed() >= every) {
                    dispatcher.check_caller_ids(&lease).await;
                    last_caller_id_check = Some(tokio::time::Instant::now());
                }
                // Checked between pulls rather than raced against them: dropping a pull whose request
                // was already sent would strand its messages until `ack_wait`.
                let Ok(messages) = ccm_core::consumer::fetch(&consumer, &OPTIONS).await else {
                    // Logged and counted by the runtime.
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                };
                if !messages.is_empty() {
                    dispatcher.dispatch(messages, &lease).await;
                }
            }
        };
        tokio::pin!(pull_loop);
        tokio::select! {
            () = &mut pull_loop => {}
            () = async {
                shutdown.cancelled().await;
                tokio::time::sleep(SHUTDOWN_STEP).await;
            } => tracing::warn!("the pull loop was still busy {SHUTDOWN_STEP:?} after shutdown; abandoned"),
        }
    }
    let finish = async {
        dispatcher.workers.stop().await;
        // Every worker (and its copy of the log writer) is gone: the log task writes what it
        // holds and ends.
        drop(dispatcher.workers);
        let _ = log_task.await;
        // Nothing uses the leases any more: give them up so the other replicas take the lanes
        // over at once rather than after they expire.
        keeper_stop.cancel();
        let _ = keeper.await;
        leases.release_all().await;
    };
    if tokio::time::timeout(SHUTDOWN_STEP, finish).await.is_err() {
        tracing::warn!(
            "workers, delivery log or leases not done {SHUTDOWN_STEP:?} after shutdown; left to their time-outs and lease expiry"
        );
    }
    ccm_core::service::close_nats(&client, Duration::from_secs(1)).await;
    Ok(())
}

/// How long each step of the shutdown (the pull loop, then the workers, log and leases) may
/// take before it is abandoned: every service exits within seconds of its signal, whatever
/// its servers do.
const SHUTDOWN_STEP: Duration = Duration::from_secs(2);

/// Queues pulled events for their endpoints.
struct Dispatcher {
    workers: Workers,
    subscriptions: Subscriptions,
    pg: sqlx::PgPool,
    events_stream: Stream,
    js: jetstream::Context,
    /// Campaigns to check for `campaign.completed`.
    candidates: campaigns::Candidates,
    config: ccm_core::config::WebhooksConfig,
}

impl Dispatcher {
    /// Queues `campaign.completed` for the campaigns that have no call left.
    async fn check_completions(&mut self, lease: &Lease) {
        let subscriptions = self.subscriptions.all();
        let rows = self
            .candidates
            .check(&self.pg, &self.js, &subscriptions)
            .await;
        if let Err(e) = queue::enqueue(&self.pg, &rows, lease).await {
            tracing::warn!(error = %ccm_core::telemetry::chain(&e), "cannot queue campaign.completed messages");
            return;
        }
        count_skipped(&rows);
        for row in rows.iter().filter(|r| !r.skipped) {
            self.workers.wake(&row.endpoint_id);
        }
    }

    /// Sets the caller-id answer-rate gauges and queues `caller_id.flagged` ([`caller_ids`]).
    async fn check_caller_ids(&mut self, lease: &Lease) {
        let subscriptions = self.subscriptions.all();
        let rows = match caller_ids::check(&self.pg, &self.config, &subscriptions).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %ccm_core::telemetry::chain(&e), "cannot compute the caller ids' answer rates");
                return;
            }
        };
        if let Err(e) = queue::enqueue(&self.pg, &rows, lease).await {
            tracing::warn!(error = %ccm_core::telemetry::chain(&e), "cannot queue caller_id.flagged messages");
            return;
        }
        count_skipped(&rows);
        for row in rows.iter().filter(|r| !r.skipped) {
            self.workers.wake(&row.endpoint_id);
        }
    }

    async fn dispatch(&mut self, messages: Vec<Delivery>, lease: &Lease) {
        let subscriptions = self.subscriptions.all();
        // Each event with the subscriptions it matches (enabled or not: a disabled endpoint's
        // messages are kept as skipped, for a later replay).
        let mut wanted: Vec<(CallEvent, Vec<(String, bool)>)> = Vec::new();
        for message in &messages {
            let event: CallEvent = match serde_json::from_slice(&message.payload) {
                Ok(event) => event,
                Err(e) => {
                    // Not ours to judge: the projector owns malformed events.
                    tracing::warn!(subject = %message.subject, error = %ccm_core::telemetry::chain(&e), "undecodable event skipped");
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
                        tracing::error!(error = %ccm_core::telemetry::chain(&e), "cannot encode a webhook payload; event skipped");
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
        if let Err(e) = queue::enqueue(&self.pg, &rows, lease).await {
            // Lease lost: the replica that took it over gets the batch again.
            tracing::warn!(error = %chain(&e), events = messages.len(), "cannot queue webhook messages; batch comes back");
            for message in messages {
                let _ = message.nak(Some(RETRY_BATCH_DELAY)).await;
            }
            return;
        }
        count_skipped(&rows);
        for message in messages {
            if let Err(e) = message.ack().await {
                tracing::warn!(error = %chain(&e), "event ack failed; it comes again and is queued once");
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
