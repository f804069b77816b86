//! W3C trace context (`traceparent`, `tracestate`) carried in NATS message headers, so one
//! trace follows a call from the HTTP request through every service that handles it.
//!
//! Publishing injects the current span's context into the message's headers; consuming makes
//! the handler's span a child of the context found in the message. Both are no-ops unless
//! [`crate::telemetry::init`] installed an OTLP exporter (`OTEL_EXPORTER_OTLP_ENDPOINT`), so
//! a service that exports nothing adds no headers and parses none.

use std::sync::atomic::{AtomicBool, Ordering};

use async_nats::{HeaderMap, jetstream::message::PublishMessage};
use opentelemetry::{
    Context,
    propagation::{Extractor, Injector, TextMapPropagator},
};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Set once spans are exported; read on every publish and consume.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported, and so whether trace context is worth carrying.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

pub(crate) fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// The current span's trace context as header pairs (empty when tracing is off or there is no
/// current span).
pub fn current() -> Vec<(&'static str, String)> {
    if !enabled() {
        return Vec::new();
    }
    let cx = tracing::Span::current().context();
    let mut fields = Fields::default();
    TraceContextPropagator::new().inject_context(&cx, &mut fields);
    fields.0
}

/// Adds the current span's trace context to a message about to be published.
pub fn inject(mut publish: PublishMessage) -> PublishMessage {
    for (name, value) in current() {
        publish = publish.header(name, value.as_str());
    }
    publish
}

/// Makes `span` a child of the trace context carried in `headers`, if any.
pub fn set_parent(span: &tracing::Span, headers: Option<&HeaderMap>) {
    if !enabled() {
        return;
    }
    let Some(headers) = headers else {
        return;
    };
    let cx = TraceContextPropagator::new().extract(&NatsHeaders(headers));
    adopt(span, cx);
}

/// Makes `span` a child of a `traceparent`/`tracestate` pair taken from elsewhere (an HTTP
/// request's headers), so a caller's own trace continues into ccm.
pub fn set_parent_from(span: &tracing::Span, traceparent: Option<&str>, tracestate: Option<&str>) {
    if !enabled() {
        return;
    }
    let Some(traceparent) = traceparent else {
        return;
    };
    let mut fields = Fields(vec![(TRACEPARENT, traceparent.to_owned())]);
    if let Some(state) = tracestate {
        fields.0.push((TRACESTATE, state.to_owned()));
    }
    let cx = TraceContextPropagator::new().extract(&fields);
    adopt(span, cx);
}

/// Makes `span` a child of the trace of a call's latest lifecycle event (usually its
/// `Dialing`), so something that arrives from outside without trace context (a carrier's
/// callback) still joins the call's trace.
pub async fn continue_call(
    span: &tracing::Span,
    js: &async_nats::jetstream::Context,
    campaign: crate::CampaignId,
    call: crate::CallId,
) {
    if !enabled() {
        return;
    }
    let Ok(stream) = js.get_stream(crate::topology::names::CALL_EVENTS).await else {
        return;
    };
    if let Ok(latest) = stream
        .direct_get_last_for_subject(crate::subjects::event(campaign, call))
        .await
    {
        set_parent(span, Some(&latest.headers));
    }
}

fn adopt(span: &tracing::Span, cx: Context) {
    use opentelemetry::trace::TraceContextExt;
    // An absent or malformed header yields an invalid context: the span then starts its own
    // trace rather than joining a broken one.
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

const TRACEPARENT: &str = "traceparent";
const TRACESTATE: &str = "tracestate";

/// The propagator's fields, kept as pairs; only the two W3C names exist.
#[derive(Default)]
struct Fields(Vec<(&'static str, String)>);

impl Injector for Fields {
    fn set(&mut self, key: &str, value: String) {
        // An empty `tracestate` says nothing; no header is cheaper than an empty one.
        if value.is_empty() {
            return;
        }
        let name = match key {
            TRACEPARENT => TRACEPARENT,
            TRACESTATE => TRACESTATE,
            _ => return,
        };
        self.0.push((name, value));
    }
}

impl Extractor for Fields {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(key))
            .map(|(_, value)| value.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| *name).collect()
    }
}

struct NatsHeaders<'a>(&'a HeaderMap);

impl Extractor for NatsHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|value| value.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| name.as_ref()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_survives_nats_headers() {
        let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut headers = HeaderMap::new();
        headers.insert(TRACEPARENT, traceparent);
        let cx = TraceContextPropagator::new().extract(&NatsHeaders(&headers));
        let mut out = Fields::default();
        TraceContextPropagator::new().inject_context(&cx, &mut out);
        assert_eq!(out.0, vec![(TRACEPARENT, traceparent.to_owned())]);
    }

    #[test]
    fn nothing_is_injected_while_tracing_is_off() {
        assert!(!enabled());
        assert!(current().is_empty());
    }
}
