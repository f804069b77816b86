//! Delivery: signing, retries, final refusals, and endpoints not waiting on each other.

use std::time::Duration;

use axum::http::StatusCode;
use ccm_core::EventKind;
use ccm_tests::TestEnv;
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{self, Behaviour, Ingest, Receiver};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_event_arrives_signed_and_the_signature_verifies() {
    let env = TestEnv::start().await.expect("env");
    let config = support::config(&env);
    let ingest = Ingest::start(config.clone()).await;
    let receiver = Receiver::start(Behaviour::always(StatusCode::NO_CONTENT)).await;
    let created = ingest
        .subscribe(json!({"url": receiver.url, "campaign_ids": [7], "events": ["completed"]}))
        .await;
    let secret = created["secret"]
        .as_str()
        .expect("secret shown at creation");
    let _webhooks = support::start_webhooks(config);

    // Consumed in order: the other campaign's event and the retrying event are settled
    // before the completed one, so seeing only the completed one proves they were filtered.
    support::publish(&env, 8, EventKind::Completed).await;
    support::publish(
        &env,
        7,
        EventKind::Retrying {
            next_retry_at: chrono::Utc::now(),
            reason: "RNR".into(),
        },
    )
    .await;
    let event = support::publish(&env, 7, EventKind::Completed).await;

    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got_later = receiver.received();
    assert_eq!(got_later.len(), 1, "only the matching event is delivered");
    let request = &got[0];
    assert!(support::verify(secret, request), "signature verifies");
    let mut tampered = request.clone();
    tampered.timestamp = (tampered.timestamp.parse::<i64>().expect("ts") + 1).to_string();
    assert!(
        !support::verify(secret, &tampered),
        "a changed timestamp fails"
    );
    let now = chrono::Utc::now().timestamp();
    let ts: i64 = request.timestamp.parse().expect("timestamp is seconds");
    assert!((now - ts).abs() < 60, "timestamp is current");
    assert_eq!(request.id, event.msg_id());
    let body: Value = serde_json::from_slice(&request.body).expect("json body");
    assert_eq!(body["type"], "call.completed");
    assert_eq!(body["data"]["call_id"], event.call_id.to_string());
    assert_eq!(body["data"]["campaign_id"], 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_is_retried_after_retry_after_and_delivered_once() {
    let env = TestEnv::start().await.expect("env");
    let config = support::config(&env);
    let ingest = Ingest::start(config.clone()).await;
    let receiver = Receiver::start(Behaviour {
        script: [(StatusCode::SERVICE_UNAVAILABLE, Some("1"))].into(),
        then: StatusCode::OK,
        delay: Duration::ZERO,
    })
    .await;
    let created = ingest
        .subscribe(json!({"url": receiver.url, "events": ["failed"]}))
        .await;
    let secret = created["secret"].as_str().expect("secret");
    let _webhooks = support::start_webhooks(config);
    support::publish(
        &env,
        3,
        EventKind::Failed {
            reason: "max attempts".into(),
        },
    )
    .await;

    let got = receiver.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(got[0].id, got[1].id, "a retry keeps its webhook-id");
    assert_eq!(got[0].body, got[1].body, "and its body");
    assert!(support::verify(secret, &got[1]), "the retry is signed too");
    let gap = got[1].at - got[0].at;
    assert!(
        gap >= Duration::from_millis(950),
        "Retry-After honoured: {gap:?}"
    );
    // Delivered: nothing more comes, though the backoff would allow several attempts.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        receiver.received().len(),
        2,
        "no delivery after the success"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_410_or_400_is_final_and_a_slow_endpoint_delays_no_other() {
    let env = TestEnv::start().await.expect("env");
    let config = support::config(&env);
    let ingest = Ingest::start(config.clone()).await;
    let gone = Receiver::start(Behaviour::always(StatusCode::GONE)).await;
    let bad = Receiver::start(Behaviour::always(StatusCode::BAD_REQUEST)).await;
    let slow = Receiver::start(Behaviour {
        script: Default::default(),
        then: StatusCode::OK,
        delay: Duration::from_secs(3),
    })
    .await;
    let fast = Receiver::start(Behaviour::always(StatusCode::OK)).await;
    let mut ids = Vec::new();
    for r in [&gone, &bad, &slow, &fast] {
        let created = ingest.subscribe(json!({"url": r.url})).await;
        ids.push(created["id"].as_str().expect("id").to_owned());
    }
    let _webhooks = support::start_webhooks(config);
    let started = std::time::Instant::now();
    support::publish(&env, 5, EventKind::Completed).await;

    fast.wait_for(1, Duration::from_secs(10)).await;
    assert!(
        slow.received().is_empty() && started.elapsed() < Duration::from_secs(3),
        "the fast endpoint got the event while the slow one was still answering"
    );
    gone.wait_for(1, Duration::from_secs(5)).await;
    bad.wait_for(1, Duration::from_secs(5)).await;
    slow.wait_for(1, Duration::from_secs(10)).await;
    // With 50-200 ms backoff, a retry would have come well within this.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(gone.received().len(), 1, "410 is not retried");
    assert_eq!(bad.received().len(), 1, "400 is not retried");
    // A 410 disables the endpoint at once; a 400 only fails that message.
    let (_, shown) = ingest
        .send(Method::GET, &format!("/api/v1/webhooks/{}", ids[0]), None)
        .await;
    assert_eq!(shown["enabled"], false, "{shown}");
    assert!(
        shown["disabled_reason"]
            .as_str()
            .is_some_and(|r| r.contains("410")),
        "{shown}"
    );
    let (_, shown) = ingest
        .send(Method::GET, &format!("/api/v1/webhooks/{}", ids[1]), None)
        .await;
    assert_eq!(shown["enabled"], true, "{shown}");
    assert_eq!(fast.received().len(), 1);
    assert_eq!(slow.received().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_abandoned_at_shutdown_is_delivered_after_a_restart() {
    let env = TestEnv::start().await.expect("env");
    let config = support::config(&env);
    let ingest = Ingest::start(config.clone()).await;
    // The first attempt is told to come back in 2 s; the deliverer is stopped meanwhile.
    let receiver = Receiver::start(Behaviour {
        script: [(StatusCode::SERVICE_UNAVAILABLE, Some("2"))].into(),
        then: StatusCode::OK,
        delay: Duration::ZERO,
    })
    .await;
    ingest.subscribe(json!({"url": receiver.url})).await;
    let first = support::start_webhooks(config.clone());
    let event = support::publish(
        &env,
        4,
        EventKind::Cancelled {
            reason: "operator".into(),
        },
    )
    .await;
    receiver.wait_for(1, Duration::from_secs(10)).await;
    first.stop().await;
    assert_eq!(receiver.received().len(), 1, "nothing sent after the stop");

    // The stopped deliverer NAKed the event, so a new one gets it at once (not after the
    // 60 s ack_wait, which would exceed this test's bound).
    let _second = support::start_webhooks(config);
    let got = receiver.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(got[1].id, event.msg_id());
    assert_eq!(got[0].id, got[1].id);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        receiver.received().len(),
        2,
        "delivered once after the success"
    );
}
