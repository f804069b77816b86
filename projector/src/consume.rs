//! The loop that pulls one consumer's messages and applies them in batches.
//!
//! A batch closes at `batch_size` messages or `batch_wait_ms` after its first message,
//! whichever comes first, and is written in one transaction ([`crate::store`]); its messages
//! are acknowledged only after the commit. Meanwhile the pull stream keeps fetching, so the
//! next batch is already buffered when the write ends.
//!
//! - A message that cannot be decoded (or that Postgres refuses as data) is TERMed with the
//!   reason, the consumer's poison policy in the shared runtime (`ccm_core::consumer`): it no
//!   longer holds up anything, is not redelivered, and the server's MSG_TERMINATED advisory
//!   is what the retrier turns into a parked record (the message stays in its stream and its
//!   call goes on; an operator's redrive replays it here). Text Postgres cannot store (a NUL)
//!   is not poison: it is replaced before decoding ([`crate::nul`]).
//! - On shutdown, the batch being collected and what the client already buffered are NAKed
//!   (another replica gets them at once), and so is a batch abandoned before its commit.
//! - Postgres being down is not the messages' fault: the batch is kept, in-progress acks stop
//!   the server from redelivering it, and the write is retried until it succeeds.

use std::time::Duration;

use async_nats::jetstream::{Message, consumer::PullConsumer};
use ccm_core::{
    CallEvent, Campaign, DialRequest,
    consumer::{Delivery, Messages, OnShutdown, Options, Poison},
    metrics::{counter, gauge, histogram},
    telemetry::chain,
};
use chrono::Utc;
use sqlx::PgPool;
use tokio::{task::JoinSet, time::Instant};
use tokio_util::sync::CancellationToken;

use crate::{ProjectorError, fold::Item};

/// Which kind of payload a consumer carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Calls,
    Events,
    Campaigns,
    /// The `contacts` bucket: campaigns' phone numbers.
    Contacts,
    /// `DLQ`: dead letters.
    DeadLetters,
}

impl Source {
    /// The stream name recorded in `call_events.stream`, and the `source` metric label.
    pub fn stream(self) -> &'static str {
        match self {
            Self::Calls => "CALLS",
            Self::Events => "CALL_EVENTS",
            Self::Campaigns => "KV_campaigns",
            Self::Contacts => "KV_contacts",
            Self::DeadLetters => "DLQ",
        }
    }

    /// The durable consumer that reads it.
    pub fn consumer(self) -> &'static str {
        match self {
            Self::Calls => "projector_calls",
            Self::Events => "projector_events",
            Self::Campaigns => "projector_campaigns",
            Self::Contacts => "projector_contacts",
            Self::DeadLetters => "projector_dlq",
        }
    }
}

/// How a loop batches.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub batch_size: usize,
    pub batch_wait: Duration,
    /// Batches of one consumer written concurrently.
    pub writers: usize,
}

impl Settings {
    /// The consumer's policy in the shared runtime: poison TERMed (parked from its advisory),
    /// NAK on shutdown.
    pub fn options(&self, source: Source) -> Options {
        Options {
            concurrency: self.writers.max(1),
            poison: Poison::Term,
            on_shutdown: OnShutdown::Nak(None),
            ..Options::new(source.consumer(), self.batch_size, PULL_EXPIRES)
        }
    }
}

/// How long one pull request of the continuous pull waits.
const PULL_EXPIRES: Duration = Duration::from_secs(5);

/// How long to wait before retrying a batch the database refused.
const DB_RETRY: Duration = Duration::from_secs(1);
/// How often the consumer's backlog is sampled for the lag gauge.
const PENDING_INTERVAL: Duration = Duration::from_secs(5);

/// Pulls from `consumer` until `shutdown`, applying whatever has arrived in batches.
pub async fn run(
    source: Source,
    consumer: PullConsumer,
    pool: PgPool,
    settings: Settings,
    shutdown: CancellationToken,
) -> Result<(), ProjectorError> {
    tokio::spawn(sample_pending(source, consumer.clone(), shutdown.clone()));
    let mut messages = Messages::open(&consumer, settings.options(source))
        .await
        .map_err(|e| ProjectorError::Consume(e.into()))?;
    // Batches are written by up to `writers` transactions at once: the merge rules make the
    // order of writes irrelevant, and overlapping them keeps Postgres busy while the next
    // batch is collected and decoded.
    let mut in_flight = JoinSet::new();
    loop {
        while in_flight.try_join_next().is_some() {}
        while in_flight.len() >= settings.writers.max(1) {
            in_flight.join_next().await;
        }
        let next = messages.next_batch(settings.batch_size, settings.batch_wait, &shutdown);
        let Some(batch) = next.await else {
            break;
        };
        let (pool, shutdown) = (pool.clone(), shutdown.clone());
        in_flight.spawn(async move { apply_batch(source, &pool, batch, &shutdown).await });
    }
    // Let the batches already taken finish (or give up at shutdown) before returning.
    while in_flight.join_next().await.is_some() {}
    Ok(())
}

