//! Connecting to NATS and publishing with de-duplication ids (and the trace context, see
//! [`crate::trace_context`]).

use std::time::Duration;

use async_nats::{
    HeaderMap,
    jetstream::{self, kv, message::PublishMessage},
};
use bytes::Bytes;
use serde::Serialize;

use crate::events::{CallEvent, DialRequest};

/// What can go wrong talking to NATS.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error("cannot connect to NATS at {url}")]
    Connect {
        url: String,
        source: async_nats::ConnectError,
    },
    #[error("cannot serialise the message for {subject}")]
    Encode {
        subject: String,
        source: serde_json::Error,
    },
    #[error("publish to {subject} was not acknowledged by JetStream")]
    Publish {
        subject: String,
        source: async_nats::Error,
    },
    #[error("cannot open KV bucket {bucket}")]
    Bucket {
        bucket: String,
        source: async_nats::Error,
    },
}

/// Connects with a client name that identifies the service in server monitoring. The client
/// reconnects on its own; the retry on the first connect covers a server still starting.
pub async fn connect(url: &str, service: &str) -> Result<async_nats::Client, NatsError> {
    async_nats::ConnectOptions::new()
        .name(format!("ccm-{service}"))
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .map_err(|source| NatsError::Connect {
            url: url.to_owned(),
            source,
        })
}

/// A JetStream context whose publish acknowledgements time out instead of hanging forever.
pub fn jetstream(client: async_nats::Client) -> jetstream::Context {
    jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(10))
        // Publishes awaiting their ack are capped per connection (5,000 by default); past the
        // cap a publish waits for a slot instead of failing, so several large bulk requests at
        // once slow down rather than refuse numbers.
        .backpressure_on_inflight(true)
        .build(client)
}

/// Opens a KV bucket provisioned by the topology.
pub async fn bucket(js: &jetstream::Context, name: &str) -> Result<kv::Store, NatsError> {
    js.get_key_value(name).await.map_err(|e| NatsError::Bucket {
        bucket: name.to_owned(),
        source: e.into(),
    })
}

/// Publishes `payload` as JSON with `Nats-Msg-Id: msg_id` and waits for JetStream's ack, so a
/// success means the message is stored and a retried publish is de-duplicated by the server.
pub async fn publish_json<T: Serialize>(
    js: &jetstream::Context,
    subject: String,
    msg_id: &str,
    headers: Option<HeaderMap>,
    payload: &T,
) -> Result<jetstream::publish::PublishAck, NatsError> {
    let body = serde_json::to_vec(payload).map_err(|source| NatsError::Encode {
        subject: subject.clone(),
        source,
    })?;
    let mut publish = crate::trace_context::inject(
        PublishMessage::build()
            .payload(Bytes::from(body))
            .message_id(msg_id),
    );
    if let Some(headers) = headers {
        for (name, values) in headers.iter() {
            for value in values {
                publish = publish.header(name.clone(), value.clone());
            }
        }
    }
    let ack = js
        .send_publish(subject.clone(), publish)
        .await
        .map_err(|e| NatsError::Publish {
            subject: subject.clone(),
            source: e.into(),
        })?;
    ack.await.map_err(|e| NatsError::Publish {
        subject,
        source: e.into(),
    })
}

/// Publishes a dial message (one attempt of a call).
pub async fn publish_dial(
    js: &jetstream::Context,
    request: &DialRequest,
) -> Result<jetstream::publish::PublishAck, NatsError> {
    publish_json(js, request.subject(), &request.msg_id(), None, request).await
}

/// Publishes an event or outcome of a call.
pub async fn publish_event(
    js: &jetstream::Context,
    event: &CallEvent,
) -> Result<jetstream::publish::PublishAck, NatsError> {
    publish_json(js, event.subject(), &event.msg_id(), None, event).await
}
