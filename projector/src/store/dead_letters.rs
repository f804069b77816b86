//! `dead_letters`: one row per letter of the `DLQ` stream, keyed by its DLQ sequence.
//!
//! Two consumers write a row, in either order: `projector_dlq` brings the letter itself, and
//! `projector_events` brings the operator's redrive or discard (an event of the letter's
//! call carrying the `Ccm-Dlq-Resolved` header). Each side upserts only its own columns, so
//! whichever arrives first creates the row and the other completes it: the result does not
//! depend on the order, and applying either twice changes nothing. A row created by its
//! resolution alone (the letter was resolved before the projector read it) keeps the
//! letter's own columns empty until the letter arrives, or for good if the letter was
//! deleted first.

use sqlx::PgConnection;

use crate::fold::{Letter, Resolution};

/// Upserts letters; their own columns are facts, so writing them again writes the same values.
pub async fn upsert_letters(
    letters: &[(u64, &Letter)],
    conn: &mut PgConnection,
) -> Result<(), sqlx::Error> {
    if letters.is_empty() {
        return Ok(());
    }
    let n = letters.len();
    let mut seqs = Vec::with_capacity(n);
    let mut streams = Vec::with_capacity(n);
    let mut source_seqs = Vec::with_capacity(n);
    let mut subjects = Vec::with_capacity(n);
    let mut consumers = Vec::with_capacity(n);
    let mut calls = Vec::with_capacity(n);
    let mut campaigns = Vec::with_capacity(n);
    let mut reasons = Vec::with_capacity(n);
    let mut deliveries = Vec::with_capacity(n);
    let mut payloads = Vec::with_capacity(n);
    let mut created = Vec::with_capacity(n);
    for (seq, letter) in letters {
        seqs.push(i64::try_from(*seq).unwrap_or(i64::MAX));
        streams.push(letter.source_stream.as_str());
        source_seqs.push(letter.source_seq);
        subjects.push(letter.subject.as_str());
        consumers.push(letter.consumer.as_deref());
        calls.push(letter.call_id);
        campaigns.push(letter.campaign_id);
        reasons.push(letter.reason.as_str());
        deliveries.push(letter.deliveries);
        payloads.push(letter.payload.as_ref().map(ToString::to_string));
        created.push(letter.created_at);
    }
    sqlx::query(
        "INSERT INTO dead_letters AS d
            (dlq_seq, source_stream, source_seq, subject, consumer, call_id, campaign_id, reason,
             deliveries, payload, created_at)
         SELECT t.dlq_seq, t.source_stream, t.source_seq, t.subject, t.consumer, t.call_id,
                t.campaign_id, t.reason, t.deliveries, t.payload::jsonb, t.created_at
         FROM UNNEST($1::int8[], $2::text[], $3::int8[], $4::text[], $5::text[], $6::uuid[],
                     $7::int8[], $8::text[], $9::int4[], $10::text[], $11::timestamptz[])
              AS t(dlq_seq, source_stream, source_seq, subject, consumer, call_id, campaign_id,
                   reason, deliveries, payload, created_at)
         ORDER BY t.dlq_seq
         ON CONFLICT (dlq_seq) DO UPDATE SET
            source_stream = EXCLUDED.source_stream, source_seq = EXCLUDED.source_seq,
            subject = EXCLUDED.subject, consumer = EXCLUDED.consumer,
            call_id = COALESCE(d.call_id, EXCLUDED.call_id),
            campaign_id = COALESCE(d.campaign_id, EXCLUDED.campaign_id),
            reason = EXCLUDED.reason, deliveries = EXCLUDED.deliveries,
            payload = EXCLUDED.payload, created_at = EXCLUDED.created_at",
    )
    .bind(&seqs)
    .bind(&streams)
    .bind(&source_seqs)
    .bind(&subjects)
    .bind(&consumers)
    .bind(&calls)
    .bind(&campaigns)
    .bind(&reasons)
    .bind(&deliveries)
    .bind(&payloads)
    .bind(&created)
    .execute(conn)
    .await?;
    Ok(())
}

/// Marks letters redriven or discarded. A letter is resolved once (it is deleted from `DLQ`
/// by the action); should two actions ever name one letter, the later one by time (then by
/// name) wins, whatever the order they are applied in. Either replaces `removed`, which the
/// sweep ([`crate::sweep`]) sets when it finds a letter gone before its event was applied.
pub async fn resolve(
    resolutions: &[Resolution],
    conn: &mut PgConnection,
) -> Result<(), sqlx::Error> {
    if resolutions.is_empty() {
        return Ok(());
    }
    let mut sorted: Vec<&Resolution> = resolutions.iter().collect();
    // One row per letter in one statement (ON CONFLICT cannot touch a row twice): the latest
    // action of each letter comes first, and dedup keeps it.
    sorted.sort_by(|a, b| {
        a.dlq_seq
            .cmp(&b.dlq_seq)
            .then_with(|| (b.at, b.state).cmp(&(a.at, a.state)))
    });
    sorted.dedup_by_key(|r| r.dlq_seq);
    let seqs: Vec<i64> = sorted.iter().map(|r| r.dlq_seq).collect();
    let calls: Vec<uuid::Uuid> = sorted.iter().map(|r| r.call_id).collect();
    let campaigns: Vec<i64> = sorted.iter().map(|r| r.campaign_id).collect();
    let states: Vec<&str> = sorted.iter().map(|r| r.state).collect();
    let times: Vec<chrono::DateTime<chrono::Utc>> = sorted.iter().map(|r| r.at).collect();
    sqlx::query(
        "INSERT INTO dead_letters AS d (dlq_seq, call_id, campaign_id, state, resolved_at)
         SELECT * FROM UNNEST($1::int8[], $2::uuid[], $3::int8[], $4::text[],
                              $5::timestamptz[])
         ORDER BY 1
         ON CONFLICT (dlq_seq) DO UPDATE SET
            call_id = COALESCE(d.call_id, EXCLUDED.call_id),
            campaign_id = COALESCE(d.campaign_id, EXCLUDED.campaign_id),
            state = EXCLUDED.state, resolved_at = EXCLUDED.resolved_at
         WHERE d.resolved_at IS NULL OR d.state = 'removed'
            OR ROW(EXCLUDED.resolved_at, EXCLUDED.state) > ROW(d.resolved_at, d.state)",
    )
    .bind(&seqs)
    .bind(&calls)
    .bind(&campaigns)
    .bind(&states)
    .bind(&times)
    .execute(conn)
    .await?;
    Ok(())
}
