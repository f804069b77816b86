//! Dead-lettering messages that exhausted `max_deliver`, from the server's advisories.
//!
//! The `ADVISORIES` stream captures every MAX_DELIVERIES advisory, so none is missed while
//! the retrier is down. On nats-server 2.9 the message itself stays in its stream, so for each
//! advisory the retrier copies the original by `stream_seq` into `DLQ`, emits a
//! `DeadLettered` event for a dial message's call and releases its number, and only then
//! deletes the original. Every step tolerates being repeated, so a crash anywhere is repaired
//! by the advisory's redelivery; an original already gone means the work was done.

use std::time::Duration;

use async_nats::jetstream::{self, AckKind, Message};
use ccm_core::{CallEvent, DialRequest, EventKind, metrics::counter, topology::names};
use chrono::Utc;
use serde::Deserialize;

use crate::{Shared, dlq, outcome};

/// The fields of `io.nats.jetstream.advisory.v1.max_deliver` that matter here.
#[derive(Debug, Clone, Deserialize)]
pub struct MaxDeliveries {
    pub stream: String,
    pub consumer: String,
    pub stream_seq: u64,
    pub deliveries: u64,
}

/// Why an advisory could not be handled now (it is redelivered).
#[derive(Debug, thiserror::Error)]
pub enum AdvisoryError {
    #[error("cannot open stream {0}")]
    Stream(String, #[source] async_nats::Error),
    #[error("cannot read {stream} #{seq}")]
    Read {
        stream: String,
        seq: u64,
        source: async_nats::Error,
    },
    #[error("cannot delete {stream} #{seq}")]
    Delete {
        stream: String,
        seq: u64,
        source: async_nats::Error,
    },
    #[error(transparent)]
    Dlq(#[from] dlq::DlqError),
    #[error(transparent)]
    Publish(#[from] ccm_core::nats::NatsError),
    #[error(transparent)]
    Release(#[from] outcome::OutcomeError),
}

/// Handles one advisory and acknowledges it.
pub async fn handle(ctx: &Shared, message: Message) {
    let advisory: MaxDeliveries = match serde_json::from_slice(&message.payload) {
        Ok(advisory) => advisory,
        Err(e) => {
            tracing::error!(error = %e, subject = %message.subject, "unreadable advisory dropped");
            let _ = message.ack().await;
            return;
        }
    };
    match dead_letter(ctx, &advisory).await {
        Ok(()) => {
            let _ = message.ack().await;
        }
        Err(e) => {
            tracing::warn!(error = %e, ?advisory, "dead-lettering failed; retrying");
            let _ = message
                .ack_with(AckKind::Nak(Some(Duration::from_secs(2))))
                .await;
        }
    }
}

/// The stream as a metric label: the known streams by name, anything else as `other`, so a
/// forged advisory cannot add series.
pub(crate) fn stream_label(stream: &str) -> &'static str {
    [
        names::CALLS,
        names::CALL_EVENTS,
        names::RETRIES,
        "KV_campaigns",
        "KV_contacts",
    ]
    .into_iter()
    .find(|known| *known == stream)
    .unwrap_or("other")
}

/// Moves the message named by `advisory` into `DLQ`.
pub async fn dead_letter(ctx: &Shared, advisory: &MaxDeliveries) -> Result<(), AdvisoryError> {
    use jetstream::stream::LastRawMessageErrorKind as Kind;
    if advisory.stream == names::DLQ || advisory.stream == names::ADVISORIES {
        return Ok(());
    }
    let (name, seq) = (advisory.stream.clone(), advisory.stream_seq);
    let stream = ctx
        .js
        .get_stream(&name)
        .await
        .map_err(|e| AdvisoryError::Stream(name.clone(), e.into()))?;
    let original = match stream.get_raw_message(seq).await {
        Ok(message) => message,
        Err(e) => match e.kind() {
            Kind::NoMessageFound => return Ok(()),
            Kind::JetStream(j) if j.error_code() == jetstream::ErrorCode::NO_MESSAGE_FOUND => {
                return Ok(());
            }
            _ => {
                return Err(AdvisoryError::Read {
                    stream: name,
                    seq,
                    source: e.into(),
                });
            }
        },
    };
    let reason = format!(
        "Delivered {} times to consumer {} without success (max_deliver reached)",
        advisory.deliveries, advisory.consumer
    );
    dlq::store(
        &ctx.js,
        dlq::Source {
            stream: &name,
            subject: original.subject.as_str(),
            seq,
            consumer: &advisory.consumer,
            deliveries: advisory.deliveries,
            reason: &reason,
            published: original.time.to_string(),
            headers: Some(&original.headers),
            payload: original.payload.clone(),
        },
    )
    .await?;
    counter!("ccm_retrier_dead_letters_total", "stream" => stream_label(&name)).increment(1);
    if name == names::CALLS {
        if let Ok(request) = serde_json::from_slice::<DialRequest>(&original.payload) {
            let event = CallEvent {
                call_id: request.call_id,
                campaign_id: request.campaign_id,
                attempt: request.attempt,
                at: Utc::now(),
                kind: EventKind::DeadLettered {
                    reason: reason.clone(),
                },
            };
            ccm_core::nats::publish_event(&ctx.js, &event).await?;
            outcome::release(
                &ctx.active_calls,
                request.campaign_id,
                &request.phone_number,
                request.call_id,
            )
            .await?;
        }
    }
    // KV streams deny deletes: their letter is a copy, and the key keeps its value.
    if !name.starts_with("KV_") {
        match stream.delete_message(seq).await {
            Ok(_) => {}
            Err(e)
                if matches!(e.kind(), jetstream::stream::DeleteMessageErrorKind::JetStream(j)
                if j.error_code() == jetstream::ErrorCode::SEQUENCE_NOT_FOUND
                    || j.error_code() == jetstream::ErrorCode::NO_MESSAGE_FOUND) => {}
            Err(e) => {
                return Err(AdvisoryError::Delete {
                    stream: name,
                    seq,
                    source: e.into(),
                });
            }
        }
    }
    tracing::warn!(stream = %advisory.stream, seq, consumer = %advisory.consumer,
        "message dead-lettered");
    Ok(())
}
