//! # ccm-projector
//!
//! Folds every JetStream message that describes a call into the PostgreSQL read model, which
//! is what the API queries. The projector is the only writer of those tables.
//!
//! - [`provision`] applies the migrations and provisions the JetStream topology once, for a
//!   deployment whose services start with `provision: false` (`ccm-projector provision`).
//! - [`run`] connects, applies the embedded migrations (`migrations/`), and runs one loop per
//!   durable consumer: `projector_calls` on `CALLS` (the call is queued),
//!   `projector_events` on `CALL_EVENTS` (everything after), `projector_campaigns` on the
//!   `campaigns` bucket, `projector_contacts` on the `contacts` bucket, `projector_dlq` on
//!   `DLQ` (dead letters).
//! - [`consume`] pulls and batches (up to `batch_size` messages or `batch_wait_ms`), writes
//!   each batch in one transaction, then acknowledges it. A database outage holds the batch
//!   and retries; a message that cannot be decoded (or that Postgres refuses) is TERMed with
//!   the reason and the retrier parks it from the server's advisory (kept in its stream,
//!   recorded in `DLQ`, replayable; its call goes on), so it never blocks the messages
//!   behind it. The pulling is the shared runtime's (`ccm_core::consumer`). NULs, which Postgres cannot store, are replaced first ([`nul`]).
//! - [`fold`] folds a batch per call in memory; [`store`] writes it with a few set-based
//!   statements. Applying a message twice, messages in any order, or several replicas at once
//!   leaves the same rows.
//!
//! The read model (`migrations/`, documented in `projector/README.md` and `docs/operations.md`):
//! `calls` (current state per call), `call_events` (every applied message, keyed by
//! `(stream, seq)`), `campaigns` (mirror of the KV bucket), `phone_numbers`, `dead_letters`,
//! `daily_metrics` + `call_concurrency` and the view `call_metrics_daily` (the old
//! CallMetrics). Metrics (`ccm_projector_*`) are served on `projector.metrics_listen`.

pub mod consume;
pub mod fold;
pub mod nul;
pub mod retention;
pub mod store;
pub mod sweep;

use std::time::Duration;

use ccm_core::{
    Config,
    service::Started,
    topology::{self, Topology},
};
use sqlx::{PgPool, postgres::PgPoolOptions};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::consume::Source;

/// The migrations of the read model (`migrations/`), embedded in the binary. The projector
/// owns these tables; the webhook tables are ccm-webhooks' own set (`ccm_core::schema`).
pub use ccm_core::schema::READ_MODEL as MIGRATOR;

