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

mod lost_race;
pub use lost_race::lost_race;

/// Whether a server error code says "no such message": 10037 (no message found) or 10043
/// (sequence not found), which nats-server 2.15 answers to a delete of a message deleted a
/// moment before by someone else (seen in CI: a second erase of one number answered 503). A
/// delete or read that gets it finds the message already gone, which is no outage.
pub fn message_gone(code: jetstream::ErrorCode) -> bool {
    code == jetstream::ErrorCode::NO_MESSAGE_FOUND
        || code == jetstream::ErrorCode::SEQUENCE_NOT_FOUND
}

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
///
/// A user and password (or a token) in the URL are taken out of it and given to the client
/// as options: async-nats logs the server address it dials, password included, at debug level.
pub async fn connect(url: &str, service: &str) -> Result<async_nats::Client, NatsError> {
    let (servers, credentials) = split_credentials(url);
    let options = match credentials {
        Some(Credentials::UserPassword(user, password)) => {
            async_nats::ConnectOptions::with_user_and_password(user, password)
        }
        Some(Credentials::Token(token)) => async_nats::ConnectOptions::with_token(token),
        None => async_nats::ConnectOptions::new(),
    };
    let url = servers.as_str();
    // async-nats parses a `&str` as one address; a list must reach it as a list.
    let addresses: Vec<&str> = url.split(',').collect();
    options
        .name(format!("ccm-{service}"))
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5))
        .connect(addresses.as_slice())
        .await
        .map_err(|source| NatsError::Connect {
            // The URL may hold a user and password; the error is logged.
            url: crate::config::redact_url(url),
            source,
        })
}

/// Credentials found in a NATS URL.
#[derive(Debug, PartialEq, Eq)]
enum Credentials {
    UserPassword(String, String),
    Token(String),
}

/// The server URLs without their user information, and the first credentials found in them
/// (percent-decoded). The servers of one cluster share their credentials.
fn split_credentials(urls: &str) -> (String, Option<Credentials>) {
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let mut found = None;
    let servers = urls
        .split(',')
        .map(|one| {
            let one = one.trim();
            let parts = crate::config::UrlParts::of(one);
            let (Some(_), Some(userinfo)) = (parts.scheme, parts.userinfo) else {
                return one.to_owned();
            };
            if found.is_none() {
                found = Some(match userinfo.split_once(':') {
                    Some((user, password)) => {
                        Credentials::UserPassword(decode(user), decode(password))
                    }
                    None => Credentials::Token(decode(userinfo)),
                });
            }
            parts.with_userinfo(None, parts.tail)
        })
        .collect::<Vec<_>>()
        .join(",");
    (servers, found)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_taken_out_of_the_urls() {
        let cases = [
            ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222", None),
            (
                "nats://ccm:p%40ss@h1:4222, tls://ccm:p%40ss@h2:4222",
                "nats://h1:4222,tls://h2:4222",
                Some(Credentials::UserPassword("ccm".into(), "p@ss".into())),
            ),
            (
                "nats://s3cr3t@h:4222/x?y",
                "nats://h:4222/x?y",
                Some(Credentials::Token("s3cr3t".into())),
            ),
            ("h:4222", "h:4222", None),
        ];
        for (url, servers, credentials) in cases {
            assert_eq!(
                split_credentials(url),
                (servers.to_owned(), credentials),
                "{url}"
            );
        }
    }
}
