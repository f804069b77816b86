//! `scale`: many running campaigns and several replicas of every service on a 3-node
//! nats-server cluster with R3 streams (issue 23). For each configuration of (running
//! campaigns, dialer replicas), on a fresh cluster and a fresh PostgreSQL, with two replicas of
//! ingest, the retrier and the projector:
//!
//! 1. the campaigns are created through the API, a few busy and the rest idle (the creation
//!    rate is a figure too);
//! 2. after they settle, the CPU (share of one core) and resident memory of every nats-server
//!    node and every service process over a quiet window;
//! 3. the time from accepting a call in an idle campaign to its `Dialing` (p50, p99), one call
//!    at a time in campaigns spread over the idle ones;
//! 4. end-to-end calls/s over the busy campaigns (the `sim` carrier, short calls), with the
//!    attempts dialed twice and the calls not ended counted.
//!
//! Nothing reads a service's own metrics: the figures come from `/proc`, the API and the
//! events' subject, so the phase measures any build of the dialer alike.

mod calls;
mod plan;
mod setup;

use std::{path::Path, time::Duration};

use ccm_tests::{LocalPostgres, cluster::NatsCluster, postgres::DATABASE};
use indicatif::ProgressBar;
use tokio::time::Instant;

pub use plan::{Row, table};

use crate::{
    Scale,
    report::{Figure, Report},
    stack::{Endpoints, Env, Services, cpu_seconds, memory},
};
use plan::{Config, Sample};

pub async fn run(
    root: &Path,
    report: &mut Report,
    scale: &Scale,
    bar: &ProgressBar,
) -> anyhow::Result<()> {
    let configs = plan::configurations(&scale.scale_campaigns, &scale.scale_dialers);
    let mut failed = Vec::new();
    for (i, &config) in configs.iter().enumerate() {
        let label = format!(
            "scale {}/{} ({} campaigns, {} dialer{})",
            i + 1,
            configs.len(),
            config.campaigns,
            config.dialers,
            if config.dialers == 1 { "" } else { "s" }
        );
        let began = Instant::now();
        let mut row = Row::new(config);
        if let Err(e) = one(root, scale, bar, &label, &mut row).await {
            bar.println(format!("{label}: stopped early: {e:#}"));
            failed.push(format!("{label}: {e:#}"));
            row.error = Some(format!("{e:#}"));
        }
        bar.println(format!(
            "{label}: done in {:.0} s",
            began.elapsed().as_secs_f64()
        ));
        push_figures(report, &row);
        report.scale.push(row);
    }
    anyhow::ensure!(failed.is_empty(), "{}", failed.join("; "));
    Ok(())
}

/// One configuration, measured into `row` as far as it gets.
async fn one(
    root: &Path,
    scale: &Scale,
    bar: &ProgressBar,
    label: &str,
    row: &mut Row,
) -> anyhow::Result<()> {
    let config = row.config;
    let dir = root.join(format!(
        "target/bench/scale-{}x{}",
        config.campaigns, config.dialers
    ));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    bar.set_message(format!("{label}: starting a 3-node cluster"));
    let cluster = tokio::task::spawn_blocking(NatsCluster::start).await??;
    cluster.ready(Duration::from_secs(30)).await?;
    let pg = LocalPostgres::start_persistent(dir.join("pg/data"), None)?;
    let at = Endpoints {
        nats_url: cluster.urls(),
        database_url: pg.url(DATABASE),
        dir,
    };
    let env = Env::default()
        .set("CCM_STREAMS__REPLICAS", "3")
        .set("CCM_DIALER__CARRIER", "{kind: sim, call_ms: 10}")
        .set("CCM_DIALER__MAX_CALLS", "20000")
        .set("CCM_LOG__FILTER", "warn");
    bar.set_message(format!("{label}: provisioning R3 streams"));
    setup::provision(&at.nats_url).await?;
    bar.set_message(format!("{label}: starting the services"));
    let mut services = Services::start_on(root, &at, &plan::processes(config), &env).await?;
    let api = services.api()?.to_owned();

    let created = Instant::now();
    let (ids, retried) = setup::create(&api, config.campaigns, bar, label).await?;
    row.created_per_s = Some(ids.len() as f64 / created.elapsed().as_secs_f64());
    row.create_retries = Some(retried);

    bar.set_message(format!("{label}: settling"));
    tokio::time::sleep(scale.scale_settle).await;
    if let Some(name) = services.exited() {
        anyhow::bail!("{name} exited; see its log under {}", at.dir.display());
    }

    bar.set_message(format!("{label}: quiet window"));
    measure_quiet(&cluster, &pg, &services, scale.scale_window, row).await;

    let busy = plan::busy(config.campaigns);
    let picked: Vec<u64> = plan::spread(ids.len(), busy, scale.scale_first_calls)
        .into_iter()
        .map(|i| ids[i])
        .collect();
    let mut latencies =
        crate::first_call::first_calls(&at.nats_url, &api, &picked, bar, label).await?;
    latencies.sort_by(f64::total_cmp);
    row.first_calls = latencies.len();
    row.first_call_p50_ms = plan::percentile(&latencies, 0.5);
    row.first_call_p99_ms = plan::percentile(&latencies, 0.99);

    bar.set_message(format!("{label}: {} calls end to end", scale.scale_calls));
    let done = calls::throughput(
        &at.nats_url,
        &api,
        &ids[..busy],
        scale.scale_calls,
        scale.scale_timeout,
        bar,
        label,
    )
    .await?;
    row.calls_per_s = Some(done.calls_per_s);
    row.not_ended = Some(done.not_ended);
    row.dialed_twice = Some(done.dialed_twice);
    if let Some(name) = services.exited() {
        anyhow::bail!("{name} exited; see its log under {}", at.dir.display());
    }
    // The services first, while the servers they drain into still run.
    drop(services);
    Ok(())
}

