//! The resource API's campaigns: list, PATCH settings, pause/resume/cancel, stats.

use std::time::Duration;

use ccm_tests::{TestEnv, eventually};
use serde_json::json;

use crate::api::Api;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_are_patched_and_a_new_cap_reaches_the_dial_consumer() {
    let env = TestEnv::start().await.expect("env");
    let api = Api::start(&env).await;
    let id = api
        .campaign_with(json!({"name": "patch me", "max_concurrent_calls": 5}))
        .await;
    let (status, body) = api
        .send(
            reqwest::Method::PATCH,
            &format!("/api/v1/campaigns/{id}"),
            Some(json!({
                "max_concurrent_calls": 7,
                "time_zone": "Europe/Paris",
                "calling_window": {"start": "09:00", "end": "18:30"},
                "retry_policy": {"status_retry_rules": {"RNR": {"should_retry": false}}}
            })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["max_concurrent_calls"], 7);
    assert_eq!(body["time_zone"], "Europe/Paris");
    assert_eq!(
        body["calling_window"],
        json!({"start": "09:00", "end": "18:30"})
    );
    assert_eq!(
        body["retry_policy"]["status_retry_rules"]["RNR"]["should_retry"],
        false
    );
    let js = env.jetstream().await.expect("js");
    let calls = js.get_stream("CALLS").await.expect("CALLS");
    let info = calls
        .consumer_info(format!("dial_{id}"))
        .await
        .expect("consumer");
    assert_eq!(info.config.max_ack_pending, 7);

    let bad = [
        (
            json!({"time_zone": "Mars/Olympus"}),
            400,
            "invalid_time_zone",
        ),
        (
            json!({"calling_window": {"start": "18:00", "end": "09:00"}}),
            400,
            "invalid_calling_window",
        ),
        (json!({"max_concurrent_calls": 0}), 400, "invalid_limits"),
        (json!({"colour": "blue"}), 422, "unknown_field"),
    ];
    for (patch, status, code) in bad {
        let (got, problem) = api
            .send(
                reqwest::Method::PATCH,
                &format!("/api/v1/campaigns/{id}"),
                Some(patch.clone()),
            )
            .await;
        assert_eq!(
            (got, problem["code"].as_str()),
            (status, Some(code)),
            "{patch}"
        );
    }
    let (_, unchanged) = api.get(&format!("/api/v1/campaigns/{id}")).await;
    assert_eq!(
        unchanged["time_zone"], "Europe/Paris",
        "rejected patches changed nothing"
    );
    let (status, problem) = api
        .send(
            reqwest::Method::PATCH,
            "/api/v1/campaigns/999",
            Some(json!({"name": "x"})),
        )
        .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (404, Some("campaign_not_found"))
    );

    let (status, list) = api.get("/api/v1/campaigns").await;
    assert_eq!(status, 200);
    assert_eq!(list.as_array().map(Vec::len), Some(1));
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_and_cancel_change_the_document_state() {
    let env = TestEnv::start().await.expect("env");
    let api = Api::start(&env).await;
    let id = api.compat_campaign("states").await;
    for (action, state) in [
        ("pause", "paused"),
        ("resume", "running"),
        ("cancel", "cancelled"),
    ] {
        let (status, body) = api
            .post(&format!("/api/v1/campaigns/{id}/{action}"), json!({}))
            .await;
        assert_eq!(
            (status, body["state"].as_str()),
            (200, Some(state)),
            "{action}"
        );
    }
    let (status, problem) = api
        .post(&format!("/api/v1/campaigns/{id}/resume"), json!({}))
        .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (409, Some("campaign_cancelled"))
    );
    let js = env.jetstream().await.expect("js");
    let bucket = js.get_key_value("campaigns").await.expect("bucket");
    let document: serde_json::Value =
        serde_json::from_slice(&bucket.get(id.to_string()).await.expect("kv").expect("doc"))
            .expect("json");
    assert_eq!(document["state"], "cancelled");
    // A cancelled campaign accepts no calls.
    let (status, _) = api
        .post(
            "/api/v1/initiate-call/",
            json!({"phone_number": "+1234567890", "campaign_id": id}),
        )
        .await;
    assert_eq!(status, 404);
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_calls_by_status_and_queue() {
    let env = TestEnv::start().await.expect("env");
    let api = Api::with_projector(&env).await;
    let id = api.compat_campaign("stats").await;
    for n in 1..=3 {
        let (status, _) = api
            .post(
                "/api/v1/calls",
                json!({"campaign_id": id, "phone_number": format!("+155500000{n}")}),
            )
            .await;
        assert_eq!(status, 202);
    }
    let stats = eventually(Duration::from_secs(10), || async {
        let (status, body) = api.get(&format!("/api/v1/campaigns/{id}/stats")).await;
        (status == 200 && body["by_status"]["QUEUED"] == 3).then_some(body)
    })
    .await
    .expect("three queued calls");
    assert_eq!(stats["queued"], 3, "no dialer: all wait in the stream");
    assert_eq!(stats["live_calls"], 0);
    assert_eq!(stats["retrying"], 0);
    assert_eq!(stats["dead_letters"], 0);
    assert_eq!(stats["state"], "running");
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_written_by_another_replica_reaches_this_one() {
    let env = TestEnv::start().await.expect("env");
    let api = Api::start(&env).await;
    let id = api.compat_campaign("elsewhere").await;
    let call = |n: u32| {
        api.post(
            "/api/v1/initiate-call/",
            json!({"phone_number": format!("+155500000{n}"), "campaign_id": id}),
        )
    };
    assert_eq!(call(1).await.0, 201);
    // Another replica deactivates the campaign: it writes the bucket directly.
    let js = env.jetstream().await.expect("js");
    let bucket = js.get_key_value("campaigns").await.expect("bucket");
    let mut document: serde_json::Value =
        serde_json::from_slice(&bucket.get(id.to_string()).await.expect("kv").expect("doc"))
            .expect("json");
    document["is_active"] = json!(false);
    bucket
        .put(
            id.to_string(),
            serde_json::to_vec(&document).expect("json").into(),
        )
        .await
        .expect("put");
    // A call may still be accepted in the moment before the watch delivers the change, so
    // every attempt uses a new number.
    let next = std::sync::atomic::AtomicU32::new(2);
    let refused = eventually(Duration::from_secs(5), || async {
        let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        (call(n).await.0 == 404).then_some(())
    })
    .await;
    assert!(
        refused.is_some(),
        "the deactivation is seen through the campaign cache"
    );
    api.stop().await;
}
