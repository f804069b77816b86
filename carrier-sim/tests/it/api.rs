//! Each test starts the simulator on a free port and a small receiver for its callbacks.

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    body::Bytes,
    http::{HeaderMap, StatusCode},
    routing::{post, put},
};
use ccm_carrier_sim::{SimConfig, ledger::Stats};
use serde_json::{Value, json};
use tokio::{net::TcpListener, sync::Mutex};
use tokio_util::sync::CancellationToken;

type Received = Arc<Mutex<Vec<(HeaderMap, Bytes)>>>;

/// A receiver recording every callback; returns its base URL.
async fn receiver(received: Received) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let record = move |headers: HeaderMap, body: Bytes| {
        let received = received.clone();
        async move {
            received.lock().await.push((headers, body));
            StatusCode::OK
        }
    };
    let app = Router::new()
        .route("/api/v1/callback/", put(record.clone()))
        .route("/twilio", post(record));
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

pub(crate) async fn start(config: SimConfig) -> (String, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let shutdown = CancellationToken::new();
    tokio::spawn(ccm_carrier_sim::run(config, listener, shutdown.clone()));
    (format!("http://{addr}"), shutdown)
}

pub(crate) async fn stats(http: &reqwest::Client, sim: &str) -> Stats {
    http.get(format!("{sim}/stats"))
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("json")
}

