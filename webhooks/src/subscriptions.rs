//! The `webhooks` bucket in memory, kept current by a watch, so matching an event to its
//! endpoints costs no round trip to NATS.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use async_nats::jetstream::kv::{self, Operation};
use ccm_core::webhooks::Subscription;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

/// Subscriptions by id.
#[derive(Debug, Clone, Default)]
pub struct Subscriptions(Arc<RwLock<HashMap<String, Arc<Subscription>>>>);

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
            if let Some(value) = store.get(&key).await? {
                this.apply(&key, Some(&value));
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
                        cache.apply(&entry.key, value.map(|v| &v[..]));
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

    fn apply(&self, key: &str, value: Option<&[u8]>) {
        let mut map = self.0.write().unwrap_or_else(|e| e.into_inner());
        match value.map(serde_json::from_slice::<Subscription>) {
            Some(Ok(sub)) => {
                map.insert(key.to_owned(), Arc::new(sub));
            }
            Some(Err(e)) => {
                tracing::warn!(%key, error = %e, "unreadable webhook subscription ignored");
                map.remove(key);
            }
            None => {
                map.remove(key);
            }
        }
    }

    /// The subscription `id` as it is now.
    pub fn get(&self, id: &str) -> Option<Arc<Subscription>> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    /// Every subscription.
    pub fn all(&self) -> Vec<Arc<Subscription>> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }
}
