//! # ccm-dialer
//!
//! Places call attempts with a carrier at each campaign's concurrency cap.
//!
//! - [`run`] connects, watches the `campaigns` bucket and keeps one pull loop ([`worker`]) per
//!   campaign that accepts calls, on the campaign's durable consumer `dial_<campaign>`. The
//!   consumer's `max_ack_pending` is the campaign's cap; a dialer replica's own trunk capacity
//!   (`dialer.max_calls`) is a semaphore shared by all its campaigns.
//! - [`call`] is the life of one attempt: never dialled twice, the message kept un-acked for
//!   the whole call, a synthetic FAILED outcome after the maximum call duration.
//! - [`carrier`] holds the adapters that actually place calls.

pub mod call;
pub mod carrier;
pub mod worker;

use std::{collections::HashMap, sync::Arc, time::Duration};

use async_nats::jetstream::kv;
use ccm_core::{
    Campaign, CampaignId, Config,
    config::CarrierConfig,
    topology::{Topology, names},
};
use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    call::CallContext,
    carrier::{Carrier, sim::SimCarrier},
};

/// How long shutdown waits for calls in flight to get their outcome before handing them
/// back (a later dialer finds them placed and only waits for the outcome).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Why the dialer stopped.
#[derive(Debug, thiserror::Error)]
pub enum DialerError {
    #[error(transparent)]
    Nats(#[from] ccm_core::nats::NatsError),
    #[error(transparent)]
    Topology(#[from] ccm_core::topology::TopologyError),
    #[error("cannot open stream {0}")]
    Stream(&'static str, #[source] async_nats::Error),
    #[error("cannot watch the campaigns bucket")]
    Watch(#[source] async_nats::Error),
}

/// Runs the dialer until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), DialerError> {
    let client = ccm_core::nats::connect(&config.nats_url, "dialer").await?;
    let js = ccm_core::nats::jetstream(client.clone());
    let topology = Topology::load(&config.streams)?;
    topology.provision(&js).await?;
    let events = js
        .get_stream(names::CALL_EVENTS)
        .await
        .map_err(|e| DialerError::Stream(names::CALL_EVENTS, e.into()))?;
    let carrier: Arc<dyn Carrier> = match &config.dialer.carrier {
        CarrierConfig::Sim(sim) => Arc::new(SimCarrier::new(js.clone(), sim.clone())),
    };
    // Calls in flight must survive the shutdown signal long enough to finish, so they watch
    // a token of their own that is cancelled only after the grace period.
    let calls_stop = CancellationToken::new();
    let ctx = CallContext {
        client: client.clone(),
        js: js.clone(),
        events,
        carrier,
        max_call_duration: Duration::from_secs(config.dialer.max_call_duration_secs),
        progress_every: Duration::from_secs(10),
        shutdown: calls_stop.clone(),
    };
    let trunk = Arc::new(Semaphore::new(
        usize::try_from(config.dialer.max_calls.max(1)).unwrap_or(usize::MAX),
    ));
    let campaigns = ccm_core::nats::bucket(&js, names::KV_CAMPAIGNS).await?;
    let calls = TaskTracker::new();
    let result = supervise(&campaigns, &topology, &js, &trunk, &ctx, &calls, &shutdown).await;

    calls.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, calls.wait())
        .await
        .is_err()
    {
        tracing::warn!("calls still in flight after the grace period; handing them back");
        calls_stop.cancel();
        calls.wait().await;
    }
    let _ = client.drain().await;
    result
}

/// Keeps one worker per campaign that accepts calls, following the bucket's changes.
async fn supervise(
    campaigns: &kv::Store,
    topology: &Topology,
    js: &async_nats::jetstream::Context,
    trunk: &Arc<Semaphore>,
    ctx: &CallContext,
    calls: &TaskTracker,
    shutdown: &CancellationToken,
) -> Result<(), DialerError> {
    let mut watch = campaigns
        .watch_all()
        .await
        .map_err(|e| DialerError::Watch(e.into()))?;
    let mut workers: HashMap<CampaignId, (u32, CancellationToken)> = HashMap::new();
    let workers_done = TaskTracker::new();
    loop {
        let entry = tokio::select! {
            _ = shutdown.cancelled() => break,
            entry = watch.next() => entry,
        };
        let Some(entry) = entry else { break };
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                tracing::warn!(error = %e, "campaign watch error");
                continue;
            }
        };
        let Ok(id) = entry.key.parse::<CampaignId>() else {
            continue;
        };
        let campaign = match entry.operation {
            kv::Operation::Put => serde_json::from_slice::<Campaign>(&entry.value).ok(),
            _ => None,
        };
        let wanted =
            campaign.filter(|c| c.accepts_calls() && c.state == ccm_core::CampaignState::Active);
        match (wanted, workers.get(&id)) {
            (Some(c), Some((cap, _))) if *cap == c.max_concurrent_calls => {}
            (Some(c), _) => {
                if let Some((_, stop)) = workers.remove(&id) {
                    stop.cancel();
                }
                topology
                    .ensure_dial_consumer(js, id, c.max_concurrent_calls)
                    .await?;
                let consumer = js
                    .get_consumer_from_stream(ccm_core::subjects::dial_consumer(id), names::CALLS)
                    .await
                    .map_err(|e| DialerError::Stream(names::CALLS, e.into()))?;
                let stop = shutdown.child_token();
                workers_done.spawn(worker::run(
                    id,
                    consumer,
                    trunk.clone(),
                    ctx.clone(),
                    calls.clone(),
                    stop.clone(),
                ));
                workers.insert(id, (c.max_concurrent_calls, stop));
            }
            (None, Some(_)) => {
                if let Some((_, stop)) = workers.remove(&id) {
                    stop.cancel();
                }
            }
            (None, None) => {}
        }
    }
    for (_, (_, stop)) in workers {
        stop.cancel();
    }
    workers_done.close();
    workers_done.wait().await;
    Ok(())
}
