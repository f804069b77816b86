//! One campaign's pull loop: fetch dial messages while trunk lines are free, and hand each
//! to its own call task; and, while the campaign has nothing to do, no pull at all.
//!
//! Fair sharing of the trunk: a worker waits for one line (the semaphore serves waiters in
//! order, so campaigns take turns), long-polls for a single message with it, and only when
//! work is there grabs more lines, at most its fair share (`max_calls / active campaigns`)
//! per pull, with a short expiry so unused lines return at once. A polling campaign
//! therefore holds one line, a busy one never starves the others, and a campaign never holds
//! more lines than its own cap lets it use.
//!
//! Dormancy (issue 23): a pull loop per campaign forever cost every replica an outstanding
//! pull per campaign, renewed every [`LONG_POLL`], and one line held per idle campaign, so
//! with fewer lines than campaigns a first call in an idle campaign waited its turn,
//! `campaigns / lines` long polls. Now a worker goes **dormant** (no pull, no line, not
//! counted in the fair share) when [`may_sleep`] says so: its last pull came back empty, no
//! call of the campaign is in flight here, it was not woken meanwhile, and one read of the
//! consumer says nothing is queued (`num_pending`) nor held by any replica
//! (`num_ack_pending`: live calls elsewhere, messages handed back with a delay, messages
//! whose holder died; all of them come back only to a pull, so while there are any the
//! worker keeps polling). A worker also starts (or resumes) with that read instead of a
//! pull, so a replica starting with thousands of idle campaigns takes no line for them.
//! An idle campaign costs one read when it goes dormant, then nothing.
//!
//! A dormant worker wakes on its campaign's signal ([`crate::wake`]: a call published on its
//! subject, a sweep that finds its consumer with work, a reconnect), on a change of its
//! settings, and stops at once on a pause. The signal is noted as seen before each pull, so
//! a call published during the pull or the read keeps the worker awake. A wake-up lost with
//! the connection, or delivered to a replica not running the campaign, is caught by the
//! consumer sweep: within one `dialer.consumer_sweep_secs`.
//!
//! The cap stays the consumer's `max_ack_pending`, whichever replicas pull; a pause still
//! stops the pull at once.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use crate::trunk::Sharing;
pub use crate::trunk::Trunk;

use async_nats::jetstream::consumer::PullConsumer;
use ccm_core::{CampaignId, metrics::gauge};
use futures::StreamExt;
use tokio::sync::{Notify, OwnedSemaphorePermit, watch};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    call::{self, CallContext, Mode},
    carrier::CampaignInfo,
};

/// How long a pull waits for the first message. Every pull carries an expiry: nats-server
/// 2.9 can stall a pull request without one.
const LONG_POLL: Duration = Duration::from_secs(5);
/// How long a pull for more messages waits once work is known to be there.
const BURST_POLL: Duration = Duration::from_millis(250);
/// Most messages a cancelled campaign's drain takes per pull.
const CANCEL_BATCH: usize = 100;

/// What a worker is told about its campaign; changes reach it without a restart.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The campaign's concurrency cap (its consumer's `max_ack_pending`).
    pub cap: usize,
    pub mode: Mode,
    pub info: CampaignInfo,
    /// The campaign's own maximum call duration, when it sets one.
    pub max_call_duration: Option<Duration>,
}

/// The campaign's calls in flight in this replica; kept across worker restarts.
#[derive(Debug, Default)]
pub struct InFlight {
    count: AtomicUsize,
    freed: Notify,
}

impl InFlight {
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }
}

/// The decision to go dormant: nothing in flight here, no wake-up since the last pull
/// started, and the consumer read (`None`: the read failed) says the campaign has no work.
pub(crate) fn may_sleep(in_flight: usize, woken: bool, has_work: Option<bool>) -> bool {
    in_flight == 0 && !woken && has_work == Some(false)
}

/// What a worker works with.
#[derive(Debug, Clone)]
pub struct Worker {
    pub campaign: CampaignId,
    pub consumer: PullConsumer,
    pub trunk: Arc<Trunk>,
    pub settings: watch::Receiver<Settings>,
    /// The campaign's wake-up signal ([`crate::wake`]).
    pub wake: watch::Receiver<u64>,
    pub in_flight: Arc<InFlight>,
    pub ctx: Arc<CallContext>,
    pub calls: TaskTracker,
}

