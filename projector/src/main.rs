//! `ccm-projector`: projects JetStream events into the PostgreSQL read model.

use clap::Parser;

/// Projects every call event from JetStream into the PostgreSQL read model.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    service: ccm_core::service::ServiceArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = cli.service.load("projector")?;
    ccm_projector::run(config, ccm_core::service::shutdown_on_signal()).await?;
    Ok(())
}
