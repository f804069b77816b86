//! What every service shares: its command line, its shutdown signal, and the first steps of
//! its `run` ([`start`]: metrics, NATS, topology).

use std::{net::SocketAddr, path::PathBuf};

use async_nats::jetstream;
use tokio_util::sync::CancellationToken;

use crate::{
    config::{Config, ConfigError},
    metrics::{MetricsError, Readiness},
    nats::NatsError,
    topology::{Topology, TopologyError},
};

/// The options every service accepts.
#[derive(Debug, Clone, clap::Args)]
pub struct ServiceArgs {
    /// YAML configuration file; `CCM_*` environment variables override it.
    #[arg(long, short, env = "CCM_CONFIG")]
    pub config: Option<PathBuf>,
}

impl ServiceArgs {
    /// Loads the configuration, installs logging, and warns about unused `CCM_*` variables.
    pub fn load(&self, service: &str) -> Result<Config, ConfigError> {
        let loaded = Config::load(self.config.as_deref())?;
        crate::telemetry::init(service, &loaded.config.log);
        for var in &loaded.unknown_env {
            tracing::warn!(var, "environment variable names no configuration setting");
        }
        Ok(loaded.config)
    }
}

/// A token cancelled on Ctrl-C or SIGTERM, which is what a service's `run` watches to shut
/// down gracefully.
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let child = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term = match tokio::signal::unix::signal(
                tokio::signal::unix::SignalKind::terminate(),
            ) {
                Ok(term) => term,
                Err(e) => {
                    tracing::error!(error = %crate::telemetry::chain(&e), "cannot listen for SIGTERM");
                    let _ = ctrl_c.await;
                    child.cancel();
                    return;
                }
            };
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutdown requested");
        child.cancel();
    });
    token
}

/// What a background service has once [`start`] returned.
#[derive(Debug)]
pub struct Started {
    /// The checks behind `/readyz`; NATS is already one of them, a service adds its own.
    pub readiness: Readiness,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    /// The topology as configured (`streams`), provisioned when `provision` is on.
    pub topology: Topology,
}

/// Why a service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error(transparent)]
    Nats(#[from] NatsError),
    #[error(transparent)]
    Topology(#[from] TopologyError),
}

/// The start the dialer, the retrier and the webhooks deliverer share, in this order: the
/// metrics recorder, served with `/healthz` and `/readyz` on `metrics_listen` when one is set
/// (without one the metrics are still recorded, so an embedding process such as a test can
/// render them); the NATS connection, named `ccm-<service>`, as a readiness check; then the
/// topology, provisioned when `config.provision` says so. Metrics come first so that a
/// service waiting for NATS already answers `/healthz` and reports itself not ready.
pub async fn start(
    service: &str,
    config: &Config,
    metrics_listen: Option<SocketAddr>,
    shutdown: &CancellationToken,
) -> Result<Started, StartError> {
    let readiness = Readiness::new();
    if let Some(addr) = metrics_listen {
        crate::metrics::serve(addr, readiness.clone(), shutdown.clone()).await?;
    } else {
        crate::metrics::install()?;
    }
    let client = crate::nats::connect(config.nats_url.expose(), service).await?;
    readiness.add_nats(&client);
    let js = crate::nats::jetstream(client.clone());
    let topology = Topology::load(&config.streams)?;
    if config.provision {
        topology.provision(&js).await?;
    }
    Ok(Started {
        readiness,
        client,
        js,
        topology,
    })
}

/// How long a service's tasks may go on once its shutdown is asked: in-flight work usually
/// ends in milliseconds, but a task waiting on a server that is gone would wait for its
/// time-outs (tens of seconds), and an orchestrator or `cargo xtask up` waits for the process.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// Waits for every task of `tasks`, giving each result to `done`; once `shutdown` is
/// cancelled, waits at most `grace` more, then aborts what is left. An aborted handler leaves
/// its message un-acknowledged, so the server delivers it again: nothing is lost by it.
pub async fn join_tasks<T: 'static>(
    tasks: &mut tokio::task::JoinSet<T>,
    shutdown: &CancellationToken,
    grace: std::time::Duration,
    mut done: impl FnMut(Result<T, tokio::task::JoinError>),
) {
    loop {
        let joined = tokio::select! {
            joined = tasks.join_next() => joined,
            _ = shutdown.cancelled() => break,
        };
        match joined {
            Some(result) => done(result),
            None => return,
        }
    }
    let deadline = tokio::time::Instant::now() + grace;
    loop {
        match tokio::time::timeout_at(deadline, tasks.join_next()).await {
            Ok(Some(result)) => done(result),
            Ok(None) => return,
            Err(_) => {
                tracing::warn!(
                    tasks = tasks.len(),
                    "tasks still running {grace:?} after shutdown; aborting them"
                );
                tasks.abort_all();
                while tasks.join_next().await.is_some() {}
                return;
            }
        }
    }
}

/// Flushes the client's pending publishes (acks and NAKs are fire-and-forget) and drains it,
/// each for at most `limit`: a server that is gone must not hold the process.
pub async fn close_nats(client: &async_nats::Client, limit: std::time::Duration) {
    if tokio::time::timeout(limit, client.flush()).await.is_err() {
        tracing::warn!(
            "NATS flush at shutdown did not complete; unsettled messages return after their ack wait"
        );
    }
    let _ = tokio::time::timeout(limit, client.drain()).await;
}

/// Runs `work` (a service's whole `run`) and, once `shutdown` is cancelled, gives it at most
/// `grace` to return; `None` if it had to be abandoned. What it was waiting on (a server that
/// is gone, a time-out of tens of seconds) is dropped with it; messages it held return to
/// their streams after their ack wait.
pub async fn bounded<F: std::future::Future>(
    work: F,
    shutdown: &CancellationToken,
    grace: std::time::Duration,
) -> Option<F::Output> {
    tokio::select! {
        output = work => Some(output),
        () = async {
            shutdown.cancelled().await;
            tokio::time::sleep(grace).await;
        } => {
            tracing::warn!("still stopping {grace:?} after the shutdown signal; abandoned");
            None
        }
    }
}
