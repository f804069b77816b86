//! The one consumer runtime: pull, process, acknowledge, for every durable pull consumer of
//! ccm except a campaign's dial consumer.
//!
//! - [`Delivery`] wraps each pulled message. It must be decided once (ack, NAK, TERM with a
//!   reason, poison, abandon); dropped undecided (an early return, a panic, a task aborted at
//!   shutdown) it is NAKed at once, so it is never stranded until `ack_wait`.
//! - [`Options`] state each consumer's policy: how much a pull asks for and how long it waits,
//!   the handlers running at once, what a message that can never be handled gets ([`Poison`]),
//!   and what a message pulled after the shutdown signal gets ([`OnShutdown`]).
//! - [`run`] is the worker loop for per-message handlers (the retrier); [`fetch`] one explicit
//!   batch read to its end (the webhooks dispatcher, which pulls only while it holds its
//!   lease); [`Messages`] a continuous pull cut into batches by size and time (the projector,
//!   which writes a batch per transaction). Pull errors, decisions and poison are logged and
//!   counted here (`ccm_consumer_*`, see [`crate::metrics`]), with their error chains.
//!
//! # What happens to a message nobody can process
//!
//! | consumer | stream | poison (can never be handled) | handler fails for now | after the shutdown signal |
//! |---|---|---|---|---|
//! | `projector_calls`, `_events`, `_campaigns`, `_contacts`, `_dlq` | `CALLS`, `CALL_EVENTS`, KV, `DLQ` | TERM with the decode error (or PostgreSQL's refusal): the retrier parks it from the MSG_TERMINATED advisory | batch kept, in-progress acks, retried until PostgreSQL answers | batch being collected and what the client buffered: NAK; a batch being written: NAK when abandoned |
//! | `retrier_outcomes` | `CALL_EVENTS` | TERM with the decode error: parked from the advisory | NAK 1 s (`max_deliver` 10, then parked from MAX_DELIVERIES) | NAK |
//! | `retrier_retries` | `RETRIES` | copied to `DLQ` as a letter, then TERM with the reason | NAK 1 s (publish failed), or 5 s (the letter could not be stored) | NAK (held entries too) |
//! | `retrier_advisories` | `ADVISORIES` | ack (skip): an advisory nobody can read names no message | NAK 2 s doubling to 60 s, for ever (`max_deliver` -1) | NAK |
//! | `webhooks` | `CALL_EVENTS` | ack (skip): the projector owns malformed events | whole batch NAK 1 s (lease lost) | batch in hand finished, nothing else pulled |
//! | `dial_<campaign>` (not on this runtime) | `CALLS` | never TERMed: `max_deliver` is the dead-letter path (MAX_DELIVERIES advisory → `DLQ`, `DEAD_LETTERED`, number released) | NAK with the dialer's delays | left to `ack_wait` |
//!
//! A TERM is recorded by the server as `$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.<stream>.
//! <consumer>` with the reason; the `ADVISORIES` stream captures it beside MAX_DELIVERIES, and
//! the retrier treats both alike (`retrier/src/advisories.rs`): a reader other than a dial
//! consumer gets the message *parked* (kept in its stream, recorded in `DLQ`, replayable), a
//! dial consumer's message would be dead-lettered. So a TERM never bypasses dead-lettering,
//! and it spares the `max_deliver` redeliveries a message that can never succeed would cost.
//!
//! # Why the dialer is not on it
//!
//! A campaign's dial consumer pulls only as many messages as it has free trunk lines (its fair
//! share, one line when idle), stops listening the instant its campaign is paused, holds each
//! message un-acked for the whole call (with progress acks) because `max_ack_pending` is the
//! campaign's cap, and relies on `max_deliver` as its dead-letter path. A NAK on drop would
//! spend a delivery of the dead-letter budget whenever a call task is aborted at shutdown,
//! where the dialer deliberately leaves the message to `ack_wait`. Its loop
//! (`dialer/src/worker.rs`, `ccm_core::dial_consumer`) stays its own: the runtime would have
//! to grow permits, pause and hold-for-the-call options used by no other consumer.

