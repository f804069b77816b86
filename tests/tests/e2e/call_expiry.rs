//! A call longer than its maximum duration, through the whole stack with carrier-sim's
//! Twilio API: the dialer hangs it up at the carrier, the carrier reports the call it ended,
//! and that real outcome (PICKED: the callee had answered) decides the call, not a synthetic
//! FAILED (`timeout`) that would have re-dialled a person still on the line.

use std::time::Duration;

use ccm_tests::{TestEnv, eventually};
use serde_json::json;

use crate::carrier_stack::{CarrierStack, Dialer, answering, statuses};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_hung_up_at_its_maximum_duration_ends_with_the_carriers_late_picked() {
    let env = TestEnv::start().await.expect("test environment");
    // Every call is answered and would talk for a minute.
    let stack = CarrierStack::start(&env, answering(60_000)).await;
    let dialer = Dialer::start(stack.config.clone());
    let (status, body) = stack
        .send(
            "/api/v1/campaigns",
            json!({"name": "long calls", "max_concurrent_calls": 1, "max_attempts": 3,
                   "max_call_duration_secs": 1}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let campaign = body["id"].as_u64().expect("id");
    stack.calls(campaign, 1).await;

    let pg = env.pg().await.expect("postgres");
    let counts = eventually(Duration::from_secs(30), || async {
        let counts = statuses(&pg, campaign).await;
        (counts.len() == 1 && matches!(counts[0].0.as_str(), "COMPLETED" | "FAILED" | "RETRYING"))
            .then_some(counts)
    })
    .await
    .expect("the call is decided");
    let stats = stack.stats().await;
    eprintln!("{counts:?}; carrier: {stats:?}");
    assert_eq!(
        counts,
        [("COMPLETED".to_owned(), 1)],
        "the carrier's PICKED, reported after the hang-up, decides the call"
    );
    assert_eq!(stats.placed, 1, "never dialled again: {stats:?}");
    let attempt = stats.attempts.values().next().expect("the attempt");
    assert!(attempt.hung_up, "hung up at the carrier: {stats:?}");
    assert!(stats.number_overlaps.is_empty(), "{stats:?}");
    let (outcome_source, outcome_status): (String, String) = sqlx::query_as(
        "SELECT payload->>'source', payload->>'status' FROM call_events \
         WHERE kind = 'outcome' ORDER BY seq LIMIT 1",
    )
    .fetch_one(&pg)
    .await
    .expect("the outcome");
    assert_eq!(
        (outcome_source.as_str(), outcome_status.as_str()),
        ("carrier", "PICKED")
    );
    dialer.stop().await;
    stack.stop().await;
}