/// Why the projector stopped.
#[derive(Debug, thiserror::Error)]
pub enum ProjectorError {
    #[error(transparent)]
    Nats(#[from] ccm_core::nats::NatsError),
    #[error(transparent)]
    Topology(#[from] ccm_core::topology::TopologyError),
    #[error("cannot connect to PostgreSQL")]
    Database(#[source] sqlx::Error),
    #[error("cannot apply the migrations")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    #[error("cannot open consumer {0}")]
    Consumer(String, #[source] async_nats::Error),
    #[error("cannot pull messages")]
    Consume(#[source] async_nats::Error),
    #[error(transparent)]
    Start(#[from] ccm_core::service::StartError),
    #[error("a projector task failed")]
    Task(#[source] tokio::task::JoinError),
}

/// Connects to PostgreSQL, waiting for it when it is not up yet.
pub async fn connect_db(url: &str, shutdown: &CancellationToken) -> Result<PgPool, ProjectorError> {
    loop {
        match PgPoolOptions::new().max_connections(16).connect(url).await {
            Ok(pool) => return Ok(pool),
            Err(e) if !shutdown.is_cancelled() => {
                tracing::warn!(error = %ccm_core::telemetry::chain(&e), "PostgreSQL not reachable yet; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(ProjectorError::Database(e)),
        }
    }
}

/// Everything a deployment needs before its services start: every service's migrations
/// (`ccm_core::schema::migrate_all`) and the JetStream topology (streams, consumers, KV buckets). Idempotent; what `ccm-projector
/// provision` (the Helm chart's pre-install/pre-upgrade Job) runs.
pub async fn provision(config: &Config) -> Result<topology::Report, ProjectorError> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(config.database_url.expose())
        .await
        .map_err(ProjectorError::Database)?;
    let client = ccm_core::nats::connect(config.nats_url.expose(), "projector-provision").await?;
    let js = ccm_core::nats::jetstream(client.clone());
    let report = provision_with(config, &pool, &js).await;
    pool.close().await;
    let _ = client.drain().await;
    report
}

async fn provision_with(
    config: &Config,
    pool: &PgPool,
    js: &async_nats::jetstream::Context,
) -> Result<topology::Report, ProjectorError> {
    ccm_core::schema::migrate_all(pool)
        .await
        .map_err(ProjectorError::Migrate)?;
    Ok(Topology::load(&config.streams)?.provision(js).await?)
}

/// Runs the projector until `shutdown` is cancelled; it returns within a few seconds of it,
/// whatever NATS and PostgreSQL do (a batch not committed is delivered again).
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), ProjectorError> {
    let stop = shutdown.clone();
    ccm_core::service::bounded(run_until_stopped(config, shutdown), &stop, STOP_GRACE)
        .await
        .unwrap_or(Ok(()))
}

/// How long the projector may take to stop once its signal came.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

async fn run_until_stopped(
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), ProjectorError> {
    // The topology is provisioned here (when `provision` is on) and the migrations below,
    // before any consumer starts.
    let Started {
        readiness,
        client,
        js,
        ..
    } = ccm_core::service::start(
        "projector",
        &config,
        config.projector.metrics_listen,
        &shutdown,
    )
    .await?;
    let pool = connect_db(config.database_url.expose(), &shutdown).await?;
    let probe = pool.clone();
    readiness.add("postgres", move || {
        let pool = probe.clone();
        async move {
            sqlx::query("SELECT 1")
                .execute(&pool)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    });
    if config.provision {
        MIGRATOR.run(&pool).await.map_err(ProjectorError::Migrate)?;
    }

    let settings = consume::Settings {
        batch_size: config.projector.batch_size.max(1),
        batch_wait: Duration::from_millis(config.projector.batch_wait_ms),
        writers: config.projector.writers.max(1),
    };
    let mut tasks = JoinSet::new();
    tokio::spawn(sweep::run(js.clone(), pool.clone(), shutdown.clone()));
    tokio::spawn(retention::run(
        pool.clone(),
        config.projector.retention_days,
        Duration::from_secs(config.projector.retention_every_secs.max(1)),
        shutdown.clone(),
    ));
    for source in [
        Source::Calls,
        Source::Events,
        Source::Campaigns,
        Source::Contacts,
        Source::DeadLetters,
    ] {
        let (stream, consumer) = (source.stream(), source.consumer());
        let consumer = js
            .get_consumer_from_stream(consumer, stream)
            .await
            .map_err(|e| ProjectorError::Consumer(consumer.to_owned(), e.into()))?;
        tasks.spawn(consume::run(
            source,
            consumer,
            pool.clone(),
            settings,
            shutdown.clone(),
        ));
    }
    tracing::info!("projector running");
    let mut result = Ok(());
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %ccm_core::telemetry::chain(&e), "projector loop failed");
                shutdown.cancel();
                result = Err(e);
            }
            Err(e) => {
                shutdown.cancel();
                result = Err(ProjectorError::Task(e));
            }
        }
    }
    // Acks and NAKs are fire-and-forget publishes; flush them to the server before draining,
    // or a NAK sent just before shutdown can be lost and its message wait out AckWait.
    let _ = client.flush().await;
    let _ = client.drain().await;
    result
}
