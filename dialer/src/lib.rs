//! # ccm-dialer
//!
//! Places call attempts with a carrier at each campaign's concurrency cap.
//!
//! - [`run`] connects, watches the `campaigns` bucket and keeps one worker ([`worker`]) per
//!   active or cancelled campaign, on the campaign's durable consumer `dial_<campaign>`: it
//!   pulls while the campaign has work and is dormant (no pull, no line) while it has none,
//!   woken by the calls published for it ([`wake`]) or by the consumer sweep. It
//!   is also the reconciler of those consumers: on every change and every rescan the
//!   consumer's cap (`max_ack_pending`) and server-side pause are brought in line with the
//!   stored document ([`ccm_core::dial_consumer`]), so a held campaign's consumer delivers to
//!   no replica. A dialer replica's own trunk capacity (`dialer.max_calls`) is shared fairly
//!   by all its campaigns. A paused (or inactive) campaign is not pulled; a cancelled one is
//!   drained, each queued attempt ending `CANCELLED`, and its attempts scheduled in `RETRIES`
//!   are cancelled and purged ([`scheduled`]); a deleted one loses its consumer. The state
//!   and the start/end dates decide ([`ccm_core::lifecycle`]).
//! - [`call`] is the life of one attempt: never dialled twice, the message kept un-acked for
//!   the whole call, a synthetic FAILED outcome after the maximum call duration.
//! - [`carrier`] holds the adapters that actually place calls; [`dialing`] the `Dialing`
//!   event published before each placement.
//! - [`compliance`] applies the rule packs by the callee's jurisdiction and the frequency limits;
//!   [`frequency`] keeps each number's recent attempts for those limits, across campaigns.
//! - [`outcomes`] routes the outcomes addressed to this dialer to the waiting calls.
//! - [`pacing`] spaces new calls per campaign and globally, shared by all replicas;
//!   [`account`] keeps the carrier account's rate, cut by its 429s (AIMD).
//! - [`placements`] records the carrier's id of each placed attempt, for callbacks that name
//!   only the call.
//! - [`window`] puts off an attempt whose callee is outside the campaign's calling window.

pub(crate) mod account;
mod admission;
pub(crate) mod audit;
pub(crate) mod call;
pub mod caller_id;
pub(crate) mod cap;
pub mod carrier;
pub mod compliance;
pub(crate) mod dialing;
mod expiry;
pub mod frequency;
mod known;
pub mod outcomes;
pub(crate) mod pacing;
pub(crate) mod placements;
pub(crate) mod sample;
pub(crate) mod scheduled;
mod timers;
mod trunk;
pub mod wake;
pub(crate) mod window;
pub(crate) mod worker;

use std::{collections::HashMap, sync::Arc, time::Duration};

use async_nats::jetstream::kv;
use ccm_core::{
    Campaign, CampaignId, Config, dial_consumer::DialConsumers, lifecycle::Dialling,
    service::Started, topology::names,
};
use futures::StreamExt;
use tokio::sync::watch;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    call::{CallContext, Mode},
    carrier::CampaignInfo,
    worker::{InFlight, Settings, Trunk, Worker},
};

/// How long shutdown waits for calls in flight to get their outcome before handing them
/// back (a later dialer finds them placed and only waits for the outcome).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How long after a failed watch it is started again.
const REWATCH_AFTER: Duration = Duration::from_secs(1);
/// How long after a change that could not be applied it is read and applied again.
const RETRY_APPLY_AFTER: Duration = Duration::from_secs(1);

