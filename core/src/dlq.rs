//! Dead letters: how they are stored in `DLQ`, and the operator's actions on them.
//!
//! A letter is the original message, payload byte for byte and headers as they were, published
//! on `calls.dlq.<source stream>` with `Ccm-Dlq-*` headers saying where it came from and why
//! it died. The original `Nats-Msg-Id` is kept as `Ccm-Dlq-Original-Msg-Id` so the letter's own
//! de-duplication id (`dlq/<stream>/<seq>`) makes copying it twice harmless.
//!
//! Operator actions ([`Dlq::list`], [`Dlq::show`], [`Dlq::redrive`], [`Dlq::discard`]) are what
//! `ccm-retrier dlq …` and the API's dead-letter routes run; the retrier writes letters with
//! [`store`]. A redriven dial letter becomes a fresh attempt of its call (the
//! next attempt number, so its dial id has never been used), once: the letter is deleted after
//! the re-publish. Each action on a call's letter is recorded as an event of that call.
//!
//! A *parked* record ([`header::PARKED`]) is not a letter of a call: a reader other than a
//! dial consumer (the projector, the retrier, webhooks) gave up on a message that stays in its
//! stream, and the call goes on. Acting on it never ends, frees or re-dials a call:
//! redriving it makes that one consumer see the message again (see [`replay`]), discarding it
//! only deletes the record.

use std::collections::BTreeMap;

use crate::claims::{self, Claim, ClaimError, ClaimSettings, Claims};
use crate::config::DuplicateScope;
use crate::{
    events::{CallEvent, DialRequest, EventKind},
    ids::{CallId, CampaignId},
    subjects,
    topology::names,
};
use async_nats::{
    HeaderMap,
    jetstream::{self, message::PublishMessage, stream::Stream},
};
use bytes::Bytes;
use chrono::Utc;
use serde::Serialize;

/// The headers a letter carries besides the original ones.
pub mod header {
    pub const STREAM: &str = "Ccm-Dlq-Stream";
    pub const SUBJECT: &str = "Ccm-Dlq-Subject";
    pub const SEQ: &str = "Ccm-Dlq-Seq";
    pub const CONSUMER: &str = "Ccm-Dlq-Consumer";
    pub const DELIVERIES: &str = "Ccm-Dlq-Deliveries";
    pub const REASON: &str = "Ccm-Dlq-Reason";
    pub const PUBLISHED: &str = "Ccm-Dlq-Published";
    pub const DEAD_AT: &str = "Ccm-Dlq-Dead-At";
    pub const CALL: &str = "Ccm-Dlq-Call";
    pub const CAMPAIGN: &str = "Ccm-Dlq-Campaign";
    pub const ORIGINAL_MSG_ID: &str = "Ccm-Dlq-Original-Msg-Id";
    /// On the call event an operator's redrive (`Retrying`) or discard (`Failed`) publishes:
    /// the DLQ sequence of the letter it resolved, so the read model can mark the letter.
    pub const RESOLVED: &str = "Ccm-Dlq-Resolved";
    /// `true` on a parked record: the message was kept in its stream (see the module docs).
    pub const PARKED: &str = "Ccm-Dlq-Parked";
}

/// How a parked message is replayed to the consumer that gave up on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// Reset the consumer to the message's sequence: it is delivered again, and so is every
    /// later message of that consumer, which the projector applies idempotently.
    Reset,
    /// The consumer does not apply a message twice harmlessly (a second retry decision, a
    /// second webhook): no automatic replay; the operator follows the procedure in `docs/retries.md`.
    Manual,
}

/// The consumers whose every message can be applied again without effect: the projector's.
const IDEMPOTENT_CONSUMERS: &[&str] = &[
    "projector_calls",
    "projector_events",
    "projector_campaigns",
    "projector_contacts",
    "projector_dlq",
];

