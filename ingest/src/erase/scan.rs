//! Reads every message of every stream (KV buckets included) and keeps those that name a
//! person. Generic on purpose: a stream added later is searched without anyone remembering
//! to add it here. Costs one pass over each stream; an erase or an export is rare.

use std::time::Duration;

use async_nats::{
    HeaderMap,
    jetstream::{
        self,
        consumer::{DeliverPolicy, push},
        stream::RetentionPolicy,
    },
};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use super::needles::Needles;

/// How long a read waits for the next message before the stream counts as read.
const IDLE: Duration = Duration::from_secs(2);

/// One message that names the person.
#[derive(Debug, Clone)]
pub(crate) struct Hit {
    pub stream: String,
    pub seq: u64,
    pub subject: String,
    pub headers: HeaderMap,
    pub payload: Bytes,
    /// The number itself appears (not only one of its calls).
    pub names_number: bool,
}

impl Hit {
    /// The bucket and key of a KV message.
    pub(crate) fn kv_key(&self) -> Option<(&str, &str)> {
        let bucket = self.stream.strip_prefix("KV_")?;
        let key = self
            .subject
            .strip_prefix("$KV.")?
            .strip_prefix(bucket)?
            .strip_prefix('.')?;
        Some((bucket, key))
    }

    /// A KV message that deletes or purges its key.
    pub(crate) fn is_kv_marker(&self) -> bool {
        self.headers
            .get("KV-Operation")
            .is_some_and(|op| op.as_str() == "DEL" || op.as_str() == "PURGE")
    }
}

/// The server did not answer a read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read stream {stream}")]
pub struct ScanError {
    stream: String,
    #[source]
    source: async_nats::Error,
}

fn failed(stream: &str) -> impl Fn(async_nats::Error) -> ScanError + '_ {
    move |source| ScanError {
        stream: stream.to_owned(),
        source,
    }
}

/// Every message of every stream that names the number or one of the calls.
pub(crate) async fn scan(
    js: &jetstream::Context,
    needles: &Needles,
) -> Result<Vec<Hit>, ScanError> {
    let infos: Vec<_> = js
        .streams()
        .try_collect()
        .await
        .map_err(|e| failed("(list)")(e.into()))?;
    let mut hits = Vec::new();
    for info in infos {
        if info.state.messages == 0 {
            continue;
        }
        let name = info.config.name.clone();
        let stream = js
            .get_stream(&name)
            .await
            .map_err(|e| failed(&name)(e.into()))?;
        let found = match info.config.retention {
            // A work queue refuses a consumer overlapping its own: read it by sequence.
            RetentionPolicy::Limits => {
                by_consumer(js, &stream, &name, info.state.last_sequence, needles).await?
            }
            _ => {
                by_sequence(
                    &stream,
                    &name,
                    info.state.first_sequence,
                    info.state.last_sequence,
                    needles,
                )
                .await?
            }
        };
        hits.extend(found);
    }
    Ok(hits)
}

fn judge(
    stream: &str,
    seq: u64,
    subject: &str,
    headers: Option<&HeaderMap>,
    payload: &Bytes,
    needles: &Needles,
) -> Option<Hit> {
    let header_text = headers.map(header_text).unwrap_or_default();
    let names_number = needles.names_number(subject.as_bytes())
        || needles.names_number(payload)
        || needles.names_number(header_text.as_bytes());
    let names = names_number
        || needles.names(subject.as_bytes())
        || needles.names(payload)
        || needles.names(header_text.as_bytes());
    names.then(|| Hit {
        stream: stream.to_owned(),
        seq,
        subject: subject.to_owned(),
        headers: headers.cloned().unwrap_or_default(),
        payload: payload.clone(),
        names_number,
    })
}

fn header_text(headers: &HeaderMap) -> String {
    headers
        .iter()
        .flat_map(|(name, values)| {
            values
                .iter()
                .map(move |v| format!("{name}:{}\n", v.as_str()))
        })
        .collect()
}

async fn by_consumer(
    js: &jetstream::Context,
    stream: &jetstream::stream::Stream,
    name: &str,
    last: u64,
    needles: &Needles,
) -> Result<Vec<Hit>, ScanError> {
    let consumer = stream
        .create_consumer(push::OrderedConfig {
            deliver_subject: js.client().new_inbox(),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(|e| failed(name)(e.into()))?;
    let mut hits = Vec::new();
    if consumer.cached_info().num_pending == 0 {
        return Ok(hits);
    }
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| failed(name)(e.into()))?;
    let mut seen = 0;
    loop {
        let message = match tokio::time::timeout(IDLE, messages.next()).await {
            Ok(Some(Ok(message))) => message,
            Ok(Some(Err(e))) => return Err(failed(name)(e.into())),
            Ok(None) => break,
            // The messages still pending were deleted meanwhile (another erase, their age),
            // or the consumer stalled: the rest is read by sequence, which tells them apart.
            Err(_) => {
                hits.extend(by_sequence(stream, name, seen + 1, last, needles).await?);
                break;
            }
        };
        let info = message.info().map_err(failed(name))?;
        let (seq, pending) = (info.stream_sequence, info.pending);
        seen = seq;
        hits.extend(judge(
            name,
            seq,
            message.subject.as_str(),
            message.headers.as_ref(),
            &message.payload,
            needles,
        ));
        if pending == 0 || seq >= last {
            break;
        }
    }
    Ok(hits)
}

async fn by_sequence(
    stream: &jetstream::stream::Stream,
    name: &str,
    first: u64,
    last: u64,
    needles: &Needles,
) -> Result<Vec<Hit>, ScanError> {
    let mut hits = Vec::new();
    for seq in first..=last {
        match stream.get_raw_message(seq).await {
            Ok(m) => hits.extend(judge(
                name,
                seq,
                m.subject.as_str(),
                Some(&m.headers),
                &m.payload,
                needles,
            )),
            // Deleted, consumed or expired since the stream's state was read.
            Err(e) if is_gone(&e) => {}
            Err(e) => return Err(failed(name)(e.into())),
        }
    }
    Ok(hits)
}

/// The message is not there (deleted, consumed or expired).
pub(crate) fn is_gone(e: &jetstream::stream::RawMessageError) -> bool {
    match e.kind() {
        jetstream::stream::RawMessageErrorKind::NoMessageFound => true,
        jetstream::stream::RawMessageErrorKind::JetStream(j) => {
            ccm_core::nats::message_gone(j.error_code())
        }
        _ => false,
    }
}
