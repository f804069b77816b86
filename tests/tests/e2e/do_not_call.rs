//! Do-not-call across the services: a number listed after its call was queued is never
//! dialled; the call ends CANCELLED with the list named and the number's claim released.

use std::time::Duration;

use ccm_tests::{TestEnv, eventually};
use serde_json::json;

use crate::carrier_stack::{CarrierStack, Dialer, answering, statuses};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_number_listed_after_queueing_is_never_dialled() {
    let env = TestEnv::start().await.expect("test environment");
    let sim = answering(20);
    let stack = CarrierStack::start(&env, sim).await;
    let dialer = Dialer::start(stack.config.clone());
    let pg = env.pg().await.expect("postgres");
    let id = stack.campaign(5).await;
    let (status, _) = stack
        .send(&format!("/api/v1/campaigns/{id}/pause"), json!({}))
        .await;
    assert_eq!(status, 200);
    // Both calls are accepted while the numbers are not listed, and wait queued.
    stack.calls(id, 2).await;
    let listed = "+15551000000";
    let (status, body) = stack
        .send(
            "/api/v1/dnc",
            json!({"phone_numbers": [listed], "campaign_id": id, "reason": "asked us to stop"}),
        )
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
    let (number, reason): (String, Option<String>) = sqlx::query_as(
        "SELECT phone_number, error_message FROM calls WHERE campaign_id = $1 AND status = 'CANCELLED'",
    )
    .bind(id as i64)
    .fetch_one(&pg)
    .await
    .expect("cancelled row");
    assert_eq!(number, listed);
    assert_eq!(
        reason.as_deref(),
        Some(format!("{listed} is on campaign {id}'s do-not-call list").as_str())
    );
    assert_eq!(
        stack.stats().await.placed,
        1,
        "the listed number is never placed"
    );
    let js = env.jetstream().await.expect("jetstream");
    let claims = js.get_key_value("active_calls").await.expect("bucket");
    assert!(
        claims.get("15551000000").await.expect("kv").is_none(),
        "claim released"
    );
    dialer.stop().await;
    stack.stop().await;
}
