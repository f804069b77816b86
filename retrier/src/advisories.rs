//! Dead-lettering and parking messages that exhausted `max_deliver` or were TERMed, from the
//! server's advisories.
//!
//! The `ADVISORIES` stream captures every MAX_DELIVERIES advisory and every MSG_TERMINATED
//! one (a consumer on `ccm_core::consumer` TERMs, with a reason, a message it can never
//! handle), so none is missed while the retrier is down. Both are handled alike. The message
//! itself stays in its stream. What happens next depends on who gave up ([`plan`]):
//!
//! - a campaign's dial consumer: the attempt can never be placed. The retrier copies the
//!   original by `stream_seq` into `DLQ`, emits a `DeadLettered` event for its call, releases
//!   its number, and only then deletes the original.
//! - any other reader (the projector, the retrier, webhooks, anything): its trouble says
//!   nothing about the call, which may be live. The message is *parked*: kept where it is,
//!   recorded in `DLQ` as parked (consumer and sequence), counted, and nothing is ended,
//!   freed or deleted. `Dlq::redrive` of the record replays it to that consumer.
//!
//! Every step tolerates being repeated, so a crash anywhere is repaired by the advisory's
//! redelivery; an original already gone means the work was done.

use std::time::Duration;

use async_nats::jetstream;
use ccm_core::{
    CallEvent, DialRequest, EventKind, consumer::Delivery, metrics::counter, topology::names,
};
use chrono::Utc;
use serde::Deserialize;

use crate::{Shared, dlq, outcome};

/// The fields of `io.nats.jetstream.advisory.v1.max_deliver` and of
/// `io.nats.jetstream.advisory.v1.terminated` that matter here (they share them).
#[derive(Debug, Clone, Deserialize)]
pub struct MaxDeliveries {
    pub stream: String,
    pub consumer: String,
    pub stream_seq: u64,
    pub deliveries: u64,
    /// A TERM's reason; `None` for max deliveries (and for a TERM without reason).
    #[serde(default)]
    pub reason: Option<String>,
    /// `io.nats.jetstream.advisory.v1.terminated` for a TERM.
    #[serde(default, rename = "type")]
    pub kind: String,
}

impl MaxDeliveries {
    /// Why the consumer gave up, as the letter or parked record states it.
    pub fn why(&self) -> String {
        if self.kind.ends_with(".terminated") {
            format!(
                "Terminated by consumer {} after {} deliveries: {}",
                self.consumer,
                self.deliveries,
                self.reason.as_deref().unwrap_or("no reason given")
            )
        } else {
            format!(
                "Delivered {} times to consumer {} without success (max_deliver reached)",
                self.deliveries, self.consumer
            )
        }
    }
}

/// What an advisory leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// About `DLQ` or `ADVISORIES` themselves: a record of a record would loop.
    Ignore,
    /// A dial consumer gave up on a dial message: the call is dead-lettered.
    DeadLetter,
    /// Anyone else gave up: the message is parked and the call left alone.
    Park,
}

/// Decides what an advisory leads to. Only a campaign's dial consumer (`dial_<campaign>`,
/// exactly as the topology names it) reading `CALLS` may end a call.
pub fn plan(advisory: &MaxDeliveries) -> Plan {
    if advisory.stream == names::DLQ || advisory.stream == names::ADVISORIES {
        Plan::Ignore
    } else if advisory.stream == names::CALLS
        && ccm_core::subjects::dial_consumer_campaign(&advisory.consumer).is_some()
    {
        Plan::DeadLetter
    } else {
        Plan::Park
    }
}

