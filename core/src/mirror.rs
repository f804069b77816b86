//! An in-memory copy of a KV bucket, kept current by a watch: the one implementation every
//! service uses (ingest's campaigns, the webhooks service's subscriptions).
//!
//! Each watch replays the bucket (the last value of every key) and then follows its changes;
//! the copy is *synced* once a watch has delivered the whole replay. A watch that ends or
//! fails is opened again, on the bucket looked up again by name, so a server restart, a
//! deleted consumer or a bucket deleted and provisioned again all end in a current copy. While
//! a new watch catches up, readers keep the last complete copy ([`Mirror::get`]) and
//! [`Mirror::synced`] says false, so a reader that must not act on stale data (ingest reads the
//! bucket instead) can tell. The new watch's replay is built aside and swapped in whole once
//! complete: a key deleted while no watch ran disappears, and a bucket created anew (whose
//! revisions start again at 1) replaces the old copy instead of losing to its higher revisions.
//!
//! A process's own writes are recorded at once with their revision ([`Mirror::set`]), and an
//! entry is only ever replaced by a newer revision, so a writer reads its own writes before the
//! watch brings them back.

use std::{
    collections::HashMap,
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

/// A key's value as of a bucket revision; `None` once deleted (kept so that a replayed older
/// put cannot bring it back).
pub type Held<V> = (u64, Option<Arc<V>>);

/// Called after every change with the whole copy (e.g. to set a gauge).
pub type Observer<V> = Arc<dyn Fn(&HashMap<String, Held<V>>) + Send + Sync>;

/// The copy; cheap to clone.
pub struct Mirror<V> {
    inner: Arc<Inner<V>>,
}

impl<V> Clone for Mirror<V> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<V> std::fmt::Debug for Mirror<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mirror")
            .field("bucket", &self.inner.bucket)
            .field("synced", &self.synced())
            .finish_non_exhaustive()
    }
}

struct Inner<V> {
    bucket: String,
    synced: AtomicBool,
    entries: RwLock<HashMap<String, Held<V>>>,
    /// The replay of a watch that has not caught up yet; swapped in whole when it has.
    building: std::sync::Mutex<Option<HashMap<String, Held<V>>>>,
    observer: Option<Observer<V>>,
}

/// How long to wait before opening a watch again: short, since readers fall back meanwhile.
const REWATCH_MIN: Duration = Duration::from_millis(250);
const REWATCH_MAX: Duration = Duration::from_secs(10);