/// How a message parked by `consumer` is replayed.
pub fn replay(consumer: &str) -> Replay {
    if IDEMPOTENT_CONSUMERS.contains(&consumer) {
        Replay::Reset
    } else {
        Replay::Manual
    }
}

/// Where a letter came from and why it died.
#[derive(Debug, Clone)]
pub struct Source<'a> {
    pub stream: &'a str,
    pub subject: &'a str,
    pub seq: u64,
    pub consumer: &'a str,
    pub deliveries: u64,
    pub reason: &'a str,
    /// When the original was published.
    pub published: String,
    pub headers: Option<&'a HeaderMap>,
    pub payload: Bytes,
    /// A parked record (the message stays in its stream) rather than a dead letter.
    pub parked: bool,
}

/// What went wrong with a dead letter.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error("cannot store the dead letter of {stream} #{seq}")]
    Store {
        stream: String,
        seq: u64,
        source: async_nats::Error,
    },
    #[error("no dead letter #{0}")]
    NotFound(u64),
    #[error("cannot read the DLQ")]
    Read(#[source] async_nats::Error),
    #[error("cannot delete dead letter #{0}")]
    Delete(u64, #[source] async_nats::Error),
    #[error("number of call {call} is live in call {other}; redrive it once that call ends")]
    NumberBusy { call: CallId, other: String },
    #[error(
        "number of call {0} ended another call less than the duplicate window ago; redrive it later"
    )]
    NumberInWindow(CallId),
    #[error("cannot claim the call's number")]
    Claim(#[source] async_nats::Error),
    #[error("dead letter #{0} is not a dial message of a call")]
    NotACall(u64),
    #[error(
        "record #{seq} is {stream} #{source_seq} parked by consumer {consumer}, which cannot \
         apply a message twice harmlessly: replay it by hand (see `docs/retries.md`), then discard \
         the record"
    )]
    ReplayByHand {
        seq: u64,
        stream: String,
        source_seq: u64,
        consumer: String,
    },
    #[error("cannot reset consumer {consumer} of {stream} to #{source_seq}")]
    Reset {
        stream: String,
        consumer: String,
        source_seq: u64,
        source: async_nats::Error,
    },
    #[error(transparent)]
    Publish(#[from] crate::nats::NatsError),
}

/// Copies a message into `DLQ`.
pub async fn store(js: &jetstream::Context, source: Source<'_>) -> Result<(), DlqError> {
    // A message two consumers park gets one record per consumer.
    let id = if source.parked {
        format!("park/{}/{}/{}", source.stream, source.seq, source.consumer)
    } else {
        format!("dlq/{}/{}", source.stream, source.seq)
    };
    let mut publish = PublishMessage::build()
        .payload(source.payload.clone())
        .message_id(id);
    if let Some(headers) = source.headers {
        for (name, values) in headers.iter() {
            for value in values {
                let name = name.to_string();
                if name.eq_ignore_ascii_case("Nats-Msg-Id") {
                    publish = publish.header(header::ORIGINAL_MSG_ID, value.as_str());
                } else if !name.starts_with("Nats-Expected") {
                    publish = publish.header(name.as_str(), value.as_str());
                }
            }
        }
    }
    let call = serde_json::from_slice::<CallRef>(&source.payload).ok();
    publish = publish
        .header(header::STREAM, source.stream)
        .header(header::SUBJECT, source.subject)
        .header(header::SEQ, source.seq.to_string())
        .header(header::CONSUMER, source.consumer)
        .header(header::DELIVERIES, source.deliveries.to_string())
        .header(header::REASON, source.reason)
        .header(header::PUBLISHED, source.published.as_str())
        .header(header::DEAD_AT, Utc::now().to_rfc3339());
    if source.parked {
        publish = publish.header(header::PARKED, "true");
    }
    if let Some(call) = call {
        publish = publish
            .header(header::CALL, call.call_id.to_string())
            .header(header::CAMPAIGN, call.campaign_id.to_string());
    }
    let err = |e: async_nats::Error| DlqError::Store {
        stream: source.stream.to_owned(),
        seq: source.seq,
        source: e,
    };
    let ack = js
        .send_publish(subjects::dlq(source.stream), publish)
        .await
        .map_err(|e| err(e.into()))?;
    ack.await.map_err(|e| err(e.into()))?;
    Ok(())
}

