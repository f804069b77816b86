//! `ccm-projector`: projects JetStream events into the PostgreSQL read model.

use clap::{Parser, Subcommand};

/// Projects every call event from JetStream into the PostgreSQL read model. Without a
/// subcommand it runs the service.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    service: ccm_core::service::ServiceArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Applies the read-model migrations and creates or updates the JetStream topology
    /// (streams, consumers, KV buckets), prints what it did as JSON, and exits; fails when
    /// the server holds an incompatible definition it left alone.
    Provision,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = cli.service.load("projector")?;
    let result = match cli.command {
        None => ccm_projector::run(config, ccm_core::service::shutdown_on_signal())
            .await
            .map_err(anyhow::Error::from),
        Some(Command::Provision) => provision(&config).await,
    };
    ccm_core::telemetry::shutdown();
    result
}

async fn provision(config: &ccm_core::Config) -> anyhow::Result<()> {
    let report = ccm_projector::provision(config).await?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    if !report.drift.is_empty() {
        anyhow::bail!(
            "{} incompatible difference(s) left alone; see drift above",
            report.drift.len()
        );
    }
    Ok(())
}
