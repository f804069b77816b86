//! Caller-ID pools end to end, against carrier-sim (Twilio's API) with two dialers: each call
//! shows a number of its campaign's pool local to the callee, the same one on every call of
//! a `consistent` pool, on its `Dialing` event, its `calls` row and its admission record; a
//! paused number is no longer shown; a number's hourly cap holds across both dialers, the
//! attempts beyond it put off; a campaign without a pool shows the adapter's `from`.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Router, body::Bytes, extract::State, http::StatusCode, routing::post};
use ccm_carrier_sim::ledger::Stats;
use ccm_tests::{TestEnv, eventually};
use serde_json::{Value, json};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::carrier_stack::{CarrierStack, Dialer, answering};

/// The adapter's configured `from` (see [`CarrierStack::start_with`]).
const ADAPTER_FROM: &str = "+15550009999";

async fn campaign(stack: &CarrierStack, pool: Option<Value>) -> u64 {
    let mut body = json!({"name": "pool", "max_attempts": 1, "max_concurrent_calls": 20});
    if let Some(pool) = pool {
        body["caller_id_pool"] = pool;
    }
    let (status, body) = stack.send("/api/v1/campaigns", body).await;
    assert_eq!(status, 201, "{body}");
    body["id"].as_u64().expect("id")
}

