//! Several numbers per contact, end to end against carrier-sim: a call whose contact's mobile
//! rings out dials the home number next; a contact whose numbers are all spent (one barred by
//! do-not-call) ends FAILED saying why; and an outcome delivered twice (the redelivery a
//! crash between the outcome and the next attempt leaves) never dials two numbers.

use std::time::Duration;

use ccm_tests::{TestEnv, eventually};
use serde_json::{Value, json};

use crate::carrier_stack::{CarrierStack, Dialer, answering};

const MOBILE: &str = "+15557000001";
const HOME: &str = "+15557000002";
const WORK: &str = "+15557000003";

/// A campaign advancing on RNR with `policy` added, retries 1 s apart, and one contact with
/// mobile, home and work numbers; returns the campaign and the call placed to the contact.
async fn contact_call(stack: &CarrierStack, policy: Value, max_attempts: u32) -> (u64, String) {
    contact_call_after(stack, policy, max_attempts, "1s").await
}

/// [`contact_call`] with retries `backoff` apart.
async fn contact_call_after(
    stack: &CarrierStack,
    policy: Value,
    max_attempts: u32,
    backoff: &str,
) -> (u64, String) {
    let mut alternate = json!({"advance_on": ["RNR"]});
    for (k, v) in policy.as_object().expect("object") {
        alternate[k] = v.clone();
    }
    let (status, body) = stack
        .send(
            "/api/v1/campaigns",
            json!({
                "name": "alt", "max_attempts": max_attempts, "alternate_numbers": alternate,
                "retry_policy": {"status_retry_rules": {"RNR": {"should_retry": true, "backoff": [backoff]}}}
            }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_u64().expect("id");
    let (status, body) = stack
        .send(
            &format!("/api/v1/campaigns/{id}/contacts"),
            json!({"contacts": [{"numbers": [
                {"number": MOBILE, "label": "mobile"},
                {"number": HOME, "label": "home"},
                {"number": WORK, "label": "work"}]}]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = stack
        .send(
            "/api/v1/calls",
            json!({"campaign_id": id, "phone_number": MOBILE}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let call = body["call_id"].as_str().expect("call_id").to_owned();
    (id, call)
}

/// The call's row once it has ended: status and reason.
async fn ended(pg: &sqlx::PgPool, call: &str) -> Option<(String, Option<String>)> {
    let call: uuid::Uuid = call.parse().expect("uuid");
    eventually(Duration::from_secs(30), || async {
        let row: Option<(String, Option<String>)> =
            sqlx::query_as("SELECT status, error_message FROM calls WHERE call_id = $1")
                .bind(call)
                .fetch_optional(pg)
                .await
                .ok()
                .flatten();
        row.filter(|(s, _)| ["COMPLETED", "FAILED", "CANCELLED"].contains(&s.as_str()))
    })
    .await
}

/// The numbers carrier-sim was asked to ring for `call`, by attempt.
async fn rung(stack: &CarrierStack, call: &str) -> Vec<(String, String)> {
    let mut rung: Vec<(String, String)> = stack
        .stats()
        .await
        .attempts
        .into_iter()
        .filter(|(key, _)| key.starts_with(call))
        .map(|(key, a)| (key, a.to))
        .collect();
    rung.sort();
    rung
}

/// Nothing of the call is left in `active_calls` for any of the contact's numbers.
async fn no_claim_held(env: &TestEnv, call: &str) {
    let js = env.jetstream().await.expect("jetstream");
    let claims = js.get_key_value("active_calls").await.expect("bucket");
    for number in [MOBILE, HOME, WORK] {
        let key = number.trim_start_matches('+');
        let held = eventually(Duration::from_secs(10), || async {
            let value = claims.get(key).await.expect("kv");
            let text = value.map(|v| String::from_utf8_lossy(&v).into_owned());
            (!text.as_deref().unwrap_or_default().contains(call)).then_some(())
        })
        .await;
        assert!(held.is_some(), "{number} still claimed by {call}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contact_whose_mobile_rings_out_is_reached_at_home() {
    let env = TestEnv::start().await.expect("env");
    let mut sim = answering(20);
    sim.unanswered_numbers = vec![MOBILE.into()];
    let stack = CarrierStack::start(&env, sim).await;
    let dialer = Dialer::start(stack.config.clone());
    let pg = env.pg().await.expect("postgres");
    let (_, call) = contact_call(&stack, json!({}), 3).await;
    let end = ended(&pg, &call).await;
    assert_eq!(
        end.as_ref().map(|e| e.0.as_str()),
        Some("COMPLETED"),
        "{end:?}"
    );
    assert_eq!(
        rung(&stack, &call).await,
        [
            (format!("{call}/1"), MOBILE.to_owned()),
            (format!("{call}/2"), HOME.to_owned())
        ],
        "mobile, then home; work never"
    );
    let reason: String = sqlx::query_scalar(
        "SELECT payload->>'reason' FROM call_events
         WHERE call_id = $1 AND payload->>'type' = 'retrying'",
    )
    .bind(call.parse::<uuid::Uuid>().expect("uuid"))
    .fetch_one(&pg)
    .await
    .expect("retrying event");
    assert!(
        reason.contains("next number: home (+15557000002)"),
        "{reason}"
    );
    assert!(stack.stats().await.number_overlaps.is_empty());
    no_claim_held(&env, &call).await;
    dialer.stop().await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contact_with_every_number_spent_or_barred_ends_failed_saying_why() {
    let env = TestEnv::start().await.expect("env");
    let mut sim = answering(20);
    sim.unanswered_numbers = vec![MOBILE.into(), HOME.into(), WORK.into()];
    let stack = CarrierStack::start(&env, sim).await;
    let dialer = Dialer::start(stack.config.clone());
    let pg = env.pg().await.expect("postgres");
    // The work number is on the do-not-call list: it is skipped, never dialled.
    let (status, body) = stack
        .send(
            "/api/v1/dnc",
            json!({"phone_numbers": [WORK], "reason": "asked us to stop"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, call) = contact_call(
        &stack,
        json!({"max_attempts_per_number": 1, "reset": "never"}),
        6,
    )
    .await;
    let end = ended(&pg, &call).await;
    let Some((status, Some(reason))) = end else {
        panic!("not ended with a reason: {end:?}")
    };
    assert_eq!(status, "FAILED");
    assert!(
        reason.contains(
            "all 3 numbers of the contact reached their attempt limits (max_attempts_per_number 1)"
        ) && reason.contains("work skipped:"),
        "{reason}"
    );
    assert_eq!(
        rung(&stack, &call).await,
        [
            (format!("{call}/1"), MOBILE.to_owned()),
            (format!("{call}/2"), HOME.to_owned())
        ],
        "the barred work number is never rung"
    );
    no_claim_held(&env, &call).await;
    dialer.stop().await;
    stack.stop().await;
}

/// Attack: the mobile's RNR outcome is delivered again (a copy under another message id, as a
/// crash between the outcome's handling and its ack redelivers it, here while the first is
/// being decided or just after). Whatever the interleaving, one next attempt is placed, to
/// one number, and the call ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outcome_delivered_twice_dials_one_next_number_once() {
    let env = TestEnv::start().await.expect("env");
    let mut sim = answering(20);
    sim.unanswered_numbers = vec![MOBILE.into()];
    // A decision of the copy that comes after the call ended re-claims the home number for
    // the ended call: the reaper frees it (here every second).
    let stack = CarrierStack::start_with(&env, sim, |c| c.claims.reap_interval_secs = 1).await;
    let js = env.jetstream().await.expect("jetstream");
    let events = js.get_stream("CALL_EVENTS").await.expect("stream");
    // The copy is published as soon as the first outcome is stored: a subscription on the
    // outcome subjects sees it first.
    let client = env.nats().await.expect("nats");
    let mut outcomes = client
        .subscribe("calls.outcome.>")
        .await
        .expect("subscribe");
    let dialer = Dialer::start(stack.config.clone());
    let pg = env.pg().await.expect("postgres");
    let (_, call) = contact_call(&stack, json!({}), 3).await;
    let first = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let message = futures::StreamExt::next(&mut outcomes)
                .await
                .expect("outcome");
            if message.subject.as_str().ends_with(&call) {
                return message;
            }
        }
    })
    .await
    .expect("the first outcome");
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", format!("{call}/1/outcome/again").as_str());
    js.publish_with_headers(first.subject.clone(), headers, first.payload.clone())
        .await
        .expect("publish")
        .await
        .expect("stored");
    let end = ended(&pg, &call).await;
    assert_eq!(
        end.as_ref().map(|e| e.0.as_str()),
        Some("COMPLETED"),
        "{end:?}"
    );
    assert_eq!(
        rung(&stack, &call).await,
        [
            (format!("{call}/1"), MOBILE.to_owned()),
            (format!("{call}/2"), HOME.to_owned())
        ],
        "one next attempt, to the next number only"
    );
    // Both copies are in the stream; the call was decided once.
    let stored = events
        .info_with_subjects(first.subject.to_string())
        .await
        .expect("info");
    let stored: Vec<(String, usize)> = futures::TryStreamExt::try_collect(stored)
        .await
        .expect("subjects");
    assert!(stored.iter().any(|(_, n)| *n >= 2), "{stored:?}");
    let retrying: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM call_events WHERE call_id = $1 AND payload->>'type' = 'retrying'",
    )
    .bind(call.parse::<uuid::Uuid>().expect("uuid"))
    .fetch_one(&pg)
    .await
    .expect("count");
    assert_eq!(retrying, 1);
    assert!(stack.stats().await.number_overlaps.is_empty());
    no_claim_held(&env, &call).await;
    dialer.stop().await;
    stack.stop().await;
}

/// Do-not-call applies to each number dialled: a further number listed after the retrier chose
/// it, before its attempt is placed, is never rung; the call ends CANCELLED naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_further_number_listed_before_its_attempt_is_never_rung() {
    let env = TestEnv::start().await.expect("env");
    let mut sim = answering(20);
    sim.unanswered_numbers = vec![MOBILE.into()];
    let stack = CarrierStack::start(&env, sim).await;
    let client = env.nats().await.expect("nats");
    let mut events = client.subscribe("calls.event.>").await.expect("subscribe");
    let dialer = Dialer::start(stack.config.clone());
    let pg = env.pg().await.expect("postgres");
    let (_, call) = contact_call_after(&stack, json!({}), 3, "3s").await;
    // The retrier chose home for attempt 2 (its Retrying event), due 3 s later.
    let chosen = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let message = futures::StreamExt::next(&mut events).await.expect("event");
            let event: Value = serde_json::from_slice(&message.payload).expect("json");
            if event["call_id"] == call.as_str() && event["type"] == "retrying" {
                return event;
            }
        }
    })
    .await
    .expect("a retry scheduled");
    assert!(
        chosen["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("next number: home"),
        "{chosen}"
    );
    let (status, body) = stack
        .send(
            "/api/v1/dnc",
            json!({"phone_numbers": [HOME], "reason": "asked us to stop"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let end = ended(&pg, &call).await;
    let Some((status, Some(reason))) = end else {
        panic!("not ended with a reason: {end:?}")
    };
    assert_eq!(status, "CANCELLED");
    assert!(reason.contains(HOME), "{reason}");
    assert_eq!(
        rung(&stack, &call).await,
        [(format!("{call}/1"), MOBILE.to_owned())],
        "home is never rung"
    );
    no_claim_held(&env, &call).await;
    dialer.stop().await;
    stack.stop().await;
}
