//! Prometheus metrics shared by every service, and the listener that serves them.
//!
//! Services record with the [`metrics`] facade macros (`metrics::counter!`,
//! `metrics::histogram!`, `metrics::gauge!`); [`install`] installs the one process-wide
//! Prometheus recorder and returns the handle that renders the text exposition. Ingest adds a
//! `/metrics` route returning [`render`] to its own router; the other services call [`serve`]
//! with their `metrics_listen` address, which also answers `/healthz` (the process runs) and
//! `/readyz` (the [`Readiness`] checks pass: NATS connected, and for the projector PostgreSQL
//! reachable).
//!
//! Conventions, so dashboards stay uniform: names start with `ccm_<service>_`, durations are
//! in seconds and end in `_seconds`, sizes end in `_size`, and labels take values from closed
//! sets (source stream, status, route template), never call ids or phone numbers, so the
//! series count stays bounded. The one open-ended label is `campaign`: it is bounded by the
//! number of campaigns an operator creates (tens to thousands), not by traffic.
//!
//! Every metric (`docs/operations.md`'s "Metrics" section has the same table):
//!
//! | name | type | labels | what |
//! |---|---|---|---|
//! | `ccm_ingest_http_request_duration_seconds` | histogram | `method`, `route`, `status` | API latency; `route` is the route template (`/api/v1/calls/{id}`, `unmatched` for no route), `status` the class (`2xx`…`5xx`); its `_count` is requests |
//! | `ccm_ingest_calls_accepted_total` | counter | | calls accepted (dial message stored by JetStream) |
//! | `ccm_ingest_calls_refused_total` | counter | `reason` | calls refused after validation: `in_progress`, `within_window` (duplicates, 429), `claim_unavailable`, `publish_failed` (503), `do_not_call`, `consent_required` (403); invalid input shows as `4xx` in the latency histogram |
//! | `ccm_ingest_opt_outs_total` | counter | | callees who opted out during a call (number listed) |
//! | `ccm_ingest_audit_failures_total` | counter | | audit records that could not be stored (each is logged at error level with the record) |
//! | `ccm_ingest_erasures_total` | counter | `result` | erase requests for a number: `erased`, `refused` (a call of it had not ended, 409) |
//! | `ccm_dialer_live_calls` | gauge | `campaign` | calls in flight in this replica (dial message held un-acked) |
//! | `ccm_dialer_queued_calls` | gauge | `campaign` | dial messages waiting for a dialer (the campaign consumer's `num_pending`, read by the consumer sweep, every `dialer.consumer_sweep_secs`) |
//! | `ccm_dialer_calls_placed_total` | counter | `campaign` | attempts handed to the carrier |
//! | `ccm_dialer_carrier_request_duration_seconds` | histogram | `carrier`, `result` | one placement request; `result`: `placed`, `rejected`, `unavailable`, `ambiguous`, `throttled` (429) |
//! | `ccm_dialer_carrier_account_rate` | gauge | `account` | the carrier account's shared rate (calls per second) as this replica last wrote it (`dialer.carrier_account`) |
//! | `ccm_dialer_carrier_throttled_total` | counter | `account` | placements the carrier answered 429 (the attempt is put off, not failed) |
//! | `ccm_dialer_carrier_errors_total` | counter | `carrier`, `kind` | failed placements: `rejected` (4xx, call ends FAILED), `unavailable` (retried), `ambiguous` (a timeout after sending, 409, a 5xx other than 503: never placed again), `throttled` (429: put off) |
//! | `ccm_dialer_outcome_timeouts_total` | counter | | calls ended by the synthetic FAILED (`timeout`) |
//! | `ccm_dialer_outcomes_received_total` | counter | `route` | outcomes that reached this replica: `addressed` (copies to its own address), `adopted` (to the address of a gone dialer whose attempts it took over), `broadcast` (no address known), `stream` (a waiting call found it by reading the stream: its copy was missed) |
//! | `ccm_dialer_hang_ups_total` | counter | `carrier` | calls past their maximum duration ended at the carrier (the hang-up confirmed) |
//! | `ccm_dialer_hang_up_failures_total` | counter | `carrier` | hang-up requests the carrier did not confirm (the call stays held and it is asked again) |
//! | `ccm_dialer_trunk_lines_busy` | gauge | | trunk lines of this replica in use |
//! | `ccm_dialer_active_campaigns` | gauge | | campaigns this replica pulls (not dormant): those with work; an idle campaign costs no pull and no line |
//! | `ccm_retrier_decisions_total` | counter | `decision`, `status` | outcomes decided: `completed`, `retrying`, `failed`, by outcome status |
//! | `ccm_retrier_retries_scheduled_total` | counter | `reason` | retries scheduled in `RETRIES`, by the outcome status that caused them (`RNR`, `DISCONNECTED`, `FAILED`) |
//! | `ccm_retrier_retries_fired_total` | counter | | retries re-published to `CALLS` when due |
//! | `ccm_retrier_claims_reaped_total` | counter | `action` | number claims the reaper freed (`released`: call ended, `purged`: never published or a stale marker) or `bound` (published, writer died before binding) |
//! | `ccm_retrier_retry_backlog_messages` | gauge | | entries waiting in `RETRIES` (stream info, polled every 5 s) |
//! | `ccm_retrier_dlq_messages` | gauge | | letters in `DLQ` (stream info, polled every 5 s) |
//! | `ccm_retrier_dead_letters_total` | counter | `stream` | letters created by this replica, by source stream |
//! | `ccm_webhooks_deliveries_total` | counter | `outcome` | messages settled per endpoint: `delivered`, `refused` (final 4xx, redirect, or a target that is not public), `exhausted` (retry horizon reached), `endpoint_disabled` (queued as skipped because the endpoint is disabled; delivered only if replayed) |
//! | `ccm_webhooks_request_duration_seconds` | histogram | `result` | one delivery request: `success`, `retry` (408, 429, 5xx or no answer), `final` |
//! | `ccm_webhooks_endpoints` | gauge | `state` | subscriptions known, `enabled` / `disabled` |
//! | `ccm_webhooks_endpoints_disabled_total` | counter | `reason` | endpoints disabled automatically: `gone` (answered 410), `horizon` (failing for the whole retry horizon) |
//! | `ccm_projector_calls_total` | counter | `campaign`, `status` | call state changes projected (each new dial message or event, by the status it gives the call); `rate()` by status is the call flow |
//! | `ccm_projector_messages_total` | counter | `source`, `result` | messages applied: `new`, `duplicate` (redelivery, replay) |
//! | `ccm_projector_batch_size` | histogram | `source` | messages per write |
//! | `ccm_projector_batch_write_seconds` | histogram | `source` | one batch's transaction |
//! | `ccm_projector_lag_seconds` | histogram | `source` | from an event's time to its commit in PostgreSQL |
//! | `ccm_projector_pending_messages` | gauge | `source` | projection lag in messages: the consumer's `num_pending` (polled every 5 s) |
//! | `ccm_projector_ack_pending_messages` | gauge | `source` | delivered, not yet committed |
//! | `ccm_projector_poison_total` | counter | `source` | messages set aside as undecodable or refused by PostgreSQL |
//! | `ccm_projector_db_errors_total` | counter | `source` | batch writes that failed and were retried |
//! | `ccm_consumer_messages_total` | counter | `consumer`, `decision` | messages decided through the consumer runtime (`ccm_core::consumer`): `ack`, `nak`, `term`, `abandoned` (left to `ack_wait`), `dropped` (undecided, NAKed) |
//! | `ccm_consumer_poison_total` | counter | `consumer` | messages that can never be handled, whatever the consumer's poison policy then did (TERM, NAK, skip) |
//! | `ccm_consumer_pull_errors_total` | counter | `consumer` | pull requests that failed and errors inside a pull |
//! | `ccm_projector_retention_runs_total` | counter | `result` | retention rounds: `ok`, `failed` (retried next round) |
//! | `ccm_projector_retention_anonymised_total` | counter | `table` | rows anonymised by the retention job: `calls`, `call_events` |
//!
//! `source` is one of `CALLS`, `CALL_EVENTS`, `DLQ`, `KV_campaigns`, `KV_contacts`.

