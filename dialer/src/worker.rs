//! One campaign's pull loop: fetch dial messages while trunk lines are free, and hand each
//! to its own call task; and, while the campaign has nothing to do, no pull at all.
//!
//! Fair sharing of the trunk: a worker waits for one line (the semaphore serves waiters in
//! order, so campaigns take turns), long-polls for a single message with it, and only when
//! work is there grabs more lines, at most its fair share (`max_calls / active campaigns`)
//! and no more than the calls queued behind the one it got ([`burst_room`]) per pull, with a
//! short expiry so unused lines return soon. A polling campaign
//! therefore holds one line, a busy one never starves the others, and a campaign never holds
//! more lines than its own cap lets it use.
//!
//! Dormancy (issue 23): a pull loop per campaign forever cost every replica an outstanding
//! pull per campaign, renewed every [`LONG_POLL`], and one line held per idle campaign, so
//! with fewer lines than campaigns a first call in an idle campaign waited its turn,
//! `campaigns / lines` long polls. Now a worker goes **dormant** (no pull, no line, not
//! counted in the fair share) when [`may_sleep`] says so: it has drained what it could (a
//! pull came back short, or its last call said nothing was queued behind it), it was not
//! woken meanwhile, and one read of the consumer says nothing is queued (`num_pending`) and
//! nothing is held (`num_ack_pending`) but this replica's own live calls, which wake it when
//! they end. Anything else held (a live call on another replica, a message handed back with
//! a delay, one whose holder died) comes back only to a pull, so while there is any the
//! worker keeps pulling. A worker also starts (or resumes) with that read instead of a pull,
//! so a replica starting with thousands of idle campaigns takes no line for them. An idle
//! campaign costs one read when it goes dormant, then nothing; a campaign whose calls are
//! all live here holds a line per call and none for a pull.
//!
//! A dormant worker wakes on its campaign's signal ([`crate::wake`]), on a change of its
//! settings, when one of its calls ends, and stops at once on a pause. A call published for
//! the campaign makes it pull (a pull waits for the call to be stored; a read could come
//! before); any other wake-up (its call ended, a setting, a sweep that found work, a
//! reconnect) makes it read its consumer again. The signal is noted as seen before each pull
//! and each read, so a call published meanwhile keeps the worker awake. A wake-up lost with
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
use ccm_core::{CampaignId, dial_consumer::Work, metrics::gauge};
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
/// How long a read of the consumer may take before the worker pulls instead: a request sent
/// on a connection about to drop is never answered, and JetStream's own timeout (10 s) would
/// keep a call published meanwhile waiting that long.
const READ_TIMEOUT: Duration = Duration::from_secs(2);
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

/// The decision to go dormant: no wake-up since the last pull started, and the consumer read
/// (`None`: the read failed) shows nothing queued and nothing held but this replica's own
/// `in_flight` calls, which wake the worker when they end. Anything else held (a call live on
/// another replica, a message handed back with a delay, one whose holder died) may come back
/// to a pull at any moment, so the worker keeps pulling.
pub(crate) fn may_sleep(in_flight: usize, woken: bool, work: Option<Work>) -> bool {
    !woken && work.is_some_and(|w| w.queued == 0 && w.held <= in_flight as u64)
}

