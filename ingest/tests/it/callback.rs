//! `PUT /api/v1/callback/`.

use std::time::Duration;

use ccm_core::{CallEvent, CampaignId, DialRequest, EventKind, OutcomeSource, OutcomeStatus};
use ccm_tests::{TestEnv, eventually};
use chrono::Utc;
use serde_json::{Value, json};

use crate::api::{Api, stream_messages};

const CALLBACK: &str = "/api/v1/callback/";

/// Accepts a call and waits until the projector has it in the read model.
async fn projected_call(env: &TestEnv, api: &Api) -> (u64, String) {
    let campaign = api.compat_campaign("callbacks").await;
    let (status, body) = api
        .post(
            "/api/v1/initiate-call/",
            json!({"phone_number": "+1234567890", "campaign_id": campaign}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let call = body["call_id"].as_str().expect("call_id").to_owned();
    let pg = env.pg().await.expect("pg");
    let id: uuid::Uuid = call.parse().expect("uuid");
    eventually(Duration::from_secs(10), || async {
        sqlx::query_scalar::<_, i32>("SELECT attempt_count FROM calls WHERE call_id = $1")
            .bind(id)
            .fetch_optional(&pg)
            .await
            .ok()
            .flatten()
    })
    .await
    .expect("the call is projected");
    (campaign, call)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_publishes_one_outcome_and_a_repeat_is_harmless() {
    let env = TestEnv::start().await.expect("env");
    let api = Api::with_projector(&env).await;
    let (campaign, call) = projected_call(&env, &api).await;

    for _ in 0..2 {
        let (status, body) = api
            .put(CALLBACK, json!({"call_id": call, "status": "PICKED", "call_duration": 45, "external_call_id": "ext_1"}))
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body,
            json!({"success": true, "call_id": call, "status": "PICKED"})
        );
    }
    let js = env.jetstream().await.expect("js");
    let events = js.get_stream("CALL_EVENTS").await.expect("stream");
    let message = events
        .direct_get_last_for_subject(format!("calls.outcome.{campaign}.{call}"))
        .await
        .expect("the outcome is stored");
    let outcome: Value = serde_json::from_slice(&message.payload).expect("json");
    assert_eq!(outcome["type"], "outcome");
    assert_eq!(outcome["status"], "PICKED");
    assert_eq!(outcome["source"], "carrier");
    assert_eq!(outcome["attempt"], 1);
    assert_eq!(outcome["duration_secs"], 45);
    assert_eq!(outcome["external_call_id"], "ext_1");
    let msg_id = message.headers.get("Nats-Msg-Id").map(|v| v.to_string());
    assert_eq!(msg_id, Some(format!("{call}/1/outcome")));
    assert_eq!(
        stream_messages(&env, "CALL_EVENTS").await,
        1,
        "the repeat was de-duplicated"
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_callbacks_get_the_old_messages_and_publish_nothing() {
    let env = TestEnv::start().await.expect("env");
    let api = Api::with_projector(&env).await;
    let (_, call) = projected_call(&env, &api).await;
    let invalid = "Invalid status. Must be one of: [PICKED, DISCONNECTED, RNR, FAILED]";
    let cases = [
        (
            json!({"call_id": "test-call-id", "status": "INVALID_STATUS"}),
            400,
            invalid,
        ),
        (
            json!({"call_id": call, "status": "COMPLETED"}),
            400,
            invalid,
        ),
        (
            json!({"status": "PICKED"}),
            400,
            "call_id and status are required",
        ),
        (
            json!({"call_id": call}),
            400,
            "call_id and status are required",
        ),
        (
            json!({"call_id": "test-call-id", "status": "PICKED"}),
            404,
            "Call not found",
        ),
        (
            json!({"call_id": uuid::Uuid::now_v7().to_string(), "status": "RNR"}),
            404,
            "Call not found",
        ),
    ];
    for (body, want_status, message) in cases {
        let (status, answer) = api.put(CALLBACK, body.clone()).await;
        assert_eq!(
            (status, &answer),
            (want_status, &json!({"error": message})),
            "{body}"
        );
    }
    assert_eq!(stream_messages(&env, "CALL_EVENTS").await, 0);
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_while_the_broker_is_down_is_503_with_retry_after() {
    let mut env = TestEnv::start().await.expect("env");
    let api = Api::with_projector(&env).await;
    let (_, call) = projected_call(&env, &api).await;
    env.local_nats.as_mut().expect("local nats").stop();
    let (status, body) = api
        .put(CALLBACK, json!({"call_id": call, "status": "RNR"}))
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["retry_after"], 60);
    assert!(body["error"].is_string(), "{body}");
    drop(api);
}

/// Publishes one lifecycle event or outcome of `call`'s attempt, as the dialer or the
/// retrier would.
async fn publish(env: &TestEnv, campaign: u64, call: &str, attempt: u32, kind: EventKind) {
    let js = env.jetstream().await.expect("js");
    let event = CallEvent {
        call_id: call.parse().expect("call id"),
        campaign_id: CampaignId::new(campaign).expect("campaign"),
        attempt,
        at: Utc::now(),
        kind,
    };
    ccm_core::nats::publish_event(&js, &event)
        .await
        .expect("event stored");
}

fn dialing() -> EventKind {
    EventKind::Dialing {
        phone_number: "+1234567890".parse().expect("number"),
        max_attempts: 3,
        created_at: Utc::now(),
        custom_fields: Default::default(),
        expires_at: None,
        alternate: None,
    }
}

/// The call's newest outcome in JetStream: (attempt, status).
async fn latest_outcome(env: &TestEnv, campaign: u64, call: &str) -> (u64, String) {
    let js = env.jetstream().await.expect("js");
    let events = js.get_stream("CALL_EVENTS").await.expect("stream");
    let message = events
        .direct_get_last_for_subject(format!("calls.outcome.{campaign}.{call}"))
        .await
        .expect("an outcome is stored");
    let outcome: Value = serde_json::from_slice(&message.payload).expect("json");
    (
        outcome["attempt"].as_u64().expect("attempt"),
        outcome["status"].as_str().expect("status").to_owned(),
    )
}

// The bug the fault suite found: attempt 1 timed out and its retry is queued, so the read
// model already counts attempt 2 (never placed). Attempt 1's late callback must stay attempt
// 1's (a duplicate of its decided outcome), not become the outcome of attempt 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_callback_stays_with_its_attempt_while_the_retry_is_queued() {
    let env = TestEnv::start().await.expect("env");
    let api = Api::with_projector(&env).await;
    let (campaign, call) = projected_call(&env, &api).await;
    publish(&env, campaign, &call, 1, dialing()).await;
    let timeout = EventKind::Outcome {
        status: OutcomeStatus::Failed,
        source: OutcomeSource::Timeout,
        raw_status: None,
        duration_secs: None,
        external_call_id: None,
        reason: Some("timeout".into()),
        callback: None,
    };
    publish(&env, campaign, &call, 1, timeout).await;
    let retrying = EventKind::Retrying {
        next_retry_at: Utc::now() + chrono::Duration::seconds(60),
        reason: "FAILED".into(),
    };
    publish(&env, campaign, &call, 1, retrying).await;
    // The retrier's queued attempt 2, as it reaches `CALLS` when due.
    let js = env.jetstream().await.expect("js");
    let calls = js.get_stream("CALLS").await.expect("CALLS");
    let first = calls
        .direct_get_last_for_subject(format!("calls.dial.{campaign}"))
        .await
        .expect("attempt 1's dial request");
    let mut second: DialRequest = serde_json::from_slice(&first.payload).expect("dial request");
    second.attempt = 2;
    second.queued_at = Utc::now();
    ccm_core::nats::publish_json(&js, second.subject(), &second.msg_id(), None, &second)
        .await
        .expect("attempt 2 queued");
    let pg = env.pg().await.expect("pg");
    let id: uuid::Uuid = call.parse().expect("uuid");
    eventually(Duration::from_secs(10), || async {
        let n: Option<i32> =
            sqlx::query_scalar("SELECT attempt_count FROM calls WHERE call_id = $1")
                .bind(id)
                .fetch_optional(&pg)
                .await
                .ok()
                .flatten();
        (n == Some(2)).then_some(())
    })
    .await
    .expect("the read model counts the queued attempt 2");

    let (status, body) = api
        .put(CALLBACK, json!({"call_id": call, "status": "PICKED"}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        latest_outcome(&env, campaign, &call).await,
        (1, "FAILED".to_owned()),
        "the late callback was credited to attempt 1 and dropped as its duplicate"
    );

    // Once attempt 2 is placed, its callback is attempt 2's.
    publish(&env, campaign, &call, 2, dialing()).await;
    let (status, body) = api
        .put(CALLBACK, json!({"call_id": call, "status": "RNR"}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        latest_outcome(&env, campaign, &call).await,
        (2, "RNR".to_owned())
    );
    api.stop().await;
}

// JetStream, not the read model, says which attempt is live: with PostgreSQL down (and the
// read model still at attempt 1 before that), the callback of the placed attempt 2 lands on
// attempt 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_is_credited_from_jetstream_while_postgres_is_down() {
    let mut env = TestEnv::start().await.expect("env");
    let api = Api::with_projector(&env).await;
    let (campaign, call) = projected_call(&env, &api).await;
    env.local_postgres.as_mut().expect("local postgres").stop();
    publish(&env, campaign, &call, 2, dialing()).await;
    let (status, body) = api
        .put(
            CALLBACK,
            json!({"call_id": call, "status": "DISCONNECTED", "external_call_id": "ext_2"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        latest_outcome(&env, campaign, &call).await,
        (2, "DISCONNECTED".to_owned())
    );
    // A call JetStream has never seen is still unknown, and the read model cannot say
    // otherwise while it is down.
    let (status, _) = api
        .put(
            CALLBACK,
            json!({"call_id": uuid::Uuid::now_v7().to_string(), "status": "RNR"}),
        )
        .await;
    assert_eq!(status, 503);
    drop(api);
}

/// Records, as the dialer does once the carrier answered, that the carrier's id `external`
/// was placed for `call`'s `attempt`.
async fn record_placement(env: &TestEnv, external: &str, campaign: u64, call: &str, attempt: u32) {
    let js = env.jetstream().await.expect("js");
    let bucket = ccm_core::nats::bucket(&js, ccm_core::topology::names::KV_PLACEMENTS)
        .await
        .expect("placements bucket");
    let placed = ccm_core::placements::PlacedAttempt {
        call_id: call.parse().expect("call id"),
        campaign_id: CampaignId::new(campaign).expect("campaign"),
        attempt,
    };
    ccm_core::placements::record(&bucket, external, &placed)
        .await
        .expect("placement recorded");
}

/// Attempt 1 placed under the carrier's id `CA-one.1/x` (characters a KV key may not hold
/// as they are), timed out and retried; attempt 2 placed: the call's latest attempt is 2.
async fn retried_and_placed_again(env: &TestEnv, campaign: u64, call: &str) {
    publish(env, campaign, call, 1, dialing()).await;
    record_placement(env, "CA-one.1/x", campaign, call, 1).await;
    let timeout = EventKind::Outcome {
        status: OutcomeStatus::Failed,
        source: OutcomeSource::Timeout,
        raw_status: None,
        duration_secs: None,
        external_call_id: None,
        reason: Some("timeout".into()),
        callback: None,
    };
    publish(env, campaign, call, 1, timeout).await;
    let retrying = EventKind::Retrying {
        next_retry_at: Utc::now(),
        reason: "FAILED".into(),
    };
    publish(env, campaign, call, 1, retrying).await;
    publish(env, campaign, call, 2, dialing()).await;
}

// What the latest lifecycle event cannot tell: attempt 1's callback arrives after attempt 2
// was placed. The carrier's id it carries names attempt 1, so it stays attempt 1's (a
// duplicate of its decided outcome) and attempt 2 still waits for its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_after_the_next_attempt_was_placed_goes_to_its_carrier_ids_attempt() {
    let env = TestEnv::start().await.expect("env");
    let api = Api::with_projector(&env).await;
    let (campaign, call) = projected_call(&env, &api).await;
    retried_and_placed_again(&env, campaign, &call).await;

    let (status, body) = api
        .put(
            CALLBACK,
            json!({"call_id": call, "status": "PICKED", "call_duration": 30,
                   "external_call_id": "CA-one.1/x"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        latest_outcome(&env, campaign, &call).await,
        (1, "FAILED".to_owned()),
        "attempt 1's late callback was credited to attempt 1 and dropped as its duplicate"
    );

    // Without the carrier's id (or with one never recorded) the call's latest attempt is
    // all ingest knows, as before.
    let (status, body) = api
        .put(
            CALLBACK,
            json!({"call_id": call, "status": "RNR", "external_call_id": "CA-never-recorded"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        latest_outcome(&env, campaign, &call).await,
        (2, "RNR".to_owned())
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_without_the_carriers_id_goes_to_the_latest_attempt() {
    let env = TestEnv::start().await.expect("env");
    let api = Api::with_projector(&env).await;
    let (campaign, call) = projected_call(&env, &api).await;
    retried_and_placed_again(&env, campaign, &call).await;
    let (status, body) = api
        .put(CALLBACK, json!({"call_id": call, "status": "PICKED"}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        latest_outcome(&env, campaign, &call).await,
        (2, "PICKED".to_owned())
    );
    api.stop().await;
}

// A carrier's id recorded for another call must not carry this call's outcome over to it:
// the record is ignored and the callback goes to its own call's latest attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_carrier_id_recorded_for_another_call_is_ignored() {
    let env = TestEnv::start().await.expect("env");
    let api = Api::with_projector(&env).await;
    let (campaign, call) = projected_call(&env, &api).await;
    let other = uuid::Uuid::now_v7().to_string();
    publish(&env, campaign, &other, 1, dialing()).await;
    record_placement(&env, "CA-other", campaign, &other, 1).await;
    publish(&env, campaign, &call, 2, dialing()).await;

    let (status, body) = api
        .put(
            CALLBACK,
            json!({"call_id": call, "status": "DISCONNECTED", "external_call_id": "CA-other"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        latest_outcome(&env, campaign, &call).await,
        (2, "DISCONNECTED".to_owned())
    );
    let js = env.jetstream().await.expect("js");
    let events = js.get_stream("CALL_EVENTS").await.expect("stream");
    assert!(
        events
            .direct_get_last_for_subject(format!("calls.outcome.{campaign}.{other}"))
            .await
            .is_err(),
        "the other call got no outcome"
    );
    api.stop().await;
}
