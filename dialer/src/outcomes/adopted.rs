//! Listening to another dialer's address while this one waits for attempts that dialer
//! placed.
//!
//! A dialer that stops (a restart, a crash, a scale-in) leaves its calls' dial messages to be
//! redelivered to another replica, which finds each attempt placed and only waits for its
//! outcome. The outcome's copy still goes to the address the `Dialing` event names, the old
//! one. The replica that took the attempt over listens to that address for as long as it
//! waits: one subscription per adopted address, shared by all the calls adopted from it, and
//! dropped with the last of them. Several survivors may listen to one address at once (each
//! took some of its calls); each then also hears the others' outcomes of it, for at most as
//! long as those calls last.

use std::collections::hash_map::Entry;

use async_nats::Subscriber;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::{Address, Outcomes, Route, StartError, subscribe};

/// One adopted address: how many waiting calls need it, and how to stop listening.
pub(super) struct Listening {
    calls: usize,
    stop: CancellationToken,
}

impl Listening {
    pub(super) fn stop(&self) {
        self.stop.cancel();
    }
}

/// Keeps another dialer's address heard; dropping it stops listening once no other waiting
/// call needs that address.
#[derive(Debug)]
#[must_use = "dropping the adoption stops listening"]
pub struct Adoption {
    outcomes: Outcomes,
    /// `None`: this process's own address, heard anyway.
    address: Option<Address>,
}

impl Outcomes {
    /// Listens to `address`, another dialer's, until the returned [`Adoption`] (and every
    /// other one of that address) is dropped. The subscription is at the server when this
    /// returns: an outcome copied before that was stored before, so the caller reads the
    /// stream once after adopting.
    pub async fn adopt(&self, address: Address) -> Result<Adoption, StartError> {
        if address == *self.address {
            return Ok(Adoption {
                outcomes: self.clone(),
                address: None,
            });
        }
        let adoption = Adoption {
            outcomes: self.clone(),
            address: Some(address.clone()),
        };
        if let Some(listening) = self.lock().adopted.get_mut(&address) {
            listening.calls += 1;
            return Ok(adoption);
        }
        let subject = ccm_core::subjects::dialer_outcome(address.as_str());
        let subscriber = subscribe(&self.client, subject).await?;
        let mut state = self.lock();
        match state.adopted.entry(address) {
            // Another call adopted it meanwhile: this subscription is dropped (unsubscribed).
            Entry::Occupied(mut listening) => listening.get_mut().calls += 1,
            Entry::Vacant(vacant) => {
                let stop = CancellationToken::new();
                vacant.insert(Listening {
                    calls: 1,
                    stop: stop.clone(),
                });
                tokio::spawn(listen(self.clone(), subscriber, stop));
            }
        }
        Ok(adoption)
    }

    /// How many other dialers' addresses this one listens to.
    pub fn adopted(&self) -> usize {
        self.lock().adopted.len()
    }
}

/// Delivers an adopted address's outcomes until it is no longer needed; dropping the
/// subscriber unsubscribes.
async fn listen(outcomes: Outcomes, mut subscriber: Subscriber, stop: CancellationToken) {
    loop {
        // Biased: once stopped, nothing more is delivered or counted.
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            next = subscriber.next() => match next {
                Some(message) => outcomes.deliver(Route::Adopted, &message.payload),
                None => break,
            },
        }
    }
}

impl Drop for Adoption {
    fn drop(&mut self) {
        let Some(address) = self.address.take() else {
            return;
        };
        let mut state = self.outcomes.lock();
        if let Entry::Occupied(mut listening) = state.adopted.entry(address) {
            listening.get_mut().calls -= 1;
            if listening.get().calls == 0 {
                listening.remove().stop();
            }
        }
    }
}
