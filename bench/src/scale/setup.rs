//! Setting up a configuration of the scale phase: its streams, then its campaigns.

use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use anyhow::Context;
use futures::StreamExt;
use indicatif::ProgressBar;
use tokio::time::Instant;

use super::plan;
use crate::http;

/// Campaigns created at once through the API.
const CREATE_CONCURRENCY: usize = 16;

/// Creates `n` campaigns through the API, [`CREATE_CONCURRENCY`] at a time, the first
/// [`plan::BUSY`] with room for the end-to-end calls; their ids in that order, and the 503 answers retried.
pub async fn create(
    api: &str,
    n: usize,
    bar: &ProgressBar,
    label: &str,
) -> anyhow::Result<(Vec<u64>, usize)> {
    let retried = AtomicUsize::new(0);
    let retried = &retried;
    let began = Instant::now();
    let mut created = futures::stream::iter(0..n)
        .map(|i| async move {
            let busy = i < plan::busy(n);
            let name = if busy {
                format!("scale-busy-{i}")
            } else {
                format!("scale-idle-{i}")
            };
            let cap = if busy { 1_000 } else { 10 };
            create_one(api, &name, cap, retried).await.map(|id| (i, id))
        })
        .buffer_unordered(CREATE_CONCURRENCY);
    let mut ids = vec![0; n];
    let mut done: usize = 0;
    while let Some(next) = created.next().await {
        let (i, id) = next?;
        ids[i] = id;
        done += 1;
        if done.is_multiple_of(50) || done == n {
            let rate = done as f64 / began.elapsed().as_secs_f64();
            bar.set_message(format!(
                "{label}: creating campaigns {done}/{n} ({rate:.0}/s)"
            ));
        }
    }
    Ok((ids, retried.load(Ordering::Relaxed)))
}

/// Creates one campaign; a 503 ("retry later") is retried a few times, with a pause, as a
/// client would (concurrent first creations contend on the id counter).
async fn create_one(api: &str, name: &str, cap: u64, retried: &AtomicUsize) -> anyhow::Result<u64> {
    let body = serde_json::json!({"name": name, "max_concurrent_calls": cap});
    let mut conn = http::Conn::open(api).await?;
    for attempt in 1..=10 {
        let (status, answer) = conn.post_json("/api/v1/campaigns", &body).await?;
        if status.is_success() {
            return answer["id"].as_u64().context("the campaign has no id");
        }
        anyhow::ensure!(
            status == hyper::StatusCode::SERVICE_UNAVAILABLE && attempt < 10,
            "creating a campaign: {status} {answer}"
        );
        retried.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
    }
    unreachable!("the last attempt returns or fails")
}

/// Creates the streams, consumers and buckets with R3 before any service starts: services
/// provision on start too (idempotently), but all of them at once on a fresh cluster time out
/// on a small machine.
pub async fn provision(nats_url: &str) -> anyhow::Result<()> {
    let mut streams = ccm_core::config::Config::default().streams;
    streams.replicas = 3;
    let topology = ccm_core::topology::Topology::load(&streams)?;
    let js = ccm_core::nats::jetstream(ccm_core::nats::connect(nats_url, "bench").await?);
    topology.provision(&js).await?;
    Ok(())
}
