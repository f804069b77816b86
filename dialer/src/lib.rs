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

/// How often the bucket is re-read in full, in case the watch missed or lost an update.
const RESCAN_EVERY: Duration = Duration::from_secs(2);

/// Keeps one worker per campaign that accepts calls, following the bucket's changes. The
/// watch brings changes at once; a periodic full read of the bucket repairs anything a watch
/// lost (an ordered consumer reset, a reconnect), so a campaign is never left undialled.
async fn supervise(
    campaigns: &kv::Store,
    topology: &Topology,
    js: &async_nats::jetstream::Context,
    trunk: &Arc<Semaphore>,
    ctx: &CallContext,
    calls: &TaskTracker,
    shutdown: &CancellationToken,
) -> Result<(), DialerError> {
    let mut workers = Workers {
        topology,
        js,
        trunk,
        ctx,
        calls,
        shutdown,
        running: HashMap::new(),
        done: TaskTracker::new(),
    };
    let mut watch = None;
    let mut rescan = tokio::time::interval(RESCAN_EVERY);
    loop {
        if watch.is_none() {
            match campaigns.watch_all().await {
                Ok(w) => watch = Some(w),
                Err(e) => tracing::warn!(error = %e, "cannot watch campaigns; rescanning instead"),
            }
        }
        let next = async {
            match watch.as_mut() {
                Some(w) => w.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = rescan.tick() => {
                if let Err(e) = rescan_all(campaigns, &mut workers).await {
                    tracing::warn!(error = %e, "cannot read the campaigns bucket");
                }
            }
            entry = next => match entry {
                Some(Ok(entry)) => {
                    if let Ok(id) = entry.key.parse::<CampaignId>() {
                        let campaign = match entry.operation {
                            kv::Operation::Put => serde_json::from_slice(&entry.value).ok(),
                            _ => None,
                        };
                        workers.apply(id, campaign).await;
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "campaign watch failed; watching again");
                    watch = None;
                }
                None => watch = None,
            },
        }
    }
    workers.stop_all().await;
    Ok(())
}

async fn rescan_all(
    campaigns: &kv::Store,
    workers: &mut Workers<'_>,
) -> Result<(), async_nats::Error> {
    let mut keys = campaigns.keys().await?;
    while let Some(key) = keys.next().await {
        let Ok(id) = key?.parse::<CampaignId>() else {
            continue;
        };
        let campaign = campaigns
            .get(id.to_string())
            .await?
            .and_then(|bytes| serde_json::from_slice::<Campaign>(&bytes).ok());
        workers.apply(id, campaign).await;
    }
    Ok(())
}

/// The running campaign workers and what starting one needs.
struct Workers<'a> {
    topology: &'a Topology,
    js: &'a async_nats::jetstream::Context,
    trunk: &'a Arc<Semaphore>,
    ctx: &'a CallContext,
    calls: &'a TaskTracker,
    shutdown: &'a CancellationToken,
    /// The cap each worker was started with, and its stop token.
    running: HashMap<CampaignId, (u32, CancellationToken)>,
    done: TaskTracker,
}

impl Workers<'_> {
    /// Brings the worker of `id` in line with the campaign document.
    async fn apply(&mut self, id: CampaignId, campaign: Option<Campaign>) {
        let wanted =
            campaign.filter(|c| c.accepts_calls() && c.state == ccm_core::CampaignState::Active);
        match (wanted, self.running.get(&id)) {
            (Some(c), Some((cap, _))) if *cap == c.max_concurrent_calls => {}
            (Some(c), _) => {
                self.stop(id);
                if let Err(e) = self.start(id, c.max_concurrent_calls).await {
                    // Left for the next rescan to try again.
                    tracing::warn!(campaign = %id, error = %e, "cannot start dialling campaign");
                }
            }
            (None, _) => self.stop(id),
        }
    }

    async fn start(&mut self, id: CampaignId, cap: u32) -> Result<(), DialerError> {
        self.topology.ensure_dial_consumer(self.js, id, cap).await?;
        let consumer = self
            .js
            .get_consumer_from_stream(ccm_core::subjects::dial_consumer(id), names::CALLS)
            .await
            .map_err(|e| DialerError::Stream(names::CALLS, e.into()))?;
        let stop = self.shutdown.child_token();
        self.done.spawn(worker::run(
            id,
            consumer,
            self.trunk.clone(),
            self.ctx.clone(),
            self.calls.clone(),
            stop.clone(),
        ));
        self.running.insert(id, (cap, stop));
        Ok(())
    }

    fn stop(&mut self, id: CampaignId) {
        if let Some((_, stop)) = self.running.remove(&id) {
            stop.cancel();
        }
    }

    async fn stop_all(self) {
        for (_, (_, stop)) in self.running {
            stop.cancel();
        }
        self.done.close();
        self.done.wait().await;
    }
}
