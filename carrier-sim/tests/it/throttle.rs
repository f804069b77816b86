//! Each carrier account's limits: 429 with `Retry-After` over them, nothing placed, counted
//! per account in the ledger.

use std::time::{Duration, Instant};

use ccm_carrier_sim::SimConfig;
use serde_json::{Value, json};

use crate::api::{start, stats};

#[tokio::test]
async fn the_old_contract_answers_429_over_the_account_rate_and_places_nothing() {
    let config = SimConfig {
        account_cps: 3,
        call_ms: 60_000,
        ..SimConfig::default()
    };
    let (sim, shutdown) = start(config).await;
    let http = reqwest::Client::new();
    let place = |key: String| {
        http.post(format!("{sim}/api/initiate-call"))
            .header("Idempotency-Key", key.clone())
            .json(&json!({"call_id": key, "phone_number": "+15550000001", "campaign_id": 1}))
            .send()
    };
    let started = Instant::now();
    let mut statuses = Vec::new();
    for i in 0..10 {
        let answer = place(format!("c{i}/1")).await.expect("place");
        if answer.status() == 429 {
            let retry: u64 = answer.headers()["retry-after"]
                .to_str()
                .expect("ascii")
                .parse()
                .expect("seconds");
            assert_eq!(retry, 1, "a one-second window frees a slot within a second");
        }
        statuses.push(answer.status().as_u16());
    }
    // Sent well within one second, so exactly the first three go.
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "too slow to test"
    );
    assert_eq!(statuses, [200, 200, 200, 429, 429, 429, 429, 429, 429, 429]);
    // A repeat of a placed key is answered as placed, never throttled.
    assert_eq!(place("c0/1".into()).await.expect("place").status(), 200);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(place("c3/1".into()).await.expect("place").status(), 200);
    let stats = stats(&http, &sim).await;
    assert_eq!((stats.placed, stats.throttled), (4, 7));
    let account = &stats.accounts["http"];
    assert_eq!((account.placed, account.throttled, account.live), (4, 7, 4));
    assert_eq!(stats.repeated_requests, 1);
    shutdown.cancel();
}

#[tokio::test]
async fn twilio_answers_20429_over_the_live_call_cap_per_account() {
    let config = SimConfig {
        account_max_live: 2,
        call_ms: 300,
        ..SimConfig::default()
    };
    let (sim, shutdown) = start(config.clone()).await;
    let http = reqwest::Client::new();
    let url = format!(
        "{sim}/2010-04-01/Accounts/{}/Calls.json",
        config.twilio_account_sid
    );
    let create = |n: u32| {
        let callback = format!("http://127.0.0.1:9/twilio?call_id=c{n}&attempt=1&campaign_id=3");
        http.post(&url)
            .basic_auth(&config.twilio_account_sid, Some(&config.twilio_auth_token))
            .header("Idempotency-Key", format!("c{n}/1"))
            .form(&[
                ("To", format!("+1555000000{n}")),
                ("From", "+15550000000".into()),
                ("Url", "http://example.invalid/twiml".into()),
                ("StatusCallback", callback),
            ])
            .send()
    };
    assert_eq!(create(1).await.expect("create").status(), 201);
    assert_eq!(create(2).await.expect("create").status(), 201);
    let refused = create(3).await.expect("create");
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.expect("json");
    assert_eq!(body["code"], 20429);
    // Once the calls end, the account may place again.
    let mut status = 0;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        status = create(3).await.expect("create").status().as_u16();
        if status == 201 {
            break;
        }
    }
    assert_eq!(status, 201);
    let stats = stats(&http, &sim).await;
    let account = &stats.accounts[&config.twilio_account_sid];
    assert_eq!((account.placed, account.peak), (3, 2));
    assert!(account.throttled >= 1);
    assert_eq!(stats.throttled, account.throttled);
    shutdown.cancel();
}
