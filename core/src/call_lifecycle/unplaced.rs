//! Ending an attempt that was never placed: its terminal event, then its number's claim
//! released. The one way the dialer (a cancelled, expired or limited attempt) and ingest (an
//! opt-out's scheduled retries) do it.

use crate::{CallEvent, DialRequest, EventKind, claims::Claims, nats::NatsError};

/// Publishes `kind` (a terminal event) for `request`'s attempt and releases the claims the call
/// held (its number's, and the further number of its contact the attempt was to dial); returns
/// the event. A failed publish releases nothing (the caller tries again).
pub async fn end_unplaced(
    js: &async_nats::jetstream::Context,
    claims: &Claims,
    request: &DialRequest,
    kind: EventKind,
) -> Result<CallEvent, NatsError> {
    let event = CallEvent::of_request(request, kind);
    crate::nats::publish_event(js, &event).await?;
    claims
        .release(
            request.campaign_id,
            &request.phone_number,
            request.call_id,
            event.at,
        )
        .await;
    // A contact's further number, claimed for this attempt by the retrier.
    if let Some(alternate) = &request.alternate {
        claims
            .release(
                request.campaign_id,
                &alternate.number,
                request.call_id,
                event.at,
            )
            .await;
    }
    Ok(event)
}
