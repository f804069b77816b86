//! The campaign lifecycle through the API: drafts, start, the transitions refused with 409,
//! start and end dates validated, and completion when the end date passes.

use std::time::Duration;

use ccm_tests::{TestEnv, eventually};
use chrono::Utc;
use serde_json::json;

use crate::api::{Api, stream_messages};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draft_queues_calls_starts_once_and_refuses_wrong_transitions() {
    let env = TestEnv::start().await.expect("env");
    let api = Api::start(&env).await;
    let (status, draft) = api
        .post("/api/v1/campaigns", json!({"name": "d", "draft": true}))
        .await;
    assert_eq!(
        (status, draft["state"].as_str()),
        (201, Some("draft")),
        "{draft}"
    );
    let id = draft["id"].as_u64().expect("id");
    // A draft accepts calls: they wait queued until it starts.
    let (status, body) = api
        .post(
            "/api/v1/calls",
            json!({"campaign_id": id, "phone_number": "+15550001001"}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    for action in ["pause", "resume"] {
        let (status, problem) = api
            .post(&format!("/api/v1/campaigns/{id}/{action}"), json!({}))
            .await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (409, Some("invalid_transition")),
            "{action} of a draft: {problem}"
        );
    }
    let (status, started) = api
        .post(&format!("/api/v1/campaigns/{id}/start"), json!({}))
        .await;
    assert_eq!((status, started["state"].as_str()), (200, Some("running")));
    assert_eq!(started["complete_when_empty"], true);
    let (status, paused) = api
        .post(&format!("/api/v1/campaigns/{id}/pause"), json!({}))
        .await;
    assert_eq!((status, paused["state"].as_str()), (200, Some("paused")));
    let (status, problem) = api
        .post(&format!("/api/v1/campaigns/{id}/start"), json!({}))
        .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (409, Some("invalid_transition"))
    );
    let (status, cancelled) = api
        .post(&format!("/api/v1/campaigns/{id}/cancel"), json!({}))
        .await;
    assert_eq!(
        (status, cancelled["state"].as_str()),
        (200, Some("cancelled"))
    );
    assert!(cancelled["ended_at"].is_string(), "{cancelled}");
    let (status, problem) = api
        .send(
            reqwest::Method::PATCH,
            &format!("/api/v1/campaigns/{id}"),
            Some(json!({"name": "renamed"})),
        )
        .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (409, Some("campaign_ended"))
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_dates_are_refused_and_change_nothing() {
    let env = TestEnv::start().await.expect("env");
    let api = Api::start(&env).await;
    let now = Utc::now();
    let past = (now - chrono::Duration::hours(1)).to_rfc3339();
    let later = (now + chrono::Duration::hours(2)).to_rfc3339();
    let soon = (now + chrono::Duration::hours(1)).to_rfc3339();
    for body in [
        json!({"name": "x", "ends_at": past}),
        json!({"name": "x", "starts_at": later, "ends_at": soon}),
    ] {
        let (status, problem) = api.post("/api/v1/campaigns", body.clone()).await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (400, Some("invalid_dates")),
            "{body}: {problem}"
        );
    }
    let (_, list) = api.get("/api/v1/campaigns").await;
    assert_eq!(list.as_array().map(Vec::len), Some(0), "nothing created");
    let id = api
        .campaign_with(json!({"name": "dated", "starts_at": soon, "ends_at": later}))
        .await;
    let (status, problem) = api
        .send(
            reqwest::Method::PATCH,
            &format!("/api/v1/campaigns/{id}"),
            Some(json!({"ends_at": (now + chrono::Duration::minutes(30)).to_rfc3339()})),
        )
        .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (400, Some("invalid_dates"))
    );
    let (_, campaign) = api.get(&format!("/api/v1/campaigns/{id}")).await;
    assert_eq!(
        campaign["ends_at"]
            .as_str()
            .map(|s| s.parse::<chrono::DateTime<Utc>>().ok()),
        Some(later.parse().ok()),
        "unchanged: {campaign}"
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_completes_when_its_end_date_passes_and_then_refuses_calls() {
    let env = TestEnv::start().await.expect("env");
    let api = Api::start(&env).await;
    let ends_at = Utc::now() + chrono::Duration::seconds(2);
    let id = api
        .campaign_with(json!({"name": "short", "ends_at": ends_at.to_rfc3339()}))
        .await;
    let completed = eventually(Duration::from_secs(15), || async {
        let (_, campaign) = api.get(&format!("/api/v1/campaigns/{id}")).await;
        (campaign["state"] == "completed").then_some(campaign)
    })
    .await
    .expect("completed after its end date");
    let ended: chrono::DateTime<Utc> = completed["ended_at"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("ended_at");
    assert!(ended >= ends_at, "{completed}");
    let before = stream_messages(&env, "CALLS").await;
    let (status, problem) = api
        .post(
            "/api/v1/calls",
            json!({"campaign_id": id, "phone_number": "+15550001002"}),
        )
        .await;
    assert_eq!(
        (status, problem["detail"].as_str()),
        (409, Some(format!("campaign {id} is completed").as_str()))
    );
    assert_eq!(
        stream_messages(&env, "CALLS").await,
        before,
        "nothing published"
    );
    let (status, problem) = api
        .post(&format!("/api/v1/campaigns/{id}/resume"), json!({}))
        .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (409, Some("campaign_completed"))
    );
    api.stop().await;
}
