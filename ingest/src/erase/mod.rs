//! A person's data: find everything ccm holds about a phone number ([`export`]) and erase it
//! ([`erase`]) from JetStream (streams and KV buckets, found by reading them all, see
//! [`scan`]) and from the read model. The routes are `routes/subjects.rs`; the rules are in
//! `docs/privacy.md`.
//!
//! An erase never touches a call that has not ended: the pipeline holds such a call in its
//! messages (the dial message is the queued call, the claim keeps the number single), and
//! deleting them would lose the call or let it be placed twice. It refuses instead
//! ([`EraseError::Live`]), after listing the number on the global do-not-call list, which
//! stops every queued attempt before placement, so the same erase succeeds once they end.

mod apply;
mod needles;
mod pg;
mod plan;
mod scan;

use std::collections::BTreeSet;

use ccm_core::{
    CallId, PhoneNumber,
    dnc::{DncEntry, DncList},
    metrics::counter,
};
use chrono::Utc;
use serde::Serialize;
use serde_json::Value;

pub use apply::Count;
pub use needles::fingerprint;
pub use plan::{Kept, Live};

use crate::AppState;

/// Why an export or an erase did not complete.
#[derive(Debug, thiserror::Error)]
pub enum EraseError {
    /// Calls of the number have not ended (or its number is still claimed).
    #[error("calls of this number have not ended")]
    Live(Live),
    #[error(transparent)]
    Scan(#[from] scan::ScanError),
    #[error(transparent)]
    Apply(#[from] apply::ApplyError),
    #[error("the read model failed")]
    Pg(#[from] sqlx::Error),
    #[error("cannot keep the do-not-call entry")]
    Dnc(#[source] async_nats::Error),
}

/// What an erase did.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Report {
    /// The number's pseudonym (see [`fingerprint`]), as the audit log shows it.
    pub subject: String,
    /// The calls of the number that were erased (anonymised in the read model, their
    /// messages removed).
    #[schema(value_type = Vec<String>)]
    pub calls: Vec<CallId>,
    /// What was removed or anonymised, per stream, bucket and table.
    pub erased: Vec<Count>,
    /// What was found and left, and why.
    pub kept: Vec<Kept>,
}

/// Everything held about a number.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Export {
    pub phone_number: String,
    /// The contacts of the number per campaign (the `contacts` bucket), custom fields included.
    #[schema(value_type = Vec<Object>)]
    pub contacts: Vec<Value>,
    /// Do-not-call entries (the `dnc` bucket): list key and entry.
    #[schema(value_type = Vec<Object>)]
    pub do_not_call: Vec<Value>,
    /// The number's consent records (`consents`), revoked ones included: type, purpose,
    /// source, when given, evidence reference, who recorded it, and who revoked it, when and how.
    #[schema(value_type = Vec<Object>)]
    pub consent: Vec<Value>,
    /// The read model's rows by table: `calls`, `call_events` (the calls' histories),
    /// `call_audit` (the admission audit records of its calls),
    /// `phone_numbers`, `dead_letters`, `webhook_messages` and `webhook_attempts` (the
    /// webhook deliveries that named the number or its calls).
    #[schema(value_type = Object)]
    pub tables: serde_json::Map<String, Value>,
    /// Every message of every stream and bucket that names the number or one of its calls:
    /// calls and their retries, events, dead letters and parked messages, audit records.
    #[schema(value_type = Vec<Object>)]
    pub messages: Vec<Value>,
    /// How many of those messages each stream (a bucket's is `KV_<bucket>`) still holds.
    #[schema(value_type = Object)]
    pub held_in: std::collections::BTreeMap<String, u64>,
}

/// What the streams and the read model hold: the messages naming the number or its calls,
/// and those calls with what the read model knows of them.
struct Found {
    needles: needles::Needles,
    hits: Vec<scan::Hit>,
    known: plan::Known,
}

async fn find(state: &AppState, phone: &PhoneNumber) -> Result<Found, EraseError> {
    let needles = needles::Needles::of(phone);
    // First the number, for its calls; then the number and its calls, for their histories
    // (an outcome names the call, not the number).
    let first = scan::scan(&state.js, &needles).await?;
    let names = |text: &[u8]| needles.names_number(text);
    let calls: BTreeSet<CallId> = first
        .iter()
        .flat_map(|hit| plan::person_calls(hit, names))
        .collect();
    let mut known = pg::known(&state.pg, phone, &calls.iter().copied().collect::<Vec<_>>()).await?;
    let needles = needles.with_calls(&known.keys().copied().collect::<Vec<_>>());
    let hits = scan::scan(&state.js, &needles).await?;
    // A call that showed up between the two passes (accepted meanwhile) is the person's too,
    // and not known to have ended.
    for hit in &hits {
        for id in plan::person_calls(hit, |text| needles.names_number(text)) {
            known.entry(id).or_insert(None);
        }
    }
    Ok(Found {
        needles,
        hits,
        known,
    })
}

/// Everything held about `phone`.
pub async fn export(state: &AppState, phone: &PhoneNumber) -> Result<Export, EraseError> {
    let found = find(state, phone).await?;
    let calls: Vec<CallId> = found.known.keys().copied().collect();
    let tables = pg::export(&state.pg, phone, &calls).await?;
    let consent = pg::consents(&state.pg, phone).await?;
    let mut contacts = Vec::new();
    let mut do_not_call = Vec::new();
    let mut messages = Vec::new();
    let mut held_in = std::collections::BTreeMap::<String, u64>::new();
    for hit in &found.hits {
        *held_in.entry(hit.stream.clone()).or_default() += 1;
        let body = serde_json::from_slice::<Value>(&hit.payload)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&hit.payload).into()));
        if let Some((bucket, key)) = hit.kv_key()
            && !hit.is_kv_marker()
        {
            let entry = serde_json::json!({"bucket": bucket, "key": key, "value": body});
            match bucket {
                ccm_core::topology::names::KV_CONTACTS => contacts.push(entry.clone()),
                ccm_core::topology::names::KV_DNC => do_not_call.push(entry.clone()),
                _ => {}
            }
        }
        messages.push(serde_json::json!({
            "stream": hit.stream, "seq": hit.seq, "subject": hit.subject, "body": body,
        }));
    }
    Ok(Export {
        phone_number: phone.as_str().to_owned(),
        contacts,
        do_not_call,
        consent,
        tables,
        messages,
        held_in,
    })
}