/// The consumer as a metric label: the fixed consumers by name, a campaign's dial consumer as
/// `dial`, anything else as `other`, so a forged advisory cannot add series.
pub(crate) fn consumer_label(consumer: &str) -> &'static str {
    if ccm_core::subjects::dial_consumer_campaign(consumer).is_some() {
        return "dial";
    }
    [
        "projector_calls",
        "projector_events",
        "projector_campaigns",
        "projector_contacts",
        "projector_dlq",
        "retrier_outcomes",
        "retrier_retries",
        "retrier_advisories",
        "webhooks",
    ]
    .into_iter()
    .find(|known| *known == consumer)
    .unwrap_or("other")
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
pub async fn handle(ctx: &Shared, message: Delivery) {
    let advisory: MaxDeliveries = match serde_json::from_slice(&message.payload) {
        Ok(advisory) => advisory,
        Err(e) => {
            // The consumer's poison policy skips it: an advisory nobody can read names no
            // message.
            let _ = message.poison(&format!("unreadable advisory: {e}")).await;
            return;
        }
    };
    match dead_letter(ctx, &advisory).await {
        Ok(()) => {
            let _ = message.ack().await;
        }
        Err(e) => {
            let delivered = message.info().map_or(1, |info| info.delivered);
            let delay = retry_delay(delivered);
            tracing::warn!(error = %ccm_core::telemetry::chain(&e), ?advisory, delivered, ?delay,
                "dead-lettering failed; retrying");
            let _ = message.nak(Some(delay)).await;
        }
    }
}