fn project_span(source: &'static str, message: &Message) -> tracing::Span {
    let span = tracing::info_span!(
        "project",
        otel.kind = "consumer",
        source,
        subject = %message.subject,
    );
    ccm_core::trace_context::set_parent(&span, message.headers.as_ref());
    span
}

/// Writes one batch and acknowledges it after the commit. A batch abandoned at shutdown is
/// dropped undecided, which NAKs its messages.
async fn apply_batch(
    source: Source,
    pool: &PgPool,
    messages: Vec<Delivery>,
    shutdown: &CancellationToken,
) {
    let label = source.stream();
    // With tracing on, each message gets a span in the trace it carries, from now until its
    // batch is committed and acknowledged (the spans end when this function returns).
    let _spans: Vec<tracing::Span> = if ccm_core::trace_context::enabled() {
        messages.iter().map(|m| project_span(label, m)).collect()
    } else {
        Vec::new()
    };
    // Each message with what it decodes to (`None`: nothing to project, e.g. a KV delete).
    let mut batch: Vec<(Delivery, Option<Item>)> = Vec::with_capacity(messages.len());
    for message in messages {
        match decode(source, &message) {
            Ok(item) => batch.push((message, item)),
            Err(reason) => poison(label, message, &format!("undecodable: {reason}")).await,
        }
    }
    histogram!("ccm_projector_batch_size", "source" => label).record(batch.len() as f64);
    let started = Instant::now();
    let written = loop {
        let items: Vec<&Item> = batch.iter().filter_map(|(_, item)| item.as_ref()).collect();
        match crate::store::write_batch(pool, label, &items).await {
            Ok(written) => break written,
            // The data itself is refused (e.g. a value too large for an index): find the
            // culprits one by one, set them aside as poison, and write the rest.
            Err(e) if is_data_error(&e) => {
                tracing::warn!(error = %chain(&e), "batch refused by the database; isolating the culprit");
                batch = isolate(label, pool, batch).await;
            }
            Err(e) => {
                counter!("ccm_projector_db_errors_total", "source" => label).increment(1);
                tracing::error!(error = %chain(&e), batch = items.len(), "database write failed; retrying");
                for (message, _) in &batch {
                    let _ = message.progress().await;
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(DB_RETRY) => {}
                }
            }
        }
    };
    histogram!("ccm_projector_batch_write_seconds", "source" => label)
        .record(started.elapsed().as_secs_f64());
    counter!("ccm_projector_messages_total", "source" => label, "result" => "new")
        .increment(written.new as u64);
    counter!("ccm_projector_messages_total", "source" => label, "result" => "duplicate")
        .increment(written.duplicate as u64);
    // Per campaign: the label is bounded by the number of campaigns, not by traffic.
    for ((campaign, status), count) in &written.statuses {
        counter!("ccm_projector_calls_total",
            "campaign" => campaign.to_string(), "status" => *status)
        .increment(*count);
    }
    let now = Utc::now();
    if source == Source::Calls || source == Source::Events {
        let lag = histogram!("ccm_projector_lag_seconds", "source" => label);
        for item in batch.iter().filter_map(|(_, item)| item.as_ref()) {
            lag.record((now - item.occurred_at()).as_seconds_f64().max(0.0));
        }
    }
    for (message, _) in batch {
        if let Err(e) = message.ack().await {
            tracing::warn!(error = %chain(&e), "ack failed; the message will be applied again, harmlessly");
        }
    }
}

/// Writes the messages of a refused batch one at a time and returns those the database
/// accepts (or could not be judged because it failed otherwise); the refused ones are poison.
/// Writing a message twice is harmless, so the caller simply writes the rest again.
async fn isolate(
    label: &'static str,
    pool: &PgPool,
    batch: Vec<(Delivery, Option<Item>)>,
) -> Vec<(Delivery, Option<Item>)> {
    let mut kept = Vec::with_capacity(batch.len());
    for (message, item) in batch {
        let single: Vec<&Item> = item.iter().collect();
        match crate::store::write_batch(pool, label, &single).await {
            Err(e) if is_data_error(&e) => {
                poison(
                    label,
                    message,
                    &format!("refused by PostgreSQL: {}", chain(&e)),
                )
                .await;
            }
            _ => kept.push((message, item)),
        }
    }
    kept
}

/// A message that can never be applied: counted, then TERMed with `reason` by the
/// consumer's poison policy; the retrier parks it from the server's advisory.
async fn poison(label: &'static str, message: Delivery, reason: &str) {
    counter!("ccm_projector_poison_total", "source" => label).increment(1);
    if let Err(e) = message.poison(reason).await {
        tracing::warn!(error = %chain(&e), "TERM failed; the message comes back after ack_wait");
    }
}

