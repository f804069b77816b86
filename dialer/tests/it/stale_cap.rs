//! A dial consumer written for a moment with a cap higher than the campaign's (a writer that
//! read the document just before the cap was lowered; nats-server has no compare-and-set
//! for consumer updates) must not let more calls be live than the campaign's cap.
//!
//! Two dialer replicas share a campaign whose cap goes from 6 to 2 and whose calls never end
//! (a silent carrier): once 2 are live, the consumer is written with `max_ack_pending` 6, as a
//! writer that read the older document would, and each replica with room under its own view of the cap has a pull waiting. The
//! server hands out more messages at once; the dialers must place none of them while the
//! campaign's stored cap is reached (issue 16; seed 1 of the generated faults found a cap
//! of 5 exceeded by one call three seconds after it was lowered from 10).

use std::time::Duration;

use async_nats::jetstream::consumer;
use ccm_core::{
    CampaignId,
    config::{CarrierConfig, HttpCarrierConfig},
    subjects,
    topology::names,
};
use ccm_tests::{TestEnv, eventually};
use tokio_util::sync::CancellationToken;

use crate::{
    metrics::{campaign, dial},
    placements::{silent_carrier, sim_stats as stats},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_briefly_written_over_the_cap_places_no_call_over_it() {
    let env = TestEnv::start().await.expect("env");
    env.provision().await.expect("provision");
    let js = env.jetstream().await.expect("js");
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let sim_url = silent_carrier(&shutdown).await;

    // The campaign runs at cap 6, then its cap is lowered to 2: the stale writer below is
    // one that read the document of the cap-6 era.
    let id = CampaignId::new(71).expect("id");
    let campaigns = ccm_core::nats::bucket(&js, names::KV_CAMPAIGNS)
        .await
        .expect("bucket");
    let mut doc = campaign(id, 6);
    let put = |doc: &ccm_core::Campaign| {
        let (campaigns, id, bytes) = (
            campaigns.clone(),
            id.to_string(),
            serde_json::to_vec(doc).expect("json"),
        );
        async move { campaigns.put(id, bytes.into()).await.expect("put campaign") }
    };
    put(&doc).await;
    let mut config = env.config();
    config.dialer.carrier = CarrierConfig::Http(HttpCarrierConfig {
        base_url: sim_url.clone().into(),
        ..HttpCarrierConfig::default()
    });
    config.dialer.max_call_duration_secs = 600;
    tokio::spawn(ccm_dialer::run(config.clone(), shutdown.clone()));
    tokio::spawn(ccm_dialer::run(config, shutdown.clone()));
    let calls = js.get_stream(names::CALLS).await.expect("CALLS");
    let name = subjects::dial_consumer(id);
    let cap = |want: i64| {
        let (calls, name) = (calls.clone(), name.clone());
        async move {
            let info = calls.consumer_info(&name).await.ok()?;
            (info.config.max_ack_pending == want).then_some(())
        }
    };
    assert!(
        eventually(Duration::from_secs(20), || cap(6))
            .await
            .is_some()
    );
    doc.max_concurrent_calls = 2;
    doc.updated_at = chrono::Utc::now();
    put(&doc).await;
    assert!(
        eventually(Duration::from_secs(20), || cap(2))
            .await
            .is_some(),
        "the dialers did not bring the consumer to the lowered cap"
    );
    for n in 0..8 {
        ccm_core::nats::publish_dial(&js, &dial(id, 7100 + n))
            .await
            .expect("dial message");
    }

    let http = reqwest::Client::new();
    let key = id.to_string();
    let live = eventually(Duration::from_secs(20), || async {
        let s = stats(&http, &sim_url).await?;
        s.campaigns
            .get(&key)
            .filter(|c| c.live == 2)
            .map(|c| c.live)
    })
    .await;
    assert_eq!(
        live,
        Some(2),
        "the campaign's first two calls were not placed"
    );

    // The stale writer's consumer; the campaign's cap is 2 in its document.
    let mut stale: consumer::Config = calls.consumer_info(&name).await.expect("info").config;
    stale.max_ack_pending = 6;
    calls.create_consumer(stale).await.expect("stale write");

    // Long enough for the replicas' waiting pulls to be served and their calls placed,
    // and for a reconcile to have put the cap back.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let s = stats(&http, &sim_url).await.expect("stats");
    let c = &s.campaigns[&key];
    assert!(
        c.peak <= 2,
        "{} calls were live at once in a campaign of cap 2 ({} placed)",
        c.peak,
        c.placed
    );
}