mod server;

pub use server::{CheckFuture, Readiness, get};

use std::{net::SocketAddr, sync::OnceLock};

pub use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

/// Buckets of every `*_seconds` histogram: from a millisecond to a minute.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Buckets of every `*_size` histogram (batch sizes, message counts).
pub const SIZE_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0,
];

/// Why metrics could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot install the Prometheus recorder")]
    Install(#[source] BuildError),
    #[error("cannot listen for /metrics on {addr}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// How often buffered histogram samples are folded into their buckets.
const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Installs the process-wide recorder once and returns its handle; later calls return the same
/// handle. Tests that run several services in one process therefore share one registry.
pub fn install() -> Result<PrometheusHandle, MetricsError> {
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_size".into()), SIZE_BUCKETS))
        .map_err(MetricsError::Install)?
        .build_recorder();
    let handle = recorder.handle();
    // Two threads may race here; only the winner's recorder becomes global, and both return
    // the winner's handle.
    if HANDLE.set(handle.clone()).is_ok() {
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!(
                "a metrics recorder was already installed; ccm metrics are not exported"
            );
        }
        // Histogram samples are buffered until drained into their buckets: without a regular
        // upkeep they would grow without bound between scrapes. A plain thread, so that
        // `install` works outside a Tokio runtime too.
        let spawned = std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(UPKEEP_INTERVAL);
                    handle.run_upkeep();
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %crate::telemetry::chain(&e), "cannot start the metrics upkeep thread");
        }
    }
    Ok(HANDLE.get().expect("set above").clone())
}

