//! Gauges sampled rather than counted per message: the trunk lines in use.
//!
//! The calls queued per campaign (`ccm_dialer_queued_calls`) are set by the consumer sweep
//! from its listing of every dial consumer (the `sweep` in `lib.rs`): a second
//! listing here, every few seconds on every replica, grew with campaigns × replicas (on a
//! cluster each listed consumer is a request to its leader).

use std::{sync::Arc, time::Duration};

use ccm_core::metrics::gauge;
use tokio_util::sync::CancellationToken;

use crate::worker::Trunk;

/// How often the gauge is refreshed.
pub const INTERVAL: Duration = Duration::from_secs(5);

/// Refreshes the gauge every [`INTERVAL`] until `shutdown`.
pub async fn run(trunk: Arc<Trunk>, shutdown: CancellationToken) {
    loop {
        gauge!("ccm_dialer_trunk_lines_busy").set(trunk.busy() as f64);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(INTERVAL) => {}
        }
    }
}
