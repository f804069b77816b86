//! `ccm-retrier`: retry decisions and dead letters.

use clap::Parser;

/// Turns carrier outcomes into retries or terminal states.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    service: ccm_core::service::ServiceArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = cli.service.load("retrier")?;
    ccm_retrier::run(config, ccm_core::service::shutdown_on_signal()).await?;
    Ok(())
}