/// Erases `phone` everywhere but its global do-not-call entry; refuses while a call of it has
/// not ended.
pub async fn erase(state: &AppState, phone: &PhoneNumber) -> Result<Report, EraseError> {
    let subject = fingerprint(phone);
    // First, so a call accepted from now on is refused (or cancelled before placement), and
    // so a refused erase still stops the calls: an erase request is an objection to them.
    let dnc_key = DncList::Global.key(phone);
    let entry = serde_json::to_vec(&DncEntry {
        added_at: Utc::now(),
        reason: Some(format!("erasure request (subject {subject})")),
        opted_out: None,
    })
    .expect("an entry serialises");
    let revision = state
        .dnc
        .put(dnc_key.as_str(), entry.into())
        .await
        .map_err(|e| EraseError::Dnc(e.into()))?;
    state
        .dnc_cache
        .record(DncList::Global, phone, true, revision);

    let found = find(state, phone).await?;
    let redact_key = |s: &str| found.needles.redact(s, "<number>");
    let live = plan::live(&found.known, &found.hits, redact_key);
    if !live.is_empty() {
        counter!("ccm_ingest_erasures_total", "result" => "refused").increment(1);
        return Err(EraseError::Live(live));
    }
    let ended: BTreeSet<CallId> = found.known.keys().copied().collect();
    let (steps, kept) = plan::plan(
        &found.hits,
        &ended,
        (ccm_core::topology::names::KV_DNC, &dnc_key),
        redact_key,
    );
    let mut counts = apply::Counts::default();
    let pseudonym = format!("erased:{subject}");
    apply::apply(
        &state.js,
        &steps,
        |text| found.needles.redact(text, &pseudonym),
        &mut counts,
    )
    .await?;
    let calls: Vec<CallId> = ended.into_iter().collect();
    // After JetStream: a message removed there can no longer be folded back into a row
    // erased here.
    pg::erase(&state.pg, phone, &pseudonym, &calls, &mut counts).await?;
    counter!("ccm_ingest_erasures_total", "result" => "erased").increment(1);
    Ok(Report {
        subject,
        calls,
        erased: counts.into_vec(),
        kept,
    })
}
