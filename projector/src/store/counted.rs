//! Which new messages count: the first message of each `(call, attempt, kind)` fact
//! ([`Item::counted_fact`]). A fact re-published under another `Nats-Msg-Id` outside the
//! server's duplicate window is a new stream message, recorded in `call_events` like any other,
//! but its duration, outcome and concurrency were already counted.

use std::collections::{BTreeMap, HashSet};

use sqlx::PgConnection;
use uuid::Uuid;

use crate::fold::Item;

/// The first message of each fact among `items` (lowest sequence), in key order so that
/// concurrent writers lock the rows in the same order. Pure: the plan of [`record`].
pub(crate) fn firsts<'a>(items: &[&'a Item]) -> BTreeMap<(Uuid, i32, &'static str), &'a Item> {
    let mut firsts: BTreeMap<(Uuid, i32, &'static str), &Item> = BTreeMap::new();
    for item in items {
        if let Some(fact) = item.counted_fact() {
            firsts
                .entry(fact)
                .and_modify(|kept| {
                    if item.seq() < kept.seq() {
                        *kept = item;
                    }
                })
                .or_insert(item);
        }
    }
    firsts
}

/// Records the facts of `items` (messages new in `call_events`, all of one stream) in
/// `counted_facts`; returns the sequences of the messages that count, those whose fact was
/// not counted before. Within the caller's transaction, so a failed batch counts nothing.
pub(crate) async fn record(
    items: &[&Item],
    conn: &mut PgConnection,
) -> Result<HashSet<i64>, sqlx::Error> {
    let firsts = firsts(items);
    if firsts.is_empty() {
        return Ok(HashSet::new());
    }
    let n = firsts.len();
    let (mut calls, mut attempts, mut kinds, mut seqs) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for ((call, attempt, kind), item) in &firsts {
        calls.push(*call);
        attempts.push(*attempt);
        kinds.push(*kind);
        seqs.push(i64::try_from(item.seq()).unwrap_or(i64::MAX));
    }
    let counted: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO counted_facts (call_id, attempt, kind, seq)
         SELECT * FROM UNNEST($1::uuid[], $2::int4[], $3::text[], $4::int8[])
         ORDER BY 1, 2, 3
         ON CONFLICT (call_id, attempt, kind) DO NOTHING
         RETURNING seq",
    )
    .bind(&calls)
    .bind(&attempts)
    .bind(&kinds)
    .bind(&seqs)
    .fetch_all(conn)
    .await?;
    Ok(counted.into_iter().collect())
}
