//! Gauges sampled from JetStream rather than counted per message: calls queued per
//! campaign, and the trunk lines in use.
//!
//! One consumer-list request returns every campaign's dial consumer with its `num_pending`
//! (dial messages not yet delivered to any dialer), so the cost is one request per interval
//! whatever the number of campaigns. Paused campaigns are included: their queue is what an
//! operator wants to see.

use std::{sync::Arc, time::Duration};

use async_nats::jetstream;
use ccm_core::{metrics::gauge, topology::names};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::worker::Trunk;

/// How often the gauges are refreshed.
pub const INTERVAL: Duration = Duration::from_secs(5);

/// Refreshes the gauges every [`INTERVAL`] until `shutdown`.
pub async fn run(js: jetstream::Context, trunk: Arc<Trunk>, shutdown: CancellationToken) {
    loop {
        gauge!("ccm_dialer_trunk_lines_busy").set(trunk.busy() as f64);
        if let Err(e) = queued(&js).await {
            tracing::debug!(error = %ccm_core::telemetry::chain(e.as_ref()), "cannot sample the dial consumers");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(INTERVAL) => {}
        }
    }
}

async fn queued(js: &jetstream::Context) -> Result<(), async_nats::Error> {
    let stream = js.get_stream(names::CALLS).await?;
    let mut consumers = stream.consumers();
    while let Some(info) = consumers.next().await {
        let info = info?;
        let Some(campaign) = info.name.strip_prefix("dial_") else {
            continue;
        };
        gauge!("ccm_dialer_queued_calls", "campaign" => campaign.to_owned())
            .set(info.num_pending as f64);
    }
    Ok(())
}
