//! A call from HTTP to Postgres, and a rejected call that leaves no trace.

use std::time::{Duration, Instant};

use ccm_tests::{TestEnv, eventually};
use reqwest::Method;
use serde_json::json;

use crate::stack::Stack;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_travels_from_http_to_a_completed_row_in_postgres() {
    let env = TestEnv::start().await.expect("test environment");
    let stack = Stack::start(&env, env.config()).await;
    let campaign = stack.campaign("skeleton").await;

    let started = Instant::now();
    let (status, body) = stack
        .send(
            Method::POST,
            "/api/v1/calls",
            json!({"campaign_id": campaign, "phone_number": "+1 (555) 000-0001"}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "QUEUED");
    assert_eq!(body["phone_number"], "+15550000001");
    let call_id: uuid::Uuid = body["call_id"]
        .as_str()
        .expect("call_id")
        .parse()
        .expect("uuid");

    let pg = env.pg().await.expect("postgres");
    let row = eventually(Duration::from_secs(20), || async {
        sqlx::query_as::<_, (String, i32, Option<String>, i64)>(
            "SELECT status, attempt_count, phone_number, campaign_id FROM calls WHERE call_id = $1",
        )
        .bind(call_id)
        .fetch_optional(&pg)
        .await
        .ok()
        .flatten()
        .filter(|(status, ..)| status == "COMPLETED")
    })
    .await
    .expect("the call reaches COMPLETED in Postgres");
    eprintln!(
        "call completed in Postgres {:?} after it was accepted",
        started.elapsed()
    );
    assert_eq!(
        row,
        (
            "COMPLETED".into(),
            1,
            Some("+15550000001".into()),
            campaign as i64
        )
    );

    let history: Vec<String> = eventually(Duration::from_secs(10), || async {
        let kinds: Vec<String> = sqlx::query_scalar(
            "SELECT kind FROM call_events WHERE call_id = $1 ORDER BY occurred_at, kind",
        )
        .bind(call_id)
        .fetch_all(&pg)
        .await
        .unwrap_or_default();
        (kinds.len() == 4).then_some(kinds)
    })
    .await
    .expect("four events recorded");
    assert_eq!(history, ["queued", "dialing", "outcome", "completed"]);

    // The number is free again once the call ended.
    let js = env.jetstream().await.expect("jetstream");
    let active = js.get_key_value("active_calls").await.expect("bucket");
    let claim = eventually(Duration::from_secs(5), || async {
        active
            .get("15550000001")
            .await
            .expect("kv")
            .is_none()
            .then_some(())
    })
    .await;
    assert!(claim.is_some(), "the active_calls claim is released");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_phone_number_gets_400_with_a_reason_and_publishes_nothing() {
    let env = TestEnv::start().await.expect("test environment");
    let stack = Stack::start(&env, env.config()).await;
    let campaign = stack.campaign("rejects").await;

    for (number, reason) in [("abc", "characters"), ("123", "7 to 15")] {
        let (status, body) = stack
            .send(
                Method::POST,
                "/api/v1/calls",
                json!({"campaign_id": campaign, "phone_number": number}),
            )
            .await;
        assert_eq!(status, 400, "{number}: {body}");
        assert_eq!(body["code"], "invalid_phone_number", "{body}");
        let detail = body["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(reason), "{number}: {detail}");
    }

    let js = env.jetstream().await.expect("jetstream");
    let mut calls = js.get_stream("CALLS").await.expect("CALLS");
    assert_eq!(
        calls.info().await.expect("info").state.messages,
        0,
        "nothing published"
    );
    let mut claims = js
        .get_stream("KV_active_calls")
        .await
        .expect("bucket stream");
    assert_eq!(
        claims.info().await.expect("info").state.messages,
        0,
        "no number claimed"
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_the_campaign_scope_the_claim_is_released_when_the_call_ends() {
    let env = TestEnv::start().await.expect("test environment");
    let mut config = env.config();
    config.ingest.duplicate_scope = ccm_core::config::DuplicateScope::Campaign;
    config.ingest.duplicate_call_window_minutes = 0;
    let stack = Stack::start(&env, config).await;
    let campaign = stack.campaign("scoped").await;
    let call = json!({"campaign_id": campaign, "phone_number": "+15550000009"});

    let (status, body) = stack
        .send(Method::POST, "/api/v1/calls", call.clone())
        .await;
    assert_eq!(status, 202, "{body}");
    let js = env.jetstream().await.expect("jetstream");
    let active = js.get_key_value("active_calls").await.expect("bucket");
    let key = format!("{campaign}.15550000009");
    // The key's last entry being a delete marker proves it was claimed and then released.
    let released = eventually(Duration::from_secs(20), || async {
        let entry = active.entry(key.as_str()).await.expect("kv")?;
        (entry.operation != async_nats::jetstream::kv::Operation::Put).then_some(())
    })
    .await;
    assert!(
        released.is_some(),
        "the campaign-scoped claim {key} is released"
    );
    assert!(
        active.get("15550000009").await.expect("kv").is_none(),
        "no global claim"
    );

    // And the number can be called again at once (the window is off).
    let (status, body) = stack.send(Method::POST, "/api/v1/calls", call).await;
    assert_eq!(status, 202, "{body}");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaigns_own_max_call_duration_ends_a_silent_call_failed_timeout() {
    let env = TestEnv::start().await.expect("test environment");
    let mut config = env.config();
    // The carrier would answer after 20 s and the dialer-wide limit is 30 s: only the
    // campaign's 1 s limit can end the call within the wait below.
    let ccm_core::config::CarrierConfig::Sim(sim) = &mut config.dialer.carrier else {
        panic!("the test configuration uses the in-process simulator")
    };
    sim.call_ms = 20_000;
    config.dialer.max_call_duration_secs = 30;
    let stack = Stack::start(&env, config).await;

    for bad in [0, 86_401] {
        let (status, body) = stack
            .send(
                Method::POST,
                "/api/v1/campaigns",
                json!({"name": "bad", "max_call_duration_secs": bad}),
            )
            .await;
        assert_eq!(
            (status, &body["code"]),
            (400, &json!("invalid_call_duration")),
            "{body}"
        );
    }
    let (status, body) = stack
        .send(
            Method::POST,
            "/api/v1/campaigns",
            json!({"name": "short calls", "max_call_duration_secs": 1}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["max_call_duration_secs"], 1);
    let campaign = body["id"].as_u64().expect("id");
    let path = format!("/api/v1/campaigns/{campaign}");
    let (status, body) = stack
        .send(Method::PATCH, &path, json!({"max_call_duration_secs": 0}))
        .await;
    assert_eq!(
        (status, &body["code"]),
        (400, &json!("invalid_call_duration")),
        "{body}"
    );

    let started = Instant::now();
    let (status, body) = stack
        .send(
            Method::POST,
            "/api/v1/calls",
            json!({"campaign_id": campaign, "phone_number": "+15550000077"}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let call_id: uuid::Uuid = body["call_id"]
        .as_str()
        .expect("call_id")
        .parse()
        .expect("uuid");
    let pg = env.pg().await.expect("postgres");
    let reason = eventually(Duration::from_secs(15), || async {
        sqlx::query_scalar::<_, serde_json::Value>(
            "SELECT payload FROM call_events WHERE call_id = $1 AND kind = 'outcome'",
        )
        .bind(call_id)
        .fetch_optional(&pg)
        .await
        .ok()
        .flatten()
    })
    .await
    .expect("an outcome within 15 s, long before the carrier's 20 s or the dialer's 30 s");
    assert_eq!(reason["status"], "FAILED", "{reason}");
    assert_eq!(reason["reason"], "timeout", "{reason}");
    assert_eq!(reason["source"], "timeout", "{reason}");
    eprintln!("timed out after {:?}", started.elapsed());
    stack.stop().await;
}
