//! The HTTP API under load: single calls from many connections, then bulk requests.
//!
//! Only ingest runs (beside nats-server and PostgreSQL): the figures are what acceptance
//! costs, each call answered 201 only after its JetStream ack. The dialer is not started, so
//! the accepted calls stay queued.

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use hyper::{Method, StatusCode};
use indicatif::ProgressBar;
use serde_json::json;

use crate::{
    Scale,
    http::{self, Conn},
    raw::percentile,
    report::{Figure, Report, Target},
    stack::{Cpu, Env, Servers, Services, cpu_text, memory},
};

pub async fn run(
    root: &Path,
    report: &mut Report,
    scale: &Scale,
    bar: &ProgressBar,
) -> anyhow::Result<()> {
    let servers = Servers::start(root.join("target/bench/api"))?;
    let services = Services::start(root, &servers, &["ccm-ingest"], &Env::default()).await?;
    let api = services.api()?.to_owned();
    let campaign = http::campaign(&api, "bench-api", 100_000).await?;

    bar.set_message(format!(
        "API: single calls, {} connections, {} s",
        scale.connections,
        scale.api_seconds.as_secs()
    ));
    let cpu_before = Cpu::now(&servers, &services);
    let single = single_calls(&api, campaign, scale.connections, scale.api_seconds, 0).await?;
    let cpu = Cpu::now(&servers, &services).per_unit_ms(&cpu_before, single.accepted);
    let ingest = memory(services.pid("ccm-ingest"));
    let conditions = format!(
        "{} connections, {} s, {} accepted, {} other answers; ingest + nats-server + PostgreSQL + \
         load generator on the same cores",
        scale.connections,
        scale.api_seconds.as_secs(),
        single.accepted,
        single.failed
    );
    let per_call = report.raw("raw.publish.64");
    report.ccm.push(
        Figure::new("api.single.rate", single.rate, "req/s", conditions.clone())
            .against(per_call)
            .target(Target::AtLeast(10_000.0)),
    );
    report.ccm.push(Figure::new(
        "api.single.p50",
        single.p50,
        "ms",
        conditions.clone(),
    ));
    report.ccm.push(
        Figure::new("api.single.p99", single.p99, "ms", conditions).target(Target::AtMost(10.0)),
    );
    report.ccm.push(
        Figure::new(
            "api.ingest.rss_peak",
            ingest.peak_mib,
            "MiB",
            "ingest's peak resident memory (VmHWM) after the single-call load",
        )
        .target(Target::AtMost(100.0)),
    );

    report.ccm.push(Figure::new(
        "api.single.cpu_per_call",
        cpu.last().map_or(0.0, |c| c.1),
        "ms",
        format!("CPU time per accepted call (ms): {}", cpu_text(&cpu)),
    ));

    for &size in &scale.bulk_sizes {
        bar.set_message(format!("API: bulk of {size} numbers"));
        let took = bulk(&api, campaign, size, 9_000_000_000 + size as u64 * 10).await?;
        report.ccm.push(
            Figure::new(
                &format!("api.bulk.{size}"),
                size as f64 / took.as_secs_f64(),
                "numbers/s",
                format!(
                    "one request of {size} new numbers, answered in {:.0} ms",
                    took.as_secs_f64() * 1e3
                ),
            )
            .against(report.raw("raw.publish.pipelined"))
            .target(Target::AtLeast(100_000.0)),
        );
    }
    Ok(())
}

/// What the single-call load measured.
#[derive(Debug)]
pub struct Single {
    pub accepted: usize,
    pub failed: u64,
    pub rate: f64,
    pub p50: f64,
    pub p99: f64,
}

/// `POST /api/v1/initiate-call/` from `connections` connections for `duration`, each call to
/// a new number starting at `first`.
pub async fn single_calls(
    api: &str,
    campaign: u64,
    connections: usize,
    duration: Duration,
    first: u64,
) -> anyhow::Result<Single> {
    let next = Arc::new(AtomicU64::new(first));
    let deadline = Instant::now() + duration;
    let began = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..connections {
        let (api, next) = (api.to_owned(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut conn = Conn::open(&api).await?;
            let mut latencies = Vec::new();
            let mut failed = 0u64;
            while Instant::now() < deadline {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let body = format!(
                    r#"{{"phone_number":"+1{:010}","campaign_id":{campaign}}}"#,
                    2_000_000_000 + n
                );
                let sent = Instant::now();
                let (status, _) = conn
                    .send(Method::POST, "/api/v1/initiate-call/", body.into())
                    .await?;
                if status == StatusCode::CREATED {
                    latencies.push(sent.elapsed());
                } else {
                    failed += 1;
                }
            }
            Ok::<_, anyhow::Error>((latencies, failed))
        }));
    }
    let mut latencies = Vec::new();
    let mut failed = 0;
    for worker in workers {
        let (l, f) = worker.await??;
        latencies.extend(l);
        failed += f;
    }
    let elapsed = began.elapsed().as_secs_f64();
    Ok(Single {
        accepted: latencies.len(),
        failed,
        rate: latencies.len() as f64 / elapsed,
        p50: percentile(&mut latencies, 0.50),
        p99: percentile(&mut latencies, 0.99),
    })
}

/// One `POST /api/v1/bulk-initiate-calls/` of `size` new numbers from `first`; every number
/// must be accepted.
pub async fn bulk(api: &str, campaign: u64, size: usize, first: u64) -> anyhow::Result<Duration> {
    let numbers: Vec<String> = (first..first + size as u64)
        .map(|n| format!("+1{n:010}"))
        .collect();
    let body = json!({"campaign_id": campaign, "phone_numbers": numbers});
    let mut conn = Conn::open(api).await?;
    let sent = Instant::now();
    let (status, answer) = conn
        .post_json("/api/v1/bulk-initiate-calls/", &body)
        .await?;
    let took = sent.elapsed();
    let accepted = answer["call_ids"].as_array().map_or(0, Vec::len);
    anyhow::ensure!(
        status == StatusCode::CREATED && accepted == size,
        "bulk of {size}: {status}, {accepted} accepted, failed {}",
        answer["failed"]
    );
    Ok(took)
}
