//! The command line: the service by default, the operator's dead-letter actions, and
//! `status` (streams, consumers and buckets at a glance).

use anyhow::Context as _;
use ccm_core::{CallId, CampaignId};
use ccm_retrier::dlq::{Dlq, Filter};
use clap::{Parser, Subcommand};

/// Turns carrier outcomes into retries or terminal states, holds retries until due, and
/// keeps dead letters. Without a subcommand it runs the service.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    #[command(flatten)]
    service: ccm_core::service::ServiceArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Dead letters: list, show, redrive or discard them. Output is JSON.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Streams (messages, bytes, subjects), consumers (pending, ack pending, redelivered) and
    /// KV buckets: what `nats stream report` and `nats consumer report` show.
    Status {
        /// JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// Lists letters, oldest first.
    List {
        /// Only letters taken from this stream (CALLS, CALL_EVENTS, …).
        #[arg(long)]
        stream: Option<String>,
        #[arg(long)]
        campaign: Option<CampaignId>,
        #[arg(long)]
        call: Option<CallId>,
        /// Only letters after this DLQ sequence (paging).
        #[arg(long)]
        after: Option<u64>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Shows one letter: payload, original headers, reason, delivery count.
    Show { seq: u64 },
    /// Re-publishes a letter to its source (a call's letter as its next attempt), once.
    Redrive { seq: u64 },
    /// Deletes a letter; a call's letter ends the call FAILED.
    Discard { seq: u64 },
}

impl Cli {
    pub async fn run(self) -> anyhow::Result<()> {
        let config = self.service.load("retrier")?;
        let command = match self.command {
            None => {
                ccm_retrier::run(config, ccm_core::service::shutdown_on_signal()).await?;
                return Ok(());
            }
            Some(Command::Status { json }) => return status(&config, json).await,
            Some(Command::Dlq(command)) => command,
        };
        let client = ccm_core::nats::connect(config.nats_url.expose(), "retrier-cli").await?;
        let dlq = Dlq::open(ccm_core::nats::jetstream(client.clone()))
            .await
            .context("cannot open the DLQ")?
            .with_scope(config.ingest.duplicate_scope)
            .with_claim_settings(ccm_core::claims::ClaimSettings::of(&config));
        let output = match command {
            DlqCommand::List {
                stream,
                campaign,
                call,
                after,
                limit,
            } => {
                let filter = Filter {
                    stream,
                    campaign,
                    call,
                    after,
                    limit,
                };
                serde_json::to_string_pretty(&dlq.list(&filter).await?)?
            }
            DlqCommand::Show { seq } => serde_json::to_string_pretty(&dlq.show(seq).await?)?,
            DlqCommand::Redrive { seq } => serde_json::to_string_pretty(&dlq.redrive(seq).await?)?,
            DlqCommand::Discard { seq } => serde_json::to_string_pretty(&dlq.discard(seq).await?)?,
        };
        println!("{output}");
        client.flush().await.context("cannot flush")?;
        Ok(())
    }
}

async fn status(config: &ccm_core::Config, json: bool) -> anyhow::Result<()> {
    let client = ccm_core::nats::connect(config.nats_url.expose(), "retrier-cli").await?;
    let overview = ccm_core::inspect::overview(&ccm_core::nats::jetstream(client))
        .await
        .context("cannot read the JetStream state")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&overview)?);
    } else {
        print!("{overview}");
    }
    Ok(())
}
