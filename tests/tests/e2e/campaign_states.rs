//! The dialer follows its campaigns' documents: a paused campaign is not dialled, a changed
//! cap reaches the consumer, a cancelled campaign's queued calls end CANCELLED.

use std::time::Duration;

use async_nats::jetstream::kv;
use ccm_tests::{TestEnv, eventually};
use serde_json::Value;

use crate::carrier_stack::{CarrierStack, Dialer, answering, statuses};

/// Rewrites the campaign document as an operator's pause/resume/cancel would.
async fn update(campaigns: &kv::Store, id: u64, change: impl FnOnce(&mut Value)) {
    let current = campaigns
        .get(id.to_string())
        .await
        .expect("kv")
        .expect("campaign");
    let mut doc: Value = serde_json::from_slice(&current).expect("json");
    change(&mut doc);
    campaigns
        .put(
            id.to_string(),
            serde_json::to_vec(&doc).expect("json").into(),
        )
        .await
        .expect("put");
}

/// Waits until the dialer has applied the cap to the campaign's consumer, which also says it
/// has read the document carrying it.
async fn consumer_cap(env: &TestEnv, id: u64, cap: i64) {
    let js = env.jetstream().await.expect("jetstream");
    let applied = eventually(Duration::from_secs(10), || async {
        let stream = js.get_stream("CALLS").await.ok()?;
        let info = stream.consumer_info(format!("dial_{id}")).await.ok()?;
        (info.config.max_ack_pending == cap).then_some(())
    })
    .await;
    assert!(
        applied.is_some(),
        "max_ack_pending of dial_{id} never became {cap}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_campaigns_wait_resumed_ones_dial_cancelled_ones_end_cancelled() {
    let env = TestEnv::start().await.expect("test environment");
    let sim = answering(20);
    let stack = CarrierStack::start(&env, sim).await;
    let dialer = Dialer::start(stack.config.clone());
    let id = stack.campaign(5).await;
    let js = env.jetstream().await.expect("jetstream");
    let campaigns = js.get_key_value("campaigns").await.expect("bucket");
    let pg = env.pg().await.expect("postgres");

    update(&campaigns, id, |c| {
        c["state"] = "paused".into();
        c["max_concurrent_calls"] = 3.into();
    })
    .await;
    consumer_cap(&env, id, 3).await;
    stack.calls(id, 3).await;
    // A negative check needs a wait: long enough for several pulls had the dialer pulled.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        stack.stats().await.placed,
        0,
        "a paused campaign is not dialled"
    );

    update(&campaigns, id, |c| c["state"] = "active".into()).await;
    let completed = eventually(Duration::from_secs(20), || async {
        let counts = statuses(&pg, id).await;
        (counts == [("COMPLETED".to_owned(), 3)]).then_some(())
    })
    .await;
    assert!(
        completed.is_some(),
        "resumed calls complete: {:?}",
        statuses(&pg, id).await
    );

    update(&campaigns, id, |c| {
        c["state"] = "paused".into();
        c["max_concurrent_calls"] = 4.into();
    })
    .await;
    consumer_cap(&env, id, 4).await;
    // Numbers distinct from the first three: `calls` numbers from the same base.
    let queued: Vec<String> = (0..3)
        .map(|i| format!("+1555{:07}", 2_000_000 + i))
        .collect();
    for number in &queued {
        let (status, body) = stack
            .send(
                "/api/v1/calls",
                serde_json::json!({"campaign_id": id, "phone_number": number}),
            )
            .await;
        assert_eq!(status, 202, "{body}");
    }
    update(&campaigns, id, |c| c["state"] = "cancelled".into()).await;
    let cancelled = eventually(Duration::from_secs(20), || async {
        let counts = statuses(&pg, id).await;
        (counts == [("CANCELLED".to_owned(), 3), ("COMPLETED".to_owned(), 3)]).then_some(())
    })
    .await;
    assert!(
        cancelled.is_some(),
        "queued calls cancelled: {:?}",
        statuses(&pg, id).await
    );
    assert_eq!(
        stack.stats().await.placed,
        3,
        "cancelled calls are never placed"
    );
    let claims = js.get_key_value("active_calls").await.expect("bucket");
    for number in &queued {
        let digits = number.trim_start_matches('+');
        assert!(
            claims.get(digits).await.expect("kv").is_none(),
            "{number} released"
        );
    }
    dialer.stop().await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaigns_share_a_small_trunk_fairly() {
    let env = TestEnv::start().await.expect("test environment");
    let sim = answering(150);
    let mut stack = CarrierStack::start(&env, sim).await;
    stack.config.dialer.max_calls = 4;
    let dialer = Dialer::start(stack.config.clone());
    let big = stack.campaign(10).await;
    let small = stack.campaign(10).await;
    let pg = env.pg().await.expect("postgres");

    // The big campaign queues first; the small one must not wait for it to drain.
    stack.calls(big, 40).await;
    let numbers: Vec<String> = (0..8)
        .map(|i| format!("+1555{:07}", 3_000_000 + i))
        .collect();
    for number in &numbers {
        let (status, body) = stack
            .send(
                "/api/v1/calls",
                serde_json::json!({"campaign_id": small, "phone_number": number}),
            )
            .await;
        assert_eq!(status, 202, "{body}");
    }
    let done = |id: u64, n: i64| {
        let pg = pg.clone();
        async move {
            let counts = statuses(&pg, id).await;
            counts == [("COMPLETED".to_owned(), n)]
        }
    };
    let small_done = eventually(Duration::from_secs(30), || async {
        done(small, 8).await.then_some(())
    })
    .await;
    assert!(
        small_done.is_some(),
        "small campaign: {:?}",
        statuses(&pg, small).await
    );
    assert!(
        !done(big, 40).await,
        "the small campaign finished while the big one still ran"
    );
    let big_done = eventually(Duration::from_secs(30), || async {
        done(big, 40).await.then_some(())
    })
    .await;
    assert!(
        big_done.is_some(),
        "big campaign: {:?}",
        statuses(&pg, big).await
    );

    let stats = stack.stats().await;
    eprintln!(
        "trunk 4: peak live calls {} (big {}, small {})",
        stats.peak,
        stats.campaigns[&big.to_string()].peak,
        stats.campaigns[&small.to_string()].peak
    );
    assert!(
        stats.peak <= 4,
        "the trunk holds 4 calls, peak {}",
        stats.peak
    );
    assert!(
        stats.campaigns[&small.to_string()].peak >= 2,
        "the small campaign got its share"
    );
    dialer.stop().await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_campaign_loses_its_consumer_only_when_nothing_waits_on_it() {
    let env = TestEnv::start().await.expect("test environment");
    let stack = CarrierStack::start(&env, ccm_carrier_sim::SimConfig::default()).await;
    let dialer = Dialer::start(stack.config.clone());
    let empty = stack.campaign(5).await;
    let busy = stack.campaign(5).await;
    let js = env.jetstream().await.expect("jetstream");
    let campaigns = js.get_key_value("campaigns").await.expect("bucket");
    update(&campaigns, busy, |c| {
        c["state"] = "paused".into();
        c["max_concurrent_calls"] = 2.into();
    })
    .await;
    consumer_cap(&env, busy, 2).await;
    stack.calls(busy, 1).await;

    // The busy one first: the watch applies changes in order, so once the empty one's
    // consumer is gone the busy one's deletion has been handled too.
    campaigns.delete(busy.to_string()).await.expect("delete");
    campaigns.delete(empty.to_string()).await.expect("delete");
    let calls = js.get_stream("CALLS").await.expect("stream");
    let removed = eventually(Duration::from_secs(10), || async {
        calls
            .consumer_info(format!("dial_{empty}"))
            .await
            .is_err()
            .then_some(())
    })
    .await;
    assert!(
        removed.is_some(),
        "the empty campaign's consumer is removed"
    );
    let kept = calls
        .consumer_info(format!("dial_{busy}"))
        .await
        .expect("kept");
    assert_eq!(
        kept.num_pending, 1,
        "the queued call still waits on its consumer"
    );
    dialer.stop().await;
    stack.stop().await;
}
