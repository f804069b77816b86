//! A call held in a paused campaign past the maximum queue age ends `EXPIRED` with its reason,
//! in the API and in `calls`, and its number is free again; a call of a running campaign is
//! dialled in time and never expires. The maximum queue age is seconds through configuration.

use std::time::Duration;

use ccm_tests::{TestEnv, eventually};
use reqwest::Method;
use serde_json::{Value, json};

use crate::stack::Stack;

async fn call(stack: &Stack, campaign: u64, phone: &str) -> (u16, Value) {
    stack
        .send(
            Method::POST,
            "/api/v1/calls",
            json!({"campaign_id": campaign, "phone_number": phone}),
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_held_in_a_paused_campaign_ends_expired_and_a_dialled_one_does_not() {
    let env = TestEnv::start().await.expect("test environment");
    let mut config = env.config();
    config.retrier.max_queue_age_secs = 2;
    config.retrier.expiry_sweep_ms = 200;
    // The number must be free at once after the call ends, not held for the old system's
    // duplicate window.
    config.ingest.duplicate_call_window_minutes = 0;
    let stack = Stack::start(&env, config).await;
    let paused = stack.campaign("held").await;
    let running = stack.campaign("running").await;
    let (status, body) = stack
        .send(
            Method::POST,
            &format!("/api/v1/campaigns/{paused}/pause"),
            json!({}),
        )
        .await;
    assert!(status < 300, "pause: {status} {body}");

    let (status, held) = call(&stack, paused, "+15550008001").await;
    assert_eq!(status, 202, "{held}");
    let held_id = held["call_id"].as_str().expect("id").to_owned();
    let (status, dialled) = call(&stack, running, "+15550008002").await;
    assert_eq!(status, 202, "{dialled}");
    let dialled_id = dialled["call_id"].as_str().expect("id").to_owned();

    let shown = eventually(Duration::from_secs(20), || async {
        let (status, body) = stack
            .send(
                Method::GET,
                &format!("/api/v1/calls/{held_id}"),
                Value::Null,
            )
            .await;
        (status == 200 && body["status"] == "EXPIRED").then_some(body)
    })
    .await
    .expect("the held call shows EXPIRED in the API");
    let reason = shown["error_message"].as_str().unwrap_or_default();
    assert!(reason.contains("maximum queue age of 2s"), "{shown}");

    let pg = env.pg().await.expect("postgres");
    let row: (String, Option<String>, i16) =
        sqlx::query_as("SELECT status, error_message, phase_rank FROM calls WHERE call_id = $1")
            .bind(held_id.parse::<uuid::Uuid>().expect("uuid"))
            .fetch_one(&pg)
            .await
            .expect("row");
    assert_eq!(row.0, "EXPIRED");
    assert_eq!(row.1.as_deref(), Some(reason));
    assert_eq!(row.2, 5, "terminal");

    // Its number is free: a new call to it is accepted.
    let (status, again) = call(&stack, paused, "+15550008001").await;
    assert_eq!(status, 202, "the expired call's claim is released: {again}");

    // The running campaign's call was dialled and ended otherwise.
    let (_, body) = stack
        .send(
            Method::GET,
            &format!("/api/v1/calls/{dialled_id}"),
            Value::Null,
        )
        .await;
    assert_ne!(body["status"], "EXPIRED", "{body}");
    let events: Vec<String> =
        sqlx::query_scalar("SELECT kind FROM call_events WHERE call_id = $1 ORDER BY seq")
            .bind(dialled_id.parse::<uuid::Uuid>().expect("uuid"))
            .fetch_all(&pg)
            .await
            .expect("events");
    assert!(events.contains(&"dialing".to_owned()), "{events:?}");
    assert!(!events.contains(&"expired".to_owned()), "{events:?}");
    stack.stop().await;
}
