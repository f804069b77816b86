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

/// A started draft must not complete while a call waits between its retryable FAILED outcome
/// and the retrier's decision: the outcome is not the call's end. The read model stores that
/// outcome with status FAILED (the carrier's word) but an outcome's phase; completion once took
/// the status for the end. No retrier runs here, so the call stays between the two stages, and
/// this test plays the dialer: it takes the attempt, publishes `Dialing` and the outcome, and
/// acks the attempt, as the dialer does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_started_draft_does_not_complete_while_a_failed_outcome_awaits_its_retry() {
    use async_nats::jetstream::consumer::pull;
    use ccm_core::{CallEvent, CallId, CampaignId, EventKind, OutcomeSource, OutcomeStatus};
    use futures::StreamExt;

    let env = TestEnv::start().await.expect("env");
    let api = Api::with_projector(&env).await;
    let (status, draft) = api
        .post(
            "/api/v1/campaigns",
            json!({"name": "retry pending", "draft": true, "max_attempts": 3}),
        )
        .await;
    assert_eq!(status, 201, "{draft}");
    let id = draft["id"].as_u64().expect("id");
    let (status, accepted) = api
        .post(
            "/api/v1/calls",
            json!({"campaign_id": id, "phone_number": "+15550001077"}),
        )
        .await;
    assert_eq!(status, 202, "{accepted}");
    let call: CallId = accepted["call_id"]
        .as_str()
        .expect("call_id")
        .parse()
        .expect("call id");
    let (status, _) = api
        .post(&format!("/api/v1/campaigns/{id}/start"), json!({}))
        .await;
    assert_eq!(status, 200);

    // The dialer's part.
    let js = env.jetstream().await.expect("jetstream");
    let consumer: async_nats::jetstream::consumer::Consumer<pull::Config> = js
        .get_consumer_from_stream(
            ccm_core::subjects::dial_consumer(CampaignId::new(id).expect("id")),
            "CALLS",
        )
        .await
        .expect("dial consumer");
    let mut consumer = consumer.messages().await.expect("pull");
    let message = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("the attempt is delivered")
        .expect("a message")
        .expect("no error");
    let request: ccm_core::DialRequest =
        serde_json::from_slice(&message.payload).expect("a dial request");
    assert_eq!(request.call_id, call);
    let event = |kind| CallEvent {
        call_id: call,
        campaign_id: request.campaign_id,
        attempt: 1,
        at: Utc::now(),
        kind,
    };
    ccm_core::nats::publish_event(
        &js,
        &event(EventKind::Dialing {
            phone_number: request.phone_number.clone(),
            max_attempts: request.max_attempts,
            created_at: request.created_at,
            custom_fields: request.custom_fields.clone(),
            expires_at: None,
            alternate: None,
        }),
    )
    .await
    .expect("dialing");
    ccm_core::nats::publish_event(
        &js,
        &event(EventKind::Outcome {
            status: OutcomeStatus::Failed,
            source: OutcomeSource::Carrier,
            raw_status: Some("failed".into()),
            duration_secs: None,
            external_call_id: None,
            reason: Some("carrier failed".into()),
            callback: None,
        }),
    )
    .await
    .expect("outcome");
    message.double_ack().await.expect("ack");

    // The read model shows the outcome; the completion check runs every 2 s.
    let shown = eventually(Duration::from_secs(10), || async {
        let (_, calls) = api.get(&format!("/api/v1/calls/{call}")).await;
        (calls["status"] == "FAILED").then_some(())
    })
    .await;
    assert!(shown.is_some(), "the outcome reached the read model");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (_, campaign) = api.get(&format!("/api/v1/campaigns/{id}")).await;
    assert_eq!(
        campaign["state"], "running",
        "completed while attempt 2 of 3 was still to be scheduled: {campaign}"
    );
    api.stop().await;
}
