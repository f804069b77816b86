//! The whole pipeline: calls from acceptance to their terminal row, and many live calls.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use ccm_core::CampaignId;
use indicatif::ProgressBar;
use sqlx::PgPool;

use crate::{
    Scale, api, costs,
    http::{self},
    report::{Figure, Report, Target},
    stack::{Cpu, Env, Servers, Services, cpu_text, memory},
};

const ALL: &[&str] = &["ccm-projector", "ccm-retrier", "ccm-dialer", "ccm-ingest"];

/// The size of each bulk request the pipeline phases submit.
const BULK: usize = 5_000;

/// Submits `n` calls in bulk requests of [`BULK`], one at a time, keeping at most `backlog`
/// calls accepted but not yet `done` (as `progress` counts them). Without the bound the
/// submission runs ahead of the pipeline and the two compete for nats-server until requests
/// time out; with it the figure is the rate the pipeline sustains.
async fn submit<F, Fut>(
    api: &str,
    campaign: u64,
    n: usize,
    first: u64,
    backlog: usize,
    mut progress: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<usize>>,
{
    let mut sent = 0;
    while sent < n {
        let done = progress().await?;
        if sent.saturating_sub(done) + BULK > backlog.max(BULK) {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        let size = (n - sent).min(BULK);
        api::bulk(api, campaign, size, first + sent as u64).await?;
        sent += size;
    }
    Ok(())
}

async fn completed(pool: &PgPool, campaign: u64) -> anyhow::Result<i64> {
    let counted = sqlx::query_scalar(
        "SELECT count(*) FROM calls WHERE campaign_id = $1 AND status = 'COMPLETED'",
    )
    .bind(i64::try_from(campaign)?)
    .fetch_one(pool)
    .await;
    match counted {
        Ok(n) => Ok(n),
        // The projector creates the table when it starts; until then nothing is projected.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => Ok(0),
        Err(e) => Err(e.into()),
    }
}

/// Calls/s from acceptance to the terminal row in PostgreSQL, the `sim` carrier answering at
/// once.
pub async fn end_to_end(
    root: &Path,
    report: &mut Report,
    scale: &Scale,
    bar: &ProgressBar,
) -> anyhow::Result<()> {
    let servers = Servers::start(root.join("target/bench/e2e"))?;
    let env = Env::default()
        .set("CCM_DIALER__CARRIER", "{kind: sim, call_ms: 0}")
        .set("CCM_DIALER__MAX_CALLS", "20000");
    let mut services = Services::start(root, &servers, ALL, &env).await?;
    let api = services.api()?.to_owned();
    let pool = PgPool::connect(&servers.database_url()).await?;
    let campaign = http::campaign(&api, "bench-e2e", 20_000).await?;

    // One call first, so every service is up and the campaign's consumer exists before the
    // clock starts.
    bar.set_message("end to end: warming up");
    api::bulk(&api, campaign, 1, 3_000_000_000).await?;
    wait_for(
        &pool,
        campaign,
        1,
        Duration::from_secs(60),
        bar,
        &mut services,
    )
    .await?;

    let js = async_nats::jetstream::new(async_nats::connect(servers.nats.url()).await?);
    let costs_before = costs::Snapshot::settled(&js, &pool, Duration::from_secs(10)).await?;

    let n = scale.e2e_calls;
    bar.set_message(format!("end to end: {n} calls"));
    let cpu_before = Cpu::now(&servers, &services);
    let began = Instant::now();
    let backlog = scale.e2e_backlog;
    let pool_ref = &pool;
    submit(
        &api,
        campaign,
        n,
        3_000_000_001,
        backlog,
        move || async move {
            // The warm-up call is COMPLETED too.
            Ok(usize::try_from(completed(pool_ref, campaign).await?)?.saturating_sub(1))
        },
    )
    .await?;
    let accepted_in = began.elapsed();
    wait_for(
        &pool,
        campaign,
        n + 1,
        scale.e2e_timeout,
        bar,
        &mut services,
    )
    .await?;
    let took = began.elapsed();
    let cpu = Cpu::now(&servers, &services).per_unit_ms(&cpu_before, n);
    let dialer = memory(services.pid("ccm-dialer"));
    bar.set_message("end to end: reading what the calls cost the servers");
    let costs_after = costs::Snapshot::settled(&js, &pool, Duration::from_secs(20)).await?;
    report
        .ccm
        .extend(costs::per_call(&costs_before, &costs_after, n));
    report.ccm.push(
        Figure::new(
            "e2e.rate",
            n as f64 / took.as_secs_f64(),
            "calls/s",
            format!(
                "{n} calls in bulks of {BULK}, at most {backlog} accepted and not yet COMPLETED \
                 (all accepted in {:.1} s), sim carrier at 0 ms, campaign cap 20,000, all 4 \
                 services + servers on the same cores; until the last COMPLETED row, {:.1} s; \
                 dialer peak RSS {:.0} MiB",
                accepted_in.as_secs_f64(),
                took.as_secs_f64(),
                dialer.peak_mib
            ),
        )
        .against(report.raw("raw.publish.pipelined"))
        .target(Target::AtLeast(10_000.0)),
    );
    for (name, ms) in &cpu {
        report.detail.push(Figure::new(
            &format!("e2e.cpu.{name}"),
            *ms,
            "ms",
            "CPU time per call of this process",
        ));
    }
    let total = cpu.last().map_or(0.0, |c| c.1);
    report.ccm.push(Figure::new(
        "e2e.cpu_per_call",
        total,
        "ms",
        format!(
            "CPU time per call, all processes (ms): {}; at 2 cores this bounds the rate at \
             {:.0} calls/s",
            cpu_text(&cpu),
            2000.0 / total.max(f64::EPSILON)
        ),
    ));
    Ok(())
}

async fn wait_for(
    pool: &PgPool,
    campaign: u64,
    n: usize,
    timeout: Duration,
    bar: &ProgressBar,
    services: &mut Services,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let done = usize::try_from(completed(pool, campaign).await?)?;
        bar.set_message(format!(
            "end to end: {done}/{n} calls COMPLETED in PostgreSQL"
        ));
        if done >= n {
            return Ok(());
        }
        if let Some(name) = services.exited() {
            anyhow::bail!("{name} exited; see target/bench/e2e/{name}.log");
        }
        if Instant::now() > deadline {
            anyhow::bail!("only {done} of {n} calls COMPLETED within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Many calls live at once, held by long simulated calls: the dialer's and nats-server's
/// memory, and whether every accepted call is live with none redelivered.
pub async fn live_calls(
    root: &Path,
    report: &mut Report,
    scale: &Scale,
    bar: &ProgressBar,
) -> anyhow::Result<()> {
    let n = scale.live_calls;
    let servers = Servers::start(root.join("target/bench/live"))?;
    let env = Env::default()
        // Calls last 10 minutes: far longer than the phase, so every one stays live.
        .set("CCM_DIALER__CARRIER", "{kind: sim, call_ms: 600000}")
        .set("CCM_DIALER__MAX_CALL_DURATION_SECS", "3600")
        .set("CCM_DIALER__MAX_CALLS", (n + 1000).to_string());
    let mut services = Services::start(root, &servers, &["ccm-dialer", "ccm-ingest"], &env).await?;
    let api = services.api()?.to_owned();
    let campaign = http::campaign(&api, "bench-live", n as u64).await?;
    let js = async_nats::jetstream::new(async_nats::connect(servers.nats.url()).await?);

    bar.set_message(format!("live calls: submitting {n}"));
    let began = Instant::now();
    let consumer_name = ccm_core::subjects::dial_consumer(CampaignId::new(campaign)?);
    let (js, consumer_name) = (&js, consumer_name.as_str());
    let live_now = move || async move {
        let mut consumer: async_nats::jetstream::consumer::PullConsumer = js
            .get_stream("CALLS")
            .await?
            .get_consumer(consumer_name)
            .await
            .map_err(|e| anyhow::anyhow!("the campaign's dial consumer: {e}"))?;
        let live = consumer.info().await?.num_ack_pending;
        bar.set_message(format!("live calls: {live}/{n} live"));
        Ok(live)
    };
    submit(
        &api,
        campaign,
        n,
        4_000_000_000,
        scale.live_backlog,
        live_now,
    )
    .await?;
    let deadline = Instant::now() + scale.live_timeout;
    let live = loop {
        if live_now().await? >= n {
            break began.elapsed();
        }
        if let Some(name) = services.exited() {
            anyhow::bail!("{name} exited; see target/bench/live/{name}.log");
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "only {} of {n} calls live within {:?}",
                live_now().await?,
                scale.live_timeout
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    // Hold them past two progress acks (every 10 s), so the figure includes a steady state.
    bar.set_message(format!("live calls: holding {n} for 25 s"));
    tokio::time::sleep(Duration::from_secs(25)).await;
    let mut consumer: async_nats::jetstream::consumer::PullConsumer = js
        .get_stream("CALLS")
        .await?
        .get_consumer(consumer_name)
        .await
        .map_err(|e| anyhow::anyhow!("the campaign's dial consumer: {e}"))?;
    let info = consumer.info().await?.clone();
    let dialer = memory(services.pid("ccm-dialer"));
    let nats = memory(servers.nats.pid());
    let conditions = format!(
        "{n} calls accepted in bulks of {BULK} (at most {} accepted and not yet live), each \
         held 10 min by the sim carrier; all live \
         after {:.1} s; then held 25 s: {} live, {} waiting, {} redelivered",
        scale.live_backlog,
        live.as_secs_f64(),
        info.num_ack_pending,
        info.num_pending,
        info.num_redelivered
    );
    anyhow::ensure!(
        info.num_ack_pending == n && info.num_pending == 0 && info.num_redelivered == 0,
        "calls were lost or redelivered: {conditions}"
    );
    report.ccm.push(
        Figure::new(
            "live.dialer.rss_peak",
            dialer.peak_mib,
            "MiB",
            conditions.clone(),
        )
        .target(Target::AtMost(1024.0)),
    );
    report.ccm.push(Figure::new(
        "live.nats.rss",
        nats.rss_mib,
        "MiB",
        conditions,
    ));
    report.ccm.push(Figure::new(
        "live.ramp",
        n as f64 / live.as_secs_f64(),
        "calls/s",
        format!("{n} calls from the first bulk request to all live"),
    ));
    Ok(())
}
