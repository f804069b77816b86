//! `ccm-retrier`: retry decisions and dead letters. With no subcommand it runs the service;
//! `ccm-retrier dlq …` works on the dead letters.

mod cli;

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    cli::Cli::parse().run().await
}
