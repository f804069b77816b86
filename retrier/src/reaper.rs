//! Runs the claim reaper ([`ccm_core::claims::reap`]) every `claims.reap_interval_secs`.
//! Every replica may run it: its writes expect the revision they judged, so two replicas
//! never free one claim twice, and a claim that changed meanwhile is left alone.

use std::time::Duration;

use ccm_core::{claims::Claims, metrics::counter};
use tokio_util::sync::CancellationToken;

use crate::RetrierError;

/// Walks the claims until `shutdown`. A failed walk is logged and tried at the next tick:
/// the reaper is a backstop, never a reason to stop the retrier.
pub async fn run(
    claims: Claims,
    interval: Duration,
    shutdown: CancellationToken,
) -> Result<(), RetrierError> {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            _ = ticks.tick() => {}
        }
        let walk = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            walk = claims.reap() => walk,
        };
        match walk {
            Ok(reaped) => {
                for (what, n) in [
                    ("released", reaped.released),
                    ("purged", reaped.purged),
                    ("bound", reaped.bound),
                ] {
                    counter!("ccm_retrier_claims_reaped_total", "action" => what).increment(n);
                }
                if reaped.released + reaped.purged + reaped.bound > 0 {
                    tracing::info!(?reaped, "claims reaped");
                }
            }
            Err(e) => {
                tracing::warn!(error = %ccm_core::telemetry::chain(&e), "claim reaper walk failed; next tick retries")
            }
        }
    }
}
