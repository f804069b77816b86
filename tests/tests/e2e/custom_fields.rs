//! A contact's custom fields, from a CSV import to the carrier, the read model and webhooks:
//! the campaign is started over its contacts, the dialer uses the HTTP adapter against
//! carrier-sim, and a receiver started here is subscribed to the campaign.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Router, body::Bytes, extract::State, http::StatusCode, routing::post};
use ccm_carrier_sim::{SimConfig, ledger::Stats};
use ccm_core::config::{CarrierConfig, HttpCarrierConfig};
use ccm_tests::{TEST_TOKEN, TestEnv, eventually};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::stack::Stack;

type Bodies = Arc<Mutex<Vec<Value>>>;

async fn receive(State(got): State<Bodies>, body: Bytes) -> StatusCode {
    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
    got.lock().expect("lock").push(body);
    StatusCode::OK
}

/// The fields each number's row of the CSV below gives.
fn expected() -> BTreeMap<&'static str, Value> {
    BTreeMap::from([
        (
            "+15550007001",
            json!({"first_name": "Jeanne", "plan": "gold, annual"}),
        ),
        ("+15550007002", json!({"first_name": "Sam", "plan": ""})),
    ])
}

const CSV: &str = "phone_number,time_zone,first_name,plan\n\
                   +15550007001,Europe/Paris,Jeanne,\"gold, annual\"\n\
                   +15550007002,,Sam,\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imported_custom_fields_reach_the_carrier_the_calls_row_and_webhooks() {
    let env = TestEnv::start().await.expect("test environment");
    let sim_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let sim_url = format!("http://{}", sim_listener.local_addr().expect("addr"));
    let mut config = env.config();
    config.dialer.carrier = CarrierConfig::Http(HttpCarrierConfig {
        base_url: sim_url.clone().into(),
        ..HttpCarrierConfig::default()
    });
    config.webhooks.allow_private_targets = true;
    config.webhooks.backoff_min_ms = 50;
    config.webhooks.backoff_max_ms = 300;
    let stack = Stack::start(&env, config.clone()).await;
    let stop = CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    let sim = SimConfig {
        picked: 1,
        disconnected: 0,
        rnr: 0,
        failed: 0,
        // The old contract's callback finds its call in the read model, so the call lasts
        // long enough for the projector to have written the row on a loaded machine.
        call_ms: 1500,
        callback_base: stack.base.clone(),
        callback_token: TEST_TOKEN.into(),
        ..SimConfig::default()
    };
    tokio::spawn(ccm_carrier_sim::run(sim, sim_listener, stop.clone()));
    tokio::spawn(ccm_webhooks::run(config, stop.clone()));

    let (status, body) = stack
        .send(
            Method::POST,
            "/api/v1/campaigns",
            json!({"name": "fields", "draft": true, "max_attempts": 1}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let campaign = body["id"].as_u64().expect("id");

    let got: Bodies = Arc::default();
    let hook = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let hook_url = format!("http://{}/hook", hook.local_addr().expect("addr"));
    let app = Router::new()
        .route("/hook", post(receive))
        .with_state(got.clone());
    tokio::spawn(async move { axum::serve(hook, app).await });
    let (status, body) = stack
        .send(
            Method::POST,
            "/api/v1/webhooks",
            json!({"url": hook_url, "campaign_ids": [campaign]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");

    let (_, imported) = stack
        .raw(
            Method::POST,
            &format!("/api/v1/campaigns/{campaign}/contacts/import"),
            "text/csv",
            CSV,
        )
        .await;
    assert_eq!(imported["imported"], 2, "{imported}");
    let (status, body) = stack
        .send(
            Method::POST,
            &format!("/api/v1/campaigns/{campaign}/start?call_contacts=true"),
            Value::Null,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["contacts_called"]["accepted"], 2, "{body}");

    // The carrier got each contact's fields with its placement request.
    let http = reqwest::Client::new();
    let stats = eventually(Duration::from_secs(60), || async {
        let stats: Stats = http
            .get(format!("{sim_url}/stats"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (stats.placed == 2).then_some(stats)
    })
    .await
    .expect("both contacts are dialled");
    for attempt in stats.attempts.values() {
        assert_eq!(
            serde_json::to_value(&attempt.fields).expect("json"),
            expected()[attempt.to.as_str()],
            "{attempt:?}"
        );
    }

    // The read model keeps them on the call's row, and the call API shows them.
    let pg = env.pg().await.expect("postgres");
    let rows = eventually(Duration::from_secs(60), || async {
        let rows: Vec<(uuid::Uuid, String, Option<Value>)> = sqlx::query_as(
            "SELECT call_id, phone_number, custom_fields FROM calls \
             WHERE campaign_id = $1 AND status = 'COMPLETED'",
        )
        .bind(campaign as i64)
        .fetch_all(&pg)
        .await
        .ok()?;
        (rows.len() == 2).then_some(rows)
    })
    .await;
    let Some(rows) = rows else {
        let statuses: Vec<(String, i64)> = sqlx::query_as(
            "SELECT status, count(*) FROM calls WHERE campaign_id = $1 GROUP BY status",
        )
        .bind(campaign as i64)
        .fetch_all(&pg)
        .await
        .unwrap_or_default();
        let stats: Option<Stats> = match http.get(format!("{sim_url}/stats")).send().await {
            Ok(r) => r.json().await.ok(),
            Err(_) => None,
        };
        panic!("both calls do not complete: rows {statuses:?}, carrier {stats:?}");
    };
    for (call, phone, fields) in &rows {
        assert_eq!(
            fields.as_ref(),
            Some(&expected()[phone.as_str()]),
            "{phone}"
        );
        let (status, body) = stack
            .send(Method::GET, &format!("/api/v1/calls/{call}"), Value::Null)
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["custom_fields"], expected()[phone.as_str()], "{body}");
    }

    // A webhook receiver sees them in each call's final event.
    let delivered = eventually(Duration::from_secs(60), || async {
        let completed: Vec<Value> = got
            .lock()
            .expect("lock")
            .iter()
            .filter(|b| b["type"] == "call.completed")
            .cloned()
            .collect();
        (completed.len() == 2).then_some(completed)
    })
    .await
    .expect("call.completed delivered for both calls");
    for body in delivered {
        let phone = body["data"]["phone_number"].as_str().expect("phone number");
        assert_eq!(body["data"]["custom_fields"], expected()[phone], "{body}");
    }
    stack.stop().await;
}
