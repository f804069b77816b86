//! The daily frequency cap: an attempt beyond a number's attempts for the day is not placed
//! but waits in RETRIES until the next day (the callee's local day: UTC here, as neither the
//! `+1 555` number nor the campaign names a zone).

use std::time::Duration;

use ccm_tests::{TestEnv, eventually};
use futures::StreamExt;
use serde_json::json;

use crate::carrier_stack::{CarrierStack, Dialer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_attempt_beyond_the_daily_cap_waits_for_the_next_day() {
    let env = TestEnv::start().await.expect("test environment");
    let sim = ccm_carrier_sim::SimConfig {
        picked: 0,
        disconnected: 0,
        rnr: 1,
        failed: 0,
        call_ms: 20,
        ..Default::default()
    };
    let stack = CarrierStack::start(&env, sim).await;
    let mut dialer_config = stack.config.clone();
    dialer_config.dialer.max_attempts_per_number_per_day = 1;
    let dialer = Dialer::start(dialer_config);
    let (status, body) = stack
        .send(
            "/api/v1/campaigns",
            json!({
                "name": "capped",
                "max_attempts": 2,
                "retry_policy": {"status_retry_rules": {"RNR": {"should_retry": true, "backoff": ["1s"]}}}
            }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_u64().expect("id");
    stack.calls(id, 1).await;

    // Attempt 1 is placed, RNR; attempt 2 is due a second later and is put off to midnight.
    let js = env.jetstream().await.expect("jetstream");
    let stream = js.get_stream("RETRIES").await.expect("stream");
    let tomorrow = ccm_dialer::frequency::next_day(chrono::Utc::now());
    let deferred = eventually(Duration::from_secs(30), || async {
        let message = stream
            .get_last_raw_message_by_subject(&format!("calls.retry.{id}"))
            .await
            .ok()?;
        let entry: ccm_core::RetryEntry = serde_json::from_slice(&message.payload).ok()?;
        (entry.window_deferral == Some(1)).then_some(entry)
    })
    .await
    .expect("attempt 2 put off");
    assert_eq!(deferred.request.attempt, 2);
    // Unless the test ran across midnight, the wait is until the next UTC day.
    assert!(deferred.due_at >= tomorrow, "{:?}", deferred.due_at);
    assert_eq!(
        stack.stats().await.placed,
        1,
        "only the first attempt placed"
    );
    let counters = js.get_key_value("attempts").await.expect("bucket");
    let mut keys = counters.keys().await.expect("keys");
    let key = keys.next().await.expect("one record").expect("key");
    assert_eq!(key, "15551000000", "one record per number");
    let record: serde_json::Value =
        serde_json::from_slice(&counters.get(&key).await.expect("kv").expect("record"))
            .expect("json");
    assert_eq!(record["at"].as_array().map(Vec::len), Some(1), "{record}");
    dialer.stop().await;
    stack.stop().await;
}
