//! Duplicate prevention: one live call per number (scope global or campaign), the duplicate
//! window after a call ended, and an atomic claim under concurrency.

use ccm_core::config::DuplicateScope;
use ccm_tests::TestEnv;
use serde_json::json;

use crate::api::{Api, stream_messages};

async fn call(api: &Api, phone: &str, campaign: u64) -> (u16, serde_json::Value) {
    api.post(
        "/api/v1/initiate-call/",
        json!({"phone_number": phone, "campaign_id": campaign}),
    )
    .await
}

/// Ends the call holding `key` the way the retrier does: a delete marker.
async fn end_call(env: &TestEnv, key: &str) {
    let js = env.jetstream().await.expect("js");
    let claims = js.get_key_value("active_calls").await.expect("bucket");
    let entry = claims.entry(key).await.expect("kv").expect("claimed");
    claims
        .delete_expect_revision(key, Some(entry.revision))
        .await
        .expect("delete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_number_is_429_in_any_campaign_under_the_global_scope() {
    let env = TestEnv::start().await.expect("env");
    let api = Api::start(&env).await;
    let (a, b) = (
        api.compat_campaign("a").await,
        api.compat_campaign("b").await,
    );
    assert_eq!(call(&api, "+1234567890", a).await.0, 201);
    for campaign in [a, b] {
        let (status, body) = call(&api, "+1 234 567 890", campaign).await;
        assert_eq!(status, 429);
        assert_eq!(
            body,
            json!({"error": "Call to +1234567890 already in progress"})
        );
    }
    assert_eq!(
        stream_messages(&env, "CALLS").await,
        1,
        "the duplicates published nothing"
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_the_campaign_scope_only_the_same_campaign_is_blocked() {
    let env = TestEnv::start().await.expect("env");
    let mut config = env.config();
    config.ingest.duplicate_scope = DuplicateScope::Campaign;
    let api = Api::start_with(&env, config, false).await;
    let (a, b) = (
        api.compat_campaign("a").await,
        api.compat_campaign("b").await,
    );
    assert_eq!(call(&api, "+1234567890", a).await.0, 201);
    assert_eq!(call(&api, "+1234567890", b).await.0, 201);
    assert_eq!(call(&api, "+1234567890", a).await.0, 429);
    let js = env.jetstream().await.expect("js");
    let claims = js.get_key_value("active_calls").await.expect("bucket");
    assert!(
        claims
            .get(format!("{a}.1234567890"))
            .await
            .expect("kv")
            .is_some()
    );
    assert!(
        claims
            .get(format!("{b}.1234567890"))
            .await
            .expect("kv")
            .is_some()
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_number_whose_call_just_ended_is_blocked_for_the_window() {
    let env = TestEnv::start().await.expect("env");
    let api = Api::start(&env).await;
    let campaign = api.compat_campaign("window").await;
    assert_eq!(call(&api, "+1234567890", campaign).await.0, 201);
    end_call(&env, "1234567890").await;
    let (status, body) = call(&api, "+1234567890", campaign).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(
        body,
        json!({"error": "Call to +1234567890 was made within the last 5 minutes"})
    );
    api.stop().await;

    // With the window off, the ended call frees the number at once.
    let mut config = env.config();
    config.ingest.duplicate_call_window_minutes = 0;
    let api = Api::start_with(&env, config, false).await;
    assert_eq!(call(&api, "+1234567890", campaign).await.0, 201);
    assert_eq!(stream_messages(&env, "CALLS").await, 2);
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_concurrent_requests_for_one_number_exactly_one_wins() {
    let env = TestEnv::start().await.expect("env");
    let api = Api::start(&env).await;
    let campaign = api.compat_campaign("race").await;
    let requests = (0..20).map(|_| call(&api, "+1234567890", campaign));
    let statuses: Vec<u16> = futures::future::join_all(requests)
        .await
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        19,
        "{statuses:?}"
    );
    assert_eq!(stream_messages(&env, "CALLS").await, 1);
    api.stop().await;
}
