//! nats-server releases side by side: the same phases and the same build of ccm on each
//! server, in one run, the order of the servers reversed every other round (so neither
//! always runs on a machine warmed or loaded by the other). Only ratios within a round mean
//! anything on a machine whose speed varies from run to run.
//!
//! ccm itself refuses a server older than its minimum (`ccm_core::server_version`), so on
//! such a server only the raw limits are measured; its other phases are reported skipped.

use std::{fmt::Write as _, path::Path, path::PathBuf};

use anyhow::Context;
use indicatif::ProgressBar;
use serde::Serialize;

use crate::{
    Phase, Scale,
    report::{self, Report, human},
    stack,
};

/// The figures the comparison table shows, in order.
const ROWS: &[&str] = &[
    "raw.publish.pipelined",
    "raw.publish.batch",
    "raw.pull_ack",
    "raw.publish.64",
    "api.single.rate",
    "api.single.cpu_per_call",
    "api.bulk.10000",
    "api.bulk.100000",
    "e2e.rate",
    "e2e.cpu_per_call",
    "e2e.cpu.nats-server",
    "e2e.cpu.postgres",
    "e2e.cpu.ccm-ingest",
    "e2e.cpu.ccm-dialer",
    "e2e.cpu.ccm-retrier",
    "e2e.cpu.ccm-projector",
];

/// One server's run in one round.
#[derive(Debug, Serialize)]
struct Run {
    version: String,
    round: usize,
    report: Report,
}

pub async fn run(
    root: &Path,
    programs: &[PathBuf],
    rounds: usize,
    phases: &[Phase],
    scale: &Scale,
    mode: &str,
    bar: &ProgressBar,
) -> anyhow::Result<()> {
    let mut servers = Vec::new();
    for program in programs {
        let version = ccm_tests::nats_server::version_of(program)
            .with_context(|| format!("{} is not a nats-server", program.display()))?;
        servers.push((program.clone(), version));
    }
    bar.set_length((rounds * servers.len() * phases.len()) as u64);
    let mut runs = Vec::new();
    for round in 0..rounds {
        let mut order: Vec<_> = servers.iter().collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for (program, version) in order {
            bar.println(format!("round {}: nats-server {version}", round + 1));
            stack::use_nats_server(Some(program.clone()));
            let mut report = Report {
                started_at: chrono::Utc::now().to_rfc3339(),
                mode: mode.into(),
                machine: crate::machine(Some(program.clone())),
                ..Report::default()
            };
            let supported = ccm_core::server_version::require_supported(version).is_ok();
            let (runnable, skipped): (Vec<Phase>, Vec<Phase>) =
                phases.iter().partition(|p| supported || **p == Phase::Raw);
            for phase in skipped {
                report.skipped.push((
                    format!("{phase:?}"),
                    format!(
                        "ccm requires nats-server >= {} (per-key TTL, consumer pause); this is {version}",
                        ccm_core::server_version::MINIMUM
                    ),
                ));
                bar.inc(1);
            }
            crate::run_phases(root, &mut report, scale, &runnable, bar).await;
            report.machine.load_after = report::load_average();
            runs.push(Run {
                version: version.clone(),
                round: round + 1,
                report,
            });
        }
    }
    stack::use_nats_server(None);
    bar.finish_and_clear();

    for run in &runs {
        println!("\n== nats-server {}, round {}", run.version, run.round);
        print!("{}", run.report.table());
    }
    let pinned = &servers[servers.len() - 1].1;
    print!("{}", table(&runs, pinned));
    let out = root.join("target/bench/compare.json");
    std::fs::create_dir_all(out.parent().context("a parent")?)?;
    std::fs::write(&out, serde_json::to_vec_pretty(&runs)?)?;
    println!("\nreport: {}", out.display());
    let failed: usize = runs.iter().map(|r| r.report.failed.len()).sum();
    if failed > 0 {
        anyhow::bail!("{failed} phase(s) could not be measured");
    }
    Ok(())
}

/// Every figure per server and round, then `pinned`'s ratio to each other server in the
/// same round.
fn table(runs: &[Run], pinned: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nside by side (load average before -> after each run):"
    );
    for run in runs {
        let _ = writeln!(
            out,
            "  round {} {}: {} -> {}",
            run.round, run.version, run.report.machine.load_before, run.report.machine.load_after
        );
    }
    let columns: Vec<String> = runs
        .iter()
        .map(|r| format!("r{} {}", r.round, r.version))
        .collect();
    let _ = write!(out, "\n{:<26}", "figure");
    for c in &columns {
        let _ = write!(out, "{c:>16}");
    }
    let _ = writeln!(out);
    for name in ROWS {
        if runs.iter().all(|r| r.report.figure(name).is_none()) {
            continue;
        }
        let _ = write!(out, "{name:<26}");
        for run in runs {
            let cell = run
                .report
                .figure(name)
                .map_or_else(|| "-".to_owned(), |f| human(f.value));
            let _ = write!(out, "{cell:>16}");
        }
        let _ = writeln!(out);
    }
    let _ = writeln!(
        out,
        "\nnats-server {pinned} over each other server, same round:"
    );
    for name in ROWS {
        for run in runs.iter().filter(|r| r.version == pinned) {
            for base in runs
                .iter()
                .filter(|b| b.round == run.round && b.version != pinned)
            {
                if let (Some(f), Some(b)) = (run.report.figure(name), base.report.figure(name))
                    && b.value > 0.0
                {
                    let _ = writeln!(
                        out,
                        "  {name:<26} round {}: {:.2}x {}",
                        run.round,
                        f.value / b.value,
                        base.version
                    );
                }
            }
        }
    }
    out
}