/// CPU and memory of every nats-server node, PostgreSQL and every service process over
/// `window`, into `row`.
async fn measure_quiet(
    cluster: &NatsCluster,
    pg: &LocalPostgres,
    services: &Services,
    window: Duration,
    row: &mut Row,
) {
    let nodes = cluster.pids();
    let mut processes: Vec<(String, Option<u32>, bool)> = nodes
        .iter()
        .map(|pid| ("nats-server".to_owned(), *pid, false))
        .collect();
    processes.push(("postgres".to_owned(), pg.pid(), true));
    processes.extend(
        services
            .processes()
            .map(|(name, pid)| (name.to_owned(), pid, false)),
    );
    let before: Vec<f64> = processes
        .iter()
        .map(|(_, pid, children)| cpu_seconds(*pid, *children))
        .collect();
    let began = Instant::now();
    tokio::time::sleep(window).await;
    let seconds = began.elapsed().as_secs_f64();
    row.window_s = seconds;
    row.samples = processes
        .iter()
        .zip(before)
        .map(|((kind, pid, children), was)| Sample {
            kind: kind.clone(),
            cpu_pct: (cpu_seconds(*pid, *children) - was) / seconds * 100.0,
            rss_mib: memory(*pid).rss_mib,
        })
        .collect();
    row.nats_cpu = row.samples[..nodes.len()]
        .iter()
        .map(|s| s.cpu_pct)
        .collect();
}

/// The row's figures in the report's figure list too (the JSON and the comparison read them).
fn push_figures(report: &mut Report, row: &Row) {
    let Config { campaigns, dialers } = row.config;
    let prefix = format!("scale.{campaigns}x{dialers}");
    let conditions = format!(
        "{campaigns} running campaigns ({} busy), {dialers} dialer(s), 2 of every other \
         service, 3-node nats-server cluster, R3 streams",
        plan::busy(campaigns)
    );
    let mut add = |name: &str, value: Option<f64>, unit: &'static str| {
        if let Some(value) = value {
            report.detail.push(Figure::new(
                &format!("{prefix}.{name}"),
                value,
                unit,
                conditions.clone(),
            ));
        }
    };
    add("created_per_s", row.created_per_s, "campaigns/s");
    add(
        "create_retries",
        row.create_retries.map(|n| n as f64),
        "503 answers",
    );
    for (i, cpu) in row.nats_cpu.iter().enumerate() {
        add(&format!("cpu.nats-n{}", i + 1), Some(*cpu), "% of a core");
    }
    for kind in [
        "ccm-dialer",
        "ccm-ingest",
        "ccm-retrier",
        "ccm-projector",
        "postgres",
    ] {
        add(
            &format!("cpu.{kind}"),
            plan::sum_of(&row.samples, kind, |s| s.cpu_pct),
            "% of a core",
        );
        add(
            &format!("rss.{kind}"),
            plan::sum_of(&row.samples, kind, |s| s.rss_mib),
            "MiB",
        );
    }
    add(
        "rss.nats-server",
        plan::sum_of(&row.samples, "nats-server", |s| s.rss_mib),
        "MiB",
    );
    add("first_call_p50", row.first_call_p50_ms, "ms");
    add("first_call_p99", row.first_call_p99_ms, "ms");
    add("calls_per_s", row.calls_per_s, "calls/s");
    add("not_ended", row.not_ended.map(|n| n as f64), "calls");
    add(
        "dialed_twice",
        row.dialed_twice.map(|n| n as f64),
        "attempts",
    );
}
