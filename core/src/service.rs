//! What every service binary shares: its command line and its shutdown signal.

use std::path::PathBuf;

use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError};

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
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(term) => term,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot listen for SIGTERM");
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
