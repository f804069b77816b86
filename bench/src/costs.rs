//! What one call costs the servers: JetStream writes and stored bytes per stream (buckets are
//! streams too), JetStream API requests, and PostgreSQL row writes and table bytes. Read
//! before and after the end-to-end phase and divided by its calls; `docs/capacity.md` builds
//! its model from these figures rather than from guesses.
//!
//! A stream's writes are its last sequence's growth, so a message already removed again (a
//! dial message acked off the work queue, a claim deleted at the end of a call) still counts
//! as the write it was. Stored bytes are what the stream holds at the end: what a call leaves
//! behind until retention removes it. PostgreSQL's counts come from `pg_stat_user_tables`,
//! whose counters reach the view up to a second after a transaction ends, so the reading
//! after the phase waits for them to settle.

use std::{collections::BTreeMap, time::Duration};

use async_nats::jetstream;
use futures::TryStreamExt;
use sqlx::PgPool;

use crate::report::Figure;

/// One stream's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Stream {
    last_seq: u64,
    bytes: u64,
}

/// One table's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Table {
    /// Rows inserted plus rows updated plus rows deleted.
    writes: i64,
    bytes: i64,
}

/// The servers' counters at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    streams: BTreeMap<String, Stream>,
    api_requests: u64,
    tables: BTreeMap<String, Table>,
    /// How many readings this snapshot took (each costs API requests of its own).
    readings: u64,
}

impl Snapshot {
    /// Reads every stream, the account's API counter and every table.
    pub async fn take(js: &jetstream::Context, pool: &PgPool) -> anyhow::Result<Self> {
        let mut streams = BTreeMap::new();
        let mut list = js.streams();
        while let Some(info) = list.try_next().await? {
            streams.insert(
                info.config.name.clone(),
                Stream {
                    last_seq: info.state.last_sequence,
                    bytes: info.state.bytes,
                },
            );
        }
        let api_requests = js.query_account().await?.requests.total;
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT relname::text, n_tup_ins + n_tup_upd + n_tup_del, \
             pg_total_relation_size(relid) FROM pg_stat_user_tables",
        )
        .fetch_all(pool)
        .await?;
        let tables = rows
            .into_iter()
            .map(|(name, writes, bytes)| (name, Table { writes, bytes }))
            .collect();
        Ok(Self {
            streams,
            api_requests,
            tables,
            readings: 1,
        })
    }

    /// Reads again until two readings a second apart agree (PostgreSQL's statistics have
    /// reached the view and the services are quiet), at most `within`.
    pub async fn settled(
        js: &jetstream::Context,
        pool: &PgPool,
        within: Duration,
    ) -> anyhow::Result<Self> {
        let deadline = tokio::time::Instant::now() + within;
        let mut last = Self::take(js, pool).await?;
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let mut now = Self::take(js, pool).await?;
            now.readings = last.readings + 1;
            // The API counter moves with every reading of ours, so it is left out of the
            // comparison.
            let quiet = now.streams == last.streams && now.tables == last.tables;
            if quiet || tokio::time::Instant::now() > deadline {
                return Ok(now);
            }
            last = now;
        }
    }
}

