//! Prometheus metrics shared by every service.
//!
//! Services record with the [`metrics`] facade macros (`metrics::counter!`,
//! `metrics::histogram!`, `metrics::gauge!`); [`install`] installs the one process-wide
//! Prometheus recorder and returns the handle that renders the text exposition. A service with
//! an HTTP server adds a `/metrics` route returning [`render`]; a service without one calls
//! [`serve`] with the address from its configuration.
//!
//! Conventions, so dashboards stay uniform: names start with `ccm_<service>_`, durations are
//! in seconds and end in `_seconds`, sizes end in `_size`, and labels take values from closed
//! sets (source stream, status, route template), never ids, so the series count stays bounded.

use std::{net::SocketAddr, sync::OnceLock};

pub use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
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
            tracing::warn!(error = %e, "cannot start the metrics upkeep thread");
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

/// Installs the recorder and serves `GET /metrics` on `addr` until `shutdown`, in a spawned
/// task. Returns the bound address (useful with port 0).
pub async fn serve(
    addr: SocketAddr,
    shutdown: CancellationToken,
) -> Result<SocketAddr, MetricsError> {
    let handle = install()?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| MetricsError::Bind { addr, source })?;
    tracing::info!(%bound, "serving Prometheus metrics on /metrics");
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, _)) => {
                    let handle = handle.clone();
                    tokio::spawn(async move {
                        if let Err(e) = answer(stream, &handle).await {
                            tracing::debug!(error = %e, "metrics request failed");
                        }
                    });
                }
                Err(e) => tracing::warn!(error = %e, "cannot accept a metrics connection"),
            }
        }
    });
    Ok(bound)
}

/// Answers one HTTP/1.x request and closes the connection. A scrape is one small GET, so
/// this minimal server is enough and keeps an HTTP framework out of services that have none.
async fn answer(mut stream: TcpStream, handle: &PrometheusHandle) -> std::io::Result<()> {
    let mut buf = vec![0_u8; 4096];
    let mut len = 0;
    // Read until the end of the request head (or the buffer is full: heads are tiny).
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while len < buf.len() {
            let n = stream.read(&mut buf[len..]).await?;
            if n == 0 {
                break;
            }
            len += n;
            if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    if !matches!(read, Ok(Ok(()))) {
        return Ok(());
    }
    let head = String::from_utf8_lossy(&buf[..len]);
    let mut request_line = head.lines().next().unwrap_or_default().split_whitespace();
    let (method, path) = (request_line.next(), request_line.next());
    let path = path.map(|p| p.split('?').next().unwrap_or(p));
    let (status, content_type, body) = match (method, path) {
        (Some("GET"), Some("/metrics")) => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            handle.render(),
        ),
        (Some(_), Some("/metrics")) => (
            "405 Method Not Allowed",
            "text/plain",
            "only GET is allowed\n".into(),
        ),
        _ => (
            "404 Not Found",
            "text/plain",
            "metrics are served on /metrics\n".into(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(addr: SocketAddr, request: &str) -> String {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut out = String::new();
        stream.read_to_string(&mut out).await.expect("read");
        out
    }

    #[tokio::test]
    async fn serves_recorded_metrics_in_prometheus_text_format() {
        let shutdown = CancellationToken::new();
        let addr = serve(([127, 0, 0, 1], 0).into(), shutdown.clone())
            .await
            .expect("serve");
        counter!("ccm_test_things_total", "source" => "calls").increment(3);
        histogram!("ccm_test_batch_size").record(7.0);
        let body = get(addr, "GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n").await;
        assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
        assert!(
            body.contains("ccm_test_things_total{source=\"calls\"} 3"),
            "{body}"
        );
        // `_size` histograms get buckets, not a summary.
        assert!(
            body.contains("ccm_test_batch_size_bucket{le=\"10\"} 1"),
            "{body}"
        );
        let missing = get(addr, "GET /nope HTTP/1.1\r\n\r\n").await;
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
        shutdown.cancel();
    }
}
