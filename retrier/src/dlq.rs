//! Dead letters in the retrier: the operations live in [`ccm_core::dlq`] (the API uses them
//! too); this adds dead-lettering a message the retrier itself was delivered.

use async_nats::jetstream;
pub use ccm_core::dlq::*;
use ccm_core::topology::names;

use crate::Shared;

/// Copies a delivered message into `DLQ` (for messages the retrier itself cannot use).
pub async fn store_message(
    ctx: &Shared,
    message: &jetstream::Message,
    reason: &str,
) -> Result<(), DlqError> {
    let (stream, consumer, seq, deliveries) = match message.info() {
        Ok(info) => (
            info.stream.to_owned(),
            info.consumer.to_owned(),
            info.stream_sequence,
            info.delivered.max(0) as u64,
        ),
        Err(_) => (names::RETRIES.to_owned(), String::new(), 0, 0),
    };
    let label = crate::advisories::stream_label(&stream);
    store(
        &ctx.js,
        Source {
            stream: &stream,
            subject: message.subject.as_str(),
            seq,
            consumer: &consumer,
            deliveries,
            reason,
            published: String::new(),
            headers: message.headers.as_ref(),
            payload: message.payload.clone(),
            parked: false,
        },
    )
    .await?;
    ccm_core::metrics::counter!("ccm_retrier_dead_letters_total", "stream" => label).increment(1);
    Ok(())
}
