//! `ccm-ingest`: the HTTP API.

use clap::Parser;

/// Serves ccm's HTTP API: accepts calls and campaigns and publishes them to JetStream.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    service: ccm_core::service::ServiceArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = cli.service.load("ingest")?;
    let result = ccm_ingest::run(config, ccm_core::service::shutdown_on_signal()).await;
    // Spans still buffered are sent before exit.
    ccm_core::telemetry::shutdown();
    Ok(result?)
}
