//! Consent and opt-out across the services, with the Twilio adapter and carrier-sim: a consent
//! revoked while its call is queued ends the call `CANCELLED` (`consent_revoked`) unplaced; a
//! callee who presses the opt-out digit during one campaign's call is listed at once, so a
//! retry of another campaign's call to them, already scheduled, ends `CANCELLED`
//! (`opted_out`) unplaced, and `contact.opted_out` reaches a webhook receiver.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Json, Router, extract::State, routing::post};
use ccm_core::config::DuplicateScope;
use ccm_tests::{TestEnv, eventually};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::carrier_stack::{CarrierStack, Dialer, answering, statuses};

pub(crate) async fn created(stack: &CarrierStack, body: Value) -> u64 {
    let (status, body) = stack.send("/api/v1/campaigns", body).await;
    assert_eq!(status, 201, "{body}");
    body["id"].as_u64().expect("id")
}

/// Records a consent (ingest applies its migrations in the background when it starts).
async fn grant(stack: &CarrierStack, number: &str) -> String {
    let (status, body) = eventually(Duration::from_secs(20), || async {
        let answer = stack
            .send(
                "/api/v1/consents",
                json!({"phone_number": number, "type": "prior_express_written", "source": "web_form"}),
            )
            .await;
        (answer.0 != 503).then_some(answer)
    })
    .await
    .expect("the consent routes answer");
    assert_eq!(status, 201, "{body}");
    body["id"].as_str().expect("id").to_owned()
}

