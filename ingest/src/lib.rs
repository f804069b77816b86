//! # ccm-ingest
//!
//! The HTTP front door of ccm. It validates requests, claims phone numbers in the
//! `active_calls` bucket, and publishes call attempts to JetStream, answering only once
//! JetStream has acknowledged them. It never writes the read model: that is the projector's.
//!
//! - [`router`] builds the axum router from an [`AppState`]; [`run`] binds and serves it with
//!   graceful shutdown; [`serve`] does the same on a listener the caller bound (tests bind
//!   port 0), [`serve_state`] with a state the caller connected.
//! - [`routes`]: one module per resource, each declaring its rows of the route table
//!   ([`routes::table`]: path, access rule and OpenAPI operation of every route, declared
//!   once); [`routes::compat`] is the old system's API, kept
//!   exactly, with [`compat_error`] for its `{"error": …}` bodies. [`auth`]: the token check.
//!   [`limits`]: per-token rate limits of the expensive routes.
//!   [`error`]: the problem JSON every error of the resource API is answered with.
//! - [`accept`]: claim + publish + answer after the ack, one call or many (pipelined).
//!   Duplicate prevention (scope and window) is [`ccm_core::claims`].
//! - `campaign_store`: the campaign documents in the `campaigns` bucket (read, create,
//!   compare-and-set changes), for both APIs and the lifecycle task.
//! - [`contacts`]: campaigns' phone numbers in the `contacts` bucket (read-your-writes).
//!   [`campaign_cache`]: the `campaigns` bucket in memory, kept current by a watch;
//!   [`dnc_cache`]: the do-not-call lists likewise.
//!   [`readmodel`]: reads of PostgreSQL. [`openapi`]: the OpenAPI document and docs page.
//! - [`trace`]: a span per request, the root of a call's trace.
//! - [`dashboard`]: the live dashboard page at `/` and its server-sent event stream.
//! - `consent_store`: the consent records (PostgreSQL, this service's own migration set) and
//!   the `consents` bucket the checks read; `opt_out`: a callee's opt-out during a call.
//! - [`lifecycle`]: completes campaigns whose end date passed or whose calls are all done.

pub mod accept;
pub(crate) mod audit;
pub mod auth;
pub(crate) mod campaign_cache;
mod campaign_store;
pub(crate) mod compat_error;
pub(crate) mod consent_store;
pub(crate) mod contacts;
pub(crate) mod dashboard;
pub mod dnc_cache;
pub(crate) mod erase;
pub(crate) mod error;
pub(crate) mod http_metrics;
pub(crate) mod lifecycle;
pub(crate) mod limits;
pub(crate) mod openapi;
pub(crate) mod opt_out;
pub(crate) mod readmodel;
pub mod routes;
pub(crate) mod trace;

pub use error::error_chain;

use std::sync::Arc;

