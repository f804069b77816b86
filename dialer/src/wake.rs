//! Wake-ups of dormant campaign workers ([`crate::worker`]): a campaign with nothing to do
//! costs a dialer no pull, and is woken when work comes.
//!
//! Every dial message, whoever publishes it (ingest, the retrier, a dialer's own deferral),
//! is a JetStream publish on `calls.dial.<campaign>`, and the server also delivers it to the
//! core subscribers of that subject. The dialer keeps one core subscription on every dial
//! subject ([`subjects::DIAL_ALL`]) in the queue group [`QUEUE_GROUP`], so each published call
//! wakes ONE replica (a burst spreads over them all): the extra traffic is one copy per call,
//! not one per replica. The campaign is read from the subject; the payload is not parsed.
//!
//! A wake-up for a campaign no worker of this replica waits for yet (its watch not there
//! yet, or the campaign paused) is kept, and the worker that starts pulls first
//! ([`Wakes::register`]). One can still be lost: dropped by the client's buffer, or sent while
//! the connection was down. Hence, besides the subscription:
//! - the dialer's consumer sweep (`dialer.consumer_sweep_secs`) wakes every campaign whose
//!   consumer has calls queued or held ([`ccm_core::dial_consumer::Work::any`]);
//! - a reconnect of the client wakes every worker of the replica ([`Listener::run`]).
//!
//! So a call whose wake-up is lost waits at most one sweep interval.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use async_nats::{Client, Subscriber};
use ccm_core::{CampaignId, subjects};
use futures::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The dialers' queue group on the dial subjects: one replica is woken per published call.
pub const QUEUE_GROUP: &str = "ccm-dialer-wake";

/// How often the listener looks at the connection, to notice a reconnect.
const CONNECTION_POLL: Duration = Duration::from_millis(250);

/// One wake-up signal per campaign known to the replica (cloning shares them), in a watch: a
/// worker notes what it has seen before it pulls or looks at its consumer, so a wake-up that
/// comes meanwhile is never lost.
#[derive(Debug, Clone, Default)]
pub(crate) struct Wakes {
    campaigns: Arc<Mutex<HashMap<CampaignId, watch::Sender<Signal>>>>,
}

/// What woke a campaign, counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Signal {
    /// Calls published for it: the worker pulls, since a pull waits for the call to be
    /// stored (the core copy of a publish can arrive before the stream has stored it).
    pub(crate) published: u64,
    /// A sweep that found it with work, a reconnect: the worker reads its consumer.
    pub(crate) looks: u64,
}

impl Wakes {
    /// The campaign's signal, for a worker about to start; it has seen every wake-up so far.
    /// With it, whether a call was published for the campaign while no worker of it was
    /// waiting (before this replica followed the campaign, or while it was paused): the
    /// worker then starts with a pull, since a read of its consumer can come before the
    /// stream has stored a call whose wake-up came first.
    pub(crate) fn register(&self, id: CampaignId) -> (watch::Receiver<Signal>, bool) {
        let mut campaigns = self.lock();
        let signal = campaigns
            .entry(id)
            .or_insert_with(|| watch::Sender::new(Signal::default()));
        let early = signal.receiver_count() == 0 && signal.borrow().published > 0;
        (signal.subscribe(), early)
    }

    /// The campaign is gone.
    pub(crate) fn forget(&self, id: CampaignId) {
        self.lock().remove(&id);
    }

    /// A call was published for the campaign: wakes its worker to pull, or, when no worker
    /// of it waits yet, is kept for the worker that starts ([`Wakes::register`]). An entry
    /// lives until the campaign is forgotten, so the map holds at most the campaigns.
    pub(crate) fn published(&self, id: CampaignId) {
        self.lock()
            .entry(id)
            .or_insert_with(|| watch::Sender::new(Signal::default()))
            .send_modify(|s| s.published = s.published.wrapping_add(1));
    }

    /// Wakes the campaign's worker to read its consumer.
    pub(crate) fn look(&self, id: CampaignId) {
        if let Some(signal) = self.lock().get(&id) {
            signal.send_modify(|s| s.looks = s.looks.wrapping_add(1));
        }
    }

