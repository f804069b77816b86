//! `ccm-carrier-sim`: a fake carrier for demos, tests and benchmarks.

use clap::Parser;
use tokio::net::TcpListener;

/// Serves the old system's carrier contract and a Twilio-compatible API on one port, and
/// calls back with outcomes drawn from a configurable mix, with optional faults.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Address to listen on.
    #[arg(long, env = "CARRIER_SIM_LISTEN", default_value = "127.0.0.1:9000")]
    listen: std::net::SocketAddr,
    #[command(flatten)]
    sim: ccm_carrier_sim::SimConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let listener = TcpListener::bind(cli.listen).await?;
    ccm_carrier_sim::run(cli.sim, listener, ccm_core::service::shutdown_on_signal()).await?;
    Ok(())
}
