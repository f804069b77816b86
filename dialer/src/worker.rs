//! One campaign's pull loop: fetch dial messages while trunk lines are free, and hand each
//! to its own call task.
//!
//! Fair sharing of the trunk: a worker waits for one line (the semaphore serves waiters in
//! order, so campaigns take turns), long-polls for a single message with it, and only when
//! work is there grabs more lines, at most its fair share (`max_calls / campaigns`) per
//! pull, with a short expiry so unused lines return at once. An idle campaign therefore holds
//! one line, a busy one never starves the others, and a campaign never holds more lines than
//! its own cap lets it use.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use async_nats::jetstream::consumer::PullConsumer;
use ccm_core::{CampaignId, metrics::gauge};
use futures::StreamExt;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
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

/// A dialer replica's trunk: its lines and how many campaigns share them.
#[derive(Debug)]
pub struct Trunk {
    lines: Arc<Semaphore>,
    capacity: usize,
    campaigns: AtomicUsize,
}

impl Trunk {
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            lines: Arc::new(Semaphore::new(capacity)),
            capacity,
            campaigns: AtomicUsize::new(0),
        }
    }

    /// Lines one campaign may take in one pull.
    pub fn fair_share(&self) -> usize {
        (self.capacity / self.campaigns.load(Ordering::Relaxed).max(1)).max(1)
    }

    /// Lines in use now.
    pub fn busy(&self) -> usize {
        self.capacity - self.lines.available_permits()
    }
}

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

/// Counts the worker among the trunk's campaigns while it lives.
struct Sharing(Arc<Trunk>);

impl Drop for Sharing {
    fn drop(&mut self) {
        self.0.campaigns.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a worker works with.
#[derive(Debug, Clone)]
pub struct Worker {
    pub campaign: CampaignId,
    pub consumer: PullConsumer,
    pub trunk: Arc<Trunk>,
    pub settings: watch::Receiver<Settings>,
    pub in_flight: Arc<InFlight>,
    pub ctx: Arc<CallContext>,
    pub calls: TaskTracker,
}

/// Pulls from the campaign's dial consumer until `stop` (campaign paused or finished) or the
/// dialer shuts down.
pub async fn run(worker: Worker, stop: CancellationToken) {
    let campaign = worker.campaign;
    worker.trunk.campaigns.fetch_add(1, Ordering::Relaxed);
    let _sharing = Sharing(worker.trunk.clone());
    tracing::info!(%campaign, "dialling campaign");
    while !stop.is_cancelled() {
        let settings = worker.settings.borrow().clone();
        if matches!(settings.mode, Mode::Cancel(_)) {
            pull(
                &worker,
                &settings,
                Vec::new(),
                CANCEL_BATCH,
                LONG_POLL,
                &stop,
            )
            .await;
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
        if pull(&worker, &settings, vec![first], 1, LONG_POLL, &stop).await == 0 {
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
    fn the_fair_share_divides_the_trunk_among_campaigns() {
        let trunk = Trunk::new(100);
        assert_eq!(trunk.fair_share(), 100);
        trunk.campaigns.store(3, Ordering::Relaxed);
        assert_eq!(trunk.fair_share(), 33);
        trunk.campaigns.store(500, Ordering::Relaxed);
        assert_eq!(trunk.fair_share(), 1);
        assert_eq!(trunk.busy(), 0);
    }
}