async fn wait_for(received: &Received, n: usize) -> Vec<(HeaderMap, Bytes)> {
    for _ in 0..250 {
        let got = received.lock().await.clone();
        if got.len() >= n {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("fewer than {n} callbacks arrived");
}

#[tokio::test]
async fn the_old_contract_places_once_per_key_and_calls_back_with_the_token() {
    let received = Received::default();
    let callback_base = receiver(received.clone()).await;
    let config = SimConfig {
        call_ms: 50,
        callback_base,
        callback_token: "cb-token".into(),
        ..SimConfig::default()
    };
    let (sim, shutdown) = start(config).await;
    let http = reqwest::Client::new();
    assert_eq!(
        http.get(format!("{sim}/health"))
            .send()
            .await
            .expect("health")
            .status(),
        200
    );

    let body = json!({"call_id": "c1", "phone_number": "+15550000001", "campaign_id": 7,
                      "campaign_name": "x"});
    let mut ids = Vec::new();
    for _ in 0..2 {
        let response = http
            .post(format!("{sim}/api/initiate-call"))
            .header("Idempotency-Key", "c1/1")
            .json(&body)
            .send()
            .await
            .expect("place");
        assert_eq!(response.status(), 200);
        let answer: Value = response.json().await.expect("json");
        ids.push(
            answer["external_call_id"]
                .as_str()
                .expect("external id")
                .to_owned(),
        );
    }
    assert_eq!(
        ids[0], ids[1],
        "a repeated key gets the first placement back"
    );

    let callbacks = wait_for(&received, 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(received.lock().await.len(), 1, "one call, one callback");
    let (headers, body) = &callbacks[0];
    assert_eq!(headers["x-auth-token"], "cb-token");
    let outcome: Value = serde_json::from_slice(body).expect("json");
    assert_eq!(outcome["call_id"], "c1");
    assert_eq!(outcome["external_call_id"], ids[0].as_str());
    assert!(
        ["PICKED", "DISCONNECTED", "RNR", "FAILED"]
            .contains(&outcome["status"].as_str().unwrap_or(""))
    );

    let stats = stats(&http, &sim).await;
    assert_eq!((stats.placed, stats.repeated_requests), (1, 1));
    assert_eq!(stats.attempts["c1/1"].requests, 2);
    assert_eq!(stats.campaigns["7"].peak, 1);
    assert_eq!(stats.campaigns["7"].live, 0);

    let bad = http
        .post(format!("{sim}/api/initiate-call"))
        .json(&json!({"x": 1}))
        .send()
        .await;
    assert_eq!(bad.expect("bad").status(), 400);
    shutdown.cancel();
}

#[tokio::test]
async fn twilio_calls_need_basic_auth_and_their_callbacks_are_signed() {
    let received = Received::default();
    let base = receiver(received.clone()).await;
    let config = SimConfig {
        call_ms: 50,
        duplicate_rate: 1.0,
        ..SimConfig::default()
    };
    let (sim, shutdown) = start(config.clone()).await;
    let http = reqwest::Client::new();
    let url = format!(
        "{sim}/2010-04-01/Accounts/{}/Calls.json",
        config.twilio_account_sid
    );
    let callback = format!("{base}/twilio?call_id=c9&attempt=1&campaign_id=3");
    let form = [
        ("To", "+15550000009"),
        ("From", "+15550000000"),
        ("Url", "http://example.invalid/twiml"),
        ("StatusCallback", callback.as_str()),
        ("StatusCallbackEvent", "ringing"),
        ("StatusCallbackEvent", "completed"),
    ];
    let denied = http
        .post(&url)
        .basic_auth("ACsimulator", Some("wrong"))
        .form(&form)
        .send()
        .await;
    assert_eq!(denied.expect("denied").status(), 401);
    let created = http
        .post(&url)
        .basic_auth(&config.twilio_account_sid, Some(&config.twilio_auth_token))
        .form(&form)
        .send()
        .await
        .expect("create");
    assert_eq!(created.status(), 201);

    // ringing, then the final status twice (the duplicate fault).
    let callbacks = wait_for(&received, 3).await;
    let mut statuses = Vec::new();
    for (headers, body) in &callbacks {
        let params: Vec<(String, String)> = serde_urlencoded::from_bytes(body).expect("form");
        let signature = headers["x-twilio-signature"].to_str().expect("ascii");
        assert!(ccm_core::twilio::verify(
            &config.twilio_auth_token,
            &callback,
            &params,
            signature
        ));
        let status = params
            .iter()
            .find(|(k, _)| k == "CallStatus")
            .expect("status")
            .1
            .clone();
        statuses.push(status);
    }
    assert_eq!(statuses[0], "ringing");
    assert_eq!(statuses[1], statuses[2]);
    let stats = stats(&http, &sim).await;
    assert_eq!(stats.campaigns["3"].placed, 1);
    shutdown.cancel();
}

#[tokio::test]
async fn the_error_rate_answers_503_and_places_nothing() {
    let config = SimConfig {
        error_rate: 1.0,
        ..SimConfig::default()
    };
    let (sim, shutdown) = start(config).await;
    let http = reqwest::Client::new();
    let response = http
        .post(format!("{sim}/api/initiate-call"))
        .json(&json!({"call_id": "c1", "phone_number": "+15550000001", "campaign_id": 1}))
        .send()
        .await
        .expect("place");
    assert_eq!(response.status(), 503);
    let stats = stats(&http, &sim).await;
    assert_eq!((stats.placed, stats.injected_errors), (0, 1));
    shutdown.cancel();
}

#[tokio::test]
async fn faults_change_at_run_time_through_put_faults() {
    let received: Received = Arc::default();
    let callback_base = receiver(received.clone()).await;
    let config = SimConfig {
        callback_base,
        call_ms: 10,
        ..SimConfig::default()
    };
    let (sim, shutdown) = start(config).await;
    let http = reqwest::Client::new();
    let place = |key: &'static str| {
        http.post(format!("{sim}/api/initiate-call"))
            .header("Idempotency-Key", key)
            .json(&json!({"call_id": key, "phone_number": "+15550000001", "campaign_id": 1}))
            .send()
    };
    // A 5xx burst switched on, then off again.
    let on = http
        .put(format!("{sim}/faults"))
        .json(&json!({"error_rate": 1.0}))
        .send()
        .await
        .expect("put");
    assert_eq!(on.status(), 200);
    assert_eq!(place("c1/1").await.expect("place").status(), 503);
    let shown: Value = http
        .get(format!("{sim}/faults"))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(shown["error_rate"], 1.0);
    // Every final callback sent twice from now on.
    let dup = http
        .put(format!("{sim}/faults"))
        .json(&json!({"duplicate_rate": 1.0}))
        .send()
        .await
        .expect("put");
    assert_eq!(dup.status(), 200);
    assert_eq!(place("c1/2").await.expect("place").status(), 200);
    let got = wait_for(&received, 2).await;
    assert_eq!(got[0].1, got[1].1, "the same callback twice");
    let stats = stats(&http, &sim).await;
    assert_eq!((stats.placed, stats.injected_errors), (1, 1));
    // The attempt ended: it no longer counts as live, for its campaign or its number.
    assert_eq!((stats.live, stats.number_peak), (0, 1));

    for bad in [json!({"drop_rate": 2.0}), json!({"nonsense": 1})] {
        let refused = http
            .put(format!("{sim}/faults"))
            .json(&bad)
            .send()
            .await
            .expect("put");
        assert_eq!(refused.status(), 400, "{bad}");
    }
    shutdown.cancel();
}
