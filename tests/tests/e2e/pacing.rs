//! Pacing across dialer replicas: a campaign's new calls are spaced by its rate even when two
//! dialers pull its queue.

use std::time::Duration;

use ccm_tests::{TestEnv, eventually};
use chrono::{DateTime, Utc};
use serde_json::json;

use crate::carrier_stack::{CarrierStack, Dialer, answering, statuses};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_dialers_share_one_campaigns_rate() {
    let env = TestEnv::start().await.expect("test environment");
    let sim = answering(20);
    let stack = CarrierStack::start(&env, sim).await;
    let pg = env.pg().await.expect("postgres");
    let (status, body) = stack
        .send(
            "/api/v1/campaigns",
            json!({"name": "paced", "max_concurrent_calls": 10, "max_attempts": 1,
                   "max_calls_per_second": 4}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_u64().expect("id");
    let first = Dialer::start(stack.config.clone());
    let second = Dialer::start(stack.config.clone());
    let before = Utc::now();
    let calls = 8;
    stack.calls(id, calls).await;
    let done = eventually(Duration::from_secs(30), || async {
        (statuses(&pg, id).await == [("COMPLETED".to_owned(), i64::from(calls))]).then_some(())
    })
    .await;
    assert!(done.is_some(), "{:?}", statuses(&pg, id).await);
    let mut dialled: Vec<DateTime<Utc>> = sqlx::query_scalar(
        "SELECT occurred_at FROM call_events WHERE campaign_id = $1 AND kind = 'dialing'",
    )
    .bind(id as i64)
    .fetch_all(&pg)
    .await
    .expect("dialing events");
    dialled.sort();
    assert_eq!(dialled.len(), calls as usize);
    // Slots are 250 ms apart from the first reservation on: the n-th placement (in time
    // order) cannot come before the n-th slot, whichever replica placed it.
    for (n, at) in dialled.iter().enumerate() {
        let slot = before + chrono::Duration::milliseconds(250 * n as i64);
        assert!(
            *at >= slot,
            "call {n} dialled at {at}, its slot is {slot}: {dialled:?}"
        );
    }
    first.stop().await;
    second.stop().await;
    stack.stop().await;
}