use async_nats::jetstream::{self, kv};
use axum::{Router, middleware};
use ccm_core::{
    Config,
    config::IngestConfig,
    topology::{Topology, names},
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What the handlers share: one allocation behind an `Arc`.
///
/// axum clones the state for every request. The JetStream handles inside are not cheap to
/// clone (each bucket handle carries its stream's whole info, strings and maps included), and
/// cloning seven of them per call was the largest single cost of accepting a call in the
/// profile, so a clone here is one reference count instead.
#[derive(Debug, Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The fields of [`AppState`].
#[derive(Debug)]
pub struct Shared {
    pub config: Arc<IngestConfig>,
    pub js: jetstream::Context,
    /// Every campaign's dial consumer (see [`ccm_core::dial_consumer`]).
    pub dial_consumers: ccm_core::dial_consumer::DialConsumers,
    pub campaigns: kv::Store,
    pub active_calls: kv::Store,
    /// Number claims (see [`ccm_core::claims`]).
    pub claims: ccm_core::claims::Claims,
    pub counters: kv::Store,
    pub contacts: kv::Store,
    pub idempotency: kv::Store,
    /// How long a pending and a completed Idempotency-Key live.
    pub idempotency_ttl: routes::calls::IdempotencyTtl,
    /// Outbound webhook subscriptions (see [`routes::webhooks`]).
    pub webhooks: kv::Store,
    /// Do-not-call lists (see [`ccm_core::dnc`] and [`routes::dnc`]).
    pub dnc: kv::Store,
    /// Valid consents and revocations per number and type (see [`ccm_core::consent`] and
    /// [`consent_store`]).
    pub consents: kv::Store,
    /// The carrier's call id → the attempt it placed (see [`ccm_core::placements`]), for
    /// the old contract's callback.
    pub placements: kv::Store,
    /// API tokens made through the API (see [`routes::tokens`]).
    pub api_tokens: kv::Store,
    /// `webhooks.allow_private_targets`: accept endpoints on private addresses.
    pub allow_private_webhook_targets: bool,
    /// `webhooks.secret_grace_secs`: how long a rotated-out secret keeps signing.
    pub webhook_secret_grace_secs: u64,
    /// The `campaigns` bucket in memory (see [`campaign_cache`]).
    pub campaign_cache: campaign_cache::CampaignCache,
    /// The `dnc` bucket in memory (see [`dnc_cache`]).
    pub dnc_cache: dnc_cache::DncCache,
    /// The read model, for the GET endpoints. Connected lazily: ingest accepts calls while
    /// PostgreSQL is down, and only the reads answer 503.
    pub pg: sqlx::PgPool,
    /// The live dashboard's tickets and feed (see [`dashboard`]).
    pub dashboard: dashboard::Dashboard,
    /// The configured API tokens and their ids (see [`auth`]).
    pub tokens: auth::Tokens,
    /// The per-token buckets of the expensive routes (see [`limits`]).
    pub limits: limits::RateLimits,
    /// `provision`: this service applies its own migrations (the consent records).
    pub provision: bool,
    /// The calling rules by jurisdiction (`compliance.rule_files`), which callbacks keep to.
    pub rules: Arc<ccm_core::rules::Rules>,
    /// How far ahead a callback may be: within the retention of the calls' events.
    pub callback_horizon: chrono::Duration,
}

/// Why ingest could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Nats(#[from] ccm_core::nats::NatsError),
    #[error(transparent)]
    Topology(#[from] ccm_core::topology::TopologyError),
    #[error(transparent)]
    Tokens(#[from] auth::TokenConfigError),
    #[error(transparent)]
    TicketKey(#[from] dashboard::ticket::ShortKey),
    #[error("cannot listen on {addr}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("invalid database URL")]
    Database(#[source] sqlx::Error),
    #[error("the HTTP server failed")]
    Serve(#[source] std::io::Error),
    #[error(transparent)]
    Rules(#[from] ccm_core::rules::RulesError),
}

impl AppState {
    /// Connects to NATS, provisions the topology, and opens the buckets.
    pub async fn connect(config: &Config) -> Result<Self, IngestError> {
        // Not derived from the tokens: a ticket must give nothing to test token guesses on.
        let ticket_key =
            dashboard::ticket::TicketKey::from_config(&config.ingest.dashboard.ticket_key)?;
        let tokens = auth::Tokens::new(
            &config.ingest.auth_tokens,
            &ticket_key.derive(b"ccm token fingerprint v2"),
        )?;
        let client = ccm_core::nats::connect(config.nats_url.expose(), "ingest").await?;
        let js = ccm_core::nats::jetstream(client);
        let topology = Topology::load(&config.streams)?;
        if config.provision {
            topology.provision(&js).await?;
        }
        Ok(Self(Arc::new(Shared {
            config: Arc::new(config.ingest.clone()),
            campaigns: ccm_core::nats::bucket(&js, names::KV_CAMPAIGNS).await?,
            active_calls: ccm_core::nats::bucket(&js, names::KV_ACTIVE_CALLS).await?,
            claims: ccm_core::claims::Claims::open(
                js.clone(),
                ccm_core::claims::ClaimSettings::of(config),
            )
            .await?,
            idempotency_ttl: routes::calls::IdempotencyTtl::of(config),
            counters: ccm_core::nats::bucket(&js, names::KV_COUNTERS).await?,
            contacts: ccm_core::nats::bucket(&js, names::KV_CONTACTS).await?,
            idempotency: ccm_core::nats::bucket(&js, names::KV_IDEMPOTENCY).await?,
            webhooks: ccm_core::nats::bucket(&js, names::KV_WEBHOOKS).await?,
            dnc: ccm_core::nats::bucket(&js, names::KV_DNC).await?,
            consents: ccm_core::nats::bucket(&js, names::KV_CONSENTS).await?,
            placements: ccm_core::nats::bucket(&js, names::KV_PLACEMENTS).await?,
            api_tokens: ccm_core::nats::bucket(&js, names::KV_TOKENS).await?,
            allow_private_webhook_targets: config.webhooks.allow_private_targets,
            webhook_secret_grace_secs: config.webhooks.secret_grace_secs,
            campaign_cache: campaign_cache::CampaignCache::default(),
            dnc_cache: dnc_cache::DncCache::default(),
            pg: sqlx::postgres::PgPoolOptions::new()
                .max_connections(8)
                .acquire_timeout(std::time::Duration::from_secs(5))
                .connect_lazy(config.database_url.expose())
                .map_err(IngestError::Database)?,
            dashboard: dashboard::Dashboard::new(
                &ticket_key,
                config.ingest.dashboard.max_streams_per_token,
            ),
            tokens,
            limits: limits::RateLimits::new(&config.ingest.rate_limits),
            provision: config.provision,
            rules: Arc::new(ccm_core::rules::Rules::load(&config.compliance.rule_files)?),
            callback_horizon: ccm_core::callback::horizon(config.streams.calls_max_age()),
            dial_consumers: ccm_core::dial_consumer::DialConsumers::new(&js, &topology).await,
            js,
        })))
    }
}

/// The whole HTTP API: the routes of [`routes::table`], each with its access rule.
pub fn router(state: AppState) -> Router {
    let body_limit = state.config.max_body_bytes;
    routes::table::router(&state)
        .layer(middleware::from_fn(http_metrics::record))
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn(trace::request_span))
        .with_state(state)
}

/// Ready when NATS is connected: without it nothing can be accepted.
pub(crate) async fn ready(
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
    // Requests in flight and the caches' watches usually end in milliseconds; with NATS or
    // PostgreSQL gone they would wait for their time-outs.
    let stop = shutdown.clone();
    ccm_core::service::bounded(serve(config, listener, shutdown), &stop, STOP_GRACE)
        .await
        .unwrap_or(Ok(()))
}

/// How long ingest may take to stop once its signal came.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// Serves on `listener` until `shutdown`, then finishes the requests in flight.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), IngestError> {
    // Recorded whether or not anyone scrapes; `GET /metrics` renders it.
    if let Err(e) = ccm_core::metrics::install() {
        tracing::warn!(error = %ccm_core::telemetry::chain(&e), "metrics are not recorded");
    }
    let state = AppState::connect(&config).await?;
    serve_state(state, listener, shutdown).await
}

/// As [`serve`], with a state the caller connected (tests keep a clone to look inside).
pub async fn serve_state(
    state: AppState,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), IngestError> {
    let client = state.js.client();
    let watch_stop = shutdown.child_token();
    let watch = tokio::spawn(
        state
            .campaign_cache
            .clone()
            .follow(state.js.clone(), watch_stop.clone()),
    );
    let tokens_watch = tokio::spawn(
        state
            .tokens
            .managed()
            .clone()
            .follow(state.js.clone(), watch_stop.clone()),
    );
    let dnc_watch = tokio::spawn(
        state
            .dnc_cache
            .clone()
            .follow(state.dnc.clone(), watch_stop.clone()),
    );
    let lifecycle = tokio::spawn(lifecycle::run(state.clone(), watch_stop.clone()));
    let migrations = tokio::spawn(consent_store::migrate(state.clone(), watch_stop.clone()));
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "ingest listening");
    }
    let dashboard = state.dashboard.clone();
    let stop_streams = dashboard.clone();
    let served = axum::serve(
        listener,
        router(state).into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        shutdown.cancelled_owned().await;
        // Event streams never end by themselves; the graceful shutdown waits for them.
        stop_streams.stop();
    })
    .await
    .map_err(IngestError::Serve);
    watch_stop.cancel();
    dashboard.stop();
    let _ = watch.await;
    let _ = dnc_watch.await;
    let _ = tokens_watch.await;
    let _ = lifecycle.await;
    let _ = migrations.await;
    served?;
    // Every accepted call was acknowledged before its response; draining only flushes
    // whatever else is buffered.
    // Acks and NAKs are fire-and-forget publishes; flush them to the server before draining,
    // or a NAK sent just before shutdown can be lost and its message wait out AckWait.
    let _ = client.flush().await;
    let _ = client.drain().await;
    Ok(())
}
