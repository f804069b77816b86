//! # ccm-ingest
//!
//! The HTTP front door of ccm. It validates requests, claims phone numbers in the
//! `active_calls` bucket, and publishes call attempts to JetStream, answering only once
//! JetStream has acknowledged them. It never writes the read model: that is the projector's.
//!
//! - [`router`] builds the axum router from an [`AppState`]; [`run`] binds and serves it with
//!   graceful shutdown; [`serve`] does the same on a listener the caller bound (tests bind
//!   port 0).
//! - [`routes`]: one module per resource. [`auth`]: the token check. [`error`]: the problem
//!   JSON every error of the resource API is answered with.

pub mod auth;
pub mod error;
pub mod routes;

use std::sync::Arc;

use async_nats::jetstream::{self, kv};
use axum::{
    Router, middleware,
    routing::{get, post},
};
use ccm_core::{
    Config,
    config::IngestConfig,
    topology::{Topology, names},
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    pub config: Arc<IngestConfig>,
    pub js: jetstream::Context,
    pub topology: Arc<Topology>,
    pub campaigns: kv::Store,
    pub active_calls: kv::Store,
    pub counters: kv::Store,
}

/// Why ingest could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Nats(#[from] ccm_core::nats::NatsError),
    #[error(transparent)]
    Topology(#[from] ccm_core::topology::TopologyError),
    #[error("refusing to start without an API token (set ingest.auth_tokens)")]
    NoToken,
    #[error("cannot listen on {addr}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("the HTTP server failed")]
    Serve(#[source] std::io::Error),
}

impl AppState {
    /// Connects to NATS, provisions the topology, and opens the buckets.
    pub async fn connect(config: &Config) -> Result<Self, IngestError> {
        if config
            .ingest
            .auth_tokens
            .iter()
            .all(|t| t.expose().is_empty())
        {
            return Err(IngestError::NoToken);
        }
        let client = ccm_core::nats::connect(&config.nats_url, "ingest").await?;
        let js = ccm_core::nats::jetstream(client);
        let topology = Topology::load(&config.streams)?;
        topology.provision(&js).await?;
        Ok(Self {
            config: Arc::new(config.ingest.clone()),
            campaigns: ccm_core::nats::bucket(&js, names::KV_CAMPAIGNS).await?,
            active_calls: ccm_core::nats::bucket(&js, names::KV_ACTIVE_CALLS).await?,
            counters: ccm_core::nats::bucket(&js, names::KV_COUNTERS).await?,
            topology: Arc::new(topology),
            js,
        })
    }
}

/// The whole HTTP API.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/api/v1/calls", post(routes::calls::create))
        .route("/api/v1/campaigns", post(routes::campaigns::create))
        .route("/api/v1/campaigns/{id}", get(routes::campaigns::get))
        .route("/api/v1/dead-letters", get(routes::dlq::list))
        .route(
            "/api/v1/dead-letters/{seq}",
            get(routes::dlq::show).delete(routes::dlq::discard),
        )
        .route(
            "/api/v1/dead-letters/{seq}/redrive",
            post(routes::dlq::redrive),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/api/v1/callbacks/twilio", post(routes::callbacks::twilio))
        .merge(api)
        .with_state(state)
}

/// Ready when NATS is connected: without it nothing can be accepted.
async fn ready(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> axum::http::StatusCode {
    match state.js.client().connection_state() {
        async_nats::connection::State::Connected => axum::http::StatusCode::OK,
        _ => axum::http::StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// Binds `config.ingest.listen` and serves until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), IngestError> {
    let addr = config.ingest.listen;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| IngestError::Bind { addr, source })?;
    serve(config, listener, shutdown).await
}

/// Serves on `listener` until `shutdown`, then finishes the requests in flight.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), IngestError> {
    let state = AppState::connect(&config).await?;
    let client = state.js.client();
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "ingest listening");
    }
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .map_err(IngestError::Serve)?;
    // Every accepted call was acknowledged before its response; draining only flushes
    // whatever else is buffered.
    let _ = client.drain().await;
    Ok(())
}
