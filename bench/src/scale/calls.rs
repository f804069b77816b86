//! The calls of the scale phase beside the first calls ([`crate::first_call`]): end-to-end
//! throughput over the busy campaigns, read from the lifecycle events' own subject on NATS
//! (the projector's lag is not in them).

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use anyhow::Context;
use futures::StreamExt;
use indicatif::ProgressBar;
use tokio::time::Instant;

use crate::api;

/// Every call's lifecycle events (`ccm_core::subjects::event` is `calls.event.<campaign>.<call>`).
const EVENTS: &str = "calls.event.>";

/// What the throughput run saw.
#[derive(Debug, Clone, Copy)]
pub struct Throughput {
    pub calls_per_s: f64,
    /// Queued calls without a terminal event when the run ended.
    pub not_ended: usize,
    /// Attempts with more than one `Dialing` event (a call placed twice shows as one; so
    /// would a publish the dialer repeated after a lost ack, which a quiet run does not
    /// have).
    pub dialed_twice: usize,
}

/// Queues `calls` over the busy `campaigns` in bulk requests, and measures from the first
/// request to the last call's terminal event.
pub async fn throughput(
    nats_url: &str,
    api: &str,
    campaigns: &[u64],
    calls: usize,
    timeout: Duration,
    bar: &ProgressBar,
    label: &str,
) -> anyhow::Result<Throughput> {
    anyhow::ensure!(!campaigns.is_empty(), "no busy campaign");
    let client = ccm_core::nats::connect(nats_url, "bench").await?;
    let mut events = client.subscribe(EVENTS).await?;
    client.flush().await?;
    let busy: HashSet<u64> = campaigns.iter().copied().collect();

    let began = Instant::now();
    let per = calls.div_ceil(campaigns.len());
    let mut queued = 0;
    // Phone numbers far from the first calls' and each campaign's own range.
    for (i, &campaign) in campaigns.iter().enumerate() {
        let mut left = per.min(calls - queued);
        let mut first = 5_000_000_000 + i as u64 * 10_000_000;
        while left > 0 {
            let size = left.min(5_000);
            api::bulk(api, campaign, size, first).await?;
            first += size as u64;
            left -= size;
            queued += size;
        }
    }

    let mut ended: HashSet<String> = HashSet::new();
    let mut dialing: HashMap<(String, u64), u32> = HashMap::new();
    let deadline = began + timeout;
    let mut last = began;
    while ended.len() < queued {
        let Ok(next) = tokio::time::timeout_at(deadline, events.next()).await else {
            break;
        };
        let next = next.context("the subscription ended")?;
        let value: serde_json::Value = serde_json::from_slice(&next.payload)?;
        if !value["campaign_id"]
            .as_u64()
            .is_some_and(|c| busy.contains(&c))
        {
            continue;
        }
        let call = value["call_id"].as_str().unwrap_or_default().to_owned();
        if value["type"] == "dialing" {
            let attempt = value["attempt"].as_u64().unwrap_or(0);
            *dialing.entry((call.clone(), attempt)).or_default() += 1;
        }
        let terminal = serde_json::from_value::<ccm_core::events::CallEvent>(value)
            .is_ok_and(|e| e.kind.is_terminal());
        if terminal && ended.insert(call) {
            last = Instant::now();
            if ended.len().is_multiple_of(500) {
                bar.set_message(format!("{label}: {}/{queued} calls ended", ended.len()));
            }
        }
    }
    let took = last.duration_since(began).as_secs_f64();
    Ok(Throughput {
        calls_per_s: if took > 0.0 {
            ended.len() as f64 / took
        } else {
            0.0
        },
        not_ended: queued - ended.len().min(queued),
        dialed_twice: dialing.values().filter(|n| **n > 1).count(),
    })
}
