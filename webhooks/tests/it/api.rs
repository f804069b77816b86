//! Managing subscriptions through ingest: bad input is refused and stores nothing.

use ccm_core::topology::names;
use ccm_tests::TestEnv;
use futures::StreamExt;
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::Ingest;

async fn stored_keys(env: &TestEnv) -> usize {
    let js = env.jetstream().await.expect("js");
    let kv = ccm_core::nats::bucket(&js, names::KV_WEBHOOKS)
        .await
        .expect("bucket");
    kv.keys().await.expect("keys").count().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_subscriptions_are_refused_with_a_problem_and_nothing_is_stored() {
    let env = TestEnv::start().await.expect("env");
    // The production default: private targets refused.
    let ingest = Ingest::start(env.config()).await;
    let cases = [
        (
            json!({"url": "http://127.0.0.1:9/hook"}),
            422,
            "private_target",
        ),
        (
            json!({"url": "http://169.254.169.254/"}),
            422,
            "private_target",
        ),
        (json!({"url": "http://localhost/x"}), 422, "private_target"),
        (json!({"url": "ftp://example.com/"}), 400, "invalid_url"),
        (json!({"url": "not a url"}), 400, "invalid_url"),
        (
            json!({"url": "https://a:b@example.com/"}),
            400,
            "invalid_url",
        ),
        (
            json!({"url": "https://example.com/", "events": ["dialing"]}),
            400,
            "invalid_events",
        ),
        (
            json!({"url": "https://example.com/", "events": []}),
            400,
            "invalid_events",
        ),
        (
            json!({"url": "https://example.com/", "secret": "mine"}),
            422,
            "unknown_field",
        ),
        (json!({"events": ["completed"]}), 422, "missing_field"),
        (
            json!({"url": "https://example.com/", "campaign_ids": [0]}),
            422,
            "invalid_body",
        ),
    ];
    for (body, status, code) in cases {
        let (got, problem) = ingest
            .send(Method::POST, "/api/v1/webhooks", Some(body.clone()))
            .await;
        assert_eq!(got.as_u16(), status, "{body} -> {problem}");
        assert_eq!(problem["code"], code, "{body} -> {problem}");
        assert!(problem["detail"].as_str().is_some_and(|d| !d.is_empty()));
    }
    assert_eq!(stored_keys(&env).await, 0, "nothing stored");
    let (status, list) = ingest.send(Method::GET, "/api/v1/webhooks", None).await;
    assert_eq!(status, 200);
    assert_eq!(list, json!([]));

    // A good one: the secret is shown once, then never again.
    let created = ingest
        .subscribe(
            json!({"url": "https://hooks.example.com/ccm", "events": ["failed", "completed"]}),
        )
        .await;
    let id = created["id"].as_str().expect("id").to_owned();
    assert!(
        created["secret"]
            .as_str()
            .expect("secret")
            .starts_with("whsec_")
    );
    assert_eq!(created["events"], json!(["completed", "failed"]));
    let path = format!("/api/v1/webhooks/{id}");
    let (status, shown) = ingest.send(Method::GET, &path, None).await;
    assert_eq!(status, 200);
    assert!(shown.get("secret").is_none(), "secret hidden: {shown}");

    // A bad change is refused and changes nothing; a good one applies.
    let (status, problem) = ingest
        .send(
            Method::PATCH,
            &path,
            Some(json!({"url": "http://10.0.0.1/"})),
        )
        .await;
    assert_eq!(status, 422, "{problem}");
    let (_, unchanged) = ingest.send(Method::GET, &path, None).await;
    assert_eq!(unchanged, shown);
    let (status, patched) = ingest
        .send(Method::PATCH, &path, Some(json!({"enabled": false})))
        .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["enabled"], false);
    assert_eq!(patched["url"], shown["url"]);

    let (status, _) = ingest.send(Method::DELETE, &path, None).await;
    assert_eq!(status, 204);
    let (status, problem) = ingest.send(Method::GET, &path, None).await;
    assert_eq!(status, 404, "{problem}");
    let (status, _) = ingest
        .send(Method::GET, "/api/v1/webhooks/not-an-id", None)
        .await;
    assert_eq!(status, 404);
    let (_, list): (_, Value) = ingest.send(Method::GET, "/api/v1/webhooks", None).await;
    assert_eq!(list, json!([]));
}