impl<V: DeserializeOwned + Send + Sync + 'static> Mirror<V> {
    /// An empty copy of `bucket`, not synced, until [`Mirror::follow`] runs.
    pub fn new(bucket: &str) -> Self {
        Self::observed(bucket, None)
    }

    /// As [`Mirror::new`], calling `observer` after every change.
    pub fn observed(bucket: &str, observer: Option<Observer<V>>) -> Self {
        Self {
            inner: Arc::new(Inner {
                bucket: bucket.to_owned(),
                synced: AtomicBool::new(false),
                entries: RwLock::new(HashMap::new()),
                building: std::sync::Mutex::new(None),
                observer,
            }),
        }
    }

    /// A copy of `bucket` followed by a task until `shutdown`.
    pub fn spawn(js: jetstream::Context, bucket: &str, shutdown: CancellationToken) -> Self {
        let mirror = Self::new(bucket);
        tokio::spawn(mirror.clone().follow(js, shutdown));
        mirror
    }

    /// Waits until the copy is synced, at most `timeout`; whether it is.
    pub async fn wait_synced(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.synced() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// Follows the bucket until `shutdown`, watching again whenever a watch ends.
    pub async fn follow(self, js: jetstream::Context, shutdown: CancellationToken) {
        let mut delay = REWATCH_MIN;
        while !shutdown.is_cancelled() {
            match self.watch_once(&js, &shutdown).await {
                Ok(()) => return,
                Err(e) => {
                    self.inner.synced.store(false, Ordering::Release);
                    tracing::warn!(bucket = %self.inner.bucket, error = %crate::telemetry::chain(&*e),
                        "bucket watch ended; watching again (readers keep the last copy)");
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(REWATCH_MAX);
        }
    }

    /// One watch, from the replay until it ends (an error) or `shutdown` (`Ok`).
    async fn watch_once(
        &self,
        js: &jetstream::Context,
        shutdown: &CancellationToken,
    ) -> Result<(), async_nats::Error> {
        let store = js.get_key_value(&self.inner.bucket).await?;
        // An empty bucket replays nothing: it is caught up at once. Asked of the server, since
        // `kv::Store::status` answers from the stream info cached when the handle was opened.
        let empty = store.stream.get_info().await?.state.messages == 0;
        let mut watch = store.watch_with_history(">").await?;
        *self.building() = Some(HashMap::new());
        if empty {
            self.swap_in();
        }
        loop {
            let entry = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                entry = watch.next() => entry,
            };
            let entry = entry.ok_or("the watch ended")??;
            let value = match entry.operation {
                kv::Operation::Put => match serde_json::from_slice::<V>(&entry.value) {
                    Ok(value) => Some(Arc::new(value)),
                    Err(e) => {
                        tracing::warn!(bucket = %self.inner.bucket, key = %entry.key, error = %crate::telemetry::chain(&e),
                            "undecodable entry ignored");
                        None
                    }
                },
                kv::Operation::Delete | kv::Operation::Purge => None,
            };
            self.set(&entry.key, entry.revision, value);
            if entry.delta == 0 {
                self.swap_in();
            }
        }
    }

    /// Replaces the copy with the replay just completed (which holds this process's own
    /// writes made meanwhile: [`Mirror::set`] records them in both).
    fn swap_in(&self) {
        let Some(replay) = self.building().take() else {
            return;
        };
        let mut entries = self.write();
        *entries = replay;
        self.observe(&entries);
        drop(entries);
        self.inner.synced.store(true, Ordering::Release);
    }
}

impl<V> Mirror<V> {
    /// Whether the copy is complete and current (a watch has replayed the bucket and still runs).
    pub fn synced(&self) -> bool {
        self.inner.synced.load(Ordering::Acquire)
    }

    /// The value of `key` in the last complete copy.
    pub fn get(&self, key: &str) -> Option<Arc<V>> {
        self.read().get(key).and_then(|(_, value)| value.clone())
    }

    /// Every value of the last complete copy.
    pub fn values(&self) -> Vec<Arc<V>> {
        self.read()
            .values()
            .filter_map(|(_, value)| value.clone())
            .collect()
    }

    /// Records `value` (or, `None`, a deletion) of `key` as of `revision`, unless a newer
    /// revision is already held: a writer's own change, before the watch brings it back.
    pub fn set(&self, key: &str, revision: u64, value: Option<Arc<V>>) {
        if let Some(building) = self.building().as_mut() {
            record(building, key, revision, value.clone());
        }
        let mut entries = self.write();
        if record(&mut entries, key, revision, value) {
            self.observe(&entries);
        }
    }

    fn building(&self) -> std::sync::MutexGuard<'_, Option<HashMap<String, Held<V>>>> {
        self.inner
            .building
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn observe(&self, entries: &HashMap<String, Held<V>>) {
        if let Some(observer) = &self.inner.observer {
            observer(entries);
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Held<V>>> {
        self.inner.entries.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Held<V>>> {
        self.inner
            .entries
            .write()
            .unwrap_or_else(|e| e.into_inner())
    }
}

/// Records `value` of `key` at `revision` unless a newer revision is held; whether it did.
fn record<V>(
    entries: &mut HashMap<String, Held<V>>,
    key: &str,
    revision: u64,
    value: Option<Arc<V>>,
) -> bool {
    if entries.get(key).is_some_and(|(held, _)| *held >= revision) {
        return false;
    }
    entries.insert(key.to_owned(), (revision, value));
    true
}
