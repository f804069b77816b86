//! `cargo xtask chaos --generated`: seeded random schedules of operations and faults against
//! the services as real processes (see `ccm_tests::chaos::generate`). Prints each run's seed,
//! its schedule's summary and the auditor's checks; a failure prints the seed and the exact
//! command that replays it. Everything listens on 127.0.0.1 only, and each run is bounded:
//! the schedule's time, then at most `--settle` seconds (never less than
//! `Knobs::settle_bound`) for the calls to end.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ccm_tests::{
    TestEnv,
    chaos::{
        generate::{Knobs, schedule},
        generated,
    },
};

use crate::chaos::ChaosArgs;

pub fn run(args: &ChaosArgs) -> anyhow::Result<()> {
    let secs = args.seconds.unwrap_or(args.minutes * 60).max(10);
    let first = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let started = Instant::now();
    let mut failed = Vec::new();
    let mut report = String::new();
    for seed in first..first.saturating_add(args.runs.max(1)) {
        let mut knobs = Knobs::new(Duration::from_secs(secs));
        knobs.campaigns = args.campaigns.max(1);
        knobs.instances = args.instances.max(1);
        let plan = schedule(seed, &knobs);
        // Never less than the design's own slowest legitimate ending.
        let settle = Duration::from_secs(args.settle).max(knobs.settle_bound());
        eprintln!("\n=== generated run: seed {seed}, {secs} s ===");
        let result = rt.block_on(async {
            let mut env = TestEnv::start().await.context("test servers")?;
            Ok::<_, anyhow::Error>(generated::run(&plan, &mut env, settle, true).await?)
        })?;
        let text = result.render();
        eprintln!("{text}");
        report.push_str(&format!("### seed {seed}, {secs} s\n\n{text}\n\n"));
        if !result.passed() {
            let names: Vec<&str> = result
                .checks
                .iter()
                .filter(|c| !c.passed())
                .map(|c| c.name)
                .collect();
            eprintln!(
                "seed {seed} FAILED {names:?}; replay: {}",
                generated::replay_command(seed, secs, args.instances)
            );
            failed.push(seed);
        }
    }
    let path =
        ccm_tests::chaos::services::workspace_root().join("target/chaos-generated-report.md");
    std::fs::write(&path, &report).with_context(|| format!("writing {}", path.display()))?;
    eprintln!(
        "written to {}; total {:.0} s",
        path.display(),
        started.elapsed().as_secs_f64()
    );
    if !failed.is_empty() {
        let replays: Vec<String> = failed
            .iter()
            .map(|s| generated::replay_command(*s, secs, args.instances))
            .collect();
        bail!(
            "invariants broken with seeds {failed:?}; replay with:\n  {}",
            replays.join("\n  ")
        );
    }
    Ok(())
}
