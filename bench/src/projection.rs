//! Projection throughput and lag, measured by the projector's own benchmark
//! (`projector/examples/bench.rs`), run here as a release binary on fresh servers of its own.

use std::{path::Path, process::Stdio};

use anyhow::Context;
use indicatif::ProgressBar;
use serde::Deserialize;

use crate::{
    Scale,
    report::{Figure, Report, Target},
};

#[derive(Debug, Deserialize)]
struct Projection {
    events: u64,
    throughput: f64,
    throughput_from_first_batch: f64,
    lag_rate: u64,
    lag_seconds: u64,
    lag_p50: f64,
    lag_p99: f64,
    fsync: String,
}

pub async fn run(
    root: &Path,
    report: &mut Report,
    scale: &Scale,
    bar: &ProgressBar,
) -> anyhow::Result<()> {
    bar.set_message(format!(
        "projection: {} events, then {}/s for {} s",
        scale.projection_events, scale.lag_rate, scale.lag_seconds
    ));
    let out = root.join("target/bench/projection.json");
    let _ = std::fs::remove_file(&out);
    let log = std::fs::File::create(root.join("target/bench/projection.log"))?;
    let status = tokio::process::Command::new(root.join("target/release/examples/bench"))
        .current_dir(root)
        .args(["--events", &scale.projection_events.to_string()])
        .args(["--rate", &scale.lag_rate.to_string()])
        .args(["--seconds", &scale.lag_seconds.to_string()])
        .arg("--json")
        .arg(&out)
        .stdout(log.try_clone()?)
        .stderr(log)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .status()
        .await
        .context("cannot run the projector benchmark; was it built with --release?")?;
    anyhow::ensure!(
        status.success(),
        "the projector benchmark failed; see target/bench/projection.log"
    );
    let p: Projection = serde_json::from_slice(&std::fs::read(&out)?)?;
    let raw = report.raw("raw.pg.upsert");
    report.ccm.push(
        Figure::new(
            "projection.rate",
            p.throughput,
            "events/s",
            format!(
                "backlog of {} messages, one projector (3 writers), including start-up; {:.0}/s \
                 from the first batch; PostgreSQL fsync={}",
                p.events, p.throughput_from_first_batch, p.fsync
            ),
        )
        .against(raw)
        .target(Target::AtLeast(50_000.0)),
    );
    report.ccm.push(
        Figure::new(
            "projection.lag_p99",
            p.lag_p99,
            "s",
            format!(
                "{}/s for {} s, publish to transaction start; p50 {:.3} s",
                p.lag_rate, p.lag_seconds, p.lag_p50
            ),
        )
        .target(Target::AtMost(1.0)),
    );
    Ok(())
}
