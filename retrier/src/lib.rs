//! # ccm-retrier
//!
//! Decides what happens to a call after each carrier outcome.
//!
//! - [`run`] consumes the `retrier_outcomes` consumer (`calls.outcome.>` on `CALL_EVENTS`).
//! - [`outcome`] turns an outcome into the next lifecycle event and releases the number's
//!   `active_calls` claim when the call ends.

pub mod outcome;

use std::time::Duration;

use ccm_core::{
    Config,
    topology::{Topology, names},
};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::outcome::OutcomeContext;

/// Why the retrier stopped.
#[derive(Debug, thiserror::Error)]
pub enum RetrierError {
    #[error(transparent)]
    Nats(#[from] ccm_core::nats::NatsError),
    #[error(transparent)]
    Topology(#[from] ccm_core::topology::TopologyError),
    #[error("cannot open {0}")]
    Open(&'static str, #[source] async_nats::Error),
}

/// Runs the retrier until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), RetrierError> {
    let client = ccm_core::nats::connect(&config.nats_url, "retrier").await?;
    let js = ccm_core::nats::jetstream(client.clone());
    Topology::load(&config.streams)?.provision(&js).await?;
    let ctx = OutcomeContext {
        events: js
            .get_stream(names::CALL_EVENTS)
            .await
            .map_err(|e| RetrierError::Open(names::CALL_EVENTS, e.into()))?,
        active_calls: ccm_core::nats::bucket(&js, names::KV_ACTIVE_CALLS).await?,
        js: js.clone(),
    };
    let consumer: async_nats::jetstream::consumer::PullConsumer = js
        .get_consumer_from_stream("retrier_outcomes", names::CALL_EVENTS)
        .await
        .map_err(|e| RetrierError::Open("retrier_outcomes", e.into()))?;
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(500)
        .expires(Duration::from_secs(5))
        .messages()
        .await
        .map_err(|e| RetrierError::Open("retrier_outcomes", e.into()))?;
    tracing::info!("retrier running");
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => break,
            next = messages.next() => next,
        };
        match next {
            Some(Ok(message)) => outcome::handle(&ctx, message).await,
            Some(Err(e)) => tracing::warn!(error = %e, "pull error"),
            None => break,
        }
    }
    let _ = client.drain().await;
    Ok(())
}
