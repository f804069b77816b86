//! The machine's raw limits, measured with the same servers ccm uses, without ccm.
//!
//! - `raw.publish.pipelined`: JetStream publishes with `Nats-Msg-Id`, file storage, many
//!   acks in flight (what bulk acceptance and the projector's upstream do at best);
//! - `raw.publish.64`: 64 publishers with one acked publish in flight each (what 64 API
//!   clients can get at best when each request needs one JetStream round trip);
//! - `raw.pull_ack`: a durable pull consumer fetching batches and acking every message;
//! - `raw.pg.upsert`: batched `INSERT … SELECT FROM UNNEST … ON CONFLICT DO UPDATE` of 1,000
//!   rows per statement from 3 connections (the projector's write shape and default writers).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use async_nats::jetstream::{self, consumer::pull, stream};
use bytes::Bytes;
use futures::StreamExt;
use indicatif::ProgressBar;
use sqlx::postgres::PgPoolOptions;

use crate::{Scale, report::Figure, stack::Servers};

const PAYLOAD_BYTES: usize = 300;

pub async fn limits(
    servers: &Servers,
    scale: &Scale,
    bar: &ProgressBar,
) -> anyhow::Result<Vec<Figure>> {
    let client = async_nats::connect(servers.nats.url()).await?;
    let js = jetstream::new(client);
    js.create_stream(stream::Config {
        name: "BENCH".into(),
        subjects: vec!["bench.>".into()],
        storage: stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await?;
    let mut figures = Vec::new();

    bar.set_message("raw: pipelined JetStream publish");
    let n = scale.raw_messages;
    let took = publish_pipelined(&js, n).await?;
    figures.push(Figure::new(
        "raw.publish.pipelined",
        n as f64 / took.as_secs_f64(),
        "msg/s",
        format!("{n} msgs of {PAYLOAD_BYTES} B, Nats-Msg-Id, file storage, 2,048 acks in flight"),
    ));

    let version = js.client().server_info().version;
    let atomic = ccm_core::server_version::Version::parse(&version)
        .is_some_and(|v| (v.major, v.minor) >= (2, 12));
    if atomic {
        for size in [100, 1000] {
            bar.set_message(format!("raw: atomic batch publish, batches of {size}"));
            let (took, with_ids) = publish_atomic_batches(&js, n, size).await?;
            figures.push(Figure::new(
                &format!(
                    "raw.publish.batch{}",
                    if size == 1000 { "" } else { ".100" }
                ),
                n as f64 / took.as_secs_f64(),
                "msg/s",
                format!(
                    "{n} msgs of {PAYLOAD_BYTES} B in atomic batches of {size} (allow_atomic, \
                     nats-server >= 2.12), 16 commits in flight, {}",
                    if with_ids {
                        "Nats-Msg-Id on each"
                    } else {
                        "no Nats-Msg-Id (the server refuses it in a batch)"
                    }
                ),
            ));
        }
    }

    bar.set_message("raw: pull + ack");
    let took = pull_ack(&js, n).await?;
    figures.push(Figure::new(
        "raw.pull_ack",
        n as f64 / took.as_secs_f64(),
        "msg/s",
        format!("{n} msgs, durable pull consumer, batches of 1,000, explicit ack of each"),
    ));

    bar.set_message("raw: 64 publishers, one in flight each");
    let (rate, p99) = publish_concurrent(&js, 64, scale.raw_seconds).await?;
    figures.push(Figure::new(
        "raw.publish.64",
        rate,
        "msg/s",
        format!(
            "64 tasks x 1 acked publish in flight, {} s; p99 {p99:.2} ms",
            scale.raw_seconds.as_secs()
        ),
    ));

    bar.set_message("raw: PostgreSQL batched upsert");
    let rows = scale.raw_rows;
    let took = pg_upsert(&servers.database_url(), rows).await?;
    figures.push(Figure::new(
        "raw.pg.upsert",
        rows as f64 / took.as_secs_f64(),
        "rows/s",
        format!("{rows} rows, 1,000 per UNNEST upsert, 3 connections, fsync off"),
    ));
    js.delete_stream("BENCH").await?;
    Ok(figures)
}

fn payload() -> Bytes {
    Bytes::from(vec![b'x'; PAYLOAD_BYTES])
}

async fn publish_pipelined(js: &jetstream::Context, n: u64) -> anyhow::Result<Duration> {
    let body = payload();
    let began = Instant::now();
    // Acks arrive in publish order, so awaiting the oldest first keeps the window full.
    let mut acks = std::collections::VecDeque::new();
    for i in 0..n {
        let message = jetstream::message::PublishMessage::build()
            .payload(body.clone())
            .message_id(format!("p{i}"));
        acks.push_back(
            js.send_publish(format!("bench.p.{}", i % 64), message)
                .await?,
        );
        if acks.len() >= 2048
            && let Some(ack) = acks.pop_front()
        {
            ack.await?;
        }
    }
    for ack in acks {
        ack.await?;
    }
    Ok(began.elapsed())
}

/// Atomic batch publish (ADR-50, nats-server 2.12): every message carries the batch's id
/// and its sequence; all but the last go without a reply subject, the last commits the
/// batch and is acknowledged for all of it. Returns the time and whether the messages could
/// carry `Nats-Msg-Id` (tried first; the server may refuse it inside a batch).
async fn publish_atomic_batches(
    js: &jetstream::Context,
    n: u64,
    size: u64,
) -> anyhow::Result<(Duration, bool)> {
    let stream = format!("BATCH{size}");
    js.create_stream(stream::Config {
        name: stream.clone(),
        subjects: vec![format!("batch{size}.>")],
        storage: stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        allow_atomic_publish: true,
        ..Default::default()
    })
    .await?;
    let with_ids = match atomic_batches(js, size, size, true, &stream).await {
        Ok(_) => true,
        Err(e) => {
            eprintln!("atomic batch with Nats-Msg-Id refused ({e:#}); measuring without");
            false
        }
    };
    let took = atomic_batches(js, n, size, with_ids, &stream).await?;
    js.delete_stream(&stream).await?;
    Ok((took, with_ids))
}

async fn atomic_batches(
    js: &jetstream::Context,
    n: u64,
    size: u64,
    with_ids: bool,
    stream: &str,
) -> anyhow::Result<Duration> {
    let client = js.client();
    let body = payload();
    let began = Instant::now();
    let mut commits = std::collections::VecDeque::new();
    let prefix = stream.to_lowercase();
    let run = uuid::Uuid::now_v7().simple().to_string();
    for batch in 0..n.div_ceil(size) {
        let id = format!("{}-{batch}", &run[..16]);
        let count = size.min(n - batch * size);
        for seq in 1..=count {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Batch-Id", id.as_str());
            headers.insert("Nats-Batch-Sequence", seq.to_string().as_str());
            if with_ids {
                headers.insert("Nats-Msg-Id", format!("{id}-{seq}").as_str());
            }
            let subject = format!("{prefix}.{}", (batch * size + seq) % 64);
            if seq < count {
                client
                    .publish_with_headers(subject, headers, body.clone())
                    .await?;
            } else {
                headers.insert("Nats-Batch-Commit", "1");
                commits.push_back(
                    js.publish_with_headers(subject, headers, body.clone())
                        .await?,
                );
            }
        }
        if commits.len() >= 16
            && let Some(ack) = commits.pop_front()
        {
            ack.await?;
        }
    }
    for ack in commits {
        ack.await?;
    }
    Ok(began.elapsed())
}

async fn pull_ack(js: &jetstream::Context, n: u64) -> anyhow::Result<Duration> {
    let consumer: jetstream::consumer::Consumer<pull::Config> = js
        .get_stream("BENCH")
        .await?
        .create_consumer(pull::Config {
            durable_name: Some("bench".into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            max_ack_pending: 20_000,
            ..Default::default()
        })
        .await?;
    let began = Instant::now();
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(1000)
        .expires(Duration::from_secs(1))
        .messages()
        .await?;
    let mut seen = 0;
    while seen < n {
        let Some(message) = tokio::time::timeout(Duration::from_secs(30), messages.next()).await?
        else {
            anyhow::bail!("the consumer ended after {seen} of {n} messages");
        };
        message
            .map_err(|e| anyhow::anyhow!("pull: {e}"))?
            .ack()
            .await
            .map_err(|e| anyhow::anyhow!("ack: {e}"))?;
        seen += 1;
    }
    Ok(began.elapsed())
}

async fn publish_concurrent(
    js: &jetstream::Context,
    tasks: usize,
    duration: Duration,
) -> anyhow::Result<(f64, f64)> {
    let next = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + duration;
    let began = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let (js, next) = (js.clone(), next.clone());
        handles.push(tokio::spawn(async move {
            let body = payload();
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let sent = Instant::now();
                let message = jetstream::message::PublishMessage::build()
                    .payload(body.clone())
                    .message_id(format!("c{i}"));
                js.send_publish(format!("bench.c.{}", i % 64), message)
                    .await?
                    .await?;
                latencies.push(sent.elapsed());
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for handle in handles {
        latencies.extend(handle.await??);
    }
    let rate = latencies.len() as f64 / began.elapsed().as_secs_f64();
    Ok((rate, percentile(&mut latencies, 0.99)))
}

/// The `p` quantile of `latencies`, in milliseconds.
pub fn percentile(latencies: &mut [Duration], p: f64) -> f64 {
    latencies.sort_unstable();
    let index = ((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1));
    latencies.get(index).map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

async fn pg_upsert(url: &str, rows: u64) -> anyhow::Result<Duration> {
    let pool = PgPoolOptions::new().max_connections(3).connect(url).await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS bench_calls (
             call_id uuid PRIMARY KEY, status text NOT NULL, attempt integer NOT NULL,
             updated_at timestamptz NOT NULL)",
    )
    .execute(&pool)
    .await?;
    let batches = rows.div_ceil(1000);
    let began = Instant::now();
    let mut writers = futures::stream::iter(0..batches)
        .map(|_| {
            let pool = pool.clone();
            async move {
                let ids: Vec<uuid::Uuid> = (0..1000).map(|_| uuid::Uuid::now_v7()).collect();
                let statuses = vec!["COMPLETED"; ids.len()];
                let attempts = vec![1_i32; ids.len()];
                sqlx::query(
                    "INSERT INTO bench_calls (call_id, status, attempt, updated_at)
                     SELECT id, s, a, now() FROM UNNEST($1::uuid[], $2::text[], $3::int4[]) AS t(id, s, a)
                     ON CONFLICT (call_id) DO UPDATE SET status = excluded.status,
                         attempt = excluded.attempt, updated_at = excluded.updated_at
                     WHERE bench_calls.attempt < excluded.attempt",
                )
                .bind(&ids)
                .bind(&statuses)
                .bind(&attempts)
                .execute(&pool)
                .await
            }
        })
        .buffer_unordered(3);
    while let Some(result) = writers.next().await {
        result?;
    }
    let took = began.elapsed();
    sqlx::query("DROP TABLE bench_calls").execute(&pool).await?;
    Ok(took)
}
