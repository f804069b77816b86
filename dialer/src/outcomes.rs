//! Routes carrier outcomes to the calls waiting for them: one subscription per dialer
//! process, not one per call.
//!
//! A call waits for its outcome for as long as it lasts, so a dialer with 100,000 live calls
//! has 100,000 waiters. With a core subscription per call each of them cost a SUB and an
//! UNSUB on the server and, in the client, a subscriber whose channel allocates a block of 32
//! message slots at once: about 15 KiB per live call. Here the dialer subscribes once to
//! every outcome ([`subjects::OUTCOME_ALL`]) and [`Router::run`] forwards each one to the
//! call registered for it ([`Outcomes::register`]). A waiting call costs a map entry and a
//! one-shot channel that carries no data: a few hundred bytes.
//!
//! Every replica receives every outcome. The router reads only the call id from the subject,
//! so the outcomes of calls held by other replicas are dropped without parsing the payload.
//! For a call registered here it reads the attempt and wakes only the waiters of that
//! attempt: an outcome of another attempt leaves them waiting, as the per-call loop did.
//!
//! When the subscription ends (the client is closed or drained, or the router is stopped),
//! every waiter is woken with [`Closed`] and later registrations are closed at once, so a
//! call hands its dial message back instead of waiting for an outcome it could never see.
//! A reconnect does not end the subscription: the client subscribes again on the new
//! connection and the same stream of messages continues, so waiters keep waiting. An outcome
//! published while the connection was down is not delivered, though it is stored in
//! `CALL_EVENTS`: so the router announces each reconnect ([`Outcomes::reconnects`]), and a
//! waiting call then reads its outcome from the stream (and also every so often, for a
//! disconnection too short to be noticed), rather than holding its slot until its deadline.
//!
//! The client buffers up to 65,536 messages of a subscription (async-nats' default) and
//! drops what is past that. The router does no I/O and takes a lock only for a map look-up,
//! so it keeps far ahead of any outcome rate the carriers produce.

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
}

/// How often the router looks at the connection, to notice a reconnect.
const CONNECTION_POLL: std::time::Duration = std::time::Duration::from_millis(250);

/// Reads the dialer's outcome subscription and wakes the registered waiters.
#[derive(Debug)]
pub struct Router {
    outcomes: Outcomes,
    subscriber: Subscriber,
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

/// Why the outcome subscription could not be made.
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
}

struct Slot {
    id: u64,
    attempt: u32,
    wake: oneshot::Sender<()>,
}

impl Outcomes {
    /// Subscribes to every outcome. The subscription is known to the server when this
    /// returns, before any call can register (see [`Outcomes::register`]); run the returned
    /// [`Router`] to deliver outcomes.
    pub async fn subscribe(client: &Client) -> Result<(Self, Router), StartError> {
        let subscriber = client
            .subscribe(subjects::OUTCOME_ALL)
            .await
            .map_err(StartError::Subscribe)?;
        client.flush().await.map_err(StartError::Flush)?;
        let outcomes = Self {
            state: Arc::default(),
            reconnects: Arc::new(watch::Sender::new(0)),
        };
        let router = Router {
            outcomes: outcomes.clone(),
            subscriber,
            client: client.clone(),
        };
        Ok((outcomes, router))
    }

    /// Registers a waiter for `attempt` of `call`, before the call looks up what the stream
    /// knows: the subscription is already in place at the server, so an outcome published
    /// from now on reaches the router after this entry exists, and one the router handled
    /// earlier had reached this client before the look-up was sent, so the look-up reads it
    /// from the stream (relying, as a per-call subscription did, on the stream having stored
    /// an outcome by the time its subscribers receive it).
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
    fn deliver(&self, subject: &str, payload: &[u8]) {
        let Some(call) = subjects::outcome_call(subject) else {
            return;
        };
        if !self.lock().waiters.contains_key(&call) {
            return;
        }
        // Parsed outside the lock, so registrations need not wait for it.
        let Ok(event) = serde_json::from_slice::<CallEvent>(payload) else {
            tracing::debug!(subject, "undecodable outcome; its call keeps waiting");
            return;
        };
        let mut state = self.lock();
        let Some(slots) = state.waiters.get_mut(&call) else {
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
            state.waiters.remove(&call);
        }
    }

    /// Ends every wait: dropping the senders wakes each waiter with [`Closed`].
    fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        state.waiters = HashMap::new();
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
        f.debug_struct("Outcomes").finish_non_exhaustive()
    }
}

impl Router {
    /// Delivers outcomes until `stop` is cancelled or the subscription ends, then wakes every
    /// waiter with [`Closed`]. Dropping the subscriber at the end unsubscribes.
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
                next = self.subscriber.next() => match next {
                    Some(message) => message,
                    None => {
                        tracing::warn!("outcome subscription closed");
                        break;
                    }
                },
            };
            self.outcomes.deliver(&message.subject, &message.payload);
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
