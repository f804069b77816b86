//! An in-memory copy of the `campaigns` bucket ([`ccm_core::mirror::Mirror`]).
//!
//! Every accepted call needs its campaign's document; reading it from the bucket costs a
//! round trip to NATS per call. Once the mirror has replayed the bucket, the cache answers
//! instead; until then, and while a watch that ended is being opened again, reads go to the
//! bucket. Writes made by this replica are put in the cache at once, and an entry is only ever
//! replaced by a newer revision, so a client reads its own writes. Another replica's change
//! reaches this cache within the watch's latency (milliseconds): the dialer, which acts on the
//! document, is the one that enforces state.

use std::sync::Arc;

use async_nats::jetstream;
use ccm_core::{Campaign, CampaignId, mirror::Mirror, topology::names};
use tokio_util::sync::CancellationToken;

/// The cache; cheap to clone.
#[derive(Debug, Clone)]
pub struct CampaignCache(Mirror<Campaign>);

impl Default for CampaignCache {
    fn default() -> Self {
        Self(Mirror::new(names::KV_CAMPAIGNS))
    }
}

impl CampaignCache {
    /// The cached document, when the cache is current.
    pub fn get(&self, id: CampaignId) -> Option<Campaign> {
        if !self.0.synced() {
            return None;
        }
        self.0.get(&id.to_string()).map(|c| Campaign::clone(&c))
    }

    /// Every cached document (none unless the cache is current).
    pub fn all(&self) -> Vec<Campaign> {
        if !self.0.synced() {
            return Vec::new();
        }
        self.0.values().iter().map(|c| Campaign::clone(c)).collect()
    }

    /// Records a document at `revision` unless a newer one is known.
    pub fn put(&self, revision: u64, campaign: Campaign) {
        self.0
            .set(&campaign.id.to_string(), revision, Some(Arc::new(campaign)));
    }

    /// Follows the bucket until `shutdown`.
    pub async fn follow(self, js: jetstream::Context, shutdown: CancellationToken) {
        self.0.follow(js, shutdown).await;
    }
}