/// Publishes the call event recording an operator's action on letter `seq`, with the
/// [`header::RESOLVED`] header naming the letter.
async fn publish_resolution(
    js: &jetstream::Context,
    event: &CallEvent,
    seq: u64,
) -> Result<(), crate::nats::NatsError> {
    let mut headers = HeaderMap::new();
    headers.insert(header::RESOLVED, seq.to_string().as_str());
    crate::nats::publish_json(js, event.subject(), &event.msg_id(), Some(headers), event)
        .await
        .map(|_| ())
}

/// The fields every ccm payload (dial request or event) has.
#[derive(serde::Deserialize)]
struct CallRef {
    call_id: CallId,
    campaign_id: CampaignId,
}

/// A letter's `Ccm-Dlq-*` headers, parsed: the one reader of the format [`publish`] writes
/// (the operator's listing and the projector's `dead_letters` rows both read through it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    pub stream: String,
    pub subject: String,
    pub source_seq: Option<u64>,
    /// None when absent or empty (a letter of no consumer).
    pub consumer: Option<String>,
    pub deliveries: Option<u64>,
    pub reason: String,
    pub published: Option<String>,
    /// RFC 3339, as written.
    pub dead_at: Option<String>,
    pub call_id: Option<CallId>,
    pub campaign_id: Option<CampaignId>,
    pub parked: bool,
}

impl Headers {
    /// Reads the headers through `get` (a header's first value by name).
    pub fn read(get: impl Fn(&str) -> Option<String>) -> Self {
        Self {
            stream: get(header::STREAM).unwrap_or_default(),
            subject: get(header::SUBJECT).unwrap_or_default(),
            source_seq: get(header::SEQ).and_then(|s| s.parse().ok()),
            consumer: get(header::CONSUMER).filter(|c| !c.is_empty()),
            deliveries: get(header::DELIVERIES).and_then(|s| s.parse().ok()),
            reason: get(header::REASON).unwrap_or_default(),
            published: get(header::PUBLISHED),
            dead_at: get(header::DEAD_AT),
            call_id: get(header::CALL).and_then(|s| s.parse().ok()),
            campaign_id: get(header::CAMPAIGN).and_then(|s| s.parse().ok()),
            parked: get(header::PARKED).is_some_and(|v| v == "true"),
        }
    }
}

/// A letter as the operator sees it.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    /// The letter's sequence in `DLQ`: what show, redrive and discard take.
    pub seq: u64,
    pub stream: String,
    pub subject: String,
    pub source_seq: Option<u64>,
    pub consumer: Option<String>,
    pub deliveries: Option<u64>,
    pub reason: String,
    pub published: Option<String>,
    pub dead_at: Option<String>,
    pub call_id: Option<CallId>,
    pub campaign_id: Option<CampaignId>,
    /// A parked record: the message is still in `stream` at `source_seq`, the call goes on.
    pub parked: bool,
    /// Every header of the letter, the original ones included.
    pub headers: BTreeMap<String, Vec<String>>,
    /// The payload as JSON when it is JSON, else as text.
    pub payload: serde_json::Value,
}

