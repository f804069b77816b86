//! Routes carrier outcomes to the calls waiting for them: a few subscriptions per dialer
//! process, not one per call, and only to the outcomes of this process's own calls.
//!
//! A call waits for its outcome for as long as it lasts, so a dialer with 100,000 live calls
//! has 100,000 waiters. With a core subscription per call each of them cost a SUB and an
//! UNSUB on the server and, in the client, a subscriber whose channel allocates a block of 32
//! message slots at once: about 15 KiB per live call. Here the dialer subscribes once to its
//! own address and [`Router::run`] forwards each outcome to the call registered for it
//! ([`Outcomes::register`]). A waiting call costs a map entry and a one-shot channel that
//! carries no data: a few hundred bytes.
//!
//! Outcomes are addressed ([`ccm_core::outcome_route`]): each dialer process has an
//! [`Address`], fresh per process, recorded on every `Dialing` it publishes; whoever publishes
//! an outcome stores it in `CALL_EVENTS` as always and sends a core copy to the address of
//! the dialer that placed the attempt. This router hears:
//! - `ccm.dialer.<own address>.outcome`: the outcomes of the calls this process placed
//!   ([`Route::Addressed`]);
//! - `ccm.dialers.outcome`: the few outcomes no address could be found for (an attempt placed
//!   by an older dialer), which every dialer hears ([`Route::Broadcast`]);
//! - the address of another dialer, for as long as this one waits for an attempt that dialer
//!   placed ([`Outcomes::adopt`], [`Route::Adopted`]): a dialer restarted or replaced leaves
//!   its calls' dial messages to be redelivered to another, whose copies still go to the old
//!   address. One subscription per adopted address, not per call, ended when its last call
//!   ends.
//!
//! Before, every replica subscribed to every outcome (`calls.outcome.>`) and dropped those of
//! calls it did not hold: outcome traffic was outcomes × dialer replicas. Now each outcome
//! reaches one dialer (two, briefly, while an adopted address is heard by the survivors).
//! The router parses each payload for its call and attempt and wakes only the waiters of that
//! attempt: an outcome of another attempt leaves them waiting.
//!
//! When the own subscription ends (the client is closed or drained, or the router is
//! stopped), every waiter is woken with [`Closed`] and later registrations are closed at once,
//! so a call hands its dial message back instead of waiting for an outcome it could never see.
//! A reconnect does not end the subscription: the client subscribes again on the new
//! connection and the same stream of messages continues, so waiters keep waiting. A copy
//! published while the connection was down is not delivered, though its outcome is stored in
//! `CALL_EVENTS`: so the router announces each reconnect ([`Outcomes::reconnects`]), and a
//! waiting call then reads its outcome from the stream (and also every so often, for a
//! disconnection too short to be noticed, or a copy lost otherwise), rather than holding its
//! slot until its deadline. Those stream reads are the fallback: a copy never has to arrive.
//!
//! The client buffers up to 65,536 messages of a subscription (async-nats' default) and
//! drops what is past that. The router does no I/O and takes a lock only for a map look-up,
//! so it keeps far ahead of any outcome rate the carriers produce.

mod adopted;
mod received;

pub use adopted::Adoption;
pub use ccm_core::outcome_route::Address;
pub use received::{Received, Route};

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use async_nats::{Client, Subscriber};
use ccm_core::{CallEvent, CallId, subjects};
use futures::StreamExt;
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

/// The registry of waiting calls, shared by every call task of the dialer (cloning shares it).
#[derive(Clone)]
pub struct Outcomes {
    state: Arc<Mutex<State>>,
    /// Counts the reconnects seen by the router.
    reconnects: Arc<watch::Sender<u64>>,
    /// This process's address: what its `Dialing` events name.
    address: Arc<Address>,
    /// For the subscriptions to adopted addresses.
    client: Client,
    received: Arc<Received>,
}