async fn call(stack: &CarrierStack, campaign: u64, number: &str) -> String {
    let (status, body) = stack
        .send(
            "/api/v1/calls",
            json!({"campaign_id": campaign, "phone_number": number}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    body["call_id"].as_str().expect("call_id").to_owned()
}

/// The caller id carrier-sim saw for the call's first attempt, once placed.
async fn shown(stack: &CarrierStack, call_id: &str) -> Option<String> {
    let key = format!("{call_id}/1");
    eventually(Duration::from_secs(30), || async {
        let stats: Stats = stack.stats().await;
        stats.attempts.get(&key).map(|a| a.caller_id.clone())
    })
    .await
    .expect("placed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_show_a_local_consistent_number_of_the_pool_on_every_record_within_its_caps() {
    let env = TestEnv::start().await.expect("test environment");
    // A callee is called again right after their call (the consistent number).
    let stack = CarrierStack::start_with(&env, answering(50), |c| {
        c.ingest.duplicate_call_window_minutes = 0;
    })
    .await;
    let dialers = [
        Dialer::start(stack.config.clone()),
        Dialer::start(stack.config.clone()),
    ];
    let pg = env.pg().await.expect("postgres");
    let pooled = campaign(
        &stack,
        Some(
            json!({"numbers": ["+12127360001", "+12127360002", "+14157230001"],
                    "consistent": true}),
        ),
    )
    .await;

    // Local presence: each callee is shown a number of their own area code.
    let mut calls = Vec::new();
    for callee in [
        "+12125550101",
        "+12125550102",
        "+12125550103",
        "+12125550104",
        "+14155550101",
        "+14155550102",
    ] {
        calls.push((callee, call(&stack, pooled, callee).await));
    }
    let mut first_shown = std::collections::BTreeMap::new();
    for (callee, call_id) in &calls {
        let number = shown(&stack, call_id).await.expect("a pool number");
        assert_eq!(number[..5], callee[..5], "{callee} shown {number}");
        first_shown.insert(*callee, number);
    }

    // Every record of the attempt names it: the calls row, Dialing, the admission record.
    for (callee, call_id) in &calls {
        let expected = &first_shown[callee];
        let id: uuid::Uuid = call_id.parse().expect("uuid");
        let row = eventually(Duration::from_secs(30), || async {
            sqlx::query_scalar::<_, Option<String>>(
                "SELECT caller_id FROM calls WHERE call_id = $1 AND status = 'COMPLETED'",
            )
            .bind(id)
            .fetch_optional(&pg)
            .await
            .ok()
            .flatten()
        })
        .await
        .expect("completed row");
        assert_eq!(row.as_ref(), Some(expected), "calls row of {callee}");
        let dialing: Value = sqlx::query_scalar(
            "SELECT payload FROM call_events WHERE call_id = $1 AND kind = 'dialing'",
        )
        .bind(id)
        .fetch_one(&pg)
        .await
        .expect("dialing event");
        assert_eq!(dialing["caller_id"], json!(expected), "{dialing}");
        let (status, audit) = stack
            .client
            .get(&format!("/api/v1/calls/{call_id}/audit"))
            .await;
        assert_eq!(status, 200, "{audit}");
        let placed = audit["records"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["decision"]["outcome"] == "placed"))
            .unwrap_or_else(|| panic!("a placed record: {audit}"));
        assert_eq!(placed["caller_id"]["chosen"], json!(expected), "{placed}");
        assert_eq!(placed["caller_id"]["active"], 3, "{placed}");
    }

    // Consistent: calling a callee again shows them the same number.
    for callee in ["+12125550101", "+12125550103"] {
        let again = call(&stack, pooled, callee).await;
        assert_eq!(
            shown(&stack, &again).await.as_ref(),
            Some(&first_shown[callee]),
            "{callee} called again"
        );
    }

    // Paused, the 415 number is no longer shown: 415 callees get a number of their region.
    let (status, body) = stack
        .send(
            &format!("/api/v1/campaigns/{pooled}/caller-ids/+14157230001/pause"),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // The dialers follow the campaign document: the first calls may still be on their way.
    let mut switched = false;
    for i in 0..20 {
        let call_id = call(&stack, pooled, &format!("+141555502{i:02}")).await;
        let number = shown(&stack, &call_id).await.expect("a pool number");
        if switched {
            assert!(number.starts_with("+1212"), "after the pause: {number}");
        }
        switched |= number.starts_with("+1212");
        if switched && i >= 3 {
            break;
        }
    }
    assert!(switched, "the paused number is never shown again");

    // Caps across both dialers: one number, two attempts an hour, five callees at once.
    let capped = campaign(
        &stack,
        Some(json!({"numbers": ["+13035550100"], "max_attempts_per_hour": 2})),
    )
    .await;
    for i in 0..5 {
        call(&stack, capped, &format!("+130355502{i:02}")).await;
    }
    let deferred = eventually(Duration::from_secs(30), || async {
        let records: Vec<Value> = sqlx::query_scalar(
            "SELECT record FROM call_audit WHERE campaign_id = $1 AND decision = 'deferred'",
        )
        .bind(i64::try_from(capped).expect("id"))
        .fetch_all(&pg)
        .await
        .ok()?;
        (records.len() >= 3).then_some(records)
    })
    .await
    .expect("three attempts put off");
    assert_eq!(deferred.len(), 3, "{deferred:?}");
    for record in &deferred {
        let free_at = record["caller_id"]["free_at"].as_str().expect("free_at");
        let free_at: chrono::DateTime<chrono::Utc> = free_at.parse().expect("time");
        assert!(
            free_at > chrono::Utc::now() + chrono::Duration::minutes(55),
            "free in about an hour: {record}"
        );
    }
    let stats = stack.stats().await;
    assert_eq!(
        stats.caller_ids.get("+13035550100"),
        Some(&2),
        "{:?}",
        stats.caller_ids
    );

    // Without a pool: the adapter's own number, and no caller id on the row.
    let plain = campaign(&stack, None).await;
    let call_id = call(&stack, plain, "+12125550999").await;
    assert_eq!(shown(&stack, &call_id).await.as_deref(), Some(ADAPTER_FROM));
    let id: uuid::Uuid = call_id.parse().expect("uuid");
    let row = eventually(Duration::from_secs(30), || async {
        sqlx::query_scalar::<_, Option<String>>(
            "SELECT caller_id FROM calls WHERE call_id = $1 AND status = 'COMPLETED'",
        )
        .bind(id)
        .fetch_optional(&pg)
        .await
        .ok()
        .flatten()
    })
    .await
    .expect("completed row");
    assert_eq!(row, None, "no pool, no caller id on the row");

    for dialer in dialers {
        dialer.stop().await;
    }
    stack.stop().await;
}

type Bodies = Arc<Mutex<Vec<Value>>>;

async fn receive(State(got): State<Bodies>, body: Bytes) -> StatusCode {
    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
    got.lock().expect("lock").push(body);
    StatusCode::OK
}

/// A number the carriers labelled as spam (carrier-sim never answers calls showing it) is
/// flagged: `caller_id.flagged` names it with its answer rate and the rest of the pool's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_number_answered_far_less_than_its_pool_is_flagged_by_webhook() {
    let env = TestEnv::start().await.expect("test environment");
    let mut sim = answering(20);
    sim.spam_caller_ids = vec!["+12127360002".into()];
    let stack = CarrierStack::start_with(&env, sim, |c| {
        c.webhooks.allow_private_targets = true;
        c.webhooks.backoff_min_ms = 50;
        c.webhooks.backoff_max_ms = 300;
        c.webhooks.caller_id_check_ms = 200;
        c.webhooks.caller_id_flag_min_attempts = 5;
        c.webhooks.caller_id_flag_ratio = 0.5;
    })
    .await;
    let stop = CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    tokio::spawn(ccm_webhooks::run(stack.config.clone(), stop.clone()));
    let dialer = Dialer::start(stack.config.clone());
    // Not consistent: each attempt hashes its own id, so both numbers are shown.
    let pooled = campaign(
        &stack,
        Some(json!({"numbers": ["+12127360001", "+12127360002"]})),
    )
    .await;
    let got: Bodies = Arc::default();
    let hook = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let hook_url = format!("http://{}/hook", hook.local_addr().expect("addr"));
    let app = Router::new()
        .route("/hook", post(receive))
        .with_state(got.clone());
    tokio::spawn(async move { axum::serve(hook, app).await });
    let (status, body) = stack
        .send(
            "/api/v1/webhooks",
            json!({"url": hook_url, "campaign_ids": [pooled], "events": ["caller_id.flagged"]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");

    for i in 0..40 {
        call(&stack, pooled, &format!("+121255503{i:02}")).await;
    }
    let flagged = eventually(Duration::from_secs(60), || async {
        got.lock()
            .expect("lock")
            .iter()
            .find(|b| b["type"] == "caller_id.flagged")
            .cloned()
    })
    .await
    .expect("caller_id.flagged received");
    let data = &flagged["data"];
    assert_eq!(data["campaign_id"], json!(pooled), "{flagged}");
    assert_eq!(data["caller_id"], "+12127360002", "{flagged}");
    assert_eq!(data["answered"], 0, "{flagged}");
    assert_eq!(data["answer_rate"], 0.0, "{flagged}");
    assert_eq!(data["pool_answer_rate"], 1.0, "{flagged}");
    assert!(
        data["attempts"].as_u64().is_some_and(|a| a >= 5),
        "{flagged}"
    );
    // Only the labelled number, and once a day: later checks queue nothing new.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let flags: Vec<Value> = got
        .lock()
        .expect("lock")
        .iter()
        .filter(|b| b["type"] == "caller_id.flagged")
        .cloned()
        .collect();
    assert_eq!(flags.len(), 1, "{flags:?}");

    dialer.stop().await;
    stack.stop().await;
}