impl DeadLetter {
    fn from_message(message: &jetstream::message::StreamMessage) -> Self {
        let headers: BTreeMap<String, Vec<String>> = message
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    v.iter().map(|v| v.as_str().to_owned()).collect(),
                )
            })
            .collect();
        let get = |name: &str| headers.get(name).and_then(|v| v.first()).cloned();
        let payload = serde_json::from_slice(&message.payload).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(&message.payload).into_owned())
        });
        let Headers {
            stream,
            subject,
            source_seq,
            consumer,
            deliveries,
            reason,
            published,
            dead_at,
            call_id,
            campaign_id,
            parked,
        } = Headers::read(get);
        Self {
            seq: message.sequence,
            stream,
            subject,
            source_seq,
            consumer,
            deliveries,
            reason,
            published,
            dead_at,
            call_id,
            campaign_id,
            parked,
            headers,
            payload,
        }
    }
}

/// Which letters to list.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only letters taken from this stream.
    pub stream: Option<String>,
    pub campaign: Option<CampaignId>,
    pub call: Option<CallId>,
    /// Only letters after this DLQ sequence (for paging).
    pub after: Option<u64>,
    pub limit: usize,
}

/// What a redrive did.
#[derive(Debug, Clone, Serialize)]
pub struct Redriven {
    pub letter: u64,
    pub subject: String,
    /// The new attempt, for a dial letter.
    pub attempt: Option<u32>,
}

/// The operator's view of the DLQ.
#[derive(Debug, Clone)]
pub struct Dlq {
    js: jetstream::Context,
    stream: Stream,
    claims: Claims,
    /// The duplicate scope a redriven call claims its number under.
    scope: DuplicateScope,
}

impl Dlq {
    /// Opens the DLQ of a provisioned topology.
    pub async fn open(js: jetstream::Context) -> Result<Self, DlqError> {
        let stream = js
            .get_stream(names::DLQ)
            .await
            .map_err(|e| DlqError::Read(e.into()))?;
        let settings = ClaimSettings::of(&crate::Config::default());
        let claims = Claims::open(js.clone(), settings).await?;
        Ok(Self {
            js,
            stream,
            claims,
            scope: DuplicateScope::default(),
        })
    }

    /// Claims numbers of redriven calls under `scope` (ingest's `duplicate_scope`).
    pub fn with_scope(mut self, scope: DuplicateScope) -> Self {
        self.scope = scope;
        self
    }

    /// Claims with these TTLs and duplicate window (the deployment's, see
    /// [`ClaimSettings::of`]) instead of the defaults.
    pub fn with_claim_settings(mut self, settings: ClaimSettings) -> Self {
        self.claims = self.claims.with_settings(settings);
        self
    }

    /// Letters matching `filter`, oldest first.
    pub async fn list(&self, filter: &Filter) -> Result<Vec<DeadLetter>, DlqError> {
        use jetstream::stream::DirectGetErrorKind;
        let subject = filter
            .stream
            .as_deref()
            .map_or("calls.dlq.>".to_owned(), subjects::dlq);
        let mut from = filter.after.map(|s| s + 1);
        let mut letters = Vec::new();
        while letters.len() < filter.limit.max(1) {
            let message = match self
                .stream
                .direct_get_next_for_subject(subject.clone(), from)
                .await
            {
                Ok(message) => message,
                Err(e) if e.kind() == DirectGetErrorKind::NotFound => break,
                Err(e) => return Err(DlqError::Read(e.into())),
            };
            from = Some(message.sequence + 1);
            let letter = DeadLetter::from_message(&message);
            if filter
                .campaign
                .is_some_and(|c| letter.campaign_id != Some(c))
                || filter.call.is_some_and(|c| letter.call_id != Some(c))
            {
                continue;
            }
            letters.push(letter);
        }
        Ok(letters)
    }

    /// One letter with its payload and headers.
    pub async fn show(&self, seq: u64) -> Result<DeadLetter, DlqError> {
        Ok(DeadLetter::from_message(&self.raw(seq).await?))
    }

