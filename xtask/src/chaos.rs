//! `cargo xtask chaos`: the long fault-injection run. Every fault kind alone, each against a
//! fresh nats-server and PostgreSQL with the services as real processes, then all of them one
//! after another in one run, then several at the same time, then a 3-node NATS cluster
//! losing a node; the auditor's table at
//! the end (also written to `target/chaos-report.md`). Everything listens on 127.0.0.1 only, and each
//! scenario is bounded in time (load, faults, then at most `--settle` seconds to finish).

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ccm_tests::{
    NatsCluster, TestEnv,
    chaos::{self, Audit, Fault, Scenario, Service},
};

/// Options of `cargo xtask chaos`.
#[derive(Debug, Clone, clap::Args)]
pub struct ChaosArgs {
    /// Calls per campaign in each scenario.
    #[arg(long, default_value_t = 400)]
    pub calls: u32,
    /// Campaigns in each scenario.
    #[arg(long, default_value_t = 3)]
    pub campaigns: u32,
    /// Concurrency cap of each campaign.
    #[arg(long, default_value_t = 20)]
    pub cap: u32,
    /// How long the calls may take to end after the load and faults, in seconds.
    #[arg(long, default_value_t = 180)]
    pub settle: u64,
    /// Run only the scenarios whose name contains this text.
    #[arg(long)]
    pub only: Option<String>,
    /// Add a 100 % carrier outage long enough to exhaust technical retries (dead letters,
    /// which the auditor then requires); it takes about three minutes.
    #[arg(long)]
    pub outage: bool,
    /// Instead of the scripted scenarios, a generated schedule of operations and faults
    /// (see `--seed`, `--minutes`).
    #[arg(long)]
    pub generated: bool,
    /// The generated schedule's seed (default: drawn from the clock, and printed).
    #[arg(long, requires = "generated")]
    pub seed: Option<u64>,
    /// How long the generated operations and faults last, in minutes.
    #[arg(long, default_value_t = 5, requires = "generated")]
    pub minutes: u64,
    /// The same in seconds (overrides `--minutes`; the replay command uses it).
    #[arg(long, requires = "generated")]
    pub seconds: Option<u64>,
    /// Generated runs one after another, with seeds `seed`, `seed + 1`, ...
    #[arg(long, default_value_t = 1, requires = "generated")]
    pub runs: u64,
    /// Processes of each service in a generated run (a kill takes one of them; the
    /// requests and callbacks are spread over the ingest instances).
    #[arg(long, default_value_t = 1, requires = "generated")]
    pub instances: usize,
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn kill(service: Service) -> Fault {
    Fault::Kill {
        service,
        instance: 0,
        down: secs(2),
    }
}

/// The scenarios: each fault alone, then all of them one after another in one run.
fn scenarios(args: &ChaosArgs) -> Vec<(Scenario, bool)> {
    let callbacks = Fault::Callbacks {
        drop: 0.1,
        duplicate: 0.3,
        reorder: 0.3,
        hold: secs(20),
    };
    let each: Vec<(&str, Vec<Fault>)> = vec![
        ("no fault", vec![]),
        ("kill -9 ingest", vec![kill(Service::Ingest)]),
        ("kill -9 dialer", vec![kill(Service::Dialer)]),
        ("kill -9 retrier", vec![kill(Service::Retrier)]),
        ("kill -9 projector", vec![kill(Service::Projector)]),
        (
            "nats-server restart",
            vec![Fault::NatsRestart { down: secs(3) }],
        ),
        (
            "PostgreSQL stopped 20 s",
            vec![Fault::PostgresOutage { down: secs(20) }],
        ),
        (
            "carrier 503 burst",
            vec![Fault::CarrierErrors {
                rate: 0.5,
                hold: secs(10),
            }],
        ),
        (
            "carrier latency",
            vec![Fault::CarrierLatency {
                latency_ms: 2000,
                hold: secs(10),
            }],
        ),
        (
            "callbacks dropped, duplicated, reordered",
            vec![callbacks.clone()],
        ),
    ];
    let mut all: Vec<Fault> = each.iter().flat_map(|(_, f)| f.clone()).collect();
    // All in one run: the callback faults first, then the others in turn.
    all.rotate_right(1);
    let mut out: Vec<(Scenario, bool)> = each
        .into_iter()
        .map(|(name, faults)| (scenario(args, name, args.calls, faults), false))
        .collect();
    if args.outage {
        // A dial message's 8th delivery comes 62-123 s after its first (NAK delays 0.5 s
        // doubling to 30 s, plus up to 100 % jitter each): 110 s dead-letters most of the
        // calls in flight when the outage starts.
        let mut outage = scenario(
            args,
            "carrier down 110 s (dead letters)",
            args.calls / 4,
            vec![Fault::CarrierErrors {
                rate: 1.0,
                hold: secs(110),
            }],
        );
        outage.warmup = secs(1);
        outage.expect_dead_letters = true;
        out.push((outage, false));
    }
    out.push((
        scenario(
            args,
            "all faults, one after another in one run",
            args.calls * 2,
            all,
        ),
        false,
    ));
    // Several faults at the same time: carrier-side ones held together while the processes
    // and servers are hit in turn inside that time.
    out.push((
        scenario(
            args,
            "faults at the same time",
            args.calls,
            vec![Fault::Together(vec![
                Fault::CarrierErrors {
                    rate: 0.5,
                    hold: secs(20),
                },
                callbacks.clone(),
                kill(Service::Dialer),
                kill(Service::Projector),
                Fault::PostgresOutage { down: secs(10) },
                kill(Service::Ingest),
            ])],
        ),
        false,
    ));
    out.push((
        scenario(
            args,
            "3-node cluster, node killed",
            args.calls,
            vec![Fault::NatsNodeKill {
                node: 0,
                down: secs(5),
            }],
        ),
        true,
    ));
    out
}

fn scenario(args: &ChaosArgs, name: &str, calls: u32, faults: Vec<Fault>) -> Scenario {
    let mut s = Scenario::new(name, calls, faults);
    s.campaigns = args.campaigns;
    s.cap = args.cap;
    s.settle = secs(args.settle);
    s.warmup = secs(3);
    s.gap = secs(3);
    s.verbose = true;
    s
}

pub fn run(args: ChaosArgs) -> anyhow::Result<()> {
    crate::deps::ensure_servers()?;
    if args.generated {
        return crate::chaos_generated::run(&args);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let started = Instant::now();
    let mut audits = Vec::new();
    let selected: Vec<(Scenario, bool)> = scenarios(&args)
        .into_iter()
        .filter(|(s, _)| args.only.as_ref().is_none_or(|only| s.name.contains(only)))
        .collect();
    if selected.is_empty() {
        bail!("no scenario matches --only");
    }
    for (i, (scenario, clustered)) in selected.iter().enumerate() {
        eprintln!(
            "\n=== {}/{}: {} ({} campaigns x {} calls, cap {}; faults: {}) ===",
            i + 1,
            selected.len(),
            scenario.name,
            scenario.campaigns,
            scenario.load.calls_per_campaign,
            scenario.cap,
            labels(&scenario.faults),
        );
        let audit = rt.block_on(async {
            let mut env = TestEnv::start().await.context("test servers")?;
            if *clustered {
                let mut cluster = tokio::task::spawn_blocking(NatsCluster::start)
                    .await?
                    .context("3-node NATS cluster")?;
                cluster.ready(secs(60)).await?;
                Ok::<_, anyhow::Error>(chaos::run(scenario, &mut env, Some(&mut cluster)).await?)
            } else {
                Ok(chaos::run(scenario, &mut env, None).await?)
            }
        })?;
        eprintln!("{}", Audit::table(std::slice::from_ref(&audit)));
        audits.push(audit);
    }
    let mut report = format!(
        "Load per scenario: {} campaigns (cap {}, 3 attempts, retry backoff 1 s), the calls \
         shown sent 4 at a time with 100 ms between requests of a sender; carrier-sim mix 55 % picked, 15 % disconnected, 20 % RNR, \
         10 % failed, calls 0.2-0.6 s.\n\n",
        args.campaigns, args.cap
    );
    report.push_str("| scenario | faults |\n|---|---|\n");
    for (scenario, _) in &selected {
        report.push_str(&format!(
            "| {} | {} |\n",
            scenario.name,
            labels(&scenario.faults)
        ));
    }
    report.push('\n');
    report.push_str(&Audit::table(&audits));
    println!(
        "\n{report}\n\ntotal {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let path = ccm_tests::chaos::services::workspace_root().join("target/chaos-report.md");
    std::fs::write(&path, &report).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("written to {}", path.display());
    let failed: Vec<&str> = audits
        .iter()
        .filter(|a| !a.passed())
        .map(|a| a.scenario.as_str())
        .collect();
    if !failed.is_empty() {
        bail!("invariants broken in: {failed:?}");
    }
    Ok(())
}

fn labels(faults: &[Fault]) -> String {
    if faults.is_empty() {
        return "none".into();
    }
    faults
        .iter()
        .map(Fault::label)
        .collect::<Vec<_>>()
        .join("; ")
}