/// Whether Postgres refused the data itself (SQLSTATE class 22, data exception; 23, integrity
/// violation; 54, program limit exceeded, e.g. a value too large for an index) rather than
/// failing to run the statement. Such a batch would fail again however often it is retried.
fn is_data_error(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|e| e.code())
        .is_some_and(|code| {
            ["22", "23", "54"]
                .iter()
                .any(|class| code.starts_with(class))
        })
}

/// Publishes the consumer's backlog (messages not yet delivered, and delivered but not yet
/// acknowledged) as gauges: the projection lag in messages.
async fn sample_pending(source: Source, mut consumer: PullConsumer, shutdown: CancellationToken) {
    let label = source.stream();
    loop {
        match consumer.info().await {
            Ok(info) => {
                gauge!("ccm_projector_pending_messages", "source" => label)
                    .set(info.num_pending as f64);
                gauge!("ccm_projector_ack_pending_messages", "source" => label)
                    .set(info.num_ack_pending as f64);
            }
            Err(e) => {
                tracing::debug!(error = %ccm_core::telemetry::chain(&e), "cannot read consumer info")
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(PENDING_INTERVAL) => {}
        }
    }
}

/// Decodes a message of `source`. `Ok(None)`: nothing to project.
pub fn decode(source: Source, message: &Message) -> Result<Option<Item>, String> {
    let info = message.info().map_err(|e| e.to_string())?;
    let seq = info.stream_sequence;
    let header = |name: &str| {
        message
            .headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_owned())
    };
    if source == Source::DeadLetters {
        return Ok(Some(Item::DeadLetter {
            seq,
            letter: crate::fold::letter(
                &header,
                &message.payload,
                // When the DLQ stored it; `Ccm-Dlq-Dead-At` says when the retrier wrote it.
                i64::try_from(info.published.unix_timestamp_nanos()).unwrap_or(i64::MAX),
            ),
        }));
    }
    if source == Source::Events && message.subject.starts_with("calls.audit.") {
        return decode_audit(seq, &message.payload).map(Some);
    }
    let is_put = header("KV-Operation").is_none_or(|op| op == "PUT");
    let mut item = decode_payload(source, seq, &message.payload, is_put)?;
    if let Some(Item::Event { resolves, .. }) = item.as_mut() {
        *resolves = header(ccm_core::dlq::header::RESOLVED).and_then(|s| s.parse().ok());
    }
    Ok(item)
}

/// Decodes a payload of `source` stored at `seq`; `is_put` is false for KV delete markers.
pub fn decode_payload(
    source: Source,
    seq: u64,
    payload: &[u8],
    is_put: bool,
) -> Result<Option<Item>, String> {
    // Postgres stores no NUL: replace it before anything is decoded, so every column and the
    // stored payload are free of it and the row is written instead of refused for ever.
    let payload: &[u8] = &crate::nul::replaced(payload);
    match source {
        Source::Calls => {
            let request =
                serde_json::from_slice::<DialRequest>(payload).map_err(|e| e.to_string())?;
            Ok(Some(Item::Queued {
                seq,
                request,
                payload: utf8(payload)?,
            }))
        }
        Source::Events => {
            let event = serde_json::from_slice::<CallEvent>(payload).map_err(|e| e.to_string())?;
            Ok(Some(Item::Event {
                seq,
                event,
                payload: utf8(payload)?,
                resolves: None,
            }))
        }
        // Letters are decoded from their headers (see `decode`); without them there is
        // nothing to project.
        Source::DeadLetters => Ok(None),
        Source::Contacts => {
            if !is_put || payload.is_empty() {
                return Ok(None);
            }
            serde_json::from_slice::<ccm_core::campaign::Contact>(payload)
                .map(|contact| Some(Item::Contact { seq, contact }))
                .map_err(|e| e.to_string())
        }
        Source::Campaigns => {
            if !is_put || payload.is_empty() {
                return Ok(None);
            }
            serde_json::from_slice::<Campaign>(payload)
                .map(|campaign| {
                    Some(Item::Campaign {
                        revision: seq,
                        campaign: Box::new(campaign),
                    })
                })
                .map_err(|e| e.to_string())
        }
    }
}

/// Decodes an admission audit record (`calls.audit.<campaign>.<call>` in `CALL_EVENTS`).
pub fn decode_audit(seq: u64, payload: &[u8]) -> Result<Item, String> {
    let payload: &[u8] = &crate::nul::replaced(payload);
    let audit = serde_json::from_slice::<ccm_core::attempt_audit::AttemptAudit>(payload)
        .map_err(|e| e.to_string())?;
    Ok(Item::Audit {
        seq,
        audit: Box::new(audit),
        payload: utf8(payload)?,
    })
}

fn utf8(payload: &[u8]) -> Result<String, String> {
    String::from_utf8(payload.to_vec()).map_err(|e| e.to_string())
}
