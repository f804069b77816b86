//! `ccm-dialer`: places call attempts with the carrier.

use clap::Parser;

/// Pulls call attempts per campaign from JetStream and places them with the carrier, at each
/// campaign's concurrency cap.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    service: ccm_core::service::ServiceArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = cli.service.load("dialer")?;
    let result = ccm_dialer::run(config, ccm_core::service::shutdown_on_signal()).await;
    // Spans still buffered are sent before exit.
    ccm_core::telemetry::shutdown();
    Ok(result?)
}