/// How often the router looks at the connection, to notice a reconnect.
const CONNECTION_POLL: std::time::Duration = std::time::Duration::from_millis(250);

/// Reads the dialer's outcome subscriptions and wakes the registered waiters.
#[derive(Debug)]
pub struct Router {
    outcomes: Outcomes,
    own: Subscriber,
    broadcast: Subscriber,
    client: Client,
}

/// Waits for one attempt's outcome; dropping it unregisters it, whatever the exit path.
#[derive(Debug)]
#[must_use = "dropping the waiter unregisters it"]
pub struct Waiter {
    outcomes: Outcomes,
    call: CallId,
    id: u64,
    woken: oneshot::Receiver<()>,
    /// What [`Waiter::outcome`] returned, so asking again neither waits nor polls a spent
    /// channel.
    result: Option<Result<(), Closed>>,
}

/// The outcome subscription ended before the outcome arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("outcome subscription closed")]
pub struct Closed;

/// Why an outcome subscription could not be made.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot subscribe to outcomes")]
    Subscribe(#[source] async_nats::SubscribeError),
    #[error("cannot flush the outcome subscription to the server")]
    Flush(#[source] async_nats::client::FlushError),
}

#[derive(Default)]
struct State {
    /// Nearly always one waiter per call; two when a redelivered dial message is handled
    /// while the first delivery still waits.
    waiters: HashMap<CallId, Vec<Slot>>,
    next_id: u64,
    /// The subscription has ended: nothing can wake a waiter any more.
    closed: bool,
    /// Other dialers' addresses listened to, with how many waiting calls need each.
    adopted: HashMap<Address, adopted::Listening>,
}

struct Slot {
    id: u64,
    attempt: u32,
    wake: oneshot::Sender<()>,
}

/// Subscribes to `subject` and makes sure the server knows it before returning.
async fn subscribe(client: &Client, subject: String) -> Result<Subscriber, StartError> {
    let subscriber = client
        .subscribe(subject)
        .await
        .map_err(StartError::Subscribe)?;
    client.flush().await.map_err(StartError::Flush)?;
    Ok(subscriber)
}

impl Outcomes {
    /// Subscribes to the outcomes addressed to `address` (this process's, fresh per process:
    /// [`Address::fresh`]) and to those sent to every dialer. The subscriptions are known to
    /// the server when this returns, before any call can register (see
    /// [`Outcomes::register`]); run the returned [`Router`] to deliver outcomes.
    pub async fn subscribe(
        client: &Client,
        address: Address,
    ) -> Result<(Self, Router), StartError> {
        let own = subscribe(client, subjects::dialer_outcome(address.as_str())).await?;
        let broadcast = subscribe(client, subjects::DIALER_OUTCOME_ANY.to_owned()).await?;
        let outcomes = Self {
            state: Arc::default(),
            reconnects: Arc::new(watch::Sender::new(0)),
            address: Arc::new(address),
            client: client.clone(),
            received: Arc::default(),
        };
        let router = Router {
            outcomes: outcomes.clone(),
            own,
            broadcast,
            client: client.clone(),
        };
        Ok((outcomes, router))
    }

    /// This process's address, which its `Dialing` events record.
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// How many outcomes reached this dialer, by route.
    pub fn received(&self) -> &Received {
        &self.received
    }

    /// Counts an outcome a waiting call found by reading the stream.
    pub fn found_in_stream(&self) {
        self.count(Route::Stream);
    }

    fn count(&self, route: Route) {
        self.received.count(route);
    }

    /// Registers a waiter for `attempt` of `call`, before the call looks up what the stream
    /// knows: the subscriptions are already in place at the server, so an outcome copied from
    /// now on reaches the router after this entry exists, and one the router handled earlier
    /// was stored before it was copied, so the look-up reads it from the stream.
    pub fn register(&self, call: CallId, attempt: u32) -> Waiter {
        let (wake, woken) = oneshot::channel();
        let mut state = self.lock();
        let id = state.next_id;
        state.next_id = state.next_id.wrapping_add(1);
        // Once closed, `wake` is dropped here and the waiter learns it on its first wait.
        if !state.closed {
            let slot = Slot { id, attempt, wake };
            state.waiters.entry(call).or_default().push(slot);
        }
        drop(state);
        Waiter {
            outcomes: self.clone(),
            call,
            id,
            woken,
            result: None,
        }
    }

    /// Changes on every reconnect of the dialer's connection: outcomes published while it was
    /// down were not delivered and must be read from the stream.
    pub fn reconnects(&self) -> watch::Receiver<u64> {
        self.reconnects.subscribe()
    }

    /// How many waiters are registered.
    pub fn waiting(&self) -> usize {
        self.lock().waiters.values().map(Vec::len).sum()
    }

    /// Wakes the waiters of an outcome's attempt, if the call is waited on here.
    fn deliver(&self, route: Route, payload: &[u8]) {
        self.count(route);
        // Parsed outside the lock, so registrations need not wait for it.
        let Ok(event) = serde_json::from_slice::<CallEvent>(payload) else {
            tracing::debug!("undecodable outcome copy; its call reads the stream");
            return;
        };
        let mut state = self.lock();
        let Some(slots) = state.waiters.get_mut(&event.call_id) else {
            return;
        };
        let mut i = 0;
        while i < slots.len() {
            if slots[i].attempt == event.attempt {
                // The waiter may have just gone; then nobody needs waking.
                let _ = slots.swap_remove(i).wake.send(());
            } else {
                i += 1;
            }
        }
        if slots.is_empty() {
            state.waiters.remove(&event.call_id);
        }
    }

    /// Ends every wait: dropping the senders wakes each waiter with [`Closed`].
    fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        state.waiters = HashMap::new();
        for listening in std::mem::take(&mut state.adopted).into_values() {
            listening.stop();
        }
    }

    fn unregister(&self, call: CallId, id: u64) {
        let mut state = self.lock();
        if let Some(slots) = state.waiters.get_mut(&call) {
            slots.retain(|slot| slot.id != id);
            if slots.is_empty() {
                state.waiters.remove(&call);
            }
        }
    }

    /// No critical section can panic half-way, so a poisoned map is still consistent.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for Outcomes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outcomes")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl Router {
    /// Delivers outcomes until `stop` is cancelled or the own subscription ends, then wakes
    /// every waiter with [`Closed`]. Dropping the subscribers at the end unsubscribes.
    pub async fn run(mut self, stop: CancellationToken) {
        use async_nats::connection::State as Connection;
        let mut poll = tokio::time::interval(CONNECTION_POLL);
        let mut was_connected = true;
        loop {
            let message = tokio::select! {
                () = stop.cancelled() => break,
                _ = poll.tick() => {
                    let connected = self.client.connection_state() == Connection::Connected;
                    if connected && !was_connected {
                        tracing::info!("reconnected; waiting calls look for missed outcomes");
                        self.outcomes.reconnects.send_modify(|n| *n = n.wrapping_add(1));
                    }
                    was_connected = connected;
                    continue;
                }
                next = self.own.next() => match next {
                    Some(message) => (Route::Addressed, message),
                    None => {
                        tracing::warn!("outcome subscription closed");
                        break;
                    }
                },
                Some(message) = self.broadcast.next() => (Route::Broadcast, message),
            };
            let (route, message) = message;
            self.outcomes.deliver(route, &message.payload);
        }
        self.outcomes.close();
    }
}

impl Waiter {
    /// Waits until the attempt's outcome is published; [`Closed`] when the subscription ended
    /// first. Cancel-safe, for `select!`.
    pub async fn outcome(&mut self) -> Result<(), Closed> {
        if let Some(result) = self.result {
            return result;
        }
        let result = (&mut self.woken).await.map_err(|_| Closed);
        self.result = Some(result);
        result
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.outcomes.unregister(self.call, self.id);
    }
}