/// The current metrics in the Prometheus text format, or an empty string before [`install`].
pub fn render() -> String {
    HANDLE
        .get()
        .map(PrometheusHandle::render)
        .unwrap_or_default()
}

/// Installs the recorder and serves `/metrics`, `/healthz` and `/readyz` (by `readiness`) on
/// `addr` until `shutdown`, in a spawned task. Returns the bound address (useful with port 0).
pub async fn serve(
    addr: SocketAddr,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> Result<SocketAddr, MetricsError> {
    server::serve(addr, install()?, readiness, shutdown).await
}

/// The value of the first sample of `name` whose labels include all of `labels`, in a text
/// exposition. For histograms ask for `<name>_count` or `<name>_sum`. Used by tests and
/// benchmarks that read a service's own figures.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, series_labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if series_name != name {
                return None;
            }
            let all = labels.iter().all(|(k, v)| {
                series_labels
                    .split(',')
                    .any(|l| l == format!("{k}=\"{v}\""))
            });
            all.then(|| value.parse().ok()).flatten()
        })
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };

    use super::*;

    #[tokio::test]
    async fn serves_recorded_metrics_in_prometheus_text_format() {
        let shutdown = CancellationToken::new();
        let addr = serve(
            ([127, 0, 0, 1], 0).into(),
            Readiness::new(),
            shutdown.clone(),
        )
        .await
        .expect("serve");
        counter!("ccm_test_things_total", "source" => "calls").increment(3);
        histogram!("ccm_test_batch_size").record(7.0);
        let (status, body) = get(addr, "/metrics").await.expect("scrape");
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            sample(&body, "ccm_test_things_total", &[("source", "calls")]),
            Some(3.0),
            "{body}"
        );
        assert_eq!(
            sample(&body, "ccm_test_things_total", &[("source", "x")]),
            None
        );
        // `_size` histograms get buckets, not a summary.
        assert_eq!(
            sample(&body, "ccm_test_batch_size_bucket", &[("le", "10")]),
            Some(1.0),
            "{body}"
        );
        let (status, _) = get(addr, "/nope").await.expect("get");
        assert_eq!(status, 404);
        shutdown.cancel();
    }

    #[tokio::test]
    async fn readyz_follows_the_checks_and_healthz_only_the_process() {
        let shutdown = CancellationToken::new();
        let readiness = Readiness::new();
        let addr = serve(
            ([127, 0, 0, 1], 0).into(),
            readiness.clone(),
            shutdown.clone(),
        )
        .await
        .expect("serve");
        assert_eq!(get(addr, "/healthz").await.expect("get").0, 200);
        let (status, body) = get(addr, "/readyz").await.expect("get");
        assert_eq!((status, body.as_str()), (503, "not ready: starting\n"));
        let up = Arc::new(AtomicBool::new(true));
        let flag = up.clone();
        readiness.add("database", move || {
            let up = flag.load(Ordering::SeqCst);
            async move {
                if up {
                    Ok(())
                } else {
                    Err("unreachable".into())
                }
            }
        });
        assert_eq!(get(addr, "/readyz").await.expect("get").0, 200);
        up.store(false, Ordering::SeqCst);
        let (status, body) = get(addr, "/readyz").await.expect("get");
        assert_eq!(status, 503);
        assert!(body.contains("database: unreachable"), "{body}");
        assert_eq!(get(addr, "/healthz").await.expect("get").0, 200);
        shutdown.cancel();
    }
}
