//! The delivery log, manual redelivery, secret rotation, automatic disabling, and an
//! endpoint that is down for a while.

use std::time::Duration;

use axum::http::StatusCode;
use ccm_core::{CallId, EventKind, webhooks::EndpointDisabled};
use futures::StreamExt;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::support::{self, Behaviour, Ingest, Receiver};

/// Polls the delivery log until `check` accepts a page.
async fn log_until(ingest: &Ingest, path: &str, check: impl Fn(&Value) -> bool) -> Value {
    let found = ccm_tests::eventually(Duration::from_secs(10), || async {
        let (status, page) = ingest.send(Method::GET, path, None).await;
        (status == StatusCode::OK && check(&page)).then_some(page)
    })
    .await;
    match found {
        Some(page) => page,
        None => {
            let (_, last) = ingest.send(Method::GET, path, None).await;
            panic!("the log never matched: {last}");
        }
    }
}

fn items(page: &Value) -> &Vec<Value> {
    page["items"].as_array().expect("items")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attempt_is_logged_and_the_log_pages_and_filters_by_status() {
    let env = ccm_tests::TestEnv::start().await.expect("env");
    let config = support::config(&env);
    let ingest = Ingest::start(config.clone()).await;
    let receiver = Receiver::start(Behaviour {
        script: [
            (StatusCode::SERVICE_UNAVAILABLE, None),
            (StatusCode::SERVICE_UNAVAILABLE, None),
        ]
        .into(),
        then: StatusCode::OK,
        delay: Duration::ZERO,
    })
    .await;
    let created = ingest.subscribe(json!({"url": receiver.url})).await;
    let id = created["id"].as_str().expect("id");
    let _webhooks = support::start_webhooks(config);
    let event = support::publish(&env, 2, EventKind::Completed).await;
    receiver.wait_for(3, Duration::from_secs(10)).await;

    let base = format!("/api/v1/webhooks/{id}/deliveries");
    let page = log_until(&ingest, &base, |p| items(p).len() == 3).await;
    let log = items(&page);
    // Newest first.
    assert_eq!(log[0]["attempt"], 3);
    assert_eq!(log[0]["succeeded"], true);
    assert_eq!(log[0]["status_code"], 200);
    for (entry, attempt) in log[1..].iter().zip([2, 1]) {
        assert_eq!(entry["attempt"], attempt);
        assert_eq!(entry["succeeded"], false);
        assert_eq!(entry["status_code"], 503);
    }
    for entry in log {
        assert_eq!(entry["msg_id"], event.msg_id());
        assert_eq!(entry["event_type"], "call.completed");
        assert_eq!(entry["call_id"], event.call_id.to_string());
        assert_eq!(entry["lane"], "live");
        assert!(entry["latency_ms"].as_i64().is_some_and(|l| l >= 0));
    }
    assert!(page["next_cursor"].is_null(), "one page: {page}");

    let (_, failed) = ingest
        .send(Method::GET, &format!("{base}?status=failed"), None)
        .await;
    assert_eq!(items(&failed).len(), 2);
    let (_, by_code) = ingest
        .send(Method::GET, &format!("{base}?status=503"), None)
        .await;
    assert_eq!(items(&by_code).len(), 2);
    let (_, ok) = ingest
        .send(Method::GET, &format!("{base}?status=succeeded"), None)
        .await;
    assert_eq!(items(&ok).len(), 1);

    // Keyset pages of one: attempts 3, 2, 1, then an empty page.
    let mut seen = Vec::new();
    let mut path = format!("{base}?limit=1");
    loop {
        let (status, page) = ingest.send(Method::GET, &path, None).await;
        assert_eq!(status, 200, "{page}");
        seen.extend(items(&page).iter().map(|e| e["attempt"].clone()));
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("{base}?limit=1&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen, [json!(3), json!(2), json!(1)]);

    for (query, code) in [
        ("status=teapot", "invalid_status"),
        ("limit=0", "invalid_limit"),
        ("cursor=x", "invalid_cursor"),
    ] {
        let (status, problem) = ingest
            .send(Method::GET, &format!("{base}?{query}"), None)
            .await;
        assert_eq!(status, 400, "{query}: {problem}");
        assert_eq!(problem["code"], code);
    }
    let (status, _) = ingest
        .send(
            Method::GET,
            "/api/v1/webhooks/0190b6f0-0000-7000-8000-000000000000/deliveries",
            None,
        )
        .await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_message_or_everything_since_a_time_is_redelivered_signed() {
    let env = ccm_tests::TestEnv::start().await.expect("env");
    let config = support::config(&env);
    let ingest = Ingest::start(config.clone()).await;
    let receiver = Receiver::start(Behaviour::always(StatusCode::OK)).await;
    let created = ingest.subscribe(json!({"url": receiver.url})).await;
    let id = created["id"].as_str().expect("id");
    let secret = created["secret"].as_str().expect("secret");
    let _webhooks = support::start_webhooks(config);
    let since = chrono::Utc::now() - chrono::Duration::seconds(1);
    let first = support::publish(&env, 1, EventKind::Completed).await;
    let second = support::publish(
        &env,
        1,
        EventKind::Failed {
            reason: "max attempts".into(),
        },
    )
    .await;
    let got = receiver.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(got[0].id, first.msg_id());
    assert_eq!(got[1].id, second.msg_id());

    let (status, answer) = ingest
        .send(
            Method::POST,
            &format!(
                "/api/v1/webhooks/{id}/deliveries/{}/redeliver",
                support::encode_id(&first.msg_id())
            ),
            None,
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["queued"], 1);
    let got = receiver.wait_for(3, Duration::from_secs(10)).await;
    assert_eq!(got[2].id, first.msg_id(), "same webhook-id");
    assert_eq!(got[2].body, got[0].body, "same body");
    assert!(support::verify(secret, &got[2]), "signed again");

    let (status, answer) = ingest
        .send(
            Method::POST,
            &format!("/api/v1/webhooks/{id}/replay"),
            Some(json!({ "since": since })),
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["queued"], 2);
    let got = receiver.wait_for(5, Duration::from_secs(10)).await;
    assert_eq!(got[3].id, first.msg_id(), "replayed oldest first");
    assert_eq!(got[4].id, second.msg_id());
    assert!(got[3..].iter().all(|r| support::verify(secret, r)));

    let page = log_until(&ingest, &format!("/api/v1/webhooks/{id}/deliveries"), |p| {
        items(p).len() == 5
    })
    .await;
    let manual = items(&page)
        .iter()
        .filter(|e| e["lane"] == "manual")
        .count();
    assert_eq!(manual, 3, "redeliveries are logged on the manual lane");

    let (status, problem) = ingest
        .send(
            Method::POST,
            &format!("/api/v1/webhooks/{id}/deliveries/nope/redeliver"),
            None,
        )
        .await;
    assert_eq!(status, 404, "{problem}");
    assert_eq!(problem["code"], "message_not_found");
    let future = chrono::Utc::now() + chrono::Duration::hours(1);
    let (status, problem) = ingest
        .send(
            Method::POST,
            &format!("/api/v1/webhooks/{id}/replay"),
            Some(json!({ "since": future })),
        )
        .await;
    assert_eq!(status, 400, "{problem}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        receiver.received().len(),
        5,
        "refused requests queued nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_signs_beside_the_old_one_until_the_grace_period_ends() {
    let env = ccm_tests::TestEnv::start().await.expect("env");
    let mut config = support::config(&env);
    config.webhooks.secret_grace_secs = 5;
    let ingest = Ingest::start(config.clone()).await;
    let receiver = Receiver::start(Behaviour::always(StatusCode::OK)).await;
    let created = ingest.subscribe(json!({"url": receiver.url})).await;
    let id = created["id"].as_str().expect("id");
    let old = created["secret"].as_str().expect("secret").to_owned();
    let _webhooks = support::start_webhooks(config);
    // The deliverer is up (so the grace period below is not spent starting it).
    support::publish(&env, 1, EventKind::Completed).await;
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(
        got[0].signature.split(' ').count(),
        1,
        "one secret, one signature"
    );
    assert!(support::verify(&old, &got[0]));

    let (status, rotated) = ingest
        .send(
            Method::POST,
            &format!("/api/v1/webhooks/{id}/rotate-secret"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{rotated}");
    let new = rotated["secret"].as_str().expect("new secret").to_owned();
    assert!(new.starts_with("whsec_") && new != old);
    let until: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(rotated["previous_secret_until"].clone()).expect("grace end");
    let (_, shown) = ingest
        .send(Method::GET, &format!("/api/v1/webhooks/{id}"), None)
        .await;
    assert!(shown.get("secret").is_none(), "secret hidden: {shown}");

    support::publish(&env, 1, EventKind::Completed).await;
    let got = receiver.wait_for(2, Duration::from_secs(10)).await;
    let signed_at: i64 = got[1].timestamp.parse().expect("timestamp");
    assert!(
        signed_at < until.timestamp(),
        "sent within the grace period"
    );
    assert_eq!(got[1].signature.split(' ').count(), 2, "two signatures");
    assert!(
        support::verify(&old, &got[1]),
        "the old secret verifies meanwhile"
    );
    assert!(support::verify(&new, &got[1]), "the new secret verifies");

    // After the grace period, only the new secret signs.
    let wait = (until - chrono::Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(wait + Duration::from_millis(100)).await;
    support::publish(&env, 1, EventKind::Completed).await;
    let got = receiver.wait_for(3, Duration::from_secs(10)).await;
    assert_eq!(got[2].signature.split(' ').count(), 1);
    assert!(support::verify(&new, &got[2]));
    assert!(
        !support::verify(&old, &got[2]),
        "the old secret no longer signs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_failing_for_the_whole_horizon_is_disabled_and_the_operator_told() {
    let env = ccm_tests::TestEnv::start().await.expect("env");
    let mut config = support::config(&env);
    config.webhooks.retry_horizon_secs = 2;
    let ingest = Ingest::start(config.clone()).await;
    let receiver = Receiver::start(Behaviour::always(StatusCode::SERVICE_UNAVAILABLE)).await;
    let created = ingest.subscribe(json!({"url": receiver.url})).await;
    let id = created["id"].as_str().expect("id").to_owned();
    let nats = async_nats::connect(env.config().nats_url.expose())
        .await
        .expect("nats");
    let mut notices = nats
        .subscribe(format!("webhooks.endpoint.disabled.{id}"))
        .await
        .expect("subscribe");
    let _webhooks = support::start_webhooks(config);
    let started = std::time::Instant::now();
    support::publish(&env, 1, EventKind::Completed).await;

    let notice = tokio::time::timeout(Duration::from_secs(15), notices.next())
        .await
        .expect("a notice within the bound")
        .expect("subscription open");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "not before the horizon"
    );
    let notice: EndpointDisabled = serde_json::from_slice(&notice.payload).expect("notice");
    assert_eq!(notice.kind, "endpoint.disabled");
    assert_eq!(notice.endpoint_id, id);
    assert_eq!(notice.url, receiver.url);
    assert!(notice.reason.contains("horizon"), "{}", notice.reason);
    let path = format!("/api/v1/webhooks/{id}");
    let (_, shown) = ingest.send(Method::GET, &path, None).await;
    assert_eq!(shown["enabled"], false, "{shown}");
    assert!(shown["disabled_reason"].is_string(), "{shown}");
    let attempts = receiver.received().len();
    assert!(attempts >= 2, "retried until the horizon: {attempts}");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        receiver.received().len(),
        attempts,
        "nothing sent once disabled"
    );

    // Enabled again by the operator: the reason goes.
    let (status, patched) = ingest
        .send(Method::PATCH, &path, Some(json!({"enabled": true})))
        .await;
    assert_eq!(status, 200);
    assert_eq!(patched["enabled"], true);
    assert!(patched.get("disabled_reason").is_none(), "{patched}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_down_for_a_while_gets_every_event_once_and_in_order_when_back() {
    let env = ccm_tests::TestEnv::start().await.expect("env");
    let config = support::config(&env);
    let ingest = Ingest::start(config.clone()).await;
    // A port nothing listens on (yet).
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .local_addr()
        .expect("addr");
    let url = format!("http://{addr}/hook");
    let created = ingest.subscribe(json!({"url": url})).await;
    let id = created["id"].as_str().expect("id");
    let secret = created["secret"].as_str().expect("secret").to_owned();
    let _webhooks = support::start_webhooks(config);
    // Two calls, two events each, interleaved.
    let (a, b) = (CallId::new(), CallId::new());
    let retrying = || EventKind::Retrying {
        next_retry_at: chrono::Utc::now(),
        reason: "RNR".into(),
    };
    let mut sent = Vec::new();
    sent.push(support::publish_for(&env, a, 1, retrying()).await.msg_id());
    sent.push(support::publish_for(&env, b, 1, retrying()).await.msg_id());
    sent.push(
        support::publish_for(&env, a, 1, EventKind::Completed)
            .await
            .msg_id(),
    );
    sent.push(
        support::publish_for(&env, b, 1, EventKind::Completed)
            .await
            .msg_id(),
    );

    // Refused connections are logged as failures without a status.
    log_until(&ingest, &format!("/api/v1/webhooks/{id}/deliveries"), |p| {
        items(p).len() >= 2
            && items(p)
                .iter()
                .all(|e| e["status_code"].is_null() && e["error"].is_string())
    })
    .await;
    let listener = TcpListener::bind(addr).await.expect("rebind the port");
    let receiver = Receiver::start_on(listener, Behaviour::always(StatusCode::OK));
    let got = receiver.wait_for(4, Duration::from_secs(15)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got_later = receiver.received();
    assert_eq!(got_later.len(), 4, "each event once");
    let ids: Vec<&str> = got.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, sent, "in the order they happened");
    assert!(got.iter().all(|r| support::verify(&secret, r)));
}
