//! `idle`: what running campaigns cost when nothing is queued (issue 23). For each size, on
//! fresh servers with all four services and one dialer: that many campaigns are created
//! through the API and left to settle; then the CPU each process uses over a quiet window is
//! measured (as a share of one core), and the time from accepting a call in an idle campaign to
//! its `Dialing` event, for calls spread over the campaigns (p50 and p99, from the events'
//! own subject on NATS, so the projector's lag is not in it).

use indicatif::ProgressBar;
use tokio::time::Instant;

use crate::{
    Scale, http,
    report::{Figure, Report},
    stack::{Cpu, Env, Servers, Services},
};

const ALL: &[&str] = &["ccm-ingest", "ccm-dialer", "ccm-retrier", "ccm-projector"];

pub async fn run(
    root: &std::path::Path,
    report: &mut Report,
    scale: &Scale,
    bar: &ProgressBar,
) -> anyhow::Result<()> {
    for &campaigns in &scale.idle_campaigns {
        one_size(root, report, scale, bar, campaigns).await?;
    }
    Ok(())
}

async fn one_size(
    root: &std::path::Path,
    report: &mut Report,
    scale: &Scale,
    bar: &ProgressBar,
    n: usize,
) -> anyhow::Result<()> {
    let servers = Servers::start(root.join(format!("target/bench/idle-{n}")))?;
    let env = Env::default().set("CCM_DIALER__CARRIER", "{kind: sim, call_ms: 0}");
    let services = Services::start(root, &servers, ALL, &env).await?;
    let api = services.api()?.to_owned();
    bar.set_message(format!("idle: creating {n} campaigns"));
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        ids.push(http::campaign(&api, &format!("idle-{i}"), 10).await?);
    }
    // Every consumer made and followed before the window starts.
    tokio::time::sleep(scale.idle_settle).await;

    bar.set_message(format!("idle: {n} campaigns, measuring"));
    let before = Cpu::now(&servers, &services);
    let began = Instant::now();
    tokio::time::sleep(scale.idle_window).await;
    let window = began.elapsed().as_secs_f64();
    let used = Cpu::now(&servers, &services).per_unit_ms(&before, 1);
    // ms of CPU over the window, as a percentage of one core.
    let share: Vec<(&'static str, f64)> = used
        .iter()
        .map(|(name, ms)| (*name, ms / 1e3 / window * 100.0))
        .collect();
    for (name, pct) in &share {
        report.detail.push(Figure::new(
            &format!("idle.{n}.cpu.{name}"),
            *pct,
            "% of a core",
            format!("{n} idle campaigns, one dialer, over {window:.0} s"),
        ));
    }
    let of = |name: &str| share.iter().find(|(n, _)| *n == name).map_or(0.0, |c| c.1);
    report.ccm.push(Figure::new(
        &format!("idle.{n}.cpu"),
        of("ccm-dialer") + of("nats-server"),
        "% of a core",
        format!(
            "dialer {:.2} % + nats-server {:.2} % of one core with {n} running campaigns and \
             nothing queued, over {window:.0} s (all processes: {:.2} %)",
            of("ccm-dialer"),
            of("nats-server"),
            of("total")
        ),
    ));

    bar.set_message(format!("idle: {n} campaigns, first calls"));
    // Spread over the campaigns by a stride prime to their number.
    let picked: Vec<u64> = (0..scale.idle_calls)
        .map(|i| ids[(i * 7919) % ids.len()])
        .collect();
    let latencies =
        crate::first_call::first_calls(&servers.nats.url(), &api, &picked, bar, "idle").await?;
    let pct = |q: f64| {
        let i = ((latencies.len() as f64 - 1.0) * q).round() as usize;
        latencies.get(i).copied().unwrap_or(f64::NAN)
    };
    report.ccm.push(Figure::new(
        &format!("idle.{n}.first_call_p99"),
        pct(0.99),
        "ms",
        format!(
            "from the 202 of a call in an idle campaign to its Dialing event, {} calls spread \
             over {n} campaigns one at a time: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            latencies.len(),
            pct(0.5),
            pct(0.99),
            latencies.last().copied().unwrap_or(f64::NAN)
        ),
    ));
    drop(services);
    Ok(())
}