    /// Wakes every worker to read its consumer.
    pub(crate) fn look_all(&self) {
        for signal in self.lock().values() {
            signal.send_modify(|s| s.looks = s.looks.wrapping_add(1));
        }
    }

    /// No critical section can panic half-way, so a poisoned map is still consistent.
    fn lock(&self) -> MutexGuard<'_, HashMap<CampaignId, watch::Sender<Signal>>> {
        self.campaigns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Why the wake-up subscription could not be made.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot subscribe to the dial subjects")]
    Subscribe(#[source] async_nats::SubscribeError),
    #[error("cannot flush the dial subscription to the server")]
    Flush(#[source] async_nats::client::FlushError),
}

/// Reads the dial subscription and wakes the campaigns it names.
#[derive(Debug)]
pub(crate) struct Listener {
    subscriber: Subscriber,
    client: Client,
    wakes: Wakes,
}

impl Listener {
    /// Subscribes; the subscription is known to the server when this returns, before any
    /// worker starts.
    pub(crate) async fn subscribe(client: &Client, wakes: Wakes) -> Result<Self, StartError> {
        let subscriber = client
            .queue_subscribe(subjects::DIAL_ALL, QUEUE_GROUP.into())
            .await
            .map_err(StartError::Subscribe)?;
        client.flush().await.map_err(StartError::Flush)?;
        Ok(Self {
            subscriber,
            client: client.clone(),
            wakes,
        })
    }

    /// Wakes campaigns until `stop` or the subscription ends; every worker on a reconnect
    /// (what was published while the connection was down never reaches this replica).
    pub(crate) async fn run(mut self, stop: CancellationToken) {
        use async_nats::connection::State as Connection;
        let mut poll = tokio::time::interval(CONNECTION_POLL);
        let mut was_connected = true;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = poll.tick() => {
                    let connected = self.client.connection_state() == Connection::Connected;
                    if connected && !was_connected {
                        tracing::info!("reconnected; every campaign looks for work");
                        self.wakes.look_all();
                    }
                    was_connected = connected;
                }
                next = self.subscriber.next() => match next {
                    Some(message) => {
                        if let Some(id) = subjects::dial_campaign(&message.subject) {
                            self.wakes.published(id);
                        }
                    }
                    None => {
                        // Left to the sweep from now on; the dialer is shutting down.
                        tracing::warn!("dial subscription closed");
                        return;
                    }
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wake_up_reaches_the_campaigns_worker_even_before_it_waits() {
        let wakes = Wakes::default();
        let seven = CampaignId::new(7).expect("id");
        let eight = CampaignId::new(8).expect("id");
        let (mut rx, early) = wakes.register(seven);
        assert!(!early);
        assert!(!rx.has_changed().expect("open"));
        wakes.published(eight);
        assert!(!rx.has_changed().expect("open"), "another campaign's");
        wakes.published(seven);
        assert!(rx.has_changed().expect("open"));
        assert_eq!(rx.borrow_and_update().published, 1);
        wakes.look_all();
        assert!(rx.has_changed().expect("open"));
        assert_eq!(
            *rx.borrow_and_update(),
            Signal {
                published: 1,
                looks: 1
            }
        );
        wakes.forget(seven);
        assert!(
            rx.has_changed().is_err(),
            "a forgotten campaign's worker is told"
        );
    }

    /// A call published before the replica follows its campaign (or while it is paused)
    /// reached no worker; the worker that starts is told, and pulls first (CI: a call placed
    /// right after its campaign was created waited for the 30 s sweep).
    #[test]
    fn a_call_published_before_the_worker_starts_makes_it_pull_first() {
        let wakes = Wakes::default();
        let nine = CampaignId::new(9).expect("id");
        wakes.published(nine);
        let (rx, early) = wakes.register(nine);
        assert!(
            early,
            "the call published before the worker started is not forgotten"
        );
        drop(rx);
        // A worker started again later (a resume) after nothing new: a pull costs nothing.
        let (_rx, early) = wakes.register(nine);
        assert!(early);
        // While a worker waits, a second one is not early: the first was woken.
        let ten = CampaignId::new(10).expect("id");
        let (_waiting, _) = wakes.register(ten);
        wakes.published(ten);
        let (_second, early) = wakes.register(ten);
        assert!(!early);
    }
}