pub(crate) async fn call(stack: &CarrierStack, campaign: u64, number: &str) -> String {
    let (status, body) = stack
        .send(
            "/api/v1/calls",
            json!({"campaign_id": campaign, "phone_number": number}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    body["call_id"].as_str().expect("call_id").to_owned()
}

async fn row(pg: &sqlx::PgPool, call: &str) -> Option<(String, Option<String>)> {
    let id: uuid::Uuid = call.parse().expect("uuid");
    sqlx::query_as("SELECT status, error_message FROM calls WHERE call_id = $1")
        .bind(id)
        .fetch_optional(pg)
        .await
        .ok()
        .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consent_revoked_while_its_call_is_queued_ends_it_cancelled_and_never_placed() {
    let env = TestEnv::start().await.expect("test environment");
    let stack = CarrierStack::start(&env, answering(20)).await;
    let dialer = Dialer::start(stack.config.clone());
    let pg = env.pg().await.expect("postgres");
    let id = created(
        &stack,
        json!({"name": "consent", "max_concurrent_calls": 5, "max_attempts": 1,
               "required_consent": "prior_express_written"}),
    )
    .await;
    let (status, _) = stack
        .send(&format!("/api/v1/campaigns/{id}/pause"), json!({}))
        .await;
    assert_eq!(status, 200);
    let (revoked, kept) = ("+15552000001", "+15552000002");
    let consent = grant(&stack, revoked).await;
    grant(&stack, kept).await;
    // Both accepted while consented, and wait queued.
    let revoked_call = call(&stack, id, revoked).await;
    let kept_call = call(&stack, id, kept).await;
    let (status, body) = stack
        .send(&format!("/api/v1/consents/{consent}/revoke"), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = stack
        .send(&format!("/api/v1/campaigns/{id}/resume"), json!({}))
        .await;
    assert_eq!(status, 200);

    let done = eventually(Duration::from_secs(20), || async {
        let counts = statuses(&pg, id).await;
        (counts == [("CANCELLED".to_owned(), 1), ("COMPLETED".to_owned(), 1)]).then_some(())
    })
    .await;
    assert!(done.is_some(), "{:?}", statuses(&pg, id).await);
    assert_eq!(
        row(&pg, &revoked_call).await,
        Some(("CANCELLED".into(), Some("consent_revoked".into())))
    );
    assert_eq!(
        row(&pg, &kept_call).await.map(|r| r.0),
        Some("COMPLETED".into())
    );
    let stats = stack.stats().await;
    assert_eq!(stats.placed, 1, "{stats:?}");
    assert!(
        stats.attempts.values().all(|a| a.to != revoked),
        "the revoked number never reached the carrier: {:?}",
        stats.attempts
    );
    let js = env.jetstream().await.expect("jetstream");
    let claims = js.get_key_value("active_calls").await.expect("bucket");
    assert!(
        claims.get("15552000001").await.expect("kv").is_none(),
        "claim released"
    );
    dialer.stop().await;
    stack.stop().await;
}

/// A webhook receiver that keeps every body.
#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Value>>>);

async fn receive(State(r): State<Receiver>, Json(body): Json<Value>) -> &'static str {
    r.0.lock().expect("lock").push(body);
    "ok"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opt_out_cancels_another_campaigns_retry_already_scheduled_for_the_number() {
    let env = TestEnv::start().await.expect("test environment");
    let mut policy = tempfile::NamedTempFile::new().expect("temp file");
    std::io::Write::write_all(
        &mut policy,
        // The retry is due in an hour: the opt-out must end it now, not when it comes due.
        b"status_retry_rules:\n  RNR: {should_retry: true, increment_attempt: true, backoff: [1h]}\n  PICKED: {should_retry: false}\ntimezone: UTC\n",
    )
    .expect("policy");
    // Every call rings out (RNR) unless its callee opts out (then it is answered).
    let sim = ccm_carrier_sim::SimConfig {
        picked: 0,
        disconnected: 0,
        rnr: 1,
        failed: 0,
        call_ms: 50,
        ..Default::default()
    };
    let stack = CarrierStack::start_with(&env, sim, |config| {
        // Each campaign may have its own live call to the number (the retry of one waits
        // while the other calls).
        config.ingest.duplicate_scope = DuplicateScope::Campaign;
        config.ingest.twilio.opt_out_digits = "9".into();
        config.retrier.policy_file = policy.path().to_owned();
        config.webhooks.allow_private_targets = true;
        config.webhooks.backoff_min_ms = 50;
        config.webhooks.backoff_max_ms = 300;
    })
    .await;
    let stop = CancellationToken::new();
    let _stop_webhooks = stop.clone().drop_guard();
    let webhooks = tokio::spawn(ccm_webhooks::run(stack.config.clone(), stop.clone()));
    let dialer = Dialer::start(stack.config.clone());
    let pg = env.pg().await.expect("postgres");
    let receiver = Receiver::default();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = Router::new()
        .route("/hook", post(receive))
        .with_state(receiver.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let (status, body) = stack
        .send(
            "/api/v1/webhooks",
            json!({"url": format!("http://{addr}/hook"), "events": ["contact.opted_out"]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");

    let retried = created(&stack, json!({"name": "renewals", "max_attempts": 3})).await;
    let heard = created(&stack, json!({"name": "survey", "max_attempts": 1})).await;
    let number = "+15552000101";
    let scheduled = call(&stack, retried, number).await;
    let retrying = eventually(Duration::from_secs(20), || async {
        row(&pg, &scheduled)
            .await
            .filter(|r| r.0 == "RETRYING")
            .map(|_| ())
    })
    .await;
    assert!(retrying.is_some(), "{:?}", row(&pg, &scheduled).await);

    // From now on the callee presses 9 when called; the other campaign calls now.
    let response = stack
        .client
        .http
        .put(format!("{}/opt_outs", stack.sim))
        .json(&json!([number]))
        .send()
        .await
        .expect("opt-outs");
    assert!(response.status().is_success());
    let opted = call(&stack, heard, number).await;

    let ended = eventually(Duration::from_secs(30), || async {
        let a = row(&pg, &scheduled).await?;
        let b = row(&pg, &opted).await?;
        (a.0 == "CANCELLED" && b.0 == "COMPLETED").then_some((a, b))
    })
    .await;
    assert!(
        ended.is_some(),
        "{:?} {:?}",
        row(&pg, &scheduled).await,
        row(&pg, &opted).await
    );
    assert_eq!(
        row(&pg, &scheduled).await,
        Some(("CANCELLED".into(), Some("opted_out".into()))),
        "the scheduled retry ends as the callee's opt-out"
    );
    let stats = stack.stats().await;
    let placed: Vec<&String> = stats
        .attempts
        .values()
        .filter(|a| a.to == number)
        .map(|a| &a.key)
        .collect();
    assert_eq!(
        placed.len(),
        2,
        "the first attempt and the call that heard the opt-out, never the retry: {placed:?}"
    );
    assert!(
        !stats.attempts.contains_key(&format!("{scheduled}/2")),
        "the retry was never placed"
    );
    assert_eq!(stats.opt_outs, 1);

    let (status, listing) = stack
        .client
        .get(&format!("/api/v1/dnc/%2B{}", &number[1..]))
        .await;
    assert_eq!(status, 200, "on the global list: {listing}");
    assert_eq!(listing["entry"]["opted_out"]["via"], "digits");
    assert_eq!(listing["entry"]["opted_out"]["call_id"], opted.as_str());

    let sent = eventually(Duration::from_secs(20), || async {
        let got = receiver.0.lock().expect("lock").clone();
        (!got.is_empty()).then_some(got)
    })
    .await
    .expect("contact.opted_out delivered");
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0]["type"], "contact.opted_out");
    assert_eq!(sent[0]["data"]["phone_number"], number);
    assert_eq!(sent[0]["data"]["call_id"], opted.as_str());
    assert_eq!(sent[0]["data"]["campaign_id"], heard);

    stop.cancel();
    let _ = webhooks.await;
    dialer.stop().await;
    stack.stop().await;
}
