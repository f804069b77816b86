//! `tracing` set-up shared by the binaries: logs (text or JSON) and, when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, spans exported over OTLP/HTTP (protobuf).
//!
//! The exporter reads the standard `OTEL_EXPORTER_OTLP_*` variables itself (endpoint, headers,
//! timeout); the service name is `ccm-<service>` unless `OTEL_SERVICE_NAME` says otherwise.
//! Without the endpoint no OpenTelemetry layer is installed at all, and
//! [`crate::trace_context`] neither writes nor reads trace headers.

use std::sync::OnceLock;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::config::{LogConfig, LogFormat};

/// The exporting provider, kept so [`flush`] and [`shutdown`] can reach it.
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// The variable whose presence turns span export on.
pub const OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// Installs the global subscriber: `RUST_LOG` when set, else the configured filter. Installing
/// twice (as tests do) keeps the first subscriber.
pub fn init(service: &str, config: &LogConfig) {
    let endpoint = std::env::var(OTLP_ENDPOINT)
        .ok()
        .filter(|e| !e.trim().is_empty());
    install(service, config, endpoint.map(Endpoint::FromEnvironment));
}

/// As [`init`], exporting spans to the OTLP/HTTP receiver at `endpoint` (`http://host:port`,
/// the traces path is appended) whatever the environment says: for tests, which cannot set
/// environment variables safely once threads run.
pub fn init_exporting_to(service: &str, config: &LogConfig, endpoint: &str) {
    install(service, config, Some(Endpoint::Given(endpoint.to_owned())));
}

enum Endpoint {
    /// The exporter reads `OTEL_EXPORTER_OTLP_ENDPOINT` (and its other variables) itself.
    FromEnvironment(String),
    Given(String),
}

fn install(service: &str, config: &LogConfig, endpoint: Option<Endpoint>) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let shown = match &endpoint {
        Some(Endpoint::FromEnvironment(e) | Endpoint::Given(e)) => e.clone(),
        None => String::new(),
    };
    let (otel, otel_error) = match endpoint {
        Some(endpoint) => match provider(service, endpoint) {
            Ok(provider) => (Some(provider), None),
            Err(e) => (None, Some(e)),
        },
        None => (None, None),
    };
    let layer = otel
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("ccm")));
    let registry = tracing_subscriber::registry().with(filter).with(layer);
    // Logs go to stderr: stdout is the commands' output (`ccm-projector provision` and
    // `ccm-retrier dlq --json` print JSON there), which a warning must never corrupt.
    let result = match config.format {
        LogFormat::Text => registry
            .with(fmt::layer().with_target(true).with_writer(std::io::stderr))
            .try_init(),
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .with_current_span(false)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    if result.is_err() {
        // Another subscriber was first; a provider built for this one would export nothing.
        if let Some(provider) = otel {
            let _ = provider.shutdown();
        }
        return;
    }
    tracing::debug!(service, "telemetry initialised");
    if let Some(e) = otel_error {
        tracing::error!(error = %chain(&e), "OTLP exporter not started; spans are not exported");
    }
    if let Some(provider) = otel {
        crate::trace_context::enable();
        let _ = PROVIDER.set(provider);
        tracing::info!(endpoint = shown, "exporting spans over OTLP/HTTP");
    }
}

fn provider(
    service: &str,
    endpoint: Endpoint,
) -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    use opentelemetry_otlp::WithExportConfig;
    let builder = opentelemetry_otlp::SpanExporter::builder().with_http();
    let exporter = match endpoint {
        Endpoint::FromEnvironment(_) => builder.build()?,
        Endpoint::Given(base) => builder
            .with_endpoint(format!("{}/v1/traces", base.trim_end_matches('/')))
            .build()?,
    };
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(format!("ccm-{service}"));
    }
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build())
}

/// Sends the spans buffered so far (no-op without an exporter). Tests call it before looking
/// at what was exported.
pub fn flush() {
    if let Some(provider) = PROVIDER.get()
        && let Err(e) = provider.force_flush()
    {
        tracing::warn!(error = %chain(&e), "cannot flush spans");
    }
}

/// Flushes and stops the exporter; binaries call it last, so the spans of the final seconds
/// are not lost at exit.
pub fn shutdown() {
    if let Some(provider) = PROVIDER.get()
        && let Err(e) = provider.shutdown()
    {
        eprintln!("cannot flush spans at exit: {e}");
    }
}

/// An error with its whole `source()` chain, `outer: inner: root`, for log fields:
/// `tracing::warn!(error = %chain(&e), "…")`. Logging `%e` alone prints only the outermost
/// message ("cannot read the contact"), which hides the cause an operator needs.
pub fn chain<'a>(error: &'a (dyn std::error::Error + 'a)) -> Chain<'a> {
    Chain(error)
}

/// See [`chain`].
#[derive(Debug)]
pub struct Chain<'a>(&'a (dyn std::error::Error + 'a));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod chain_tests {
    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] Inner);
    #[derive(Debug, thiserror::Error)]
    #[error("inner")]
    struct Inner(#[source] std::io::Error);

    #[test]
    fn the_chain_prints_every_source() {
        let e = Outer(Inner(std::io::Error::other("root")));
        assert_eq!(super::chain(&e).to_string(), "outer: inner: root");
    }
}