    async fn raw(&self, seq: u64) -> Result<jetstream::message::StreamMessage, DlqError> {
        use jetstream::stream::LastRawMessageErrorKind as Kind;
        match self.stream.get_raw_message(seq).await {
            Ok(message) if message.subject.starts_with("calls.dlq.") => Ok(message),
            Ok(_) => Err(DlqError::NotFound(seq)),
            Err(e) => match e.kind() {
                Kind::NoMessageFound => Err(DlqError::NotFound(seq)),
                Kind::JetStream(j) if j.error_code() == jetstream::ErrorCode::NO_MESSAGE_FOUND => {
                    Err(DlqError::NotFound(seq))
                }
                _ => Err(DlqError::Read(e.into())),
            },
        }
    }

    /// Re-publishes a letter to its source and deletes it. A dial letter becomes the call's
    /// next attempt: its number is claimed again, a `Retrying` event records the redrive,
    /// and the attempt is published with the dial id `<call>/<n+1>`, so even two operators
    /// redriving the same letter at once produce one attempt.
    pub async fn redrive(&self, seq: u64) -> Result<Redriven, DlqError> {
        let message = self.raw(seq).await?;
        let letter = DeadLetter::from_message(&message);
        if letter.parked {
            return self.replay_parked(letter).await;
        }
        if letter.stream == names::CALLS {
            let mut request: DialRequest =
                serde_json::from_slice(&message.payload).map_err(|_| DlqError::NotACall(seq))?;
            let claim = self.claim(&request).await?;
            let now = Utc::now();
            let event = CallEvent::at(
                request.call_id,
                request.campaign_id,
                request.attempt,
                now,
                EventKind::Retrying {
                    next_retry_at: now,
                    reason: format!("Redriven from dead letter #{seq} by an operator"),
                },
            );
            publish_resolution(&self.js, &event, seq).await?;
            request.attempt += 1;
            // Redriven under the operator's `Retrying`: no longer the callee's callback plan.
            request.callback = None;
            request.queued_at = now;
            crate::nats::publish_dial(&self.js, &request).await?;
            if let Err(e) = self.claims.bind(&claim).await {
                tracing::warn!(error = %crate::telemetry::chain(&e), call = %request.call_id, "cannot bind the redriven call's claim yet; the reaper will");
            }
            self.delete(seq).await?;
            tracing::info!(letter = seq, call = %request.call_id, attempt = request.attempt,
                "dead letter redriven");
            return Ok(Redriven {
                letter: seq,
                subject: request.subject(),
                attempt: Some(request.attempt),
            });
        }
        // Any other message goes back as it was, headers included.
        let mut publish = PublishMessage::build().payload(message.payload.clone());
        let mut msg_id = format!("dlq/{seq}/redrive");
        for (name, values) in message.headers.iter() {
            let name = name.to_string();
            for value in values {
                if name == header::ORIGINAL_MSG_ID {
                    msg_id = format!("{}/redrive", value.as_str());
                } else if !name.starts_with("Ccm-Dlq-") && !name.starts_with("Nats-") {
                    publish = publish.header(name.as_str(), value.as_str());
                }
            }
        }
        let publish = publish.message_id(msg_id);
        let subject = letter.subject.clone();
        let ack = self
            .js
            .send_publish(subject.clone(), publish)
            .await
            .map_err(|e| crate::nats::NatsError::Publish {
                subject: subject.clone(),
                source: e.into(),
            })?;
        ack.await.map_err(|e| crate::nats::NatsError::Publish {
            subject: subject.clone(),
            source: e.into(),
        })?;
        self.delete(seq).await?;
        tracing::info!(letter = seq, %subject, "dead letter redriven");
        Ok(Redriven {
            letter: seq,
            subject,
            attempt: None,
        })
    }

