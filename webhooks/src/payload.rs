//! The JSON body POSTed to endpoints (version 1):
//!
//! ```json
//! {"type": "call.completed", "version": 1, "timestamp": "…",
//!  "data": {"call_id": "…", "campaign_id": 7, "attempt": 1, "at": "…", "type": "completed",
//!           "status": "COMPLETED", "phone_number": "+1…", "max_attempts": 3,
//!           "created_at": "…", "total_call_time": 42, "custom_fields": {"first_name": "…"},
//!           "outcome": {"status": "PICKED", "duration_secs": 42, "external_call_id": "…", …}}}
//! ```
//!
//! `data` is the event itself plus what a receiver would otherwise have to ask for: the
//! call's number and totals from the read model, and its latest carrier outcome straight
//! from `CALL_EVENTS` (a direct get by subject, so it is never behind the event). Fields the
//! read model does not know yet are left out rather than guessed. `custom_fields` (the
//! contact's extra CSV columns) comes from the read model; it is absent when the call has none.

use std::collections::HashMap;

use async_nats::jetstream::stream::Stream;
use ccm_core::{CallEvent, CallStatus, EventKind, subjects};
use chrono::{DateTime, Utc};
use futures::{StreamExt, stream};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

/// Version of the body's shape; bumped on any change a receiver could notice.
pub const VERSION: u32 = 1;
/// Direct gets in flight at once while a batch is enriched.
const LOOKUPS_IN_FLIGHT: usize = 32;

#[derive(Debug, Serialize)]
struct Payload<'a> {
    /// `call.<event>`, e.g. `call.completed`.
    #[serde(rename = "type")]
    kind: String,
    version: u32,
    timestamp: DateTime<Utc>,
    data: Data<'a>,
}

#[derive(Debug, Serialize)]
struct Data<'a> {
    #[serde(flatten)]
    event: &'a CallEvent,
    status: CallStatus,
    #[serde(flatten)]
    call: Option<&'a CallRow>,
    #[serde(skip_serializing_if = "Option::is_none")]
    outcome: Option<&'a serde_json::Value>,
    /// From the read model, for events that do not carry the fields themselves. A `Dialing`
    /// event does (it is not a subscribable type today), and a second `custom_fields` key
    /// would make the object ambiguous.
    #[serde(skip_serializing_if = "Option::is_none")]
    custom_fields: Option<&'a serde_json::Value>,
}

/// What the read model knows about a call.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct CallRow {
    #[serde(skip)]
    call_id: Uuid,
    #[serde(skip_serializing_if = "Option::is_none")]
    phone_number: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_attempts: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    created_at: Option<DateTime<Utc>>,
    total_call_time: i32,
    #[serde(skip)]
    custom_fields: Option<serde_json::Value>,
}

/// Looks up what the payloads of `events` need, in one query and a few direct gets.
#[derive(Debug, Default)]
pub struct Enrichment {
    calls: HashMap<Uuid, CallRow>,
    outcomes: HashMap<Uuid, serde_json::Value>,
}

impl Enrichment {
    /// A failed lookup leaves its fields out rather than holding deliveries back.
    pub async fn load(pg: &PgPool, events_stream: &Stream, events: &[&CallEvent]) -> Self {
        let ids: Vec<Uuid> = events.iter().map(|e| e.call_id.as_uuid()).collect();
        let calls = sqlx::query_as::<_, CallRow>(
            "SELECT call_id, phone_number, max_attempts, created_at, total_call_time, custom_fields
             FROM calls WHERE call_id = ANY($1)",
        )
        .bind(&ids)
        .fetch_all(pg)
        .await
        .unwrap_or_else(|e| {
            tracing::warn!(error = %ccm_core::telemetry::chain(&e), "call lookup for webhook payloads failed");
            Vec::new()
        })
        .into_iter()
        .map(|row| (row.call_id, row))
        .collect();
        // Each lookup owns what it uses: futures borrowing from the batch would make the
        // service's future non-Send for the runtime.
        let lookups: Vec<_> = events
            .iter()
            .map(|event| {
                let stream = events_stream.clone();
                let subject = subjects::outcome(event.campaign_id, event.call_id);
                let id = event.call_id.as_uuid();
                async move { lookup_outcome(stream, subject).await.map(|o| (id, o)) }
            })
            .collect();
        let outcomes = stream::iter(lookups)
            .buffer_unordered(LOOKUPS_IN_FLIGHT)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .flatten()
            .collect();
        Self { calls, outcomes }
    }

    /// The body for `event`.
    pub fn body(&self, event: &CallEvent) -> Result<Vec<u8>, serde_json::Error> {
        let id = event.call_id.as_uuid();
        let call = self.calls.get(&id);
        let custom_fields = match &event.kind {
            EventKind::Dialing { .. } => None,
            _ => call.and_then(|c| c.custom_fields.as_ref()),
        };
        serde_json::to_vec(&Payload {
            kind: event_type(&event.kind),
            version: VERSION,
            timestamp: event.at,
            data: Data {
                event,
                status: event.kind.status(),
                call,
                outcome: self.outcomes.get(&id),
                custom_fields,
            },
        })
    }
}

/// The latest outcome of a call, its fields as the payload shows them.
async fn lookup_outcome(stream: Stream, subject: String) -> Option<serde_json::Value> {
    match ccm_core::call_log::last_on(&stream, subject).await {
        Ok(last) => last
            .and_then(ccm_core::call_log::Last::decoded)
            .and_then(|e| outcome_fields(&e)),
        Err(e) => {
            tracing::warn!(error = %ccm_core::telemetry::chain(e.as_ref()),
                "outcome lookup for webhook payload failed");
            None
        }
    }
}

/// `call.<event>`, the body's `type` and the delivery log's `event_type`.
pub fn event_type(kind: &EventKind) -> String {
    format!("call.{}", kind.name())
}

/// The outcome's fields without the ids the event already carries.
fn outcome_fields(event: &CallEvent) -> Option<serde_json::Value> {
    if !matches!(event.kind, EventKind::Outcome { .. }) {
        return None;
    }
    let mut value = serde_json::to_value(&event.kind).ok()?;
    let object = value.as_object_mut()?;
    object.remove("type");
    object.insert("attempt".into(), event.attempt.into());
    object.insert("at".into(), serde_json::to_value(event.at).ok()?);
    Some(value)
}
