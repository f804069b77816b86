//! # xtask
//!
//! Developer tasks, run as `cargo xtask <task>`:
//!
//! - `up`: runs the whole system locally (NATS, PostgreSQL, the four services), installing
//!   the servers first on a fresh Debian/Ubuntu machine when run as root.
//! - `deps`: installs the pinned nats-server (and the minimum supported one for CI's
//!   compatibility run) under `target/tools`, without root; PostgreSQL with apt as root.
//! - `ci`: what CI checks: formatting, clippy with `-D warnings`, the test suite, the old
//!   system's Postman collection, and schemathesis against the OpenAPI document.
//! - `provision`: creates or updates the JetStream topology on a server and reports drift.
//! - `status`: streams, consumers and KV buckets on a server (as `ccm-retrier status`).
//! - `postman`: the old system's Postman collection, run with newman against a fresh stack.
//! - `bench`: measures ccm against this machine's own limits (release build).
//! - `chaos`: the long fault-injection run (every fault alone, then together; 3-node cluster)
//!   with the auditor's table.
//! - `schemathesis`: fuzzes ingest's OpenAPI document (no 5xx, responses as documented).
//! - `images`: builds the container images (Debian base, NATS, PostgreSQL, ccm) without a
//!   registry, reusing those whose inputs are unchanged; needs a Docker engine (started as root).
//! - `helm`: validates the Helm chart (schema, values, Chart.yaml; `helm lint` where installed).

mod bench;
mod cargo_cmd;
mod chaos;
mod chaos_generated;
mod ci;
mod ci_docker;
mod compose;
mod dashboard;
mod deps;
mod helm;
mod helm_lint;
mod images;
mod postman;
mod schemathesis;
mod up;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(about = "ccm developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Run NATS, PostgreSQL and every service locally; Ctrl-C stops all of it.
    Up(up::UpArgs),
    /// Format check, clippy -D warnings, and the tests.
    Ci,
    /// Install the pinned nats-server (and the minimum supported one) under target/tools,
    /// and PostgreSQL when missing (as root).
    Deps,
    /// Create or update streams, consumers and buckets on CCM_NATS_URL; report drift.
    Provision,
    /// Streams, consumers and KV buckets on CCM_NATS_URL, as tables (`--json` for JSON).
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Run the old system's Postman collection (newman) against a fresh local stack.
    Postman,
    /// Validate the Helm chart: Chart.yaml, values files against values.schema.json and ccm's
    /// configuration; `helm lint` and `helm template` too where helm is installed.
    Helm,
    /// Measure ccm against this machine's raw limits; writes target/bench/report.json.
    Bench(bench::BenchArgs),
    /// The long fault-injection run: services as processes, faults one at a time then
    /// together, a 3-node NATS cluster; prints the auditor's table.
    Chaos(chaos::ChaosArgs),
    /// CI's docker stage alone: images, the core tests on the docker backend, no container
    /// left, the compose stack completing a call.
    DockerStage,
    /// Build the container images (Debian base, NATS, PostgreSQL 15, ccm) without a registry;
    /// images whose inputs are unchanged are reused.
    Images(images::ImagesArgs),
    /// Fuzz ingest's OpenAPI document with schemathesis against a fresh stack: no 5xx, no
    /// response outside the document.
    Schemathesis,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.task {
        Task::Up(args) => up::run(args),
        Task::Ci => ci::run(),
        Task::Deps => deps::run(),
        Task::Provision => provision(),
        Task::Status { json } => status(json),
        Task::Postman => postman::run(),
        Task::Helm => helm::run(),
        Task::Bench(args) => bench::run(&args),
        Task::Chaos(args) => chaos::run(args),
        Task::Schemathesis => schemathesis::run(),
        Task::Images(args) => images::run(&args),
        Task::DockerStage => ci_docker::run(&deps::install_nats_server(
            &ccm_tests::nats_server::CURRENT,
        )?),
    }
}

fn status(json: bool) -> anyhow::Result<()> {
    let url = std::env::var("CCM_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let client = ccm_core::nats::connect(&url, "xtask").await?;
        let overview = ccm_core::inspect::overview(&ccm_core::nats::jetstream(client)).await?;
        if json {
            println!("{}", serde_json::to_string_pretty(&overview)?);
        } else {
            print!("{overview}");
        }
        Ok(())
    })
}

fn provision() -> anyhow::Result<()> {
    let url = std::env::var("CCM_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let config = ccm_core::Config::load(None)?.config;
        let client = ccm_core::nats::connect(&url, "xtask").await?;
        let js = ccm_core::nats::jetstream(client);
        let report = ccm_core::topology::Topology::load(&config.streams)?
            .provision(&js)
            .await?;
        println!("{}", serde_json::to_string_pretty(&report)?);
        if !report.drift.is_empty() {
            anyhow::bail!(
                "{} incompatible difference(s) left alone; see drift above",
                report.drift.len()
            );
        }
        Ok(())
    })
}
