//! `ccm-webhooks`: delivers call lifecycle events to subscribed HTTP endpoints.

use clap::Parser;

/// Delivers call lifecycle events (completed, failed, retrying, cancelled, dead lettered) to
/// the endpoints subscribed through ingest's `/api/v1/webhooks`, signed as Standard Webhooks.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    service: ccm_core::service::ServiceArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Cli::parse().service.load("webhooks")?;
    let result = ccm_webhooks::run(config, ccm_core::service::shutdown_on_signal()).await;
    // Spans still buffered are sent before exit.
    ccm_core::telemetry::shutdown();
    Ok(result?)
}
