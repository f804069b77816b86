//! `ccm-retrier`: retry decisions and dead letters. With no subcommand it runs the service;
//! `ccm-retrier dlq …` works on the dead letters; `ccm-retrier status` shows streams, consumers
//! and buckets.

mod cli;

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let result = cli::Cli::parse().run().await;
    // Spans still buffered are sent before exit.
    ccm_core::telemetry::shutdown();
    result
}
