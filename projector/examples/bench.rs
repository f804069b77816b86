//! Measures the projector on this machine, against a fresh local nats-server and PostgreSQL
//! (the test harness's), both on this host.
//!
//! 1. Throughput: publishes `--events` messages (call lives: dial messages and events), then
//!    starts the projector and times until every one is in `call_events`.
//! 2. Lag: with the projector running, publishes `--rate` events per second for `--seconds`,
//!    each stamped with its publish time, and reports percentiles of
//!    `call_events.projected_at - occurred_at` (the writing transaction's start; the commit
//!    follows within the batch write time, printed from the projector's own histogram).
//!
//! `cargo run -p ccm-projector --example bench -- --events 100000 --rate 10000 --seconds 10`
//! The harness's PostgreSQL runs with fsync, synchronous_commit and full_page_writes off (set
//! on its command line, so they cannot be switched on here); the figures are for that.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream;
use ccm_core::{CallEvent, CallId, CampaignId, EventKind, PhoneNumber, PhoneRule};
use chrono::Utc;
use clap::Parser;

#[path = "../tests/it/support.rs"]
mod support;

/// Measures projector throughput and lag against a fresh local stack.
#[derive(Debug, Parser)]
struct Args {
    /// Messages to publish before timing the projection.
    #[arg(long, default_value_t = 100_000)]
    events: usize,
    /// Events per second for the lag measurement.
    #[arg(long, default_value_t = 10_000)]
    rate: usize,
    /// Seconds of the lag measurement.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Batches of one consumer written concurrently.
    #[arg(long, default_value_t = 3)]
    writers: usize,
    /// Also writes the figures to this file as JSON (`cargo xtask bench` reads it).
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let env = ccm_tests::TestEnv::start().await.context("test env")?;
    env.provision().await.context("provision")?;
    let js = env.jetstream().await.context("jetstream")?;
    let pool = env.pg().await.context("pg")?;
    let settings: (String, String) =
        sqlx::query_as("SELECT current_setting('fsync'), current_setting('synchronous_commit')")
            .fetch_one(&pool)
            .await?;
    println!(
        "postgres fsync={} synchronous_commit={}",
        settings.0, settings.1
    );

    // 1. Throughput on a backlog.
    let mut messages = Vec::new();
    let mut index = 0;
    let start = Utc::now();
    while messages.len() < args.events {
        messages.extend(support::life(index, 1, start));
        index += 1;
    }
    messages.truncate(args.events);
    let published = Instant::now();
    support::publish_all(&js, &messages).await;
    println!(
        "published {} messages ({} calls) in {:.2?}",
        messages.len(),
        index,
        published.elapsed()
    );
    let mut config = env.config();
    config.projector.writers = args.writers;
    let began = Instant::now();
    let projector = support::Running::start(config);
    support::wait_for_rows(&pool, 1, Duration::from_secs(60)).await;
    let first = Instant::now();
    let first_rows = support::event_rows(&pool).await;
    support::wait_for_rows(&pool, messages.len(), Duration::from_secs(600)).await;
    let took = began.elapsed();
    let throughput = messages.len() as f64 / took.as_secs_f64();
    let from_first = (messages.len() as f64 - first_rows as f64) / first.elapsed().as_secs_f64();
    println!(
        "projected {} messages in {:.2?}: {throughput:.0} messages/s (including start-up and \
         migrations); {from_first:.0} messages/s from the first committed batch",
        messages.len(),
        took,
    );

    // 2. Lag at a steady rate.
    let total = args.rate * usize::try_from(args.seconds)?;
    let before = usize::try_from(support::event_rows(&pool).await)?;
    let lag_from = Utc::now();
    paced(&js, args.rate, total).await?;
    support::wait_for_rows(&pool, before + total, Duration::from_secs(120)).await;
    let lag: (f64, f64, f64, f64) = sqlx::query_as(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY l),
                percentile_cont(0.99) WITHIN GROUP (ORDER BY l),
                percentile_cont(0.999) WITHIN GROUP (ORDER BY l), max(l)
         FROM (SELECT extract(epoch FROM projected_at - occurred_at)::float8 AS l
               FROM call_events WHERE occurred_at >= $1 AND kind = 'dialing'
                 AND stream = 'CALL_EVENTS') s",
    )
    .bind(lag_from)
    .fetch_one(&pool)
    .await?;
    println!(
        "lag at {}/s for {} s ({} events): p50 {:.3} s, p99 {:.3} s, p99.9 {:.3} s, max {:.3} s",
        args.rate, args.seconds, total, lag.0, lag.1, lag.2, lag.3
    );
    if let Some(path) = &args.json {
        let figures = serde_json::json!({
            "events": messages.len(),
            "throughput": throughput,
            "throughput_from_first_batch": from_first,
            "lag_rate": args.rate,
            "lag_seconds": args.seconds,
            "lag_p50": lag.0,
            "lag_p99": lag.1,
            "lag_p999": lag.2,
            "lag_max": lag.3,
            "fsync": settings.0,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&figures)?)?;
    }
    let rendered = ccm_core::metrics::render();
    for line in rendered.lines().filter(|l| {
        l.starts_with("ccm_projector_batch_write_seconds_sum")
            || l.starts_with("ccm_projector_batch_write_seconds_count")
            || l.starts_with("ccm_projector_batch_size_sum")
    }) {
        println!("  {line}");
    }
    projector.stop().await;
    Ok(())
}

/// Publishes `total` events at `rate` per second, each stamped with its publish time.
async fn paced(js: &jetstream::Context, rate: usize, total: usize) -> anyhow::Result<()> {
    let campaign = CampaignId::new(2)?;
    let phone = PhoneNumber::parse("+14155550100", PhoneRule::Lenient)?;
    let tick = Duration::from_millis(10);
    let per_tick = (rate / 100).max(1);
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sent = 0;
    let mut acks = Vec::new();
    while sent < total {
        interval.tick().await;
        for _ in 0..per_tick.min(total - sent) {
            let now = Utc::now();
            let event = CallEvent {
                call_id: CallId::new(),
                campaign_id: campaign,
                attempt: 1,
                at: now,
                kind: EventKind::Dialing {
                    phone_number: phone.clone(),
                    max_attempts: 1,
                    created_at: now,
                    custom_fields: Default::default(),
                    expires_at: None,
                    alternate: None,
                },
            };
            let publish = jetstream::message::PublishMessage::build()
                .payload(serde_json::to_vec(&event)?.into())
                .message_id(event.msg_id());
            acks.push(js.send_publish(event.subject(), publish).await?);
            sent += 1;
        }
        if acks.len() >= 2000 {
            for ack in acks.drain(..) {
                ack.await?;
            }
        }
    }
    for ack in acks {
        ack.await?;
    }
    Ok(())
}
