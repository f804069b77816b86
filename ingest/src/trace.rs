//! One span per HTTP request, continuing the caller's trace when it sent `traceparent`.
//!
//! Everything a handler publishes carries this span's trace context (see
//! `ccm_core::trace_context`), so the call's trace starts here.

use axum::{extract::Request, middleware::Next, response::Response};
use tracing::Instrument;

/// The middleware: wraps the request in a `request` span named after its route.
pub async fn request_span(request: Request, next: Next) -> Response {
    if !ccm_core::trace_context::enabled() {
        return next.run(request).await;
    }
    // The route template, not the path, so ids do not make every span name unique.
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(
            || request.uri().path().to_owned(),
            |m| m.as_str().to_owned(),
        );
    let method = request.method().as_str().to_owned();
    let span = tracing::info_span!(
        "request",
        otel.name = format!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
    );
    let traceparent = header(&request, "traceparent");
    let tracestate = header(&request, "tracestate");
    ccm_core::trace_context::set_parent_from(&span, traceparent.as_deref(), tracestate.as_deref());
    let response = next.run(request).instrument(span.clone()).await;
    span.record("http.response.status_code", response.status().as_u16());
    response
}

fn header(request: &Request, name: &str) -> Option<String> {
    request
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}
