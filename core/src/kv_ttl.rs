//! Writing a KV key with a per-key TTL (nats-server 2.11), which async-nats offers only for
//! a create: a put with an optional expected revision and an optional `Nats-TTL`.

use std::time::Duration;

use async_nats::{
    HeaderMap,
    jetstream::{self, context::PublishError},
};
use bytes::Bytes;

/// Puts `value` under `key` of `bucket`, if the key's last revision is `expect` (when
/// given), to expire after `ttl` (whole seconds, at least 1; `None`: never). Returns the
/// new revision.
pub async fn put(
    js: &jetstream::Context,
    bucket: &str,
    key: &str,
    value: Bytes,
    expect: Option<u64>,
    ttl: Option<Duration>,
) -> Result<u64, PublishError> {
    let mut headers = HeaderMap::new();
    if let Some(expect) = expect {
        headers.insert(
            "Nats-Expected-Last-Subject-Sequence",
            expect.to_string().as_str(),
        );
    }
    if let Some(ttl) = ttl {
        headers.insert("Nats-TTL", ttl.as_secs().max(1).to_string().as_str());
    }
    let ack = js
        .publish_with_headers(format!("$KV.{bucket}.{key}"), headers, value)
        .await?;
    Ok(ack.await?.sequence)
}