/// How long a failed advisory waits before its next try: 2 s doubling to a minute. The
/// consumer never gives up (`max_deliver: -1`), because an advisory dropped would leave its
/// call stranded; the growing delay keeps a long DLQ outage cheap.
pub(crate) fn retry_delay(delivered: i64) -> Duration {
    let doublings = u32::try_from(delivered.saturating_sub(1).clamp(0, 5)).unwrap_or(5);
    Duration::from_secs(2u64 << doublings).min(Duration::from_secs(60))
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

/// Dead-letters or parks the message named by `advisory`, as [`plan`] decides.
pub async fn dead_letter(ctx: &Shared, advisory: &MaxDeliveries) -> Result<(), AdvisoryError> {
    use jetstream::stream::LastRawMessageErrorKind as Kind;
    let plan = plan(advisory);
    if plan == Plan::Ignore {
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
    if plan == Plan::Park {
        return park(ctx, advisory, &original).await;
    }
    let reason = advisory.why();
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
            parked: false,
        },
    )
    .await?;
    counter!("ccm_retrier_dead_letters_total", "stream" => stream_label(&name)).increment(1);
    if name == names::CALLS
        && let Ok(request) = serde_json::from_slice::<DialRequest>(&original.payload)
    {
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
        ctx.claims
            .release(
                request.campaign_id,
                &request.phone_number,
                request.call_id,
                event.at,
            )
            .await;
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

/// Records a message a non-dial consumer gave up on, and leaves it, its call and its number
/// as they are.
async fn park(
    ctx: &Shared,
    advisory: &MaxDeliveries,
    original: &jetstream::message::StreamMessage,
) -> Result<(), AdvisoryError> {
    let reason = format!(
        "{}; parked: the message stays in {} #{} and its call goes on",
        advisory.why(),
        advisory.stream,
        advisory.stream_seq
    );
    dlq::store(
        &ctx.js,
        dlq::Source {
            stream: &advisory.stream,
            subject: original.subject.as_str(),
            seq: advisory.stream_seq,
            consumer: &advisory.consumer,
            deliveries: advisory.deliveries,
            reason: &reason,
            published: original.time.to_string(),
            headers: Some(&original.headers),
            payload: original.payload.clone(),
            parked: true,
        },
    )
    .await?;
    counter!("ccm_retrier_parked_total",
        "stream" => stream_label(&advisory.stream),
        "consumer" => consumer_label(&advisory.consumer))
    .increment(1);
    tracing::warn!(stream = %advisory.stream, seq = advisory.stream_seq,
        consumer = %advisory.consumer, "message parked");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_advisory_waits_longer_each_time_up_to_a_minute() {
        let delays: Vec<u64> = (0..12).map(|n| retry_delay(n).as_secs()).collect();
        assert_eq!(delays, [2, 2, 4, 8, 16, 32, 60, 60, 60, 60, 60, 60]);
        assert_eq!(retry_delay(i64::MAX), Duration::from_secs(60));
        assert_eq!(retry_delay(-5), Duration::from_secs(2));
    }

    fn advisory(stream: &str, consumer: &str) -> MaxDeliveries {
        MaxDeliveries {
            stream: stream.into(),
            consumer: consumer.into(),
            stream_seq: 1,
            deliveries: 10,
            reason: None,
            kind: "io.nats.jetstream.advisory.v1.max_deliver".into(),
        }
    }

    /// Every shape a consumer name takes: only a campaign's dial consumer on `CALLS` ends a
    /// call; the projector, the retrier, webhooks, operators' own consumers and look-alikes
    /// park; advisories about `DLQ` and `ADVISORIES` are ignored.
    #[test]
    fn only_a_dial_consumer_dead_letters_a_call() {
        let streams = [
            names::CALLS,
            names::CALL_EVENTS,
            names::RETRIES,
            names::DLQ,
            names::ADVISORIES,
            "KV_contacts",
            "KV_campaigns",
            "OTHER",
        ];
        let consumers = [
            "dial_1",
            "dial_77",
            "dial_18446744073709551615",
            "dial_0",
            "dial_07",
            "dial_",
            "dial_x",
            "dial_7_copy",
            "dial-7",
            "DIAL_7",
            "projector_calls",
            "projector_events",
            "projector_contacts",
            "projector_campaigns",
            "projector_dlq",
            "retrier_outcomes",
            "retrier_retries",
            "retrier_advisories",
            "webhooks",
            "failing_dialer",
            "ephemeral0ABC",
            "",
        ];
        for stream in streams {
            for consumer in consumers {
                let want = if stream == names::DLQ || stream == names::ADVISORIES {
                    Plan::Ignore
                } else if stream == names::CALLS
                    && ["dial_1", "dial_77", "dial_18446744073709551615"].contains(&consumer)
                {
                    Plan::DeadLetter
                } else {
                    Plan::Park
                };
                assert_eq!(
                    plan(&advisory(stream, consumer)),
                    want,
                    "{stream} {consumer}"
                );
            }
        }
    }

    #[test]
    fn consumer_labels_are_bounded() {
        assert_eq!(consumer_label("dial_12"), "dial");
        assert_eq!(consumer_label("projector_events"), "projector_events");
        assert_eq!(consumer_label("dial_012"), "other");
        assert_eq!(consumer_label("anything"), "other");
    }

    /// Both advisories the `ADVISORIES` stream captures decode to the same fields; a TERM's
    /// reason is what its letter or parked record states, and a dial consumer's TERM still
    /// dead-letters the call.
    #[test]
    fn a_terminated_advisory_is_handled_like_max_deliveries_with_its_reason() {
        let terminated: MaxDeliveries = serde_json::from_str(
            r#"{"type":"io.nats.jetstream.advisory.v1.terminated","id":"x",
                "timestamp":"2026-12-05T19:00:00Z","stream":"CALL_EVENTS",
                "consumer":"projector_events","consumer_seq":3,"stream_seq":7,
                "deliveries":1,"reason":"undecodable: eof"}"#,
        )
        .expect("terminated advisory");
        assert_eq!(plan(&terminated), Plan::Park);
        assert_eq!(
            terminated.why(),
            "Terminated by consumer projector_events after 1 deliveries: undecodable: eof"
        );
        let exhausted: MaxDeliveries = serde_json::from_str(
            r#"{"type":"io.nats.jetstream.advisory.v1.max_deliver","stream":"CALLS",
                "consumer":"dial_7","stream_seq":9,"deliveries":5}"#,
        )
        .expect("max deliveries advisory");
        assert!(exhausted.why().contains("max_deliver reached"));
        let dial_term = MaxDeliveries {
            kind: terminated.kind.clone(),
            ..exhausted
        };
        assert_eq!(plan(&dial_term), Plan::DeadLetter);
    }
}
