//! The campaign lifecycle across the services: a draft's calls wait until it is started and
//! the campaign then completes by itself; cancelling ends queued and scheduled attempts.

use std::time::Duration;

use async_nats::jetstream;
use ccm_tests::{TestEnv, eventually};
use futures::TryStreamExt;
use serde_json::{Value, json};

use crate::carrier_stack::{CarrierStack, Dialer, statuses};

fn sim(picked: u32, rnr: u32) -> ccm_carrier_sim::SimConfig {
    ccm_carrier_sim::SimConfig {
        picked,
        disconnected: 0,
        rnr,
        failed: 0,
        call_ms: 20,
        ..Default::default()
    }
}

/// The campaign document as the bucket holds it.
async fn document(js: &jetstream::Context, id: u64) -> Value {
    let bucket = js.get_key_value("campaigns").await.expect("bucket");
    let bytes = bucket
        .get(id.to_string())
        .await
        .expect("kv")
        .expect("campaign");
    serde_json::from_slice(&bytes).expect("json")
}

/// Entries of the campaign waiting in `RETRIES`.
async fn scheduled(js: &jetstream::Context, id: u64) -> usize {
    let stream = js.get_stream("RETRIES").await.expect("stream");
    let subjects: Vec<(String, usize)> = stream
        .info_with_subjects(format!("calls.retry.{id}"))
        .await
        .expect("info")
        .try_collect()
        .await
        .expect("subjects");
    subjects.iter().map(|(_, n)| n).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_started_draft_dials_its_queued_calls_then_completes_by_itself() {
    let env = TestEnv::start().await.expect("test environment");
    let stack = CarrierStack::start(&env, sim(1, 0)).await;
    let dialer = Dialer::start(stack.config.clone());
    let js = env.jetstream().await.expect("jetstream");
    let pg = env.pg().await.expect("postgres");
    let (status, body) = stack
        .send(
            "/api/v1/campaigns",
            json!({"name": "draft", "draft": true, "max_attempts": 1}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_u64().expect("id");
    stack.calls(id, 3).await;
    // A negative check needs a wait: long enough for several pulls had the dialer pulled.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(stack.stats().await.placed, 0, "a draft is not dialled");
    assert_eq!(document(&js, id).await["state"], "draft");

    let (status, body) = stack
        .send(&format!("/api/v1/campaigns/{id}/start"), json!({}))
        .await;
    assert_eq!(
        (status, body["state"].as_str()),
        (200, Some("running")),
        "{body}"
    );
    let completed = eventually(Duration::from_secs(30), || async {
        let doc = document(&js, id).await;
        (doc["state"] == "completed").then_some(doc)
    })
    .await;
    assert!(
        completed.is_some(),
        "the campaign completes once its calls are done: {} {:?}",
        document(&js, id).await,
        statuses(&pg, id).await
    );
    // Completion waits for every call to be terminal in the read model.
    assert_eq!(statuses(&pg, id).await, [("COMPLETED".to_owned(), 3)]);
    assert_eq!(stack.stats().await.placed, 3);
    let (status, body) = stack
        .send(
            "/api/v1/calls",
            json!({"campaign_id": id, "phone_number": "+15553000001"}),
        )
        .await;
    assert_eq!(
        (status, body["detail"].as_str()),
        (409, Some(format!("campaign {id} is completed").as_str()))
    );
    dialer.stop().await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_ends_queued_and_scheduled_calls_and_purges_their_retries() {
    let env = TestEnv::start().await.expect("test environment");
    let stack = CarrierStack::start(&env, sim(0, 1)).await;
    let dialer = Dialer::start(stack.config.clone());
    let js = env.jetstream().await.expect("jetstream");
    let pg = env.pg().await.expect("postgres");
    let (status, body) = stack
        .send(
            "/api/v1/campaigns",
            json!({
                "name": "to cancel",
                "max_attempts": 3,
                "retry_policy": {"status_retry_rules": {"RNR": {"should_retry": true, "backoff": ["600s"]}}}
            }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_u64().expect("id");
    stack.calls(id, 3).await;
    let retrying = eventually(Duration::from_secs(30), || async {
        let waiting = statuses(&pg, id).await == [("RETRYING".to_owned(), 3)];
        (waiting && scheduled(&js, id).await == 3).then_some(())
    })
    .await;
    assert!(
        retrying.is_some(),
        "three retries scheduled ten minutes ahead: {:?}",
        statuses(&pg, id).await
    );
    // Two more calls wait queued behind a pause.
    let (status, _) = stack
        .send(&format!("/api/v1/campaigns/{id}/pause"), json!({}))
        .await;
    assert_eq!(status, 200);
    let queued = ["+15553000101", "+15553000102"];
    for number in queued {
        let (status, body) = stack
            .send(
                "/api/v1/calls",
                json!({"campaign_id": id, "phone_number": number}),
            )
            .await;
        assert_eq!(status, 202, "{body}");
    }

    let (status, body) = stack
        .send(&format!("/api/v1/campaigns/{id}/cancel"), json!({}))
        .await;
    assert_eq!((status, body["state"].as_str()), (200, Some("cancelled")));
    // A dial message published just after the pause can be delivered to the stopped worker's
    // pull, which the server keeps until it expires; such a message comes back after the
    // consumer's AckWait (30 s), so the budget covers one AckWait.
    let cancelled = eventually(Duration::from_secs(45), || async {
        (statuses(&pg, id).await == [("CANCELLED".to_owned(), 5)]).then_some(())
    })
    .await;
    assert!(
        cancelled.is_some(),
        "queued and scheduled calls end CANCELLED: {:?}",
        statuses(&pg, id).await
    );
    assert_eq!(
        scheduled(&js, id).await,
        0,
        "RETRIES purged of the campaign"
    );
    assert_eq!(stack.stats().await.placed, 3, "only the first attempts");
    let claims = js.get_key_value("active_calls").await.expect("bucket");
    let first: Vec<String> = (0..3)
        .map(|i| format!("1555{:07}", 1_000_000 + i))
        .collect();
    for digits in first
        .iter()
        .map(String::as_str)
        .chain(queued.map(|n| &n[1..]))
    {
        assert!(
            claims.get(digits).await.expect("kv").is_none(),
            "{digits} released"
        );
    }
    dialer.stop().await;
    stack.stop().await;
}
