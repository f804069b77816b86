//! [`Delivery`]: one pulled message that must be decided, and is NAKed if it is not.

use std::{ops::Deref, time::Duration};

use async_nats::jetstream::{AckKind, Message};
use bytes::Bytes;

use super::{Poison, metrics};

/// Why an acknowledgement could not be sent. The message then comes back after the
/// consumer's `ack_wait`, which every handler here tolerates (they are idempotent).
#[derive(Debug, thiserror::Error)]
#[error("cannot acknowledge a message of consumer {consumer}")]
pub struct AckError {
    pub consumer: &'static str,
    #[source]
    pub source: async_nats::Error,
}

/// The longest reason sent with a `+TERM`: the server copies it into its advisory.
const MAX_REASON: usize = 256;

/// A message of one consumer, to be decided exactly once: [`ack`](Self::ack),
/// [`nak`](Self::nak), [`term`](Self::term), [`poison`](Self::poison) (the consumer's
/// [`Poison`] policy) or [`abandon`](Self::abandon). Dropped undecided (a handler that returns
/// early or panics, a task aborted at shutdown), it is NAKed without delay, so another
/// replica gets it at once rather than after `ack_wait` (as wasmCloud wadm's `ScopedMessage`).
///
/// It dereferences to the [`Message`] for its subject, payload, headers and info.
#[derive(Debug)]
pub struct Delivery {
    /// `None` once decided.
    message: Option<Message>,
    consumer: &'static str,
    poison: Poison,
}

impl Delivery {
    /// Wraps a message pulled from `consumer`, whose poison policy is `poison`.
    pub fn new(message: Message, consumer: &'static str, poison: Poison) -> Self {
        Self {
            message: Some(message),
            consumer,
            poison,
        }
    }

    /// The durable consumer it was pulled from.
    pub fn consumer(&self) -> &'static str {
        self.consumer
    }

    /// Done with: the server forgets it.
    pub async fn ack(self) -> Result<(), AckError> {
        self.decide(AckKind::Ack, "ack").await
    }

    /// Done with, and wait for the server to confirm (a work-queue entry whose removal
    /// matters before going on).
    pub async fn double_ack(mut self) -> Result<(), AckError> {
        let message = self.take();
        metrics::decided(self.consumer, "ack");
        message.double_ack().await.map_err(|source| AckError {
            consumer: self.consumer,
            source,
        })
    }

    /// Not now: delivered again after `delay` (at once with `None`), spending one of the
    /// consumer's `max_deliver`.
    pub async fn nak(self, delay: Option<Duration>) -> Result<(), AckError> {
        self.decide(AckKind::Nak(delay), "nak").await
    }

    /// Never: the server does not deliver it again to this consumer and publishes
    /// `$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.<stream>.<consumer>` with `reason` (sent as
    /// `+TERM <reason>`, nats-server 2.11+; kept to one line of at most 256 bytes).
    pub async fn term(mut self, reason: &str) -> Result<(), AckError> {
        let message = self.take();
        metrics::decided(self.consumer, "term");
        let Some(reply) = message.reply.clone() else {
            return Ok(());
        };
        let payload = Bytes::from(format!("+TERM {}", one_line(reason)));
        message
            .context
            .client()
            .publish(reply, payload)
            .await
            .map_err(|e| AckError {
                consumer: self.consumer,
                source: e.into(),
            })
    }

    /// A message that can never be handled, by the consumer's [`Poison`] policy: TERM with
    /// `reason`, NAK after a delay (until `max_deliver`), or ack (skip).
    pub async fn poison(self, reason: &str) -> Result<(), AckError> {
        metrics::poisoned(self.consumer);
        tracing::warn!(consumer = self.consumer, subject = %self.subject, %reason,
            policy = ?self.poison, "message cannot be handled");
        match self.poison {
            Poison::Term => self.term(reason).await,
            Poison::Nak(delay) => self.nak(Some(delay)).await,
            Poison::Skip => self.ack().await,
        }
    }

    /// Still working on it: the server restarts its `ack_wait`. Not a decision.
    pub async fn progress(&self) -> Result<(), AckError> {
        let Some(message) = self.message.as_ref() else {
            return Ok(());
        };
        message
            .ack_with(AckKind::Progress)
            .await
            .map_err(|source| AckError {
                consumer: self.consumer,
                source,
            })
    }

    /// Left undecided on purpose: the server delivers it again after `ack_wait`, without a
    /// NAK spending a delivery (the shutdown policy [`OnShutdown::LeaveToAckWait`](super::OnShutdown)).
    pub fn abandon(mut self) {
        self.take();
        metrics::decided(self.consumer, "abandoned");
    }

    async fn decide(mut self, kind: AckKind, label: &'static str) -> Result<(), AckError> {
        let message = self.take();
        metrics::decided(self.consumer, label);
        message.ack_with(kind).await.map_err(|source| AckError {
            consumer: self.consumer,
            source,
        })
    }

    fn take(&mut self) -> Message {
        self.message.take().expect("a delivery is decided once")
    }
}

impl Deref for Delivery {
    type Target = Message;

    fn deref(&self) -> &Message {
        self.message.as_ref().expect("a delivery is decided once")
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        let Some(message) = self.message.take() else {
            return;
        };
        metrics::decided(self.consumer, "dropped");
        // A NAK is one publish; without a runtime (a process ending) the message simply comes
        // back after `ack_wait`.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let consumer = self.consumer;
            runtime.spawn(async move {
                if let Err(e) = message.ack_with(AckKind::Nak(None)).await {
                    tracing::debug!(consumer, error = %crate::telemetry::chain(&*e),
                        "NAK of a dropped message failed; it comes back after ack_wait");
                }
            });
        }
    }
}

/// `reason` on one line of at most [`MAX_REASON`] bytes: the server takes the rest of the
/// `+TERM` payload as the reason.
fn one_line(reason: &str) -> String {
    let mut line: String = reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if line.len() > MAX_REASON {
        let mut end = MAX_REASON;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        line.truncate(end);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_is_one_short_line() {
        assert_eq!(one_line("bad\njson\there"), "bad json here");
        let long = "é".repeat(200);
        let short = one_line(&long);
        assert!(short.len() <= MAX_REASON && short.chars().all(|c| c == 'é'));
    }
}
