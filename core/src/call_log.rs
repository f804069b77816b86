//! The newest event of a call, read from `CALL_EVENTS` by subject: the one reader every
//! service uses (the dialer before placing, the retrier before deciding or expiring, ingest's
//! read model, the webhooks' payloads, the claim reaper).
//!
//! A call's events are on `calls.event.<campaign>.<call>` and its outcomes on
//! `calls.outcome.<campaign>.<call>` ([`crate::subjects`]). When the campaign is known the
//! read is a direct get of the subject's last message (served by any replica, no consumer);
//! when it is not, a stream "last by subject" request with the wildcard subject in its body
//! (a direct get would need the wildcard in its request subject, which is not allowed).
//!
//! An event that does not decode is returned as such, not skipped: whether it counts as "no
//! event" (a read model) or as "something is there" (the reaper) is the caller's rule.

use async_nats::jetstream::stream::{DirectGetErrorKind, LastRawMessageErrorKind, Stream};
use chrono::{DateTime, Utc};

use crate::{CallEvent, CallId, subjects};

/// The last message stored on a call's subject.
#[derive(Debug)]
pub struct Last {
    /// The event, or why its payload is not one.
    pub event: Result<CallEvent, serde_json::Error>,
    /// Its stream sequence: what a write expecting "nothing newer" names.
    pub sequence: u64,
    /// When the stream stored it.
    pub stored_at: DateTime<Utc>,
    /// The dialer a `Dialing` event names ([`crate::outcome_route::DIALER_HEADER`]); read
    /// only by [`last_on`] (a lookup by call alone never needs it).
    pub dialer: Option<crate::outcome_route::Address>,
}

impl Last {
    /// The event, when it decodes.
    pub fn decoded(self) -> Option<CallEvent> {
        self.event.ok()
    }
}

/// The last message on `subject` (one call's events or outcomes); `None`: there is none.
pub async fn last_on<I>(
    stream: &Stream<I>,
    subject: String,
) -> Result<Option<Last>, async_nats::Error> {
    match stream.direct_get_last_for_subject(subject).await {
        Ok(message) => Ok(Some(Last {
            event: serde_json::from_slice(&message.payload),
            sequence: message.sequence,
            stored_at: stored_at(message.time),
            dialer: crate::outcome_route::Address::of_headers(&message.headers),
        })),
        Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The newest lifecycle event of `call` in whichever campaign it is.
pub async fn last_of_call<I>(
    stream: &Stream<I>,
    call: CallId,
) -> Result<Option<Last>, async_nats::Error> {
    match stream
        .get_last_raw_message_by_subject(&subjects::event_any_campaign(call))
        .await
    {
        Ok(message) => Ok(Some(Last {
            event: serde_json::from_slice(&message.payload),
            sequence: message.sequence,
            stored_at: stored_at(message.time),
            dialer: None,
        })),
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn stored_at(time: time::OffsetDateTime) -> DateTime<Utc> {
    DateTime::from_timestamp(time.unix_timestamp(), time.nanosecond()).unwrap_or_default()
}
