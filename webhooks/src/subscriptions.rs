//! The `webhooks` bucket in memory ([`ccm_core::mirror::Mirror`]), so matching an event to its
//! endpoints costs no round trip to NATS.
//!
//! The mirror keeps watching whatever happens to its watch (a server restart, the bucket
//! provisioned again): a frozen copy would go on sending to endpoints disabled or deleted
//! since, and never send to new ones. Each entry carries the bucket revision it was read at,
//! which lets a worker apply its own write (an endpoint it has just disabled) at once instead
//! of waiting for the watch: until the watch caught up, the worker would otherwise go on
//! sending to an endpoint that answered 410 Gone.

use std::{collections::HashMap, sync::Arc, time::Duration};

use async_nats::jetstream;
use ccm_core::{
    metrics::gauge,
    mirror::{Held, Mirror},
    topology::names,
    webhooks::Subscription,
};
use tokio_util::sync::CancellationToken;

/// Subscriptions by id.
#[derive(Debug, Clone)]
pub struct Subscriptions(Mirror<Subscription>);

/// The bucket could not be read in time at start.
#[derive(Debug, thiserror::Error)]
#[error("the webhooks bucket was not read within {0:?}")]
pub struct NotLoaded(Duration);

/// How long start-up waits for the first complete copy.
const LOAD_TIMEOUT: Duration = Duration::from_secs(30);

impl Subscriptions {
    /// Starts following the bucket until `shutdown` and waits for its first complete copy, so
    /// no event is matched against a partial list.
    pub async fn follow(
        js: jetstream::Context,
        shutdown: CancellationToken,
    ) -> Result<Self, NotLoaded> {
        let mirror = Mirror::observed(names::KV_WEBHOOKS, Some(Arc::new(count)));
        tokio::spawn(mirror.clone().follow(js, shutdown));
        if !mirror.wait_synced(LOAD_TIMEOUT).await {
            return Err(NotLoaded(LOAD_TIMEOUT));
        }
        Ok(Self(mirror))
    }

    /// Records `sub` (or its deletion) as of `revision`; an older revision changes nothing.
    pub fn set(&self, key: &str, revision: u64, sub: Option<Arc<Subscription>>) {
        self.0.set(key, revision, sub);
    }

    /// The subscription `id` as it is now.
    pub fn get(&self, id: &str) -> Option<Arc<Subscription>> {
        self.0.get(id)
    }

    /// Every subscription.
    pub fn all(&self) -> Vec<Arc<Subscription>> {
        self.0.values()
    }
}

/// The endpoints gauge, by state.
fn count(entries: &HashMap<String, Held<Subscription>>) {
    let (total, enabled) = entries
        .values()
        .fold((0, 0), |(total, enabled), (_, sub)| match sub {
            Some(sub) => (total + 1, enabled + usize::from(sub.enabled)),
            None => (total, enabled),
        });
    gauge!("ccm_webhooks_endpoints", "state" => "enabled").set(enabled as f64);
    gauge!("ccm_webhooks_endpoints", "state" => "disabled").set((total - enabled) as f64);
}
