//! Carries out an erase's steps on JetStream, counting what it removed where.

use std::collections::BTreeMap;

use async_nats::{HeaderMap, jetstream};
use bytes::Bytes;

use super::plan::Step;

/// How many messages or keys an erase removed or anonymised in one store.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Count {
    /// `stream`, `bucket` or `table`.
    pub store: String,
    pub name: String,
    /// `erased` (messages securely deleted), `purged` (a key's every revision removed),
    /// `anonymised` (replaced by a copy without the person), `deleted` (rows).
    pub action: String,
    pub count: u64,
}

/// A JetStream request failed; the erase stopped there and may be run again.
#[derive(Debug, thiserror::Error)]
#[error("cannot {what} in {stream}")]
pub struct ApplyError {
    what: &'static str,
    stream: String,
    #[source]
    source: async_nats::Error,
}

#[derive(Default)]
pub(crate) struct Counts(BTreeMap<(String, String, String), u64>);

impl Counts {
    pub(crate) fn add(&mut self, store: &str, name: &str, action: &str, n: u64) {
        if n > 0 {
            *self
                .0
                .entry((store.into(), name.into(), action.into()))
                .or_default() += n;
        }
    }

    pub(crate) fn into_vec(self) -> Vec<Count> {
        self.0
            .into_iter()
            .map(|((store, name, action), count)| Count {
                store,
                name,
                action,
                count,
            })
            .collect()
    }
}

/// Carries out `steps`; `redact` removes the number from an audit record's text.
pub(crate) async fn apply(
    js: &jetstream::Context,
    steps: &[Step],
    redact: impl Fn(&str) -> String,
    counts: &mut Counts,
) -> Result<(), ApplyError> {
    for step in steps {
        match step {
            Step::Erase { stream, seq } => {
                // The server's default for a message delete is a secure erase: the bytes are
                // overwritten with random data, not only unlinked.
                let s = get(js, stream).await?;
                let erased = gone_is_done(s.delete_message(*seq).await)
                    .map_err(failed("erase a message", stream))?;
                counts.add("stream", stream, "erased", u64::from(erased));
            }
            Step::Redact { stream, seq } => {
                let s = get(js, stream).await?;
                let message = match s.get_raw_message(*seq).await {
                    Ok(m) => m,
                    // Gone since it was read (its age, another erase).
                    Err(e) if super::scan::is_gone(&e) => continue,
                    Err(e) => return Err(failed("read a record", stream)(e)),
                };
                let text = String::from_utf8_lossy(&message.payload);
                // A copy is a new message: its de-duplication id would drop it.
                let mut headers = HeaderMap::new();
                for (name, values) in message.headers.iter() {
                    if AsRef::<str>::as_ref(name) != "Nats-Msg-Id" {
                        for value in values {
                            headers.append(name.clone(), value.clone());
                        }
                    }
                }
                js.publish_with_headers(
                    message.subject.to_string(),
                    headers,
                    Bytes::from(redact(&text)),
                )
                .await
                .map_err(failed("copy a record", stream))?
                .await
                .map_err(failed("copy a record", stream))?;
                gone_is_done(s.delete_message(*seq).await)
                    .map_err(failed("erase a record", stream))?;
                counts.add("stream", stream, "anonymised", 1);
            }
            Step::PurgeKey {
                stream,
                bucket,
                subject,
                seq,
                is_marker,
                ..
            } => {
                let s = get(js, stream).await?;
                let mut upto = *seq;
                if !is_marker {
                    let last = s
                        .get_last_raw_message_by_subject(subject)
                        .await
                        .map(|m| m.sequence)
                        .unwrap_or(0);
                    if last == *seq {
                        // The key's current value: delete it first, so every watcher of
                        // the bucket (caches, mirrors, the projector) sees it go.
                        let mut headers = HeaderMap::new();
                        headers.insert("KV-Operation", "DEL");
                        upto = js
                            .publish_with_headers(subject.clone(), headers, Bytes::new())
                            .await
                            .map_err(failed("delete a key", stream))?
                            .await
                            .map_err(failed("delete a key", stream))?
                            .sequence;
                    }
                }
                // Up to and including `upto`: a revision written since is somebody else's
                // (a new claim) and stays.
                let purged = s
                    .purge()
                    .filter(subject.clone())
                    .sequence(upto + 1)
                    .await
                    .map_err(failed("purge a key", stream))?;
                let _ = purged;
                counts.add("bucket", bucket, "purged", 1);
            }
        }
    }
    Ok(())
}

/// A message already gone (its age, an erase running at the same time) is as good as erased.
fn gone_is_done(
    result: Result<bool, jetstream::stream::DeleteMessageError>,
) -> Result<bool, jetstream::stream::DeleteMessageError> {
    match result {
        Err(e)
            if matches!(e.kind(), jetstream::stream::DeleteMessageErrorKind::JetStream(ref j)
                if ccm_core::nats::message_gone(j.error_code())) =>
        {
            Ok(false)
        }
        other => other,
    }
}

async fn get(
    js: &jetstream::Context,
    stream: &str,
) -> Result<jetstream::stream::Stream, ApplyError> {
    js.get_stream(stream)
        .await
        .map_err(failed("open the stream", stream))
}

fn failed<'a, E: Into<async_nats::Error>>(
    what: &'static str,
    stream: &'a str,
) -> impl Fn(E) -> ApplyError + 'a {
    move |e| ApplyError {
        what,
        stream: stream.to_owned(),
        source: e.into(),
    }
}
