//! The attempt's `Dialing` event: the record, published before the carrier is asked, that
//! the attempt may have been placed.
//!
//! A redelivery that finds it only waits for the outcome; it is withdrawn only when the
//! carrier answered that it placed nothing. Its de-duplication id (`<call>/<attempt>/dialing`)
//! also settles a race: two deliveries of one attempt handled at once (a dial message
//! redelivered after AckWait while the first delivery still waited for its pacing slot, or a
//! second message of the attempt) both found nothing placed, and the one whose `Dialing`
//! comes second finds the id taken by a `Dialing` that still stands: it must not ask the
//! carrier again.

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
    /// Another delivery of the attempt published its `Dialing` (at this time) after this one
    /// looked, and it stands: that delivery places the attempt, this one only waits.
    Elsewhere(DateTime<Utc>),
}

/// Publishes `Dialing`, unless another delivery of the attempt did so since this one found
/// nothing placed.
///
/// The server drops the usual id as a duplicate in two cases. An earlier `Dialing` of the
/// attempt was withdrawn (the carrier placed nothing): the id then names this delivery, so the
/// placement is recorded. Or another delivery of the same attempt (a dial message redelivered
/// after AckWait, or a second message of the attempt) found nothing placed at the same time and
/// published first, which is likelier the longer the wait between the two (a pacing slot):
/// its `Dialing` still stands, and placing here would ring the callee twice. Only the stored
/// message tells the two apart.
pub async fn publish(
    ctx: &CallContext,
    request: &DialRequest,
    message: &Message,
) -> Result<Dialing, DialingError> {
    let dialing = CallEvent {
        call_id: request.call_id,
        campaign_id: request.campaign_id,
        attempt: request.attempt,
        at: Utc::now(),
        kind: EventKind::Dialing {
            phone_number: request.phone_number.clone(),
            max_attempts: request.max_attempts,
            created_at: request.created_at,
            custom_fields: request.custom_fields.clone(),
        },
    };
    let ack = ccm_core::nats::publish_event(&ctx.js, &dialing).await?;
    if !ack.duplicate {
        return Ok(Dialing::Published(ack.sequence));
    }
    // A duplicate's ack carries the sequence of the message first stored under the id.
    if let Some(at) = standing(ctx, ack.sequence).await? {
        return Ok(Dialing::Elsewhere(at));
    }
    // The dial message's own sequence and delivery: two messages of one attempt never share
    // the id, nor two deliveries of one message.
    let (sequence, delivered) = message
        .info()
        .map(|i| (i.stream_sequence, i.delivered))
        .unwrap_or_default();
    let msg_id = format!("{}/{sequence}.{delivered}", dialing.msg_id());
    let ack =
        ccm_core::nats::publish_json(&ctx.js, dialing.subject(), &msg_id, None, &dialing).await?;
    Ok(Dialing::Published(ack.sequence))
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

/// Removes a `Dialing` event the carrier answered "not placed" to, so the redelivery places
/// the attempt. If this fails the redelivery only waits: a FAILED (`timeout`) outcome, never a
/// second placement.
pub async fn withdraw(ctx: &CallContext, sequence: u64) {
    if let Err(e) = ctx.events.delete_message(sequence).await {
        tracing::warn!(error = %e, sequence, "cannot withdraw Dialing; the attempt will time out");
    }
}
