//! The lane workers of this replica: for every subscription, each of its two lanes whose
//! lease this replica could take gets a [`Worker`].
//!
//! Leases of lanes nobody works are tried about once a second, all in one statement, so a
//! new subscription, or the lanes of a replica that stopped or crashed, are picked up
//! within a second of becoming free. A replica keeps what it has until it stops: lanes are
//! not rebalanced while every replica is healthy.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, Weak},
    time::Duration,
};

use tokio::{sync::Notify, task::JoinSet, time::Instant};
use tokio_util::sync::CancellationToken;

use crate::{
    deliver::{Shared, Worker},
    health::Health,
    lease::{self, Lease, Leases},
    queue::{self, Lane},
    subscriptions::Subscriptions,
};

/// How often free lanes are looked for.
const ACQUIRE_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct Workers {
    pub shared: Arc<Shared>,
    leases: Arc<Leases>,
    /// (endpoint, lane) → the worker's wake-up.
    running: HashMap<(String, Lane), Arc<Notify>>,
    /// An endpoint's health, shared by its lanes that run here (either one's success ends the
    /// run of failures).
    health: HashMap<String, Weak<Mutex<Health>>>,
    shutdown: CancellationToken,
    tasks: JoinSet<(String, Lane)>,
    last_acquire: Option<Instant>,
}

impl Workers {
    pub fn new(shared: Arc<Shared>, leases: Arc<Leases>, shutdown: CancellationToken) -> Self {
        Self {
            shared,
            leases,
            running: HashMap::new(),
            health: HashMap::new(),
            shutdown,
            tasks: JoinSet::new(),
            last_acquire: None,
        }
    }

    /// Forgets the workers that ended and starts workers for the lanes whose leases could be
    /// taken (at most once per [`ACQUIRE_EVERY`]).
    pub async fn sync(&mut self, subscriptions: &Subscriptions) {
        while let Some(ended) = self.tasks.try_join_next() {
            if let Ok(ended) = ended {
                self.running.remove(&ended);
            }
        }
        if self
            .last_acquire
            .is_some_and(|at| at.elapsed() < ACQUIRE_EVERY)
        {
            return;
        }
        self.last_acquire = Some(Instant::now());
        let mut free = HashMap::new();
        for sub in subscriptions.all() {
            for lane in [Lane::Live, Lane::Manual] {
                if !self.running.contains_key(&(sub.id.clone(), lane)) {
                    free.insert(lease::lane(&sub.id, lane), (sub.id.clone(), lane));
                }
            }
        }
        if free.is_empty() {
            return;
        }
        let names: Vec<String> = free.keys().cloned().collect();
        let taken = match self.leases.acquire(&names).await {
            Ok(taken) => taken,
            Err(e) => {
                tracing::warn!(error = %ccm_core::telemetry::chain(&e), "cannot take webhook lane leases");
                return;
            }
        };
        for lease in taken {
            if let Some((endpoint, lane)) = free.remove(lease.name()) {
                tracing::debug!(%endpoint, lane = lane.as_str(), "lane lease taken");
                let health = self.health_of(&endpoint).await;
                self.start(endpoint, lane, lease, health);
            }
        }
    }

    /// The endpoint's health, read back from the log when none of its lanes runs here yet, so
    /// the run of failures survives restarts and takeovers.
    async fn health_of(&mut self, endpoint: &str) -> Arc<Mutex<Health>> {
        if let Some(health) = self.health.get(endpoint).and_then(Weak::upgrade) {
            return health;
        }
        let since = queue::failing_since(&self.shared.pg, endpoint)
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(%endpoint, error = %ccm_core::telemetry::chain(&e), "cannot read the endpoint's failures");
                None
            });
        let health = Arc::new(Mutex::new(Health::failing_since(since)));
        self.health.retain(|_, h| h.strong_count() > 0);
        self.health
            .insert(endpoint.to_owned(), Arc::downgrade(&health));
        health
    }

    fn start(&mut self, endpoint: String, lane: Lane, lease: Lease, health: Arc<Mutex<Health>>) {
        let wake = Arc::new(Notify::new());
        let worker = Worker {
            endpoint: endpoint.clone(),
            lane,
            shared: self.shared.clone(),
            health,
            wake: wake.clone(),
            lease: lease.clone(),
        };
        let (shutdown, leases) = (self.shutdown.clone(), self.leases.clone());
        self.running.insert((endpoint.clone(), lane), wake);
        self.tasks.spawn(async move {
            worker.run(shutdown.clone()).await;
            // The subscription was deleted or the lease lost (a no-op then). At shutdown all
            // leases are released together once every worker has ended.
            if !shutdown.is_cancelled() {
                leases.release(&[lease.name().to_owned()]).await;
            }
            (endpoint, lane)
        });
    }

    /// Wakes the endpoint's live lane if it runs here; elsewhere it finds its messages at its
    /// next poll.
    pub fn wake(&self, endpoint: &str) {
        if let Some(wake) = self.running.get(&(endpoint.to_owned(), Lane::Live)) {
            wake.notify_one();
        }
    }

    /// Stops every worker and waits for them.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}