    /// Makes the consumer that parked a message see it again ([`replay`]), then deletes the
    /// record. Nothing is re-published, so no other consumer sees the message twice.
    async fn replay_parked(&self, letter: DeadLetter) -> Result<Redriven, DlqError> {
        let (Some(source_seq), Some(consumer)) = (letter.source_seq, letter.consumer.clone())
        else {
            return Err(DlqError::NotFound(letter.seq));
        };
        if replay(&consumer) == Replay::Manual {
            return Err(DlqError::ReplayByHand {
                seq: letter.seq,
                stream: letter.stream,
                source_seq,
                consumer,
            });
        }
        let err = |e: async_nats::Error| DlqError::Reset {
            stream: letter.stream.clone(),
            consumer: consumer.clone(),
            source_seq,
            source: e,
        };
        // ADR-60 (nats-server 2.14+): the consumer's ack floor becomes `source_seq - 1`. Sent
        // raw: async-nats has it behind a feature that would rebuild the whole workspace.
        let answer: serde_json::Value = self
            .js
            .request(
                format!("CONSUMER.RESET.{}.{consumer}", letter.stream),
                &serde_json::json!({ "seq": source_seq }),
            )
            .await
            .map_err(|e| err(e.into()))?;
        if let Some(error) = answer.get("error") {
            return Err(err(error.to_string().into()));
        }
        self.delete(letter.seq).await?;
        tracing::info!(letter = letter.seq, %consumer, stream = %letter.stream, source_seq,
            "parked message replayed");
        Ok(Redriven {
            letter: letter.seq,
            subject: letter.subject,
            attempt: None,
        })
    }

    /// Deletes a letter for good; a call's letter ends the call `FAILED`, recorded as an event.
    /// A parked record is only deleted: its call was never ended and is not ended now.
    pub async fn discard(&self, seq: u64) -> Result<DeadLetter, DlqError> {
        let message = self.raw(seq).await?;
        let letter = DeadLetter::from_message(&message);
        if letter.stream == names::CALLS
            && !letter.parked
            && let Ok(request) = serde_json::from_slice::<DialRequest>(&message.payload)
        {
            let event = CallEvent::of_request(
                &request,
                EventKind::Failed {
                    reason: format!("Dead letter #{seq} discarded by an operator"),
                },
            );
            publish_resolution(&self.js, &event, seq).await?;
        }
        self.delete(seq).await?;
        tracing::info!(letter = seq, "dead letter discarded");
        Ok(letter)
    }

    async fn delete(&self, seq: u64) -> Result<(), DlqError> {
        self.stream
            .delete_message(seq)
            .await
            .map(|_| ())
            .map_err(|e| DlqError::Delete(seq, e.into()))
    }

    /// Claims the call's number again (it was released when the call was dead-lettered),
    /// pending until the new attempt is published; the call's own release marker does not
    /// count against it, another call's does.
    async fn claim(&self, request: &DialRequest) -> Result<Claim, DlqError> {
        let (campaign, phone) = (request.campaign_id, &request.phone_number);
        match self
            .claims
            .claim(self.scope, campaign, phone, request.call_id)
            .await
        {
            Ok(claim) => Ok(claim),
            Err(ClaimError::InProgress) => {
                let key = claims::key(self.scope, campaign, phone);
                let other = match self.claims.read(&key).await.map(|r| r.slot) {
                    Ok(claims::Slot::Held { call, .. }) => call,
                    _ => "another call".into(),
                };
                Err(DlqError::NumberBusy {
                    call: request.call_id,
                    other,
                })
            }
            Err(ClaimError::WithinWindow) => Err(DlqError::NumberInWindow(request.call_id)),
            Err(ClaimError::Unavailable(e)) => Err(DlqError::Claim(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_projectors_consumers_are_replayed_by_a_reset() {
        for consumer in IDEMPOTENT_CONSUMERS {
            assert_eq!(replay(consumer), Replay::Reset, "{consumer}");
        }
        for consumer in [
            "retrier_outcomes",
            "retrier_retries",
            "retrier_advisories",
            "webhooks",
            "dial_7",
            "projector_calls_2",
            "",
        ] {
            assert_eq!(replay(consumer), Replay::Manual, "{consumer}");
        }
    }
}
