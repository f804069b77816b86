//! One trace per call: the spans of ingest (the HTTP request), the dialer (each attempt), the
//! retrier (outcome decision and the held retry) and the projector (every message of the
//! call) share one trace id, carried in NATS headers between them; a carrier's callback,
//! which carries no trace context, joins the call's trace too.
//!
//! The spans are exported for real, over OTLP/HTTP, to a receiver this test runs on port 0
//! and decodes with the OTLP protobuf definitions. The exporter is installed with the global
//! subscriber, once per process (nextest runs each test in its own).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{body::Bytes, extract::State, routing::post};
use ccm_core::config::{CarrierConfig, SimCarrierConfig};
use ccm_tests::{TestEnv, eventually};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse},
    common::v1::any_value::Value as AnyValue,
    trace::v1::Span,
};
use prost::Message;
use reqwest::Method;
use serde_json::json;

use crate::{
    carrier_stack::{CarrierStack, Dialer, answering},
    stack::Stack,
};

/// Every span received, in arrival order.
type Received = Arc<Mutex<Vec<Span>>>;

/// An OTLP/HTTP trace receiver on 127.0.0.1:0; returns its base URL.
async fn receiver(spans: Received) -> String {
    async fn export(State(spans): State<Received>, body: Bytes) -> Vec<u8> {
        let request = ExportTraceServiceRequest::decode(body).expect("an OTLP trace export");
        let mut all = spans.lock().expect("lock");
        for resource in request.resource_spans {
            for scope in resource.scope_spans {
                all.extend(scope.spans);
            }
        }
        ExportTraceServiceResponse::default().encode_to_vec()
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = axum::Router::new()
        .route("/v1/traces", post(export))
        .with_state(spans);
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    let value = span
        .attributes
        .iter()
        .find(|a| a.key == key)?
        .value
        .as_ref()?;
    match value.value.as_ref()? {
        AnyValue::StringValue(s) => Some(s.clone()),
        AnyValue::IntValue(i) => Some(i.to_string()),
        other => Some(format!("{other:?}")),
    }
}

/// Which service made the span: the crate of the code that opened it.
fn service(span: &Span) -> String {
    let module = attribute(span, "code.module.name").unwrap_or_default();
    module
        .split("::")
        .next()
        .unwrap_or_default()
        .trim_start_matches("ccm_")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_follows_a_call_through_every_service() {
    let spans = Received::default();
    let endpoint = receiver(spans.clone()).await;
    let env = TestEnv::start().await.expect("test environment");
    let mut config = env.config();
    ccm_core::telemetry::init_exporting_to("test", &config.log, &endpoint);
    // Every attempt unanswered, one retry one second later, then the call fails: the trace
    // must cross the retrier's hold in RETRIES and come back to the dialer.
    let mut policy = tempfile::NamedTempFile::new().expect("temp file");
    std::io::Write::write_all(
        &mut policy,
        b"status_retry_rules:\n  RNR: {should_retry: true, backoff: [1s]}\ntimezone: UTC\n",
    )
    .expect("write");
    config.retrier.policy_file = policy.path().to_owned();
    config.dialer.carrier = CarrierConfig::Sim(SimCarrierConfig {
        picked: 0,
        disconnected: 0,
        rnr: 1,
        failed: 0,
        call_ms: 20,
    });
    let stack = Stack::start(&env, config).await;
    let (status, body) = stack
        .send(
            Method::POST,
            "/api/v1/campaigns",
            json!({"name": "traced", "max_attempts": 2}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let campaign = body["id"].as_u64().expect("id");
    let (status, body) = stack
        .send(
            Method::POST,
            "/api/v1/calls",
            json!({"campaign_id": campaign, "phone_number": "+15550009001"}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let call = body["call_id"].as_str().expect("call_id").to_owned();

    // The call's trace: the one the dialer's attempts are in.
    let trace = eventually(Duration::from_secs(40), || async {
        ccm_core::telemetry::flush();
        let spans = spans.lock().expect("lock");
        let attempts: Vec<&Span> = spans
            .iter()
            .filter(|s| s.name == "call" && attribute(s, "call").as_deref() == Some(&call))
            .collect();
        let trace = attempts.first()?.trace_id.clone();
        let in_trace: Vec<&Span> = spans.iter().filter(|s| s.trace_id == trace).collect();
        let count = |service_name: &str, name: &str| {
            in_trace
                .iter()
                .filter(|s| service(s) == service_name && s.name == name)
                .count()
        };
        let dial_subject = format!("calls.dial.{campaign}");
        let projected_dials = in_trace
            .iter()
            .filter(|s| attribute(s, "subject").as_deref() == Some(dial_subject.as_str()))
            .filter(|s| service(s) == "projector")
            .count();
        let complete = attempts.len() == 2
            && count("retrier", "retrier_outcomes") == 2
            && count("retrier", "retrier_retries") == 1
            && projected_dials == 2
            && count("ingest", "POST /api/v1/calls") == 1;
        complete.then(|| in_trace.into_iter().cloned().collect::<Vec<Span>>())
    })
    .await;
    let Some(trace) = trace else {
        let spans = spans.lock().expect("lock");
        let summary: Vec<(String, String, String)> = spans
            .iter()
            .map(|s| (service(s), s.name.clone(), hex(&s.trace_id)))
            .collect();
        panic!("no complete trace for call {call}; spans received: {summary:#?}");
    };

    let count = |service_name: &str, name: &str| {
        trace
            .iter()
            .filter(|s| service(s) == service_name && s.name == name)
            .count()
    };
    // The API request is the trace's root.
    let roots: Vec<&Span> = trace
        .iter()
        .filter(|s| s.parent_span_id.is_empty())
        .collect();
    assert_eq!(roots.len(), 1, "one root");
    assert_eq!(service(roots[0]), "ingest");
    assert_eq!(roots[0].name, "POST /api/v1/calls");
    assert_eq!(count("dialer", "call"), 2, "both attempts");
    assert_eq!(
        count("retrier", "retrier_outcomes"),
        2,
        "both outcomes decided"
    );
    assert_eq!(count("retrier", "retrier_retries"), 1, "the one retry");
    // The projector applied both dial messages and the call's events in this trace.
    let projected: Vec<String> = trace
        .iter()
        .filter(|s| service(s) == "projector")
        .filter_map(|s| attribute(s, "subject"))
        .collect();
    let dial_subject = format!("calls.dial.{campaign}");
    assert_eq!(
        projected.iter().filter(|s| **s == dial_subject).count(),
        2,
        "{projected:?}"
    );
    assert!(
        projected
            .iter()
            .any(|s| s.starts_with("calls.outcome.") && s.ends_with(&call)),
        "{projected:?}"
    );
    assert!(
        projected
            .iter()
            .any(|s| s.starts_with("calls.event.") && s.ends_with(&call)),
        "{projected:?}"
    );
    // No span points at a parent outside what was exported: the chain is unbroken.
    let ids: HashMap<&[u8], &Span> = trace.iter().map(|s| (&s.span_id[..], s)).collect();
    for span in &trace {
        assert!(
            span.parent_span_id.is_empty() || ids.contains_key(&span.parent_span_id[..]),
            "{} ({}) has a parent that was not exported",
            span.name,
            service(span)
        );
    }
    stack.stop().await;
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_carrier_callback_joins_the_calls_trace_which_continues_the_callers() {
    let spans = Received::default();
    let endpoint = receiver(spans.clone()).await;
    let env = TestEnv::start().await.expect("test environment");
    ccm_core::telemetry::init_exporting_to("test", &env.config().log, &endpoint);
    // Twilio's API played by carrier-sim, whose status callbacks come back to ingest.
    let sim = ccm_carrier_sim::SimConfig {
        call_jitter_ms: 20,
        ..answering(20)
    };
    let stack = CarrierStack::start(&env, sim).await;
    let dialer = Dialer::start(stack.config.clone());
    let campaign = stack.campaign(5).await;
    // The client has a trace of its own: ccm continues it.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let response = stack
        .client
        .http
        .post(format!("{}/api/v1/calls", stack.client.base))
        .header("X-Auth-Token", ccm_tests::TEST_TOKEN)
        .header("traceparent", format!("00-{caller_trace}-{caller_span}-01"))
        .json(&json!({"campaign_id": campaign, "phone_number": "+15550009002"}))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 202);
    let body: serde_json::Value = response.json().await.expect("body");
    let call = body["call_id"].as_str().expect("call_id").to_owned();

    // The retrier's decision on the outcome, under the callback that published it, under
    // the dialer's attempt, under the API request, under the caller's span: one trace.
    let chain = eventually(Duration::from_secs(30), || async {
        ccm_core::telemetry::flush();
        let spans = spans.lock().expect("lock");
        let attempt = spans
            .iter()
            .find(|s| s.name == "call" && attribute(s, "call").as_deref() == Some(&call))?;
        let by_id: HashMap<&[u8], &Span> = spans
            .iter()
            .filter(|s| s.trace_id == attempt.trace_id)
            .map(|s| (&s.span_id[..], s))
            .collect();
        let decision = by_id.values().find(|s| {
            s.name == "retrier_outcomes"
                && by_id
                    .get(&s.parent_span_id[..])
                    .is_some_and(|p| p.name == "carrier_callback")
        })?;
        let mut chain = vec![(service(decision), decision.name.clone())];
        let mut at = *decision;
        while let Some(parent) = by_id.get(&at.parent_span_id[..]) {
            chain.push((service(parent), parent.name.clone()));
            at = parent;
        }
        // The chain ends at the caller's own span, which ccm did not export.
        (hex(&at.parent_span_id) == caller_span).then_some((hex(&at.trace_id), chain))
    })
    .await
    .expect("a retrier decision under a carrier callback, in the call's trace");
    let (trace_id, chain) = chain;
    assert_eq!(trace_id, caller_trace, "the caller's trace continues");
    assert_eq!(
        chain,
        [
            ("retrier".to_owned(), "retrier_outcomes".to_owned()),
            ("ingest".to_owned(), "carrier_callback".to_owned()),
            ("dialer".to_owned(), "call".to_owned()),
            ("ingest".to_owned(), "POST /api/v1/calls".to_owned()),
        ]
    );
    dialer.stop().await;
    stack.stop().await;
}
