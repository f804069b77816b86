//! Outbound webhooks through the whole stack: calls placed over the API reach receivers
//! started here, signed and in order per call; a receiver down for a while gets every event
//! once when back; a 410 endpoint is disabled; a slow receiver does not hold calls up; and
//! `campaign.completed` follows the last call.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    routing::post,
};
use base64::Engine as _;
use ccm_core::config::{CarrierConfig, SimCarrierConfig};
use ccm_tests::{TestEnv, eventually};
use hmac::{Hmac, Mac};
use reqwest::Method;
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::stack::Stack;

/// A retry policy file.
fn policy(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    std::io::Write::write_all(&mut file, text.as_bytes()).expect("write");
    file
}

/// One request a receiver got: `webhook-id`, whether its signature verified, the body.
type Got = (String, bool, Value);

#[derive(Clone)]
struct Receiver {
    secret: Arc<Mutex<String>>,
    got: Arc<Mutex<Vec<Got>>>,
    status: StatusCode,
    delay: Duration,
}

impl Receiver {
    fn new(status: StatusCode, delay: Duration) -> Self {
        Self {
            secret: Arc::default(),
            got: Arc::default(),
            status,
            delay,
        }
    }

    /// Serves on `listener` until the test ends.
    fn serve(&self, listener: TcpListener) {
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(self.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
    }

    fn got(&self) -> Vec<Got> {
        self.got.lock().expect("lock").clone()
    }
}

async fn receive(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    tokio::time::sleep(r.delay).await;
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let id = header("webhook-id");
    // Verified as a receiver following Standard Webhooks does, from the specification.
    let secret = r.secret.lock().expect("lock").clone();
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.trim_start_matches("whsec_"))
        .unwrap_or_default();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("key");
    mac.update(format!("{id}.{}.", header("webhook-timestamp")).as_bytes());
    mac.update(&body);
    let expected = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    );
    let verified = header("webhook-signature")
        .split(' ')
        .any(|s| s == expected);
    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
    r.got.lock().expect("lock").push((id, verified, body));
    r.status
}

