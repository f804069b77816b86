//! The attempt's `Dialing` event: the record, published before the carrier is asked, that
//! the attempt may have been placed.
//!
//! A redelivery that finds it only waits for the outcome; it is withdrawn only when the
//! carrier's answer proved that nothing was created ([`crate::carrier::classify`]).
//!
//! Whether this delivery may place the attempt is settled by the stream, not by the
//! de-duplication window: `Dialing` is published expecting the last message on the call's
//! event subject to be the one this delivery looked at (`Nats-Expected-Last-Subject-Sequence`).
//! Two deliveries of one attempt that both found nothing placed (a dial message redelivered
//! after AckWait while the first delivery still waited for its pacing slot, a second message
//! of the attempt, two redeliveries after a withdrawn `Dialing`) expect the same sequence, so
//! only the first `Dialing` is stored, however far apart they publish; the other is refused
//! and only waits. Each delivery's `Dialing` carries its own de-duplication id
//! (`<call>/<attempt>/dialing/<dial message sequence>.<delivery>`), so a withdrawn one never
//! makes the server drop the next as a duplicate.

use async_nats::jetstream::{
    Message,
    stream::{DirectGetError, DirectGetErrorKind},
};
use ccm_core::{CallEvent, DialRequest, EventKind};
use chrono::{DateTime, Utc};

use crate::call::CallContext;

/// Why `Dialing` could not be published or checked (the message is handed back).
#[derive(Debug, thiserror::Error)]
pub enum DialingError {
    #[error(transparent)]
    Publish(#[from] ccm_core::nats::NatsError),
    #[error("cannot read the Dialing event stored first")]
    Read(#[source] DirectGetError),
}

/// What publishing `Dialing` found.
#[derive(Debug, PartialEq, Eq)]
pub enum Dialing {
    /// Stored at this stream sequence: this delivery places the attempt.
    Published(u64),
    /// Something was stored on the call's event subject since this delivery looked (another
    /// delivery's `Dialing`, or the call ended): look again, never place on this look.
    Raced,
    /// This very `Dialing` was stored before (a repeated publish), at this time: the attempt
    /// may have been placed, so this delivery only waits.
    Elsewhere(DateTime<Utc>),
}

/// Publishes `Dialing`, provided the last message on the call's event subject is still the
/// one at `last_sequence` (0: none), as this delivery found it.
pub async fn publish(
    ctx: &CallContext,
    request: &DialRequest,
    message: &Message,
    last_sequence: u64,
) -> Result<Dialing, DialingError> {
    let dialing = CallEvent::of_request(
        request,
        EventKind::Dialing {
            phone_number: request.phone_number.clone(),
            max_attempts: request.max_attempts,
            created_at: request.created_at,
            custom_fields: request.custom_fields.clone(),
            expires_at: request.expires_at,
            alternate: request.alternate.clone(),
        },
    );
    // The dial message's own sequence and delivery: two messages of one attempt never share
    // the id, nor two deliveries of one message.
    let (sequence, delivered) = message
        .info()
        .map(|i| (i.stream_sequence, i.delivered))
        .unwrap_or_default();
    let msg_id = format!("{}/{sequence}.{delivered}", dialing.msg_id());
    // Names this dialer, so the outcome's copy comes here ([`ccm_core::outcome_route`]).
    let mut headers = ctx.outcomes.address().headers();
    headers.insert(
        async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
        last_sequence.to_string().as_str(),
    );
    match ccm_core::nats::publish_json(&ctx.js, dialing.subject(), &msg_id, Some(headers), &dialing)
        .await
    {
        Ok(ack) if !ack.duplicate => Ok(Dialing::Published(ack.sequence)),
        // The id names this delivery: only its own earlier publish can hold it.
        Ok(ack) => Ok(Dialing::Elsewhere(
            standing(ctx, ack.sequence).await?.unwrap_or_else(Utc::now),
        )),
        Err(e) if raced(&e) => Ok(Dialing::Raced),
        Err(e) => Err(e.into()),
    }
}

/// Whether the server refused the publish because the subject moved on.
fn raced(e: &ccm_core::nats::NatsError) -> bool {
    let ccm_core::nats::NatsError::Publish { source, .. } = e else {
        return false;
    };
    ccm_core::nats::lost_race(source.as_ref())
}

/// The time of the `Dialing` event stored at `sequence`, or `None` when it was withdrawn.
async fn standing(ctx: &CallContext, sequence: u64) -> Result<Option<DateTime<Utc>>, DialingError> {
    match ctx.events.direct_get(sequence).await {
        Ok(stored) => Ok(Some(
            serde_json::from_slice::<CallEvent>(&stored.payload)
                .map_or_else(|_| Utc::now(), |e| e.at),
        )),
        Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
        Err(e) => Err(DialingError::Read(e)),
    }
}

/// Removes a `Dialing` event whose placement the carrier proved it did not create, so the
/// redelivery places the attempt. If this fails the redelivery only waits: a FAILED (`timeout`) outcome, never a
/// second placement.
pub async fn withdraw(ctx: &CallContext, sequence: u64) {
    if let Err(e) = ctx.events.delete_message(sequence).await {
        tracing::warn!(error = %ccm_core::telemetry::chain(&e), sequence, "cannot withdraw Dialing; the attempt will time out");
    }
}
