//! # ccm-bench
//!
//! Measures ccm on this machine against the machine's own limits, in one run. Started by
//! `cargo xtask bench`, which builds it and the services with `--release` first.
//!
//! Phases, each on fresh servers (`stack`):
//!
//! 1. `raw`: the limits of nats-server and PostgreSQL themselves, with ccm's message and
//!    write shapes but none of ccm (`raw`);
//! 2. `api`: single calls from 64 connections, then bulk requests (`api`);
//! 3. `e2e`: calls from acceptance to their terminal row with the `sim` carrier answering at
//!    once, all four services running (`pipeline`);
//! 4. `live`: many calls held live at once: the dialer's and nats-server's memory
//!    (`pipeline`);
//! 5. `projection`: the projector's throughput on a backlog and its lag at a steady rate
//!    (`projection`);
//! 6. `import`: one CSV upload of many contacts, streamed by ingest (`import`);
//! 7. `idle`: many running campaigns with nothing queued: the CPU they cost and the latency
//!    of a first call in one of them (`idle`);
//! 8. `scale`: up to thousands of running campaigns with 1 and 3 dialers and 2 of every other
//!    service on a 3-node nats-server cluster with R3 streams: idle CPU and memory of every
//!    process, first-call latency, calls/s (`scale`). Long: only run when asked for
//!    (`--only scale`).
//!
//! Each figure is printed with its conditions and its ratio to the raw limit it depends on;
//! the whole report goes to `target/bench/report.json`. Every phase is bounded in time and
//! every byte goes to 127.0.0.1. A benchmark measures; nothing here asserts a timing, and a
//! missed target is printed as such.

mod api;
mod compare;
mod costs;
mod first_call;
mod http;
mod idle;
mod import;
mod pipeline;
mod projection;
mod raw;
mod report;
mod scale;
mod stack;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

use report::Report;