mod delivery;
mod metrics;
mod worker;

use std::time::Duration;

pub use delivery::{AckError, Delivery};
pub use worker::{Messages, PullError, fetch, run};

/// What a message that can never be handled (undecodable, refused as data) gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Poison {
    /// `+TERM <reason>`: never delivered again to this consumer; the MSG_TERMINATED advisory
    /// lets the retrier park it (or dead-letter it, for a dial consumer).
    Term,
    /// NAK after the delay, until `max_deliver` is spent and the MAX_DELIVERIES advisory
    /// takes over.
    Nak(Duration),
    /// Ack: dropped, only logged and counted (`ccm_consumer_poison_total`).
    Skip,
}

/// What a message pulled after the shutdown signal, not yet given to a handler, gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnShutdown {
    /// NAK (after the delay, if any): another replica gets it at once; spends one delivery.
    Nak(Option<Duration>),
    /// Nothing: it comes back after `ack_wait`, without spending a delivery.
    LeaveToAckWait,
}

/// How one durable consumer is pulled and what its messages get when nobody can handle them.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// The durable consumer's name (a metric label and a log field).
    pub name: &'static str,
    /// Messages asked for per pull request.
    pub batch: usize,
    /// How long a pull request waits for messages. Short, so a shutdown is never held up long
    /// (and nats-server 2.9 stalls on pulls without one).
    pub expires: Duration,
    /// Idle heartbeat of a pull request; `None`: the client's default. Must stay below half
    /// of `expires`.
    pub heartbeat: Option<Duration>,
    /// Handlers running at once ([`run`]).
    pub concurrency: usize,
    pub poison: Poison,
    pub on_shutdown: OnShutdown,
    /// Opens the span each delivery is handled in ([`run`]). A service sets the one
    /// [`consumer_span!`](crate::consumer_span) defines in its own crate, so traces name the
    /// service that consumed (a span belongs to the module that opens it).
    pub span: fn(&'static str, &Delivery) -> tracing::Span,
}

/// Defines `fn consumer_span(consumer, delivery) -> tracing::Span` in the calling module: the
/// span of one delivery (`consume`, named after the consumer, continuing the trace its
/// headers carry), opened there so it belongs to the calling crate. For [`Options::span`].
#[macro_export]
macro_rules! consumer_span {
    () => {
        fn consumer_span(
            consumer: &'static str,
            delivery: &$crate::consumer::Delivery,
        ) -> ::tracing::Span {
            if !$crate::trace_context::enabled() {
                return ::tracing::Span::none();
            }
            let span = ::tracing::info_span!(
                "consume",
                otel.name = consumer,
                otel.kind = "consumer",
                subject = %delivery.subject,
            );
            $crate::trace_context::set_parent(&span, delivery.headers.as_ref());
            span
        }
    };
}

consumer_span!();

impl Options {
    /// A consumer pulled `batch` at a time with `expires`, as many handlers as messages per
    /// pull, poison TERMed, and NAK on shutdown: the policy most consumers want.
    pub fn new(name: &'static str, batch: usize, expires: Duration) -> Self {
        Self {
            name,
            batch: batch.max(1),
            expires,
            heartbeat: None,
            concurrency: batch.max(1),
            poison: Poison::Term,
            on_shutdown: OnShutdown::Nak(None),
            span: consumer_span,
        }
    }

    /// Wraps a message pulled with these options.
    pub fn delivery(&self, message: async_nats::jetstream::Message) -> Delivery {
        Delivery::new(message, self.name, self.poison)
    }

    /// Settles a message that arrived after the shutdown signal, by [`Self::on_shutdown`].
    pub async fn settle_on_shutdown(&self, delivery: Delivery) {
        let sent = match self.on_shutdown {
            OnShutdown::Nak(delay) => delivery.nak(delay).await,
            OnShutdown::LeaveToAckWait => {
                delivery.abandon();
                Ok(())
            }
        };
        if let Err(e) = sent {
            tracing::debug!(consumer = self.name, error = %crate::telemetry::chain(&e),
                "shutdown NAK failed; the message comes back after ack_wait");
        }
    }
}
