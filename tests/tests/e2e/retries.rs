//! Retries and dead letters through the whole pipeline: the real dialer (simulated carrier),
//! retrier and projector.

use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::pull};
use ccm_core::{
    CallEvent, CallId, CampaignId, EventKind,
    config::{CarrierConfig, SimCarrierConfig},
};
use ccm_tests::{TestEnv, eventually};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use reqwest::Method;
use serde_json::json;

use crate::stack::Stack;

/// A policy file with second-scale backoffs, so the test sees several retries quickly.
fn policy(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    std::io::Write::write_all(&mut file, text.as_bytes()).expect("write");
    file
}

fn carrier(rnr: u32, failed: u32) -> CarrierConfig {
    CarrierConfig::Sim(SimCarrierConfig {
        picked: 0,
        disconnected: 0,
        rnr,
        failed,
        call_ms: 20,
    })
}

async fn campaign(stack: &Stack, max_attempts: u32) -> u64 {
    let (status, body) = stack
        .send(
            Method::POST,
            "/api/v1/campaigns",
            json!({"name": "retries", "max_attempts": max_attempts}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    body["id"].as_u64().expect("id")
}

async fn call(stack: &Stack, campaign: u64, number: &str) -> CallId {
    let (status, body) = stack
        .send(
            Method::POST,
            "/api/v1/calls",
            json!({"campaign_id": campaign, "phone_number": number}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    body["call_id"]
        .as_str()
        .expect("call_id")
        .parse()
        .expect("uuid")
}

/// Waits for the call's row to reach `status` with an error message containing `error`;
/// returns (attempt_count, error_message). (An outcome FAILED shows as status FAILED before
/// the retrier decides, so the message tells the terminal state apart.)
async fn row(
    env: &TestEnv,
    call: CallId,
    (status, error): (&str, &str),
    within: Duration,
) -> (i32, Option<String>) {
    let pg = env.pg().await.expect("postgres");
    let row = eventually(within, || async {
        sqlx::query_as::<_, (String, i32, Option<String>)>(
            "SELECT status, attempt_count, error_message FROM calls WHERE call_id = $1",
        )
        .bind(call.as_uuid())
        .fetch_optional(&pg)
        .await
        .ok()
        .flatten()
        .filter(|(s, _, e)| s == status && e.as_deref().unwrap_or_default().contains(error))
        .map(|(_, attempts, error)| (attempts, error))
    })
    .await;
    if row.is_none() {
        let last: Option<(String, i32, Option<String>)> = sqlx::query_as(
            "SELECT status, attempt_count, error_message FROM calls WHERE call_id = $1",
        )
        .bind(call.as_uuid())
        .fetch_optional(&pg)
        .await
        .ok()
        .flatten();
        let kinds: Vec<(String, i32)> =
            sqlx::query_as("SELECT kind, attempt FROM call_events WHERE call_id = $1")
                .bind(call.as_uuid())
                .fetch_all(&pg)
                .await
                .unwrap_or_default();
        panic!(
            "call {call} does not reach {status} ({error}); its row: {last:?}, events {kinds:?}"
        );
    }
    row.expect("checked")
}

/// Every lifecycle event and outcome of a call, oldest first.
async fn history(js: &jetstream::Context, campaign: u64, call: CallId) -> Vec<CallEvent> {
    let stream = js.get_stream("CALL_EVENTS").await.expect("CALL_EVENTS");
    let campaign = CampaignId::new(campaign).expect("id");
    let mut all = Vec::new();
    for subject in [
        ccm_core::subjects::event(campaign, call),
        ccm_core::subjects::outcome(campaign, call),
    ] {
        let mut from = None;
        while let Ok(m) = stream
            .direct_get_next_for_subject(subject.clone(), from)
            .await
        {
            from = Some(m.sequence + 1);
            all.push(serde_json::from_slice::<CallEvent>(&m.payload).expect("event"));
        }
    }
    all.sort_by_key(|e| e.at);
    all
}

/// The call's history once it has ended `FAILED`, waiting at most `within`.
async fn failed_history(
    js: &jetstream::Context,
    campaign: u64,
    call: CallId,
    within: Duration,
) -> Vec<CallEvent> {
    eventually(within, || async {
        let events = history(js, campaign, call).await;
        events
            .iter()
            .any(|e| matches!(e.kind, EventKind::Failed { .. }))
            .then_some(events)
    })
    .await
    .expect("the call ends FAILED")
}

fn times(events: &[CallEvent], kind: &str) -> Vec<(u32, DateTime<Utc>)> {
    events
        .iter()
        .filter(|e| e.kind.name() == kind)
        .map(|e| (e.attempt, e.at))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rnr_call_is_retried_exactly_as_the_policy_says_then_fails_with_the_reason() {
    let env = TestEnv::start().await.expect("test environment");
    let file = policy(
        "status_retry_rules:\n  RNR: {should_retry: true, increment_attempt: true, backoff: [2s, 3s]}\n  PICKED: {should_retry: false}\ntimezone: UTC\n",
    );
    let mut config = env.config();
    config.retrier.policy_file = file.path().to_owned();
    config.dialer.carrier = carrier(1, 0);
    let stack = Stack::start(&env, config).await;
    let campaign = campaign(&stack, 3).await;
    let call = call(&stack, campaign, "+15550003001").await;

    let (attempts, error) = row(&env, call, ("FAILED", "Max retry"), Duration::from_secs(40)).await;
    assert_eq!(attempts, 3);
    assert_eq!(error.as_deref(), Some("Max retry attempts reached (3)"));

    let js = env.jetstream().await.expect("jetstream");
    let events = history(&js, campaign, call).await;
    let dialing = times(&events, "dialing");
    let outcomes = times(&events, "outcome");
    let retrying: Vec<_> = events
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::Retrying { next_retry_at, .. } => Some((e.attempt, next_retry_at)),
            _ => None,
        })
        .collect();
    assert_eq!(
        dialing.iter().map(|d| d.0).collect::<Vec<_>>(),
        [1, 2, 3],
        "{events:#?}"
    );
    assert_eq!(retrying.iter().map(|r| r.0).collect::<Vec<_>>(), [1, 2]);
    for (n, wanted) in [(0, 2_000), (1, 3_000)] {
        // The policy's spacing: outcome of attempt n to the retry's due time.
        let scheduled = (retrying[n].1 - outcomes[n].1).num_milliseconds();
        assert!(
            (wanted..wanted + 500).contains(&scheduled),
            "attempt {}: scheduled {scheduled} ms",
            n + 1
        );
        // And the retry was dialled on time.
        let late = (dialing[n + 1].1 - retrying[n].1).num_milliseconds();
        eprintln!(
            "retry {} due {} ms after the outcome, dialled {late} ms after due",
            n + 1,
            scheduled
        );
        assert!(
            (0..1_000).contains(&late),
            "attempt {} dialled {late} ms after due",
            n + 2
        );
    }
    assert!(matches!(
        events.last().map(|e| &e.kind),
        Some(EventKind::Failed { .. })
    ));
    // The number is free again.
    let active = js.get_key_value("active_calls").await.expect("bucket");
    assert!(active.get("15550003001").await.expect("kv").is_none());
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_is_retried_as_its_status_rule_says() {
    let env = TestEnv::start().await.expect("test environment");
    // The old file's rule (FAILED: should_retry, max_attempts 1) with a short backoff.
    let file = policy(
        "status_retry_rules:\n  FAILED: {should_retry: true, increment_attempt: true, max_attempts: 1, backoff: [1s]}\n",
    );
    let mut config = env.config();
    config.retrier.policy_file = file.path().to_owned();
    config.dialer.carrier = carrier(0, 1);
    let stack = Stack::start(&env, config).await;
    let campaign = campaign(&stack, 5).await;
    let call = call(&stack, campaign, "+15550003002").await;
    // The decision is read from the stream: in Postgres an outcome FAILED and the terminal
    // FAILED event share a phase rank, so the terminal reason does not replace the outcome's
    // row (reported to the projector's owner).
    let js = env.jetstream().await.expect("jetstream");
    let events = failed_history(&js, campaign, call, Duration::from_secs(30)).await;
    let attempts: Vec<u32> = times(&events, "dialing").iter().map(|d| d.0).collect();
    assert_eq!(
        attempts,
        [1, 2],
        "one retry of FAILED, though the campaign allows 5 attempts"
    );
    let Some(EventKind::Failed { reason }) = events.last().map(|e| &e.kind) else {
        panic!("{events:#?}")
    };
    assert!(
        reason.starts_with("Max retry attempts for FAILED reached (1)"),
        "{reason}"
    );
    row(&env, call, ("FAILED", ""), Duration::from_secs(10)).await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_call_is_dead_lettered_and_redrive_completes_it() {
    let env = TestEnv::start().await.expect("test environment");
    let mut config = env.config();
    config.dialer.carrier = CarrierConfig::Sim(SimCarrierConfig::default());
    let stack = Stack::start(&env, config.clone()).await;
    let js = env.jetstream().await.expect("jetstream");
    // A campaign no dialer serves yet: its calls are taken by a dialer whose carrier answers
    // every attempt with an error (played here: NAK each delivery) until max_deliver.
    let (status, body) = stack
        .send(
            Method::POST,
            "/api/v1/campaigns",
            json!({"name": "dlq", "is_active": false}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let campaign = body["id"].as_u64().expect("id");
    let campaign_id = CampaignId::new(campaign).expect("id");
    // The failing dialer is played under the dial consumer's name; the dialer reconciles a
    // campaign's consumer with its document (and pauses an inactive one's), so the campaign
    // has no document while it plays (kept, to be put back when the carrier recovers).
    let campaigns = js.get_key_value("campaigns").await.expect("campaigns");
    let mut doc: serde_json::Value = serde_json::from_slice(
        &campaigns
            .get(campaign.to_string())
            .await
            .expect("kv")
            .expect("doc"),
    )
    .expect("json");
    campaigns
        .delete(campaign.to_string())
        .await
        .expect("no document while played");
    let mut request = dial_request(campaign_id, "+15550003003");
    let active = js.get_key_value("active_calls").await.expect("bucket");
    active
        .create("15550003003", request.call_id.to_string().into())
        .await
        .expect("claim");
    request.max_attempts = 3;
    let original = serde_json::to_vec(&request).expect("json");
    ccm_core::nats::publish_dial(&js, &request)
        .await
        .expect("queued");
    // Only the campaign's dial consumer may dead-letter a call (any other reader's trouble
    // parks the message), so the failing dialer is played under that name.
    let dial_consumer = ccm_core::subjects::dial_consumer(campaign_id);
    let calls = js.get_stream("CALLS").await.expect("CALLS");
    let _ = calls.delete_consumer(&dial_consumer).await;
    let failing = calls
        .create_consumer(pull::Config {
            durable_name: Some(dial_consumer.clone()),
            filter_subject: request.subject(),
            max_deliver: 4,
            ..Default::default()
        })
        .await
        .expect("consumer");
    let mut idle = 0;
    while idle < 2 {
        let mut batch = failing
            .fetch()
            .max_messages(1)
            .expires(Duration::from_millis(500))
            .messages()
            .await
            .expect("fetch");
        idle += 1;
        while let Some(Ok(m)) = batch.next().await {
            m.ack_with(AckKind::Nak(None)).await.expect("nak");
            idle = 0;
        }
    }
    let (_, error) = row(
        &env,
        request.call_id,
        ("DEAD_LETTERED", "max_deliver"),
        Duration::from_secs(20),
    )
    .await;
    assert!(error.unwrap_or_default().contains("4 times"));
    // The real dialer provisions its own consumer when the campaign is activated.
    calls
        .delete_consumer(&dial_consumer)
        .await
        .expect("the played consumer");
    // The operator finds it through the API.
    let (status, letters) = stack
        .send(
            Method::GET,
            &format!("/api/v1/dead-letters?call={}", request.call_id),
            serde_json::Value::Null,
        )
        .await;
    assert_eq!(status, 200, "{letters}");
    let letters = letters.as_array().expect("a list").clone();
    assert_eq!(letters.len(), 1);
    let seq = letters[0]["seq"].as_u64().expect("seq");
    assert_eq!(letters[0]["stream"], "CALLS");
    let (status, body) = stack
        .send(
            Method::GET,
            "/api/v1/dead-letters?campaign=abc",
            serde_json::Value::Null,
        )
        .await;
    assert_eq!(
        (status, &body["code"]),
        (400, &json!("invalid_id")),
        "{body}"
    );
    let raw = js
        .get_stream("DLQ")
        .await
        .expect("DLQ")
        .get_raw_message(seq)
        .await
        .expect("raw");
    assert_eq!(raw.payload.as_ref(), original.as_slice(), "payload intact");

    // The carrier recovers (the campaign is served by the real dialer), the operator redrives.
    doc["is_active"] = json!(true);
    campaigns
        .put(
            campaign.to_string(),
            serde_json::to_vec(&doc).expect("json").into(),
        )
        .await
        .expect("activate");
    let redrive = format!("/api/v1/dead-letters/{seq}/redrive");
    let (status, redriven) = stack
        .send(Method::POST, &redrive, serde_json::Value::Null)
        .await;
    assert_eq!(status, 200, "{redriven}");
    assert_eq!(redriven["attempt"], 2);
    let (attempts, _) = row(
        &env,
        request.call_id,
        ("COMPLETED", ""),
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(attempts, 2);
    let (status, body) = stack
        .send(Method::POST, &redrive, serde_json::Value::Null)
        .await;
    assert_eq!(status, 404, "a letter is redriven once: {body}");
    assert_eq!(body["code"], "dead_letter_not_found");
    stack.stop().await;
}

fn dial_request(campaign: CampaignId, number: &str) -> ccm_core::DialRequest {
    let now = Utc::now();
    ccm_core::DialRequest {
        call_id: CallId::new(),
        campaign_id: campaign,
        phone_number: ccm_core::PhoneNumber::parse(number, ccm_core::PhoneRule::Lenient)
            .expect("phone"),
        attempt: 1,
        max_attempts: 3,
        created_at: now,
        queued_at: now,
        custom_fields: Default::default(),
        expires_at: None,
        alternate: None,
        callback: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_policy_set_through_the_api_overrides_the_file() {
    let env = TestEnv::start().await.expect("test environment");
    // The shipped file retries RNR after 5 or 90 minutes; the campaign says 1 second.
    let mut config = env.config();
    config.dialer.carrier = carrier(1, 0);
    let stack = Stack::start(&env, config).await;
    let (status, body) = stack
        .send(
            Method::POST,
            "/api/v1/campaigns",
            json!({"name": "tz", "retry_policy": {"timezone": "Mars/Base"}}),
        )
        .await;
    assert_eq!(
        (status, &body["code"]),
        (422, &json!("invalid_body")),
        "{body}"
    );
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("Mars/Base"),
        "{body}"
    );
    let (status, body) = stack
        .send(
            Method::POST,
            "/api/v1/campaigns",
            json!({
                "name": "fast",
                "max_attempts": 2,
                "retry_policy": {"status_retry_rules": {"RNR": {"should_retry": true, "backoff": ["1s"]}}}
            }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let campaign = body["id"].as_u64().expect("id");
    let call = call(&stack, campaign, "+15550003004").await;
    let js = env.jetstream().await.expect("jetstream");
    let events = failed_history(&js, campaign, call, Duration::from_secs(20)).await;
    let outcome = times(&events, "outcome")[0].1;
    let due = events
        .iter()
        .find_map(|e| match e.kind {
            EventKind::Retrying { next_retry_at, .. } => Some(next_retry_at),
            _ => None,
        })
        .expect("retried");
    let wait = (due - outcome).num_milliseconds();
    assert!(
        (1_000..1_500).contains(&wait),
        "the campaign's 1 s backoff: {wait} ms"
    );
    let Some(EventKind::Failed { reason }) = events.last().map(|e| &e.kind) else {
        panic!("{events:#?}")
    };
    assert_eq!(reason, "Max retry attempts reached (2)");
    stack.stop().await;
}