/// What a worker works with.
#[derive(Debug, Clone)]
pub struct Worker {
    pub campaign: CampaignId,
    pub consumer: PullConsumer,
    pub trunk: Arc<Trunk>,
    pub settings: watch::Receiver<Settings>,
    /// The campaign's wake-up signal ([`crate::wake`]).
    pub wake: watch::Receiver<crate::wake::Signal>,
    /// A call was published before this worker started ([`crate::wake::Wakes::register`]):
    /// pull first instead of reading the consumer.
    pub pull_first: bool,
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
    // Whether to read the consumer before the next pull: at the start, after a pull that
    // came back short or left nothing queued, and on a wake-up other than a publish.
    let mut look = !worker.pull_first;
    // The publishes seen: a wake-up that changes it is a call published for the campaign.
    let mut seen = seen_now(&mut worker);
    while !stop.is_cancelled() {
        if look {
            look = false;
            let in_flight = worker.in_flight.count();
            if quiet(&worker, in_flight).await {
                sharing.sleep();
                match dormant(&mut worker, &stop, in_flight, seen).await {
                    Woken::Stopped => break,
                    Woken::Look => {
                        look = true;
                        continue;
                    }
                    Woken::Pull => tracing::debug!(%campaign, "woken by a call"),
                }
            }
            sharing.wake();
        }
        let settings = worker.settings.borrow_and_update().clone();
        if matches!(settings.mode, Mode::Cancel(_)) {
            seen = seen_now(&mut worker);
            let drained = pull(
                &worker,
                &settings,
                Vec::new(),
                CANCEL_BATCH,
                LONG_POLL,
                &stop,
            )
            .await;
            look = drained.received == 0;
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
        seen = seen_now(&mut worker);
        let first = pull(&worker, &settings, vec![first], 1, LONG_POLL, &stop).await;
        if first.received == 0 {
            look = true;
            continue;
        }
        // Work is there: take more lines, a fair share at a time, while it keeps coming.
        let mut queued = first.queued;
        let mut short = false;
        loop {
            let room = burst_room(
                worker.trunk.fair_share(),
                settings.cap.saturating_sub(worker.in_flight.count()),
                queued,
            );
            let mut permits = Vec::with_capacity(room);
            while permits.len() < room {
                match worker.trunk.lines.clone().try_acquire_owned() {
                    Ok(permit) => permits.push(permit),
                    Err(_) => break,
                }
            }
            let wanted = permits.len();
            if wanted == 0 {
                break;
            }
            let pulled = pull(&worker, &settings, permits, wanted, BURST_POLL, &stop).await;
            if pulled.received < wanted {
                short = true;
                break;
            }
            queued = pulled.queued;
        }
        // Drained for now: rather than wait in a long poll holding a line, look whether
        // anything is left to pull, and sleep if not (a call published later wakes it).
        look = short || queued == Some(0);
    }
    tracing::info!(%campaign, "stopped dialling campaign");
}

/// Lines a burst takes: its fair share, within the campaign's room under its cap, and no
/// more than the calls queued behind the last one pulled (`None`: unknown). Lines held by a
/// pull wait for its expiry, so a woken campaign with one call must not hold a fair share
/// (with most campaigns dormant, much of the trunk) while other campaigns wait for a line.
pub(crate) fn burst_room(fair_share: usize, under_cap: usize, queued: Option<u64>) -> usize {
    let queued = queued.map_or(usize::MAX, |q| usize::try_from(q).unwrap_or(usize::MAX));
    fair_share.min(under_cap).min(queued)
}

/// What one pull brought.
struct Pulled {
    received: usize,
    /// The calls still queued when the last one was delivered (its `num_pending`).
    queued: Option<u64>,
}

/// Whether the campaign has nothing to do ([`may_sleep`]) with `in_flight` calls here; one
/// read of its consumer.
async fn quiet(worker: &Worker, in_flight: usize) -> bool {
    let woken = || worker.wake.has_changed().unwrap_or(true);
    // Not worth a read when the answer is already no.
    if woken() {
        return false;
    }
    let read = tokio::time::timeout(READ_TIMEOUT, worker.ctx.consumers.work(worker.campaign));
    let work = match read.await {
        Ok(Ok(work)) => Some(work),
        Ok(Err(e)) => {
            tracing::debug!(campaign = %worker.campaign, error = %ccm_core::telemetry::chain(&e), "cannot read the dial consumer; polling on");
            None
        }
        Err(_) => {
            tracing::debug!(campaign = %worker.campaign, "no answer to the dial consumer read; polling on");
            None
        }
    };
    may_sleep(in_flight, woken(), work)
}

/// Why a dormant worker woke.
enum Woken {
    Stopped,
    /// A call was published for the campaign: pull (a pull waits for it to be stored, which
    /// a read could come too early to see).
    Pull,
    /// Something else changed (a call of its own ended, its settings, a sweep or a
    /// reconnect): read the consumer again.
    Look,
}

/// The publishes the worker has seen, marking every wake-up so far as seen.
fn seen_now(worker: &mut Worker) -> u64 {
    worker.wake.borrow_and_update().published
}

/// Waits, holding nothing, for a wake-up, a change of settings or one of its `in_flight`
/// calls to end, or `stop`.
async fn dormant(
    worker: &mut Worker,
    stop: &CancellationToken,
    in_flight: usize,
    seen: u64,
) -> Woken {
    let freed = worker.in_flight.freed.notified();
    tokio::pin!(freed);
    // Registered before the count is compared, so a call ending in between is not missed.
    freed.as_mut().enable();
    if worker.in_flight.count() != in_flight {
        return Woken::Look;
    }
    tokio::select! {
        biased;
        () = stop.cancelled() => Woken::Stopped,
        Ok(()) = worker.wake.changed() => {
            if worker.wake.borrow_and_update().published == seen {
                Woken::Look
            } else {
                Woken::Pull
            }
        }
        Ok(()) = worker.settings.changed() => Woken::Look,
        () = &mut freed => Woken::Look,
        // Both signals gone (the campaign was removed): only `stop` is left to wait for.
    }
}

/// One pull of up to `wanted` messages; each gets a call task holding one of `permits` (none
/// when cancelling).
async fn pull(
    worker: &Worker,
    settings: &Settings,
    mut permits: Vec<OwnedSemaphorePermit>,
    wanted: usize,
    expires: Duration,
    stop: &CancellationToken,
) -> Pulled {
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
            return Pulled {
                received: 0,
                queued: None,
            };
        }
    };
    let mut received = 0;
    let mut queued = None;
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
        queued = message.info().ok().map(|info| info.pending);
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
    Pulled { received, queued }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_takes_no_more_lines_than_calls_are_queued() {
        assert_eq!(burst_room(50, 10, None), 10);
        assert_eq!(burst_room(5, 10, Some(100)), 5);
        assert_eq!(burst_room(50, 10, Some(3)), 3);
        // The call pulled was the last one: no burst, no line held for nothing.
        assert_eq!(burst_room(50, 10, Some(0)), 0);
    }

    #[test]
    fn a_campaign_sleeps_only_when_nothing_anywhere_is_left_to_do() {
        let work = |queued, held| Some(Work { queued, held });
        assert!(may_sleep(0, false, work(0, 0)));
        // Its own live calls only: each wakes it when it ends.
        assert!(may_sleep(2, false, work(0, 2)));
        // Woken since the pull started: a call came meanwhile.
        assert!(!may_sleep(0, true, work(0, 0)));
        // Queued.
        assert!(!may_sleep(0, false, work(1, 0)));
        // Held beyond its own calls: a NAK with a delay, a live call on another replica.
        assert!(!may_sleep(0, false, work(0, 1)));
        assert!(!may_sleep(2, false, work(0, 3)));
        // The consumer could not be read: keep polling.
        assert!(!may_sleep(0, false, None));
    }
}
