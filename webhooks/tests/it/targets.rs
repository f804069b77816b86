//! The connect-time check: with `webhooks.allow_private_targets` off, the deliverer sends
//! nothing to a target that is not public, whether the URL names it by a host name that
//! resolves to it or by an IP literal, and logs the refusal once, without retrying.
//!
//! Ingest stores the URLs with private targets allowed (its store-time check refuses the
//! `localhost` name and IP literals outright); the deliverer runs with them refused, as a
//! name that resolved to a public address when stored and to 127.0.0.1 when delivered
//! (DNS rebinding) would look to it.

use std::time::Duration;

use axum::http::StatusCode;
use ccm_core::EventKind;
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{self, Behaviour, Ingest, Receiver};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_resolves_or_points_to_loopback_gets_nothing_and_the_refusal_is_logged() {
    let env = ccm_tests::TestEnv::start().await.expect("env");
    let ingest = Ingest::start(support::config(&env)).await;
    let mut deliverer = support::config(&env);
    deliverer.webhooks.allow_private_targets = false;

    let by_name = Receiver::start(Behaviour::always(StatusCode::OK)).await;
    let by_literal = Receiver::start(Behaviour::always(StatusCode::OK)).await;
    // `localhost` resolves to 127.0.0.1 (/etc/hosts), where the receiver listens.
    let name_url = by_name.url.replace("127.0.0.1", "localhost");
    let mut ids = Vec::new();
    for url in [&name_url, &by_literal.url] {
        let created = ingest.subscribe(json!({"url": url})).await;
        ids.push(created["id"].as_str().expect("id").to_owned());
    }
    let _webhooks = support::start_webhooks(deliverer);
    support::publish(&env, 4, EventKind::Completed).await;

    let mut logs = Vec::new();
    for id in &ids {
        let path = format!("/api/v1/webhooks/{id}/deliveries");
        let found = ccm_tests::eventually(Duration::from_secs(10), || async {
            let (status, page) = ingest.send(Method::GET, &path, None).await;
            (status == StatusCode::OK && !page["items"].as_array()?.is_empty()).then_some(())
        })
        .await;
        assert!(found.is_some(), "an attempt is logged for {id}");
    }
    // With 50-200 ms backoff, retries would have come well within this.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for id in &ids {
        let path = format!("/api/v1/webhooks/{id}/deliveries");
        let (_, page) = ingest.send(Method::GET, &path, None).await;
        logs.push(page["items"].as_array().expect("items").clone());
    }
    assert!(
        by_name.received().is_empty(),
        "nothing sent to a name resolving to loopback"
    );
    assert!(
        by_literal.received().is_empty(),
        "nothing sent to 127.0.0.1"
    );

    let expected = [
        "target refused: localhost resolves only to addresses that are not public \
         (127.0.0.1 is not public (loopback))",
        "target refused: 127.0.0.1 is not public (loopback)",
    ];
    for (log, expected) in logs.iter().zip(expected) {
        assert_eq!(log.len(), 1, "refused once, not retried: {log:?}");
        let attempt: &Value = &log[0];
        assert_eq!(attempt["succeeded"], false);
        assert!(
            attempt.get("status_code").is_none_or(Value::is_null),
            "{attempt}"
        );
        assert_eq!(attempt["error"], expected, "{attempt}");
    }
    let pg = env.pg().await.expect("pg");
    for id in &ids {
        let (state, error): (String, Option<String>) =
            sqlx::query_as("SELECT state, last_error FROM webhook_messages WHERE endpoint_id = $1")
                .bind(id)
                .fetch_one(&pg)
                .await
                .expect("message");
        assert_eq!(state, "failed", "the message failed for good");
        assert!(error.is_some_and(|e| e.starts_with("target refused")));
    }
}
