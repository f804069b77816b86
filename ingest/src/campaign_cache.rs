//! An in-memory copy of the `campaigns` bucket, kept current by a KV watch.
//!
//! Every accepted call needs its campaign's document; reading it from the bucket costs a
//! round trip to NATS per call. The watch delivers every document and then every change, so
//! once it has caught up the cache answers instead. Until it has caught up (or after the
//! watch failed), reads go to the bucket. Writes made by this replica are put in the cache at
//! once, and an entry is only ever replaced by a newer revision, so a client reads its own
//! writes. Another replica's change reaches this cache within the watch's latency
//! (milliseconds): the dialer, which acts on the document, is the one that enforces state.

use std::{
    collections::HashMap,
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use async_nats::jetstream::kv;
use ccm_core::{Campaign, CampaignId};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

/// The cache; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct CampaignCache {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    synced: AtomicBool,
    /// Campaign → (bucket revision, document).
    entries: RwLock<HashMap<CampaignId, (u64, Campaign)>>,
}

impl CampaignCache {
    /// The cached document, when the cache has caught up with the bucket.
    pub fn get(&self, id: CampaignId) -> Option<Campaign> {
        if !self.inner.synced.load(Ordering::Acquire) {
            return None;
        }
        let entries = self.inner.entries.read().unwrap_or_else(|e| e.into_inner());
        entries.get(&id).map(|(_, c)| c.clone())
    }

    /// Every cached document (none until the cache has caught up).
    pub fn all(&self) -> Vec<Campaign> {
        if !self.inner.synced.load(Ordering::Acquire) {
            return Vec::new();
        }
        let entries = self.inner.entries.read().unwrap_or_else(|e| e.into_inner());
        entries.values().map(|(_, c)| c.clone()).collect()
    }

    /// Records a document at `revision` unless a newer one is known.
    pub fn put(&self, revision: u64, campaign: Campaign) {
        let mut entries = self
            .inner
            .entries
            .write()
            .unwrap_or_else(|e| e.into_inner());
        match entries.get(&campaign.id) {
            Some((known, _)) if *known >= revision => {}
            _ => {
                entries.insert(campaign.id, (revision, campaign));
            }
        }
    }

    fn reset(&self) {
        self.inner.synced.store(false, Ordering::Release);
        self.inner
            .entries
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Follows the bucket until `shutdown`; restarts the watch when it fails.
    pub async fn follow(self, bucket: kv::Store, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            if let Err(e) = self.watch_once(&bucket, &shutdown).await {
                tracing::warn!(error = %e, "campaign watch failed; reading the bucket until it is back");
            }
            self.reset();
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    async fn watch_once(
        &self,
        bucket: &kv::Store,
        shutdown: &CancellationToken,
    ) -> Result<(), async_nats::Error> {
        // An empty bucket sends no history: nothing to catch up with. Asked of the server:
        // `kv::Store::status` answers from the stream info cached when the handle was opened.
        let empty = bucket.stream.get_info().await?.state.messages == 0;
        if empty {
            self.inner.synced.store(true, Ordering::Release);
        }
        let mut watch = bucket.watch_with_history(">").await?;
        loop {
            let entry = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                entry = watch.next() => entry,
            };
            let Some(entry) = entry else {
                return Err("the watch ended".into());
            };
            let entry = entry?;
            if entry.operation == kv::Operation::Put {
                match serde_json::from_slice::<Campaign>(&entry.value) {
                    Ok(campaign) => self.put(entry.revision, campaign),
                    Err(e) => {
                        tracing::warn!(error = %e, key = %entry.key, "undecodable campaign document")
                    }
                }
            }
            if entry.delta == 0 {
                self.inner.synced.store(true, Ordering::Release);
            }
        }
    }
}
