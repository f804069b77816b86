//! # ccm-projector
//!
//! Folds every JetStream message that describes a call into the PostgreSQL read model, which
//! is what the API queries. The projector is the only writer of those tables.
//!
//! - [`run`] connects, applies the embedded migrations (`migrations/`), and runs one loop per
//!   durable consumer: `projector_calls` on `CALLS` (the call is queued),
//!   `projector_events` on `CALL_EVENTS` (everything after), `projector_campaigns` on the
//!   `campaigns` bucket.
//! - [`consume`] pulls and batches: whatever has arrived is applied in one transaction, then
//!   acknowledged. A database outage holds the batch and retries; a message that cannot be
//!   decoded is negatively acknowledged until the server gives up on it.
//! - [`store`] holds the SQL. Applying a message twice, or messages out of order, leaves the
//!   same rows.

pub mod consume;
pub mod store;

use std::time::Duration;

use ccm_core::{Config, topology::Topology};
use sqlx::{PgPool, postgres::PgPoolOptions};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::consume::Source;

/// The migrations of the read model, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Why the projector stopped.
#[derive(Debug, thiserror::Error)]
pub enum ProjectorError {
    #[error(transparent)]
    Nats(#[from] ccm_core::nats::NatsError),
    #[error(transparent)]
    Topology(#[from] ccm_core::topology::TopologyError),
    #[error("cannot connect to PostgreSQL")]
    Database(#[source] sqlx::Error),
    #[error("cannot apply the read-model migrations")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    #[error("cannot open consumer {0}")]
    Consumer(String, #[source] async_nats::Error),
    #[error("cannot pull messages")]
    Consume(#[source] async_nats::Error),
    #[error("a projector task failed")]
    Task(#[source] tokio::task::JoinError),
}

/// Connects to PostgreSQL, waiting for it when it is not up yet.
pub async fn connect_db(url: &str, shutdown: &CancellationToken) -> Result<PgPool, ProjectorError> {
    loop {
        match PgPoolOptions::new().max_connections(8).connect(url).await {
            Ok(pool) => return Ok(pool),
            Err(e) if !shutdown.is_cancelled() => {
                tracing::warn!(error = %e, "PostgreSQL not reachable yet; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(ProjectorError::Database(e)),
        }
    }
}

/// Runs the projector until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), ProjectorError> {
    let pool = connect_db(config.database_url.expose(), &shutdown).await?;
    MIGRATOR.run(&pool).await.map_err(ProjectorError::Migrate)?;
    let client = ccm_core::nats::connect(&config.nats_url, "projector").await?;
    let js = ccm_core::nats::jetstream(client.clone());
    Topology::load(&config.streams)?.provision(&js).await?;

    let mut tasks = JoinSet::new();
    for (stream, consumer, source) in [
        ("CALLS", "projector_calls", Source::Calls),
        ("CALL_EVENTS", "projector_events", Source::Events),
        ("KV_campaigns", "projector_campaigns", Source::Campaigns),
    ] {
        let consumer = js
            .get_consumer_from_stream(consumer, stream)
            .await
            .map_err(|e| ProjectorError::Consumer(consumer.to_owned(), e.into()))?;
        tasks.spawn(consume::run(
            source,
            consumer,
            pool.clone(),
            config.projector.batch_size,
            shutdown.clone(),
        ));
    }
    tracing::info!("projector running");
    let mut result = Ok(());
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, "projector loop failed");
                shutdown.cancel();
                result = Err(e);
            }
            Err(e) => {
                shutdown.cancel();
                result = Err(ProjectorError::Task(e));
            }
        }
    }
    let _ = client.drain().await;
    result
}
