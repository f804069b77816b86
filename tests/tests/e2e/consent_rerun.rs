//! A rerun and the source campaign's own do-not-call list (where its opt-outs go with
//! `opt_out_list: campaign`).

use std::time::Duration;

use ccm_tests::{TestEnv, eventually};
use serde_json::json;

use crate::{
    carrier_stack::{CarrierStack, Dialer, answering, statuses},
    consent::{call, created},
};

/// A rerun is a new campaign, so the source campaign's own do-not-call list (where its
/// opt-outs go with `opt_out_list: campaign`) would not bind it by itself: the numbers on that
/// list are never selected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerun_never_calls_the_numbers_on_its_source_campaigns_own_list() {
    let env = TestEnv::start().await.expect("test environment");
    let stack = CarrierStack::start(&env, answering(20)).await;
    let dialer = Dialer::start(stack.config.clone());
    let pg = env.pg().await.expect("postgres");
    let id = created(
        &stack,
        json!({"name": "own list", "max_concurrent_calls": 5, "max_attempts": 1,
               "opt_out_list": "campaign"}),
    )
    .await;
    let (status, _) = stack
        .send(&format!("/api/v1/campaigns/{id}/pause"), json!({}))
        .await;
    assert_eq!(status, 200);
    let (listed, free) = ("+15552000201", "+15552000202");
    call(&stack, id, listed).await;
    call(&stack, id, free).await;
    let (status, body) = stack
        .send(
            "/api/v1/dnc",
            json!({"phone_numbers": [listed, free], "campaign_id": id}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = stack
        .send(&format!("/api/v1/campaigns/{id}/resume"), json!({}))
        .await;
    assert_eq!(status, 200);
    let done = eventually(Duration::from_secs(20), || async {
        (statuses(&pg, id).await == [("CANCELLED".to_owned(), 2)]).then_some(())
    })
    .await;
    assert!(done.is_some(), "{:?}", statuses(&pg, id).await);
    // One of them is taken off the list again: only it may be called by the rerun.
    let (status, _) = stack
        .client
        .send(
            reqwest::Method::DELETE,
            &format!("/api/v1/dnc/%2B{}?campaign_id={id}", &free[1..]),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (status, rerun) = stack
        .send(
            &format!("/api/v1/campaigns/{id}/rerun"),
            json!({"outcomes": ["CANCELLED"], "draft": true}),
        )
        .await;
    assert_eq!(status, 201, "{rerun}");
    assert_eq!(rerun["selected"], 1, "{rerun}");
    let copy = rerun["campaign"]["id"].as_u64().expect("id");
    let (status, compat) = stack
        .client
        .get(&format!("/api/v1/campaigns/{copy}/"))
        .await;
    assert_eq!(status, 200, "{compat}");
    assert_eq!(
        compat["phone_numbers"],
        json!([{"phone_number": free}]),
        "only the number taken off the list is copied: {compat}"
    );
    dialer.stop().await;
    stack.stop().await;
}
