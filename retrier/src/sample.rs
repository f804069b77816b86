//! Backlog gauges sampled from stream info: letters in `DLQ` and entries waiting in
//! `RETRIES`. Polled (one request per stream per interval), never counted per message, so
//! they stay right across replicas and restarts.

use std::time::Duration;

use async_nats::jetstream;
use ccm_core::{metrics::gauge, topology::names};
use tokio_util::sync::CancellationToken;

/// How often the gauges are refreshed.
pub const INTERVAL: Duration = Duration::from_secs(5);

/// Refreshes the gauges every [`INTERVAL`] until `shutdown`.
pub async fn run(js: jetstream::Context, shutdown: CancellationToken) {
    loop {
        for (stream, metric) in [
            (names::DLQ, "ccm_retrier_dlq_messages"),
            (names::RETRIES, "ccm_retrier_retry_backlog_messages"),
        ] {
            match messages(&js, stream).await {
                Ok(count) => gauge!(metric).set(count as f64),
                Err(e) => {
                    tracing::debug!(stream, error = %ccm_core::telemetry::chain(e.as_ref()), "cannot read stream info")
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(INTERVAL) => {}
        }
    }
}

async fn messages(js: &jetstream::Context, name: &str) -> Result<u64, async_nats::Error> {
    let mut stream = js.get_stream(name).await?;
    Ok(stream.info().await?.state.messages)
}