async fn subscribe(stack: &Stack, receiver: &Receiver, addr: SocketAddr, campaign: u64) -> String {
    let (status, created) = stack
        .send(
            Method::POST,
            "/api/v1/webhooks",
            json!({"url": format!("http://{addr}/hook"), "campaign_ids": [campaign]}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    *receiver.secret.lock().expect("lock") = created["secret"].as_str().expect("secret").into();
    created["id"].as_str().expect("id").into()
}

async fn bound() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    (listener, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_made_over_the_api_reach_webhook_receivers_signed_in_order_and_once() {
    let env = TestEnv::start().await.expect("test environment");
    let mut config = env.config();
    // Half the attempts ring out (RNR) and are retried a second later, so a call sends
    // several events whose order can be checked.
    let policy = policy(
        "status_retry_rules:\n  RNR: {should_retry: true, increment_attempt: true, backoff: [1s]}\n  PICKED: {should_retry: false}\ntimezone: UTC\n",
    );
    config.retrier.policy_file = policy.path().to_owned();
    config.dialer.carrier = CarrierConfig::Sim(SimCarrierConfig {
        picked: 1,
        disconnected: 0,
        rnr: 1,
        failed: 0,
        call_ms: 20,
    });
    config.webhooks.allow_private_targets = true;
    config.webhooks.backoff_min_ms = 50;
    config.webhooks.backoff_max_ms = 300;
    config.webhooks.request_timeout_ms = 10_000;
    let stack = Stack::start(&env, config.clone()).await;
    let stop = CancellationToken::new();
    let _stop_webhooks = stop.clone().drop_guard();
    let webhooks = tokio::spawn(ccm_webhooks::run(config, stop.clone()));
    let (status, body) = stack
        .send(
            Method::POST,
            "/api/v1/campaigns",
            json!({"name": "webhooks", "max_attempts": 3}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let campaign = body["id"].as_u64().expect("id");

    let good = Receiver::new(StatusCode::OK, Duration::ZERO);
    let (listener, good_addr) = bound().await;
    good.serve(listener);
    let gone = Receiver::new(StatusCode::GONE, Duration::ZERO);
    let (listener, gone_addr) = bound().await;
    gone.serve(listener);
    let slow = Receiver::new(StatusCode::OK, Duration::from_secs(5));
    let (listener, slow_addr) = bound().await;
    slow.serve(listener);
    // Down at first: nothing listens on its port until the calls are done.
    let late = Receiver::new(StatusCode::OK, Duration::ZERO);
    let (listener, late_addr) = bound().await;
    drop(listener);
    subscribe(&stack, &good, good_addr, campaign).await;
    let gone_id = subscribe(&stack, &gone, gone_addr, campaign).await;
    subscribe(&stack, &slow, slow_addr, campaign).await;
    subscribe(&stack, &late, late_addr, campaign).await;

    const CALLS: usize = 8;
    let mut calls = Vec::new();
    for i in 0..CALLS {
        let (status, body) = stack
            .send(
                Method::POST,
                "/api/v1/calls",
                json!({"campaign_id": campaign, "phone_number": format!("+1555000{:04}", 100 + i)}),
            )
            .await;
        assert_eq!(status, 202, "{body}");
        calls.push(body["call_id"].as_str().expect("call_id").to_owned());
    }

    // Every call completes in Postgres while the slow receiver is still on its first ones.
    let pg = env.pg().await.expect("postgres");
    let done = eventually(Duration::from_secs(30), || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM calls WHERE campaign_id = $1 \
             AND status IN ('COMPLETED', 'FAILED')",
        )
        .bind(campaign as i64)
        .fetch_one(&pg)
        .await
        .ok()?;
        (n == CALLS as i64).then_some(())
    })
    .await;
    assert!(done.is_some(), "every call ends");
    assert!(
        slow.got().len() < CALLS,
        "calls completed while the slow receiver was still busy ({} received)",
        slow.got().len()
    );

    // The good receiver: every event of every call, signed, in order per call, then
    // campaign.completed once the campaign has no call left.
    let attempts: HashMap<String, i64> = sqlx::query_as::<_, (uuid::Uuid, i32)>(
        "SELECT call_id, attempt_count FROM calls WHERE campaign_id = $1",
    )
    .bind(campaign as i64)
    .fetch_all(&pg)
    .await
    .expect("attempts")
    .into_iter()
    .map(|(call, n)| (call.to_string(), i64::from(n)))
    .collect();
    // One event per attempt: a retrying per failed attempt, then the terminal one.
    let expected = attempts.values().sum::<i64>() as usize + 1;
    let all = eventually(Duration::from_secs(20), || async {
        (good.got().len() >= expected).then_some(())
    })
    .await;
    assert!(
        all.is_some(),
        "good receiver got {} of {expected} events",
        good.got().len()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut got = good.got();
    assert_eq!(got.len(), expected, "{got:?}");
    let (id, verified, campaign_done) = got.pop().expect("the last one");
    assert!(verified, "signature verifies for {id}");
    assert_eq!(
        campaign_done["type"], "campaign.completed",
        "{campaign_done}"
    );
    assert_eq!(id, format!("campaign/{campaign}/completed/{CALLS}"));
    assert_eq!(campaign_done["data"]["campaign_id"], campaign);
    assert_eq!(campaign_done["data"]["calls"], CALLS);
    let mut per_call: HashMap<String, Vec<(u64, String)>> = HashMap::new();
    for (id, verified, body) in &got {
        assert!(verified, "signature verifies for {id}");
        assert_eq!(body["version"], 1);
        assert_eq!(body["data"]["campaign_id"], campaign);
        let call = body["data"]["call_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(calls.contains(&call), "{body}");
        // From the read model, so absent when the projector had not seen the call yet.
        if let Some(phone) = body["data"]["phone_number"].as_str() {
            assert!(phone.starts_with("+1555000"), "{body}");
        }
        let kind = body["type"].as_str().unwrap_or_default().to_owned();
        assert!(
            id.ends_with(kind.trim_start_matches("call.")),
            "{id} {kind}"
        );
        let attempt = body["data"]["attempt"].as_u64().unwrap_or_default();
        per_call.entry(call).or_default().push((attempt, kind));
    }
    assert_eq!(per_call.len(), CALLS);
    let retried = per_call.values().filter(|events| events.len() > 1).count();
    eprintln!("{retried} of {CALLS} calls were retried before they ended");
    for (call, events) in &per_call {
        // In order per call: retrying for attempts 1, 2, … then the terminal event last.
        let n = attempts[call] as usize;
        assert_eq!(events.len(), n, "{call}: {events:?}");
        for (i, (attempt, kind)) in events.iter().enumerate() {
            assert_eq!(*attempt, i as u64 + 1, "{call}: {events:?}");
            let want = if i + 1 < n {
                "call.retrying"
            } else {
                "call.completed"
            };
            if i + 1 < n || n < 3 {
                assert_eq!(kind, want, "{call}: {events:?}");
            } else {
                assert!(
                    kind == "call.completed" || kind == "call.failed",
                    "{call}: {events:?}"
                );
            }
        }
    }

    // The 410 endpoint got one request and was disabled.
    let disabled = eventually(Duration::from_secs(10), || async {
        let (_, shown) = stack
            .send(
                Method::GET,
                &format!("/api/v1/webhooks/{gone_id}"),
                Value::Null,
            )
            .await;
        (shown["enabled"] == false).then_some(shown)
    })
    .await;
    assert!(disabled.is_some(), "the 410 endpoint is disabled");
    assert_eq!(gone.got().len(), 1, "nothing more sent to it");

    // The receiver that was down comes back and gets every event exactly once.
    let listener = TcpListener::bind(late_addr).await.expect("rebind");
    late.serve(listener);
    let back = eventually(Duration::from_secs(20), || async {
        (late.got().len() >= expected).then_some(())
    })
    .await;
    assert!(
        back.is_some(),
        "late receiver got {} events",
        late.got().len()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let late_got = late.got();
    let mut ids: Vec<&str> = late_got.iter().map(|(id, ..)| id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), expected, "once per webhook-id");
    assert_eq!(late_got.len(), expected, "and nothing twice");
    let mut good_ids: Vec<String> = good.got().into_iter().map(|(id, ..)| id).collect();
    good_ids.sort_unstable();
    assert_eq!(ids, good_ids, "the same events as the receiver that was up");
    assert!(late_got.iter().all(|(_, verified, _)| *verified));

    stop.cancel();
    webhooks
        .await
        .expect("webhooks task")
        .expect("webhooks stopped cleanly");
    stack.stop().await;
}
