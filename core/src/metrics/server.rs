//! The small HTTP listener of services without an HTTP server of their own: `GET /metrics`,
//! `GET /healthz` (the process answers) and `GET /readyz` (its dependencies answer).
//!
//! A scrape or a probe is one small GET, so a minimal HTTP/1.x server is enough and keeps an
//! HTTP framework out of services that have none. Each connection answers one request and
//! is closed.

use std::{fmt, future::Future, net::SocketAddr, pin::Pin, sync::Arc, time::Duration};

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_util::sync::CancellationToken;

use super::MetricsError;

/// What a readiness check returns: `Err` says why the service is not ready.
pub type CheckFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
type Check = Arc<dyn Fn() -> CheckFuture + Send + Sync>;

/// How long one readiness check may take before it counts as failed. It stays under
/// Kubernetes' default one-second probe timeout, so a check that hangs (a database that
/// accepts connections but never answers) reports why instead of timing the probe out.
const CHECK_TIMEOUT: Duration = Duration::from_millis(900);

/// The checks behind `/readyz`. A service adds them once it has connected to what they check;
/// until the first is added it is not ready (still starting).
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Arc<std::sync::Mutex<Vec<(&'static str, Check)>>>,
}

impl fmt::Debug for Readiness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self
            .checks
            .lock()
            .map(|c| c.iter().map(|(n, _)| *n).collect())
            .unwrap_or_default();
        f.debug_struct("Readiness").field("checks", &names).finish()
    }
}

impl Readiness {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a named check.
    pub fn add<F, Fut>(&self, name: &'static str, check: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let check: Check = Arc::new(move || Box::pin(check()));
        if let Ok(mut checks) = self.checks.lock() {
            checks.push((name, check));
        }
    }

    /// Adds the check every service has: its NATS connection is up. The client reconnects on
    /// its own; while it is disconnected nothing can be consumed or published.
    pub fn add_nats(&self, client: &async_nats::Client) {
        let client = client.clone();
        self.add("nats", move || {
            let state = client.connection_state();
            async move {
                match state {
                    async_nats::connection::State::Connected => Ok(()),
                    other => Err(format!("{other}")),
                }
            }
        });
    }

    /// Runs every check; `Err` names the first that failed (or says the service is starting).
    pub async fn check(&self) -> Result<(), String> {
        let checks: Vec<(&'static str, Check)> =
            self.checks.lock().map(|c| c.clone()).unwrap_or_default();
        if checks.is_empty() {
            return Err("starting".into());
        }
        for (name, check) in checks {
            match tokio::time::timeout(CHECK_TIMEOUT, check()).await {
                Ok(Ok(())) => {}
                Ok(Err(why)) => return Err(format!("{name}: {why}")),
                Err(_) => return Err(format!("{name}: no answer within {CHECK_TIMEOUT:?}")),
            }
        }
        Ok(())
    }
}

/// Binds `addr` and answers `/metrics`, `/healthz` and `/readyz` until `shutdown`, in a
/// spawned task. Returns the bound address (useful with port 0).
pub async fn serve(
    addr: SocketAddr,
    handle: PrometheusHandle,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> Result<SocketAddr, MetricsError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| MetricsError::Bind { addr, source })?;
    tracing::info!(%bound, "serving /metrics, /healthz and /readyz");
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, _)) => {
                    let (handle, readiness) = (handle.clone(), readiness.clone());
                    tokio::spawn(async move {
                        if let Err(e) = answer(stream, &handle, &readiness).await {
                            tracing::debug!(error = %crate::telemetry::chain(&e), "metrics request failed");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %crate::telemetry::chain(&e), "cannot accept a metrics connection")
                }
            }
        }
    });
    Ok(bound)
}

/// Answers one HTTP/1.x request and closes the connection.
async fn answer(
    mut stream: TcpStream,
    handle: &PrometheusHandle,
    readiness: &Readiness,
) -> std::io::Result<()> {
    let mut buf = vec![0_u8; 4096];
    let mut len = 0;
    // Read until the end of the request head (or the buffer is full: heads are tiny).
    let read = tokio::time::timeout(Duration::from_secs(5), async {
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
    const TEXT: &str = "text/plain; charset=utf-8";
    let (status, content_type, body) = match (method, path) {
        (Some("GET"), Some("/metrics")) => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            handle.render(),
        ),
        (Some("GET"), Some("/healthz")) => ("200 OK", TEXT, "ok\n".into()),
        (Some("GET"), Some("/readyz")) => match readiness.check().await {
            Ok(()) => ("200 OK", TEXT, "ready\n".into()),
            Err(why) => (
                "503 Service Unavailable",
                TEXT,
                format!("not ready: {why}\n"),
            ),
        },
        (Some(_), Some("/metrics" | "/healthz" | "/readyz")) => (
            "405 Method Not Allowed",
            TEXT,
            "only GET is allowed\n".into(),
        ),
        _ => (
            "404 Not Found",
            TEXT,
            "served here: /metrics, /healthz, /readyz\n".into(),
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

/// `GET path` on `addr` with a fresh connection: the status code and body. For tests and
/// tooling that scrape a service (no HTTP client needed).
pub async fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut out = Vec::new();
    stream.read_to_end(&mut out).await?;
    let text = String::from_utf8_lossy(&out);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}
