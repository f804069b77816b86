//! The retrier's `/metrics`, `/healthz` and `/readyz` after real decisions, retries and a
//! dead letter.

use std::{net::SocketAddr, time::Duration};

use ccm_core::{
    CallEvent, DialRequest, EventKind, OutcomeSource, OutcomeStatus,
    metrics::{get, sample},
};
use ccm_tests::{TestEnv, eventually};
use chrono::Utc;

use crate::{
    dead_letters::exhaust,
    support::{Retrier, request},
};

/// A metric, labels its sample must have, and the value expected.
type Expected = (&'static str, &'static [(&'static str, &'static str)], f64);

const ONE_SECOND: &str = "status_retry_rules:\n  RNR: {should_retry: true, backoff: [1s]}\n";

async fn outcome(js: &async_nats::jetstream::Context, dial: &DialRequest, status: OutcomeStatus) {
    let dialing = CallEvent {
        call_id: dial.call_id,
        campaign_id: dial.campaign_id,
        attempt: dial.attempt,
        at: Utc::now(),
        kind: EventKind::Dialing {
            phone_number: dial.phone_number.clone(),
            max_attempts: dial.max_attempts,
            created_at: dial.created_at,
            custom_fields: Default::default(),
            expires_at: None,
            alternate: None,
        },
    };
    ccm_core::nats::publish_event(js, &dialing)
        .await
        .expect("dialing");
    let outcome = CallEvent {
        at: Utc::now(),
        kind: EventKind::Outcome {
            status,
            source: OutcomeSource::Carrier,
            raw_status: None,
            duration_secs: None,
            external_call_id: None,
            reason: None,
            callback: None,
        },
        ..dialing
    };
    ccm_core::nats::publish_event(js, &outcome)
        .await
        .expect("outcome");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_retries_and_dead_letters_are_exported() {
    let env = TestEnv::start().await.expect("test environment");
    env.provision().await.expect("provision");
    let js = env.jetstream().await.expect("jetstream");
    let addr: SocketAddr = (
        [127, 0, 0, 1],
        ccm_tests::process::free_port().expect("port"),
    )
        .into();
    let mut config = env.config();
    config.retrier.metrics_listen = Some(addr);
    let retrier = Retrier::start_with(&env, ONE_SECOND, config);

    // One call not answered (a retry one second later), one answered.
    outcome(&js, &request(5, "+15550005001", 1), OutcomeStatus::Rnr).await;
    outcome(&js, &request(5, "+15550005002", 1), OutcomeStatus::Picked).await;
    // A dial message nobody manages to dial: dead-lettered.
    let dead = request(6, "+15550006001", 1);
    ccm_core::nats::publish_dial(&js, &dead)
        .await
        .expect("dial");
    // The same message given up on first by another reader: parked, counted apart.
    exhaust(&js, "CALLS", "calls.dial.6", "audit_reader", 2).await;
    exhaust(&js, "CALLS", "calls.dial.6", "dial_6", 2).await;

    let expected: [Expected; 7] = [
        (
            "ccm_retrier_decisions_total",
            &[("decision", "retrying"), ("status", "RNR")],
            1.0,
        ),
        (
            "ccm_retrier_decisions_total",
            &[("decision", "completed"), ("status", "PICKED")],
            1.0,
        ),
        (
            "ccm_retrier_retries_scheduled_total",
            &[("reason", "RNR")],
            1.0,
        ),
        ("ccm_retrier_retries_fired_total", &[], 1.0),
        (
            "ccm_retrier_dead_letters_total",
            &[("stream", "CALLS")],
            1.0,
        ),
        (
            "ccm_retrier_parked_total",
            &[("consumer", "other"), ("stream", "CALLS")],
            1.0,
        ),
        // Sampled from the DLQ stream's info: the letter and the parked record.
        ("ccm_retrier_dlq_messages", &[], 2.0),
    ];
    let text = eventually(Duration::from_secs(30), || async {
        let (status, text) = get(addr, "/metrics").await.ok()?;
        (status == 200
            && expected
                .iter()
                .all(|(name, labels, value)| sample(&text, name, labels) == Some(*value)))
        .then_some(text)
    })
    .await;
    let text = match text {
        Some(text) => text,
        None => panic!(
            "metrics never showed {expected:?}:\n{}",
            get(addr, "/metrics").await.expect("scrape").1
        ),
    };
    // The backlog gauge is exported: one entry at most (the retry's), depending on whether the
    // last sample came before or after it fired.
    let backlog = sample(&text, "ccm_retrier_retry_backlog_messages", &[]);
    assert!(matches!(backlog, Some(0.0 | 1.0)), "{text}");
    assert_eq!(get(addr, "/readyz").await.expect("readyz").0, 200);
    assert_eq!(get(addr, "/healthz").await.expect("healthz").0, 200);
    retrier.stop().await;
}