/// The costs per call between two snapshots, as report figures, largest first within each
/// kind. Streams and tables with no change are left out.
pub fn per_call(before: &Snapshot, after: &Snapshot, calls: usize) -> Vec<Figure> {
    let n = calls.max(1) as f64;
    let mut figures = Vec::new();
    let mut writes: Vec<(String, f64, f64)> = after
        .streams
        .iter()
        .map(|(name, s)| {
            let b = before.streams.get(name).copied().unwrap_or_default();
            let written = s.last_seq.saturating_sub(b.last_seq) as f64 / n;
            let stored = (s.bytes as f64 - b.bytes as f64) / n;
            (name.clone(), written, stored)
        })
        .filter(|(_, w, s)| *w > 0.0 || *s != 0.0)
        .collect();
    writes.sort_by(|a, b| b.1.total_cmp(&a.1));
    let total_writes: f64 = writes.iter().map(|w| w.1).sum();
    let total_stored: f64 = writes.iter().map(|w| w.2).sum();
    figures.push(Figure::new(
        "cost.js.writes",
        total_writes,
        "msgs/call",
        format!(
            "JetStream messages written per call, all streams and buckets: {}",
            writes
                .iter()
                .map(|(name, w, _)| format!("{name} {w:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    ));
    figures.push(Figure::new(
        "cost.js.stored",
        total_stored,
        "B/call",
        format!(
            "bytes a call leaves stored (before retention), by stream: {}",
            writes
                .iter()
                .map(|(name, _, s)| format!("{name} {s:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    ));
    // Our own readings' requests (stream list pages, account info) are not the call's.
    let ours = after.readings * (after.streams.len() as u64 / 256 + 2);
    let api = after
        .api_requests
        .saturating_sub(before.api_requests)
        .saturating_sub(ours) as f64
        / n;
    figures.push(Figure::new(
        "cost.js.api",
        api,
        "requests/call",
        "JetStream API requests per call (consumer and stream requests; not publishes, pulls, \
         acks or direct gets), the benchmark's own readings taken out",
    ));
    let mut tables: Vec<(String, f64, f64)> = after
        .tables
        .iter()
        .map(|(name, t)| {
            let b = before.tables.get(name).copied().unwrap_or_default();
            (
                name.clone(),
                (t.writes - b.writes) as f64 / n,
                (t.bytes - b.bytes) as f64 / n,
            )
        })
        .filter(|(_, w, b)| *w != 0.0 || *b != 0.0)
        .collect();
    tables.sort_by(|a, b| b.1.total_cmp(&a.1));
    figures.push(Figure::new(
        "cost.pg.writes",
        tables.iter().map(|t| t.1).sum(),
        "rows/call",
        format!(
            "PostgreSQL rows inserted, updated or deleted per call: {}",
            tables
                .iter()
                .map(|(name, w, _)| format!("{name} {w:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    ));
    figures.push(Figure::new(
        "cost.pg.bytes",
        tables.iter().map(|t| t.2).sum(),
        "B/call",
        format!(
            "PostgreSQL table and index growth per call: {}",
            tables
                .iter()
                .map(|(name, _, b)| format!("{name} {b:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    ));
    figures
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(streams: &[(&str, u64, u64)], api: u64, tables: &[(&str, i64, i64)]) -> Snapshot {
        Snapshot {
            streams: streams
                .iter()
                .map(|(n, last_seq, bytes)| {
                    (
                        (*n).to_owned(),
                        Stream {
                            last_seq: *last_seq,
                            bytes: *bytes,
                        },
                    )
                })
                .collect(),
            api_requests: api,
            readings: 2,
            tables: tables
                .iter()
                .map(|(n, writes, bytes)| {
                    (
                        (*n).to_owned(),
                        Table {
                            writes: *writes,
                            bytes: *bytes,
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn costs_are_the_growth_divided_by_the_calls() {
        let before = snapshot(
            &[("CALLS", 10, 1_000), ("CALL_EVENTS", 100, 50_000)],
            1_000,
            &[("calls", 5, 8_192)],
        );
        let after = snapshot(
            &[
                ("CALLS", 110, 1_000),
                ("CALL_EVENTS", 700, 350_000),
                ("KV_claims", 200, 0),
                ("KV_idle", 0, 0),
            ],
            1_000 + 500 + 2 * 2,
            &[("calls", 305, 90_112), ("call_events", 600, 163_840)],
        );
        let figures = per_call(&before, &after, 100);
        let get = |name: &str| figures.iter().find(|f| f.name == name).unwrap();
        assert_eq!(get("cost.js.writes").value, 1.0 + 6.0 + 2.0);
        assert!(
            get("cost.js.writes")
                .conditions
                .starts_with("JetStream messages written per call, all streams and buckets: CALL_EVENTS 6.00, KV_claims 2.00, CALLS 1.00"),
            "{}",
            get("cost.js.writes").conditions
        );
        assert!(!get("cost.js.writes").conditions.contains("KV_idle"));
        assert_eq!(get("cost.js.stored").value, 3_000.0);
        assert_eq!(get("cost.js.api").value, 5.0);
        assert_eq!(get("cost.pg.writes").value, 3.0 + 6.0);
        assert_eq!(get("cost.pg.bytes").value, 819.2 + 1_638.4);
    }
}
