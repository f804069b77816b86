//! The loop that pulls one consumer's messages and applies them in batches.

use std::time::Duration;

use async_nats::jetstream::{
    AckKind, Message,
    consumer::{PullConsumer, pull::Stream as MessageStream},
};
use ccm_core::{Campaign, CallEvent, DialRequest};
use futures::StreamExt;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::{ProjectorError, store::Item};

/// Which kind of payload a consumer carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Calls,
    Events,
    Campaigns,
}

/// How long a message that cannot be decoded waits before it is offered again; after the
/// consumer's `max_deliver` the server gives up on it and the retrier dead-letters it.
const POISON_DELAY: Duration = Duration::from_secs(5);
/// How long to wait before retrying a batch the database refused.
const DB_RETRY: Duration = Duration::from_secs(1);

/// Pulls from `consumer` until `shutdown`, applying whatever has arrived as one transaction.
pub async fn run(
    source: Source,
    consumer: PullConsumer,
    pool: PgPool,
    batch_size: usize,
    shutdown: CancellationToken,
) -> Result<(), ProjectorError> {
    let messages: MessageStream = consumer
        .stream()
        .max_messages_per_batch(batch_size)
        .expires(Duration::from_secs(5))
        .messages()
        .await
        .map_err(|e| ProjectorError::Consume(e.into()))?;
    // `ready_chunks` yields whatever is buffered at once: one message at low load (lowest
    // latency), full batches under load (fewest transactions).
    let mut chunks = messages.ready_chunks(batch_size);
    loop {
        let chunk = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            chunk = chunks.next() => chunk,
        };
        let Some(chunk) = chunk else { return Ok(()) };
        let mut batch = Vec::with_capacity(chunk.len());
        for message in chunk {
            match message {
                Ok(message) => batch.push(message),
                Err(e) => tracing::warn!(error = %e, ?source, "pull error; continuing"),
            }
        }
        apply_batch(source, &pool, batch, &shutdown).await;
    }
}

async fn apply_batch(
    source: Source,
    pool: &PgPool,
    messages: Vec<Message>,
    shutdown: &CancellationToken,
) {
    let mut items = Vec::with_capacity(messages.len());
    let mut good = Vec::with_capacity(messages.len());
    for message in messages {
        match decode(source, &message) {
            Ok(Some(item)) => {
                items.push(item);
                good.push(message);
            }
            // Nothing to project (e.g. a KV delete marker): done with it.
            Ok(None) => good.push(message),
            Err(reason) => {
                tracing::warn!(subject = %message.subject, %reason, "cannot decode message");
                if let Err(e) = message.ack_with(AckKind::Nak(Some(POISON_DELAY))).await {
                    tracing::warn!(error = %e, "nak failed");
                }
            }
        }
    }
    // Postgres being down is not the messages' fault: keep them (in-progress acks stop the
    // server from redelivering them elsewhere) and try again until it is back.
    loop {
        match write(pool, &items).await {
            Ok(()) => break,
            Err(e) => {
                tracing::error!(error = %e, batch = items.len(), "database write failed; retrying");
                for message in &good {
                    let _ = message.ack_with(AckKind::Progress).await;
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(DB_RETRY) => {}
                }
            }
        }
    }
    for message in good {
        if let Err(e) = message.ack().await {
            tracing::warn!(error = %e, "ack failed; the message will be applied again, harmlessly");
        }
    }
}

async fn write(pool: &PgPool, items: &[Item]) -> Result<(), sqlx::Error> {
    if items.is_empty() {
        return Ok(());
    }
    let mut tx = pool.begin().await?;
    for item in items {
        crate::store::apply(&mut tx, item).await?;
    }
    tx.commit().await
}

fn decode(source: Source, message: &Message) -> Result<Option<Item>, String> {
    let seq = message.info().map_err(|e| e.to_string())?.stream_sequence;
    let payload = &message.payload;
    match source {
        Source::Calls => serde_json::from_slice::<DialRequest>(payload)
            .map(|request| Some(Item::Queued { seq, request }))
            .map_err(|e| e.to_string()),
        Source::Events => serde_json::from_slice::<CallEvent>(payload)
            .map(|event| Some(Item::Event { seq, event }))
            .map_err(|e| e.to_string()),
        Source::Campaigns => {
            let is_put = message
                .headers
                .as_ref()
                .and_then(|h| h.get("KV-Operation"))
                .is_none_or(|op| op.as_str() == "PUT");
            if !is_put || payload.is_empty() {
                return Ok(None);
            }
            serde_json::from_slice::<Campaign>(payload)
                .map(|campaign| Some(Item::Campaign { revision: seq, campaign }))
                .map_err(|e| e.to_string())
        }
    }
}