/// Pulls from the campaign's dial consumer until `stop` (campaign paused or finished) or the
/// dialer shuts down; dormant while the campaign has nothing to do.
pub async fn run(mut worker: Worker, stop: CancellationToken) {
    let campaign = worker.campaign;
    let mut sharing = Sharing::join(worker.trunk.clone());
    tracing::info!(%campaign, "dialling campaign");
    // Whether to read the consumer before the next pull: at the start, and after a pull that
    // came back empty.
    let mut look = true;
    while !stop.is_cancelled() {
        if look {
            look = false;
            if quiet(&worker).await {
                sharing.sleep();
                tracing::debug!(%campaign, "campaign idle; dormant");
                let woken = dormant(&mut worker, &stop).await;
                if !woken {
                    break;
                }
                sharing.wake();
                tracing::debug!(%campaign, "campaign woken");
            }
        }
        let settings = worker.settings.borrow_and_update().clone();
        if matches!(settings.mode, Mode::Cancel(_)) {
            worker.wake.mark_unchanged();
            let drained = pull(
                &worker,
                &settings,
                Vec::new(),
                CANCEL_BATCH,
                LONG_POLL,
                &stop,
            )
            .await;
            look = drained == 0;
            continue;
        }
        if worker.in_flight.count() >= settings.cap {
            // Full: the server would not deliver more anyway. Wait for a call to end (the
            // timeout covers a wake-up missed between the check and the wait).
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = worker.in_flight.freed.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            continue;
        }
        let first = tokio::select! {
            _ = stop.cancelled() => break,
            permit = worker.trunk.lines.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        // Seen before the pull: a call published from now on keeps the worker awake.
        worker.wake.mark_unchanged();
        if pull(&worker, &settings, vec![first], 1, LONG_POLL, &stop).await == 0 {
            look = true;
            continue;
        }
        // Work is there: take more lines, a fair share at a time, while it keeps coming.
        loop {
            let room = worker
                .trunk
                .fair_share()
                .min(settings.cap.saturating_sub(worker.in_flight.count()));
            let mut permits = Vec::with_capacity(room);
            while permits.len() < room {
                match worker.trunk.lines.clone().try_acquire_owned() {
                    Ok(permit) => permits.push(permit),
                    Err(_) => break,
                }
            }
            let wanted = permits.len();
            if wanted == 0
                || pull(&worker, &settings, permits, wanted, BURST_POLL, &stop).await < wanted
            {
                break;
            }
        }
    }
    tracing::info!(%campaign, "stopped dialling campaign");
}

/// Whether the campaign has nothing to do ([`may_sleep`]); one read of its consumer.
async fn quiet(worker: &Worker) -> bool {
    let woken = || worker.wake.has_changed().unwrap_or(true);
    // Not worth a read when the answer is already no.
    if worker.in_flight.count() > 0 || woken() {
        return false;
    }
    let has_work = match worker.ctx.consumers.has_work(worker.campaign).await {
        Ok(has_work) => Some(has_work),
        Err(e) => {
            tracing::debug!(campaign = %worker.campaign, error = %ccm_core::telemetry::chain(&e), "cannot read the dial consumer; polling on");
            None
        }
    };
    may_sleep(worker.in_flight.count(), woken(), has_work)
}

/// Waits for a wake-up or a change of settings (`true`), or `stop` (`false`). Holds nothing.
async fn dormant(worker: &mut Worker, stop: &CancellationToken) -> bool {
    tokio::select! {
        biased;
        () = stop.cancelled() => false,
        Ok(()) = worker.wake.changed() => true,
        Ok(()) = worker.settings.changed() => true,
        // Both signals gone (the campaign was removed): only `stop` is left to wait for.
    }
}

/// One pull of up to `wanted` messages; each gets a call task holding one of `permits` (none
/// when cancelling). Returns how many messages came.
async fn pull(
    worker: &Worker,
    settings: &Settings,
    mut permits: Vec<OwnedSemaphorePermit>,
    wanted: usize,
    expires: Duration,
    stop: &CancellationToken,
) -> usize {
    let campaign = worker.campaign;
    let batch = worker
        .consumer
        .batch()
        .max_messages(wanted)
        .expires(expires)
        .messages();
    let mut messages = match batch.await {
        Ok(messages) => messages,
        Err(e) => {
            tracing::warn!(%campaign, error = %ccm_core::telemetry::chain(&e), "pull failed; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
            return 0;
        }
    };
    let mut received = 0;
    loop {
        // Paused or shutting down: stop listening at once. The server may still deliver to
        // this pull until it expires; those few messages come back after AckWait, which is
        // better than dialling a paused campaign or NAKing them into `max_deliver`.
        let next = tokio::select! {
            // Biased: a message that arrives together with the pause is not taken.
            biased;
            _ = stop.cancelled() => break,
            next = messages.next() => next,
        };
        let Some(next) = next else { break };
        let message = match next {
            Ok(message) => message,
            Err(e) => {
                tracing::warn!(%campaign, error = %ccm_core::telemetry::chain(e.as_ref()), "pull error");
                break;
            }
        };
        received += 1;
        let permit = permits.pop();
        let ctx = worker.ctx.clone();
        let limit = settings.max_call_duration;
        let info = settings.info.clone();
        let mode = settings.mode;
        let in_flight = worker.in_flight.clone();
        in_flight.count.fetch_add(1, Ordering::AcqRel);
        // Per campaign: bounded by the number of campaigns, not by traffic.
        let live = gauge!("ccm_dialer_live_calls", "campaign" => campaign.to_string());
        live.increment(1.0);
        worker.calls.spawn(async move {
            call::handle(ctx, limit, message, info, mode).await;
            live.decrement(1.0);
            in_flight.count.fetch_sub(1, Ordering::AcqRel);
            in_flight.freed.notify_waiters();
            drop(permit);
        });
        if received >= wanted {
            break;
        }
    }
    received
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_campaign_sleeps_only_when_nothing_anywhere_is_left_to_do() {
        assert!(may_sleep(0, false, Some(false)));
        // A call of it in flight here: it may be handed back and must be pulled again.
        assert!(!may_sleep(1, false, Some(false)));
        // Woken since the pull started: a call came meanwhile.
        assert!(!may_sleep(0, true, Some(false)));
        // Queued or held anywhere (a NAK with a delay, a live call on another replica).
        assert!(!may_sleep(0, false, Some(true)));
        // The consumer could not be read: keep polling.
        assert!(!may_sleep(0, false, None));
    }
}
