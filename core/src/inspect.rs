//! What an operator looks at first: every stream with its consumers, and every KV bucket,
//! read from the server's JetStream API. The same figures as `nats stream report`,
//! `nats consumer report <stream>` and `nats kv ls`, for where the NATS CLI is not installed
//! (`ccm-retrier status`, `cargo xtask status`).

use std::fmt;

use async_nats::jetstream;
use futures::TryStreamExt;
use serde::Serialize;

/// Everything the server holds, streams and buckets sorted by name.
#[derive(Debug, Clone, Serialize)]
pub struct Overview {
    pub streams: Vec<StreamSummary>,
    pub buckets: Vec<BucketSummary>,
}

/// One stream (KV buckets' `KV_*` streams are listed as [`BucketSummary`] instead).
#[derive(Debug, Clone, Serialize)]
pub struct StreamSummary {
    pub name: String,
    /// The subjects the stream captures.
    pub subjects: Vec<String>,
    pub messages: u64,
    pub bytes: u64,
    /// Distinct subjects holding messages (for `CALLS`: campaigns with queued attempts).
    pub distinct_subjects: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    pub consumers: Vec<ConsumerSummary>,
}

/// One consumer of a stream.
#[derive(Debug, Clone, Serialize)]
pub struct ConsumerSummary {
    pub name: String,
    /// Messages not yet delivered to it: its queue.
    pub pending: u64,
    /// Delivered and not yet acknowledged: for a dial consumer, the live calls.
    pub ack_pending: usize,
    /// The ceiling of `ack_pending` (a campaign's concurrency cap); -1 when unlimited.
    pub max_ack_pending: i64,
    /// Messages delivered more than once and not yet acknowledged.
    pub redelivered: usize,
    /// Pull requests waiting for messages.
    pub waiting: usize,
    /// The last stream sequence delivered, and the one below which everything is acked.
    pub delivered_seq: u64,
    pub ack_floor_seq: u64,
}

/// One KV bucket.
#[derive(Debug, Clone, Serialize)]
pub struct BucketSummary {
    pub bucket: String,
    /// Keys with a value or a delete marker.
    pub keys: u64,
    /// Values kept, history included.
    pub values: u64,
    pub bytes: u64,
    pub history: i64,
}

/// Why the server could not be read.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("cannot list the streams")]
    Streams(#[source] async_nats::Error),
    #[error("cannot list the consumers of {stream}")]
    Consumers {
        stream: String,
        source: async_nats::Error,
    },
}

/// Reads every stream, consumer and bucket.
pub async fn overview(js: &jetstream::Context) -> Result<Overview, InspectError> {
    let infos: Vec<jetstream::stream::Info> = js
        .streams()
        .try_collect()
        .await
        .map_err(|e| InspectError::Streams(e.into()))?;
    let mut overview = Overview {
        streams: Vec::new(),
        buckets: Vec::new(),
    };
    for info in infos {
        let name = info.config.name.clone();
        let state = &info.state;
        if let Some(bucket) = name.strip_prefix("KV_") {
            overview.buckets.push(BucketSummary {
                bucket: bucket.to_owned(),
                keys: state.subjects_count,
                values: state.messages,
                bytes: state.bytes,
                history: info.config.max_messages_per_subject,
            });
            continue;
        }
        let stream = js
            .get_stream_no_info(&name)
            .await
            .map_err(|e| consumers_error(&name, e.into()))?;
        let mut consumers: Vec<ConsumerSummary> = stream
            .consumers()
            .map_ok(|c| ConsumerSummary {
                name: c.name,
                pending: c.num_pending,
                ack_pending: c.num_ack_pending,
                max_ack_pending: c.config.max_ack_pending,
                redelivered: c.num_redelivered,
                waiting: c.num_waiting,
                delivered_seq: c.delivered.stream_sequence,
                ack_floor_seq: c.ack_floor.stream_sequence,
            })
            .try_collect()
            .await
            .map_err(|e| consumers_error(&name, e.into()))?;
        consumers.sort_by(|a, b| a.name.cmp(&b.name));
        overview.streams.push(StreamSummary {
            subjects: info.config.subjects.clone(),
            messages: state.messages,
            bytes: state.bytes,
            distinct_subjects: state.subjects_count,
            first_seq: state.first_sequence,
            last_seq: state.last_sequence,
            consumers,
            name,
        });
    }
    overview.streams.sort_by(|a, b| a.name.cmp(&b.name));
    overview.buckets.sort_by(|a, b| a.bucket.cmp(&b.bucket));
    Ok(overview)
}

fn consumers_error(stream: &str, source: async_nats::Error) -> InspectError {
    InspectError::Consumers {
        stream: stream.to_owned(),
        source,
    }
}

/// Plain-text tables, one line per stream, consumer and bucket.
impl fmt::Display for Overview {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<14} {:>10} {:>12} {:>9}  subjects",
            "STREAM", "MESSAGES", "BYTES", "DISTINCT"
        )?;
        for s in &self.streams {
            writeln!(
                f,
                "{:<14} {:>10} {:>12} {:>9}  {}",
                s.name,
                s.messages,
                s.bytes,
                s.distinct_subjects,
                s.subjects.join(",")
            )?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "{:<14} {:<24} {:>9} {:>11} {:>8} {:>11} {:>8}",
            "STREAM", "CONSUMER", "PENDING", "ACK PENDING", "MAX ACK", "REDELIVERED", "WAITING"
        )?;
        for s in &self.streams {
            for c in &s.consumers {
                writeln!(
                    f,
                    "{:<14} {:<24} {:>9} {:>11} {:>8} {:>11} {:>8}",
                    s.name,
                    c.name,
                    c.pending,
                    c.ack_pending,
                    c.max_ack_pending,
                    c.redelivered,
                    c.waiting
                )?;
            }
        }
        writeln!(f)?;
        writeln!(
            f,
            "{:<14} {:>8} {:>8} {:>12} {:>8}",
            "BUCKET", "KEYS", "VALUES", "BYTES", "HISTORY"
        )?;
        for b in &self.buckets {
            writeln!(
                f,
                "{:<14} {:>8} {:>8} {:>12} {:>8}",
                b.bucket, b.keys, b.values, b.bytes, b.history
            )?;
        }
        Ok(())
    }
}
