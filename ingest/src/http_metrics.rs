//! Prometheus metrics of the API: a latency histogram per route template and status class,
//! recorded by a middleware layer, and `GET /metrics`.
//!
//! The route label is the template axum matched (`/api/v1/calls/{id}`), never the raw URI:
//! a label per call id or per probing client's path would grow without bound. Requests that
//! match no route share the label `unmatched`.

use std::time::Instant;

use axum::{
    extract::{MatchedPath, Request},
    http::{StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use ccm_core::metrics::histogram;

/// Records the request's duration under its route template, method and status class.
pub async fn record(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = method_label(request.method());
    let response = next.run(request).await;
    let status = match response.status().as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    histogram!("ccm_ingest_http_request_duration_seconds",
        "method" => method, "route" => route, "status" => status)
    .record(started.elapsed().as_secs_f64());
    response
}

/// The method as a label from a closed set: a client may send any token as a method.
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// `GET /metrics` (behind the API token when `ingest.metrics_require_token` says so; see
/// [`crate::routes::table`]).
pub(crate) async fn render() -> impl IntoResponse {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        ccm_core::metrics::render(),
    )
}