/// Measures ccm against this machine's own limits.
#[derive(Debug, Parser)]
struct Args {
    /// A short run (under 2 minutes) with smaller sizes.
    #[arg(long)]
    quick: bool,
    /// Run only these phases (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Phase>,
    /// The workspace root (where `target/release` is).
    #[arg(long, default_value = ".")]
    root: PathBuf,
    /// Compare nats-server releases side by side: run the phases on each of these binaries
    /// (repeat the option), the same build of ccm, in alternating order.
    #[arg(long = "nats-server")]
    nats_servers: Vec<PathBuf>,
    /// Rounds of the comparison (the order of the servers is reversed every other round).
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Start the services from this directory instead of `<root>/target/release` (a debug
    /// build, to check a phase: its figures are not comparable).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// The scale phase's numbers of running campaigns, instead of its defaults.
    #[arg(long, value_delimiter = ',')]
    scale_campaigns: Vec<usize>,
    /// The scale phase's numbers of dialer replicas, instead of its defaults.
    #[arg(long, value_delimiter = ',')]
    scale_dialers: Vec<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Phase {
    Raw,
    Api,
    E2e,
    Live,
    Projection,
    Import,
    /// Many running campaigns with nothing queued: idle CPU and first-call latency.
    Idle,
    /// Thousands of campaigns, several replicas, a 3-node cluster (not run unless asked for).
    Scale,
}

/// Sizes and durations of one run.
#[derive(Debug, Clone)]
pub struct Scale {
    pub raw_messages: u64,
    pub raw_rows: u64,
    pub raw_seconds: Duration,
    pub connections: usize,
    pub api_seconds: Duration,
    pub bulk_sizes: Vec<usize>,
    pub e2e_calls: usize,
    pub e2e_timeout: Duration,
    /// At most this many calls accepted and not yet terminal during the e2e phase.
    pub e2e_backlog: usize,
    pub live_calls: usize,
    pub live_timeout: Duration,
    /// At most this many calls accepted and not yet live during the live phase.
    pub live_backlog: usize,
    pub projection_events: u64,
    pub lag_rate: u64,
    pub lag_seconds: u64,
    /// Rows of the contact import.
    pub import_rows: usize,
    /// Running campaigns of the idle phase, one run per size.
    pub idle_campaigns: Vec<usize>,
    /// How long the idle campaigns settle, then the quiet window measured.
    pub idle_settle: Duration,
    pub idle_window: Duration,
    /// Calls of the first-call latency, each in another idle campaign.
    pub idle_calls: usize,
    /// Running campaigns of the scale phase, and dialer replicas: one configuration per pair.
    pub scale_campaigns: Vec<usize>,
    pub scale_dialers: Vec<usize>,
    /// How long the campaigns settle, then the quiet window measured.
    pub scale_settle: Duration,
    pub scale_window: Duration,
    /// First calls, each in another idle campaign.
    pub scale_first_calls: usize,
    /// Calls queued over the busy campaigns for calls/s, and how long they may take.
    pub scale_calls: usize,
    pub scale_timeout: Duration,
}

impl Scale {
    fn full() -> Self {
        Self {
            raw_messages: 300_000,
            raw_rows: 300_000,
            raw_seconds: Duration::from_secs(10),
            connections: 64,
            api_seconds: Duration::from_secs(20),
            bulk_sizes: vec![10_000, 100_000],
            e2e_calls: 100_000,
            e2e_timeout: Duration::from_secs(300),
            e2e_backlog: 10_000,
            live_calls: 100_000,
            live_timeout: Duration::from_secs(300),
            live_backlog: 10_000,
            projection_events: 200_000,
            lag_rate: 10_000,
            lag_seconds: 10,
            import_rows: 1_000_000,
            idle_campaigns: vec![100, 1_000],
            idle_settle: Duration::from_secs(15),
            idle_window: Duration::from_secs(30),
            idle_calls: 100,
            scale_campaigns: vec![1, 100, 1_000, 5_000],
            scale_dialers: vec![1, 3],
            scale_settle: Duration::from_secs(20),
            scale_window: Duration::from_secs(30),
            scale_first_calls: 100,
            scale_calls: 20_000,
            scale_timeout: Duration::from_secs(300),
        }
    }

    fn quick() -> Self {
        Self {
            raw_messages: 50_000,
            raw_rows: 50_000,
            raw_seconds: Duration::from_secs(3),
            connections: 64,
            api_seconds: Duration::from_secs(5),
            bulk_sizes: vec![10_000],
            e2e_calls: 10_000,
            e2e_timeout: Duration::from_secs(60),
            e2e_backlog: 5_000,
            live_calls: 5_000,
            live_timeout: Duration::from_secs(60),
            live_backlog: 5_000,
            projection_events: 50_000,
            lag_rate: 10_000,
            lag_seconds: 3,
            import_rows: 100_000,
            idle_campaigns: vec![300],
            idle_settle: Duration::from_secs(10),
            idle_window: Duration::from_secs(15),
            idle_calls: 30,
            scale_campaigns: vec![1, 100, 1_000],
            scale_dialers: vec![1, 3],
            scale_settle: Duration::from_secs(5),
            scale_window: Duration::from_secs(10),
            scale_first_calls: 20,
            scale_calls: 2_000,
            scale_timeout: Duration::from_secs(60),
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let root = std::fs::canonicalize(&args.root)?;
    let mut scale = if args.quick {
        Scale::quick()
    } else {
        Scale::full()
    };
    stack::use_bin_dir(args.bin_dir.clone());
    if !args.scale_campaigns.is_empty() {
        scale.scale_campaigns = args.scale_campaigns.clone();
    }
    if !args.scale_dialers.is_empty() {
        scale.scale_dialers = args.scale_dialers.clone();
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("[{elapsed_precise}] {bar:20} {pos}/{len} phases  {msg}")?
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(250));
    let mode = if args.quick { "quick" } else { "full" };
    if !args.nats_servers.is_empty() {
        let phases = if args.only.is_empty() {
            vec![Phase::Raw, Phase::Api, Phase::E2e]
        } else {
            args.only.clone()
        };
        return compare::run(
            &root,
            &args.nats_servers,
            args.rounds,
            &phases,
            &scale,
            mode,
            &bar,
        )
        .await;
    }
    let phases = if args.only.is_empty() {
        vec![
            Phase::Raw,
            Phase::Api,
            Phase::E2e,
            Phase::Live,
            Phase::Projection,
            Phase::Import,
            Phase::Idle,
        ]
    } else {
        args.only.clone()
    };
    let mut report = Report {
        started_at: chrono::Utc::now().to_rfc3339(),
        mode: mode.into(),
        machine: machine(ccm_tests::nats_server::program().ok()),
        ..Report::default()
    };
    bar.set_length(phases.len() as u64);
    run_phases(&root, &mut report, &scale, &phases, &bar).await;
    bar.finish_and_clear();
    report.machine.load_after = report::load_average();

    print!("{}", report.table());
    let out = root.join("target/bench/report.json");
    report.write(&out)?;
    println!("\nreport: {}", out.display());
    if report.failed.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("{} phase(s) could not be measured", report.failed.len())
    }
}

/// Runs `phases` in order into `report`; a phase that fails is recorded and the next runs.
pub(crate) async fn run_phases(
    root: &Path,
    report: &mut Report,
    scale: &Scale,
    phases: &[Phase],
    bar: &ProgressBar,
) {
    for &phase in phases {
        let result = match phase {
            Phase::Raw => run_raw(root, report, scale, bar).await,
            Phase::Api => api::run(root, report, scale, bar).await,
            Phase::E2e => pipeline::end_to_end(root, report, scale, bar).await,
            Phase::Live => pipeline::live_calls(root, report, scale, bar).await,
            Phase::Projection => projection::run(root, report, scale, bar).await,
            Phase::Import => import::run(root, report, scale, bar).await,
            Phase::Idle => idle::run(root, report, scale, bar).await,
            Phase::Scale => scale::run(root, report, scale, bar).await,
        };
        if let Err(e) = result {
            bar.println(format!("{phase:?} not measured: {e:#}"));
            report.failed.push((format!("{phase:?}"), format!("{e:#}")));
        }
        bar.inc(1);
    }
}

async fn run_raw(
    root: &Path,
    report: &mut Report,
    scale: &Scale,
    bar: &ProgressBar,
) -> anyhow::Result<()> {
    let servers = stack::Servers::start(root.join("target/bench/raw"))?;
    report.raw = raw::limits(&servers, scale, bar).await?;
    Ok(())
}

/// The machine, and the nats-server `program` the phases run.
pub(crate) fn machine(program: Option<PathBuf>) -> report::Machine {
    let memory_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .unwrap_or(0.0);
    let version = |program: Option<std::path::PathBuf>, name: &str| {
        program
            .and_then(|p| Command::new(p).arg("--version").output().ok())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_else(|| format!("{name} not found"))
    };
    report::Machine {
        cores: std::thread::available_parallelism().map_or(0, usize::from),
        memory_gib: memory_kib / 1024.0 / 1024.0,
        // The binary the stack runs, not whichever is on PATH.
        nats_server: version(program, "nats-server"),
        postgres: version(
            ccm_tests::process::find_program("postgres").ok(),
            "postgres",
        ),
        ccm: format!(
            "{} ({})",
            env!("CARGO_PKG_VERSION"),
            Command::new("git")
                .args(["describe", "--always", "--dirty"])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                .unwrap_or_else(|| "no git".into())
        ),
        load_before: report::load_average(),
        load_after: String::new(),
    }
}