/// Why the dialer stopped.
#[derive(Debug, thiserror::Error)]
pub enum DialerError {
    #[error(transparent)]
    Nats(#[from] ccm_core::nats::NatsError),
    #[error(transparent)]
    Topology(#[from] ccm_core::topology::TopologyError),
    #[error(transparent)]
    DialConsumer(#[from] ccm_core::dial_consumer::DialConsumerError),
    #[error(transparent)]
    Carrier(#[from] carrier::BuildError),
    #[error("cannot open stream {0}")]
    Stream(&'static str, #[source] async_nats::Error),
    #[error(transparent)]
    Start(#[from] ccm_core::service::StartError),
    #[error(transparent)]
    Outcomes(#[from] outcomes::StartError),
    #[error(transparent)]
    Wake(#[from] wake::StartError),
    /// Names the rule file and line.
    #[error(transparent)]
    Rules(#[from] ccm_core::rules::RulesError),
}

/// Runs the dialer until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), DialerError> {
    // Live calls get `SHUTDOWN_GRACE` to end; anything else waiting on a server that is gone
    // (a pull, a consumer request, the flush) is abandoned a few seconds after that.
    let stop = shutdown.clone();
    let grace = SHUTDOWN_GRACE + Duration::from_secs(3);
    ccm_core::service::bounded(run_until_stopped(config, shutdown), &stop, grace)
        .await
        .unwrap_or(Ok(()))
}

async fn run_until_stopped(config: Config, shutdown: CancellationToken) -> Result<(), DialerError> {
    // A bad rule file stops the dialer before it connects, naming the file and line.
    let compliance = compliance::Compliance {
        rules: Arc::new(ccm_core::rules::Rules::load(&config.compliance.rule_files)?),
        limits: config.frequency_limits(),
    };
    let Started {
        client,
        js,
        topology,
        ..
    } = ccm_core::service::start("dialer", &config, config.dialer.metrics_listen, &shutdown)
        .await?;
    let events = js
        .get_stream(names::CALL_EVENTS)
        .await
        .map_err(|e| DialerError::Stream(names::CALL_EVENTS, e.into()))?;
    // Fresh per process: outcomes of calls placed by an earlier process of this name go to
    // the dialer that takes them over ([`outcomes`]).
    let address = outcomes::Address::fresh(&audit::replica());
    let carrier = carrier::build(&config.dialer.carrier, &js, &address)?;
    let by_external = !carrier.outcomes_name_the_attempt();
    let by_attempt = carrier.reports_hang_ups();
    let placements = placements::Placements {
        bucket: if by_external || by_attempt {
            Some(ccm_core::nats::bucket(&js, names::KV_PLACEMENTS).await?)
        } else {
            None
        },
        by_external,
        by_attempt,
    };
    // Calls in flight must survive the shutdown signal long enough to finish, so they watch
    // a token of their own that is cancelled only after the grace period.
    let calls_stop = CancellationToken::new();
    let (outcomes, router) = outcomes::Outcomes::subscribe(&client, address).await?;
    // One shared context: every call task holds it, and cloning its JetStream handles (each
    // bucket carries its stream's whole info) for every call cost more than the call itself.
    let campaigns = ccm_core::nats::bucket(&js, names::KV_CAMPAIGNS).await?;
    let ctx = Arc::new(CallContext {
        outcomes,
        campaigns: campaigns.clone(),
        js: js.clone(),
        events,
        claims: ccm_core::claims::Claims::open(
            js.clone(),
            ccm_core::claims::ClaimSettings::of(&config),
        )
        .await?,
        contacts: ccm_core::nats::bucket(&js, names::KV_CONTACTS).await?,
        dnc: ccm_core::nats::bucket(&js, names::KV_DNC).await?,
        consents: ccm_core::nats::bucket(&js, names::KV_CONSENTS).await?,
        pacing: {
            let bucket = ccm_core::nats::bucket(&js, names::KV_PACING).await?;
            pacing::Pacing {
                account: account::Account::new(
                    bucket.clone(),
                    &config.dialer.carrier,
                    &config.dialer.carrier_account,
                ),
                bucket,
                global_per_second: config.dialer.max_calls_per_second,
            }
        },
        frequency: frequency::Frequency {
            bucket: ccm_core::nats::bucket(&js, names::KV_ATTEMPTS).await?,
            keep: ccm_core::rules::frequency::Limits {
                cap_24h: None,
                per_days: config.frequency_limits(),
            }
            .horizon(),
        },
        caller_ids: caller_id::CallerIds {
            bucket: ccm_core::nats::bucket(&js, names::KV_ATTEMPTS).await?,
        },
        compliance,
        placements,
        consumers: DialConsumers::new(&js, &topology).await,
        cap_changes: Arc::default(),
        carrier,
        carrier_kind: config.dialer.carrier.kind(),
        max_call_duration: Duration::from_secs(config.dialer.max_call_duration_secs),
        hangup_grace: Duration::from_millis(config.dialer.hangup_grace_ms),
        progress_every: Duration::from_secs(10),
        replica: audit::replica().into(),
        shutdown: calls_stop.clone(),
    });
    let trunk = Arc::new(Trunk::new(
        usize::try_from(config.dialer.max_calls).unwrap_or(usize::MAX),
    ));
    // The router outlives the calls, which may wait for outcomes through the grace period;
    // it is stopped once they are all done.
    let router_stop = CancellationToken::new();
    let router = tokio::spawn(router.run(router_stop.clone()));
    let calls = TaskTracker::new();
    tokio::spawn(sample::run(trunk.clone(), shutdown.clone()));
    // Subscribed before any worker starts, so a worker never misses its first wake-up.
    let wakes = wake::Wakes::default();
    let listener = wake::Listener::subscribe(&client, wakes.clone()).await?;
    tokio::spawn(listener.run(shutdown.clone()));
    tracing::info!(carrier = config.dialer.carrier.kind(), "dialer running");
    let supervisor = Supervisor {
        consumers: DialConsumers::new(&js, &topology).await,
        campaigns: campaigns.clone(),
        trunk,
        ctx,
        calls: calls.clone(),
        shutdown: &shutdown,
        workers: HashMap::new(),
        wakes,
        workers_done: TaskTracker::new(),
        scheduled_cancelled: scheduled::Cancelled::default(),
        timers: timers::Timers::default(),
        sweep_every: Duration::from_secs(config.dialer.consumer_sweep_secs.max(1)),
    };
    let result = supervisor.run(&campaigns).await;

    calls.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, calls.wait())
        .await
        .is_err()
    {
        tracing::warn!("calls still in flight after the grace period; handing them back");
        calls_stop.cancel();
        calls.wait().await;
    }
    router_stop.cancel();
    let _ = router.await;
    // Acks and NAKs are fire-and-forget publishes; flush them to the server before draining,
    // or a NAK sent just before shutdown can be lost and its message wait out AckWait.
    let _ = client.flush().await;
    let _ = client.drain().await;
    result
}

/// A campaign the dialer knows about.
struct Known {
    /// The revision of the document last applied, and its cap: what its consumer is
    /// compared with by the sweep.
    revision: u64,
    cap: u32,
    /// Held (its consumer paused) when the document was applied.
    held: bool,
    settings: watch::Sender<Settings>,
    in_flight: Arc<InFlight>,
    /// The running worker's stop token; `None` while paused.
    stop: Option<CancellationToken>,
}

/// Keeps one worker per campaign that needs one, following the bucket's changes.
struct Supervisor<'a> {
    consumers: DialConsumers,
    /// The documents the consumers are reconciled with.
    campaigns: kv::Store,
    trunk: Arc<Trunk>,
    ctx: Arc<CallContext>,
    calls: TaskTracker,
    shutdown: &'a CancellationToken,
    workers: HashMap<CampaignId, Known>,
    /// The campaigns' wake-up signals ([`wake`]).
    wakes: wake::Wakes,
    workers_done: TaskTracker,
    /// Campaigns whose scheduled attempts this replica has cancelled (or is cancelling).
    scheduled_cancelled: scheduled::Cancelled,
    /// When to look at a campaign again unasked (a start or end date, a failed apply).
    timers: timers::Timers,
    sweep_every: Duration,
}

impl Supervisor<'_> {
    async fn run(mut self, campaigns: &kv::Store) -> Result<(), DialerError> {
        let result = self.follow(campaigns).await;
        for known in self.workers.values() {
            if let Some(stop) = &known.stop {
                stop.cancel();
            }
        }
        self.workers_done.close();
        self.workers_done.wait().await;
        result
    }

    /// Follows the bucket. The watch brings every change at once, and when it fails it is
    /// resumed from the revision after the last one applied, so no change is missed; a
    /// campaign's start or end date is looked at when it comes ([`timers`]); a change that
    /// could not be applied is tried again a second later; and a periodic listing of the
    /// dial consumers repairs any that disagrees with its document (a writer that died
    /// between the two). Applying a document twice changes nothing, so a NATS hiccup never
    /// stops the dialer nor leaves a campaign undialled. Nothing is re-read on a timer:
    /// an idle campaign costs nothing (issue 23; the two-second re-read of every document it
    /// replaced cost each replica a read per campaign per round).
    async fn follow(&mut self, campaigns: &kv::Store) -> Result<(), DialerError> {
        let mut watch = None;
        let mut last_revision = 0u64;
        let mut rewatch = tokio::time::Instant::now();
        let mut sweep = tokio::time::interval(self.sweep_every);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        sweep.tick().await;
        loop {
            if watch.is_none() && tokio::time::Instant::now() >= rewatch {
                // First with history (each key's current document), then from where it was.
                let started = if last_revision == 0 {
                    campaigns.watch_with_history(">").await
                } else {
                    campaigns.watch_all_from_revision(last_revision + 1).await
                };
                match started {
                    Ok(w) => watch = Some(w),
                    Err(e) => {
                        tracing::warn!(error = %ccm_core::telemetry::chain(&e), "cannot watch campaigns; trying again");
                        rewatch = tokio::time::Instant::now() + REWATCH_AFTER;
                    }
                }
            }
            let watching = watch.is_some();
            let next = async {
                match watch.as_mut() {
                    Some(w) => w.next().await,
                    None => std::future::pending().await,
                }
            };
            let due = self.timers.next();
            let timer = async {
                match due {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep_until(rewatch), if !watching => {}
                () = timer => {
                    for id in self.timers.due(tokio::time::Instant::now()) {
                        self.look_again(campaigns, id).await;
                    }
                }
                _ = sweep.tick() => self.sweep().await,
                entry = next => match entry {
                    Some(Ok(entry)) => {
                        last_revision = last_revision.max(entry.revision);
                        self.apply_logged(entry).await;
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %ccm_core::telemetry::chain(&e), "campaign watch failed; resuming it");
                        watch = None;
                    }
                    None => watch = None,
                },
            }
        }
    }

    /// Reads one campaign's document again and applies it (a date came, or an apply failed).
    async fn look_again(&mut self, campaigns: &kv::Store, id: CampaignId) {
        match campaigns.entry(id.to_string()).await {
            Ok(Some(entry)) => self.apply_logged(entry).await,
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(%id, error = %ccm_core::telemetry::chain(&e), "cannot read the campaign; trying again");
                self.timers
                    .set(id, tokio::time::Instant::now() + RETRY_APPLY_AFTER);
            }
        }
    }

    /// Lists the dial consumers, wakes each campaign with work (a wake-up lost on the way
    /// is caught here, within one interval) and reconciles each consumer that disagrees
    /// with the document this replica last applied: one paged request when all agree.
    async fn sweep(&mut self) {
        let written = match self.consumers.written().await {
            Ok(written) => written,
            Err(e) => {
                tracing::debug!(error = %ccm_core::telemetry::chain(&e), "cannot list the dial consumers");
                return;
            }
        };
        for (id, w) in &written {
            // The queue depth comes from this listing: one list of every dial consumer per
            // sweep, rather than another list every few seconds on every replica (on a
            // cluster each listed consumer is one request to its leader).
            ccm_core::metrics::gauge!("ccm_dialer_queued_calls", "campaign" => id.to_string())
                .set(w.queued as f64);
            if w.has_work {
                self.wakes.look(*id);
            }
        }
        let drifted: Vec<CampaignId> = self
            .workers
            .iter()
            .filter(|(id, known)| {
                written
                    .get(id)
                    .is_some_and(|w| w.disagrees_with(known.revision, known.cap, known.held))
            })
            .map(|(id, _)| *id)
            .collect();
        for id in drifted {
            match self.consumers.reconcile(&self.campaigns, id).await {
                Ok(Some(applied)) if !applied.plan.is_empty() => {
                    tracing::info!(%id, plan = ?applied.plan, "dial consumer repaired by the sweep");
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(%id, error = %ccm_core::telemetry::chain(&e), "dial consumer not repaired yet");
                }
            }
        }
    }

    async fn apply_logged(&mut self, entry: kv::Entry) {
        let key = entry.key.clone();
        let id = key.parse::<CampaignId>().ok();
        // A document older than one applied already (a re-read raced the watch): the newer
        // one stands, and so does its timer.
        if id
            .and_then(|id| self.workers.get(&id))
            .is_some_and(|known| known.revision > entry.revision)
        {
            return;
        }
        let applied = self.apply(entry).await;
        if let Some(id) = id {
            match &applied {
                Ok(Some(next)) => self.timers.set(id, timers::instant_of(*next)),
                Ok(None) => self.timers.clear(id),
                Err(_) => self
                    .timers
                    .set(id, tokio::time::Instant::now() + RETRY_APPLY_AFTER),
            }
        }
        if let Err(e) = applied {
            tracing::warn!(campaign = %key, error = %ccm_core::telemetry::chain(&e), "campaign change not applied yet");
        }
    }

    /// Applies one document; returns when to look at it again unasked (its next date).
    async fn apply(
        &mut self,
        entry: kv::Entry,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>, DialerError> {
        let Ok(id) = entry.key.parse::<CampaignId>() else {
            return Ok(None);
        };
        let revision = entry.revision;
        let campaign = match entry.operation {
            kv::Operation::Put => match serde_json::from_slice::<Campaign>(&entry.value) {
                Ok(campaign) => campaign,
                Err(e) => {
                    tracing::warn!(%id, error = %ccm_core::telemetry::chain(&e), "undecodable campaign document; ignored");
                    return Ok(None);
                }
            },
            kv::Operation::Delete | kv::Operation::Purge => {
                self.remove(id).await;
                return Ok(None);
            }
        };
        // Looked at again at its next start or end date (the caller's timer).
        let next = campaign.next_change_after(chrono::Utc::now());
        let mode = match campaign.dialling_at(chrono::Utc::now()) {
            Dialling::Drain(reason) => Some(Mode::Cancel(reason)),
            Dialling::Dial => Some(Mode::Dial),
            Dialling::Hold => None,
        };
        if let Some(Mode::Cancel(reason)) = mode {
            self.cancel_scheduled(id, reason);
        }
        let settings = Settings {
            cap: usize::try_from(campaign.max_concurrent_calls.max(1)).unwrap_or(usize::MAX),
            mode: mode.unwrap_or(Mode::Dial),
            info: CampaignInfo {
                name: campaign.name.as_str().into(),
                window: window::Window::of(&campaign),
                max_calls_per_second: campaign.max_calls_per_second,
                carrier_weight: campaign.carrier_weight.unwrap_or(1),
                purpose: campaign.purpose,
                ring_timeout_secs: campaign.ring_timeout_secs,
                revision: entry.revision,
                required_consent: campaign.required_consent,
                caller_id_pool: campaign.caller_id_pool.clone().map(Arc::new),
            },
            max_call_duration: campaign
                .max_call_duration_secs
                .map(|secs| Duration::from_secs(u64::from(secs))),
        };
        let running = self.workers.get(&id).is_some_and(|k| k.stop.is_some());
        // A cap changed, or first seen on a document changed since its creation: count
        // placements on the server for a while ([`cap`]). A new campaign's consumer was made
        // from its one document by its one writer, so its calls pay nothing extra.
        let changed = match self.workers.get(&id) {
            Some(known) => known.settings.borrow().cap != settings.cap,
            None => cap::edited_lately(&campaign, chrono::Utc::now()),
        };
        if changed {
            self.ctx.cap_changes.changed(id);
        }
        // A pause stops the pulls first: the consumer's change below takes a round trip, and
        // a call queued meanwhile must not be pulled for a campaign already paused.
        if mode.is_none()
            && let Some(stop) = self.workers.get_mut(&id).and_then(|k| k.stop.take())
        {
            tracing::info!(%id, "campaign paused; stop pulling");
            stop.cancel();
        }
        // The reconciler: on every change (and by the sweep) the consumer (cap, server-side
        // pause) is brought in line with the stored document, whoever failed to write it
        // (a writer that crashed between the document and the consumer, a lost update).
        let applied = self.consumers.reconcile(&self.campaigns, id).await?;
        if let Some(applied) = applied.filter(|a| !a.plan.is_empty()) {
            tracing::info!(%id, plan = ?applied.plan, "dial consumer brought in line");
        }
        let known = self.workers.entry(id).or_insert_with(|| Known {
            revision,
            cap: campaign.max_concurrent_calls,
            held: mode.is_none(),
            settings: watch::Sender::new(settings.clone()),
            in_flight: Arc::new(InFlight::default()),
            stop: None,
        });
        known.revision = revision;
        known.cap = campaign.max_concurrent_calls;
        known.held = mode.is_none();
        known.settings.send_replace(settings);
        // The cap beside the live calls, so a dashboard can draw one against the other.
        ccm_core::metrics::gauge!("ccm_dialer_concurrency_cap", "campaign" => id.to_string())
            .set(f64::from(campaign.max_concurrent_calls));
        if mode.is_none() || running {
            return Ok(next);
        }
        let consumer = self.consumers.consumer(id).await?;
        let Some(known) = self.workers.get_mut(&id) else {
            return Ok(next);
        };
        let stop = self.shutdown.child_token();
        known.stop = Some(stop.clone());
        let (wake, pull_first) = self.wakes.register(id);
        let worker = Worker {
            campaign: id,
            consumer,
            trunk: self.trunk.clone(),
            settings: known.settings.subscribe(),
            wake,
            pull_first,
            in_flight: known.in_flight.clone(),
            ctx: self.ctx.clone(),
            calls: self.calls.clone(),
        };
        self.workers_done.spawn(worker::run(worker, stop));
        Ok(next)
    }

    /// Ends the campaign's attempts waiting in `RETRIES` (once per replica; again after a
    /// failure), in the background so the bucket is still followed meanwhile.
    fn cancel_scheduled(&mut self, id: CampaignId, reason: &'static str) {
        if !self.scheduled_cancelled.begin(id) {
            return;
        }
        let (ctx, done) = (self.ctx.clone(), self.scheduled_cancelled.clone());
        self.workers_done.spawn(async move {
            match scheduled::cancel(&ctx, id, reason).await {
                Ok(n) => tracing::info!(%id, cancelled = n, "scheduled attempts cancelled"),
                Err(e) => {
                    tracing::warn!(%id, error = %ccm_core::telemetry::chain(&e), "cannot cancel scheduled attempts yet");
                    done.forget(id);
                }
            }
        });
    }

    /// The campaign is gone: stop its worker and remove its consumer, unless calls still
    /// wait on it (removing it then would strand them; they stay until an operator acts).
    async fn remove(&mut self, id: CampaignId) {
        if let Some(stop) = self.workers.remove(&id).and_then(|k| k.stop) {
            stop.cancel();
        }
        self.wakes.forget(id);
        match self.consumers.remove_if_idle(id).await {
            Ok(0) => {}
            Ok(queued) => tracing::warn!(
                %id,
                queued,
                "campaign deleted with calls still queued; its dial consumer is kept"
            ),
            Err(e) => {
                tracing::debug!(%id, error = %ccm_core::telemetry::chain(&e), "dial consumer not removed")
            }
        }
    }
}
