//! Leases in PostgreSQL (`webhook_leases`, migration `1300_webhook_leases.sql`) that let
//! several replicas run side by side: exactly one replica pulls `CALL_EVENTS` into the
//! queues (the [`DISPATCH`] lease) and exactly one works each lane of each endpoint
//! ([`lane`]), so every lane is still delivered one message at a time, in queue order.
//!
//! A lease is taken with one atomic upsert that only succeeds when the lease is free,
//! expired or already ours, renewed by [`Leases::keep`] every third of its time to live, and
//! deleted at shutdown. A replica that stops renewing (crashed, cut off from PostgreSQL)
//! loses its leases when they expire, and another replica takes them over.
//!
//! The holder never relies on a lease it might have lost: it remembers, by its own monotonic
//! clock, when it last started a successful renewal, and treats the lease as valid for the
//! time to live from then. PostgreSQL computed the expiry later than that start, so the
//! holder's idea of the expiry is never later than the real one, and no other replica can
//! take the lease before the holder stops using it.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use sqlx::PgPool;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::queue::Lane;

/// The lease of the replica that pulls events and queues them.
pub const DISPATCH: &str = "dispatch";

/// The lease of one lane of one endpoint.
pub fn lane(endpoint: &str, lane: Lane) -> String {
    format!("lane/{endpoint}/{}", lane.as_str())
}

/// The leases this replica holds.
#[derive(Debug)]
pub struct Leases {
    pg: PgPool,
    holder: String,
    ttl: Duration,
    held: Mutex<HashMap<String, Held>>,
}

#[derive(Debug)]
struct Held {
    /// Until when this replica may act on the lease, by its own clock.
    valid_until: Instant,
    /// Cancelled when the lease is lost or released.
    lost: CancellationToken,
}

/// One lease held, as the work it guards sees it.
#[derive(Debug, Clone)]
pub struct Lease {
    name: String,
    leases: Arc<Leases>,
    lost: CancellationToken,
}

impl Lease {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How much longer the lease is certainly ours (zero once lost).
    pub fn remaining(&self) -> Duration {
        self.leases.remaining(&self.name)
    }

    /// Cancelled when the lease is lost (another replica may hold it) or released.
    pub fn lost(&self) -> &CancellationToken {
        &self.lost
    }

    pub fn holder(&self) -> &str {
        &self.leases.holder
    }
}

impl Leases {
    /// A replica's leases; `holder` names the replica (unique among the replicas).
    pub fn new(pg: PgPool, holder: String, ttl: Duration) -> Arc<Self> {
        Arc::new(Self {
            pg,
            holder,
            ttl,
            held: Mutex::default(),
        })
    }

    /// A name for this replica: the host name (the pod's, in Kubernetes) and a random suffix,
    /// so two processes on one host never share leases.
    pub fn holder_name() -> String {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "webhooks".into());
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        format!("{host}-{}", &suffix[..12])
    }

    pub fn holder(&self) -> &str {
        &self.holder
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Held>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn ttl_secs(&self) -> f64 {
        self.ttl.as_secs_f64()
    }

    /// Whether this replica holds `name` now.
    pub fn holds(&self, name: &str) -> bool {
        !self.remaining(name).is_zero()
    }

    fn remaining(&self, name: &str) -> Duration {
        self.lock()
            .get(name)
            .map(|h| h.valid_until.saturating_duration_since(Instant::now()))
            .unwrap_or_default()
    }

    /// Takes those of `names` that are free or expired (or already ours); answers the ones
    /// taken now, in one statement.
    pub async fn acquire(self: &Arc<Self>, names: &[String]) -> Result<Vec<Lease>, sqlx::Error> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let started = Instant::now();
        let taken: Vec<String> = sqlx::query_scalar(
            "INSERT INTO webhook_leases (name, holder, expires_at)
             SELECT n, $2, now() + make_interval(secs => $3) FROM UNNEST($1::text[]) AS t(n)
             ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder,
                 expires_at = EXCLUDED.expires_at
             WHERE webhook_leases.expires_at < now() OR webhook_leases.holder = EXCLUDED.holder
             RETURNING name",
        )
        .bind(names)
        .bind(&self.holder)
        .bind(self.ttl_secs())
        .fetch_all(&self.pg)
        .await?;
        let mut held = self.lock();
        Ok(taken
            .into_iter()
            .map(|name| {
                let entry = held.entry(name.clone()).or_insert_with(|| Held {
                    valid_until: started,
                    lost: CancellationToken::new(),
                });
                entry.valid_until = started + self.ttl;
                Lease {
                    name,
                    leases: self.clone(),
                    lost: entry.lost.clone(),
                }
            })
            .collect())
    }

    /// Renews every lease held, in one statement; those PostgreSQL no longer shows as ours
    /// are lost.
    pub async fn renew(&self) -> Result<(), sqlx::Error> {
        let names: Vec<String> = self.lock().keys().cloned().collect();
        if names.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let renewed: Vec<String> = sqlx::query_scalar(
            "UPDATE webhook_leases SET expires_at = now() + make_interval(secs => $3)
             WHERE name = ANY($1) AND holder = $2 RETURNING name",
        )
        .bind(&names)
        .bind(&self.holder)
        .bind(self.ttl_secs())
        .fetch_all(&self.pg)
        .await?;
        let mut held = self.lock();
        for name in names {
            if renewed.contains(&name) {
                if let Some(h) = held.get_mut(&name) {
                    h.valid_until = started + self.ttl;
                }
            } else if let Some(h) = held.remove(&name) {
                tracing::warn!(lease = %name, "lease lost to another replica");
                h.lost.cancel();
            }
        }
        Ok(())
    }

    /// Renews the leases every third of their time to live until `stop`. A failed renewal
    /// is tried again at the next tick; meanwhile the leases run down and their holders stop
    /// using them in time.
    pub async fn keep(self: Arc<Self>, stop: CancellationToken) {
        let every = self.ttl / 3;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            if let Err(e) = self.renew().await {
                tracing::warn!(error = %ccm_core::telemetry::chain(&e), "cannot renew the webhook leases");
            }
        }
    }

    /// Gives `names` up, so another replica can take them at once.
    pub async fn release(&self, names: &[String]) {
        let names: Vec<String> = {
            let mut held = self.lock();
            names
                .iter()
                .filter_map(|n| held.remove(n).map(|h| (n, h)))
                .map(|(n, h)| {
                    h.lost.cancel();
                    n.clone()
                })
                .collect()
        };
        if names.is_empty() {
            return;
        }
        if let Err(e) =
            sqlx::query("DELETE FROM webhook_leases WHERE name = ANY($1) AND holder = $2")
                .bind(&names)
                .bind(&self.holder)
                .execute(&self.pg)
                .await
        {
            // They expire on their own after the time to live.
            tracing::warn!(error = %ccm_core::telemetry::chain(&e), "cannot release webhook leases");
        }
    }

    /// Gives every lease up (at shutdown, once nothing uses them any more).
    pub async fn release_all(&self) {
        let names: Vec<String> = self.lock().keys().cloned().collect();
        self.release(&names).await;
    }
}
