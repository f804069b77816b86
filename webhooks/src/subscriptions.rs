//! The `webhooks` bucket in memory, kept current by a watch, so matching an event to its
//! endpoints costs no round trip to NATS.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use async_nats::jetstream::kv::{self, Operation};
use ccm_core::{metrics::gauge, webhooks::Subscription};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

/// Subscriptions by id, each with the bucket revision it was read at.
///
/// The revision lets a worker apply its own write (an endpoint it has just disabled) at once
/// instead of waiting for the watch: until the watch caught up, the worker would otherwise go
/// on sending to an endpoint that answered 410 Gone. The watch's later copy of the same
/// write, or any older entry, is then ignored.
#[derive(Debug, Clone, Default)]
pub struct Subscriptions(Arc<RwLock<HashMap<String, Held>>>);

/// A subscription's document as of a bucket revision; `None` once deleted.
type Held = (u64, Option<Arc<Subscription>>);

impl Subscriptions {
    /// Loads the bucket and keeps following it until `shutdown`. The watch is opened before
    /// the load so no change made in between is missed; replaying one already loaded is
    /// harmless because entries arrive in order and the last one wins.
    pub async fn follow(
        store: kv::Store,
        shutdown: CancellationToken,
    ) -> Result<Self, async_nats::Error> {
        let this = Self::default();
        let mut watch = store.watch_all().await?;
        let mut keys = store.keys().await?;
        while let Some(key) = keys.next().await {
            let key = key?;
            if let Some(entry) = store.entry(&key).await? {
                let value = matches!(entry.operation, Operation::Put).then_some(&entry.value);
                this.apply(&key, entry.revision, value.map(|v| &v[..]));
            }
        }
        let cache = this.clone();
        tokio::spawn(async move {
            loop {
                let entry = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    entry = watch.next() => entry,
                };
                match entry {
                    Some(Ok(entry)) => {
                        let value =
                            matches!(entry.operation, Operation::Put).then_some(&entry.value);
                        cache.apply(&entry.key, entry.revision, value.map(|v| &v[..]));
                    }
                    Some(Err(e)) => tracing::warn!(error = %e, "webhooks bucket watch error"),
                    None => {
                        tracing::error!("webhooks bucket watch ended; subscriptions are frozen");
                        return;
                    }
                }
            }
        });
        Ok(this)
    }

    /// Applies the entry of `key` at `revision`, unless a newer one is already held.
    fn apply(&self, key: &str, revision: u64, value: Option<&[u8]>) {
        let sub = match value.map(serde_json::from_slice::<Subscription>) {
            Some(Ok(sub)) => Some(Arc::new(sub)),
            Some(Err(e)) => {
                tracing::warn!(%key, error = %e, "unreadable webhook subscription ignored");
                None
            }
            None => None,
        };
        self.set(key, revision, sub);
    }

    /// Records `sub` (or its deletion) as of `revision`; an older revision changes nothing.
    pub fn set(&self, key: &str, revision: u64, sub: Option<Arc<Subscription>>) {
        let mut map = self.0.write().unwrap_or_else(|e| e.into_inner());
        if map.get(key).is_some_and(|(held, _)| *held >= revision) {
            return;
        }
        // A deletion is kept as a tombstone with its revision, so a replayed older put
        // cannot bring the subscription back.
        map.insert(key.to_owned(), (revision, sub));
        let (total, enabled) = map
            .values()
            .fold((0, 0), |(total, enabled), (_, sub)| match sub {
                Some(sub) => (total + 1, enabled + usize::from(sub.enabled)),
                None => (total, enabled),
            });
        gauge!("ccm_webhooks_endpoints", "state" => "enabled").set(enabled as f64);
        gauge!("ccm_webhooks_endpoints", "state" => "disabled").set((total - enabled) as f64);
    }

    /// The subscription `id` as it is now.
    pub fn get(&self, id: &str) -> Option<Arc<Subscription>> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .and_then(|(_, sub)| sub.clone())
    }

    /// Every subscription.
    pub fn all(&self) -> Vec<Arc<Subscription>> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter_map(|(_, sub)| sub.clone())
            .collect()
    }
}
