//! A placement with the old contract's adapter records the carrier's id of the call against
//! its attempt in the `placements` bucket, where ingest looks up the callbacks that name only
//! the call.

use std::time::Duration;

use ccm_carrier_sim::SimConfig;
use ccm_core::{
    CampaignId,
    config::{CarrierConfig, HttpCarrierConfig},
    placements::{self, PlacedAttempt},
    topology::names,
};
use ccm_tests::{TestEnv, eventually};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::{campaign, dial};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_placement_records_the_carriers_id_against_its_attempt() {
    let env = TestEnv::start().await.expect("env");
    env.provision().await.expect("provision");
    let js = env.jetstream().await.expect("js");
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();

    let sim_url = silent_carrier(&shutdown).await;

    let id = CampaignId::new(62).expect("id");
    let campaigns = ccm_core::nats::bucket(&js, names::KV_CAMPAIGNS)
        .await
        .expect("bucket");
    campaigns
        .put(
            id.to_string(),
            serde_json::to_vec(&campaign(id, 1)).expect("json").into(),
        )
        .await
        .expect("put campaign");
    let mut request = dial(id, 1);
    request.attempt = 2;
    ccm_core::nats::publish_dial(&js, &request)
        .await
        .expect("publish");
    let mut config = env.config();
    config.dialer.carrier = CarrierConfig::Http(HttpCarrierConfig {
        base_url: sim_url.clone().into(),
        ..HttpCarrierConfig::default()
    });
    tokio::spawn(ccm_dialer::run(config, shutdown.clone()));

    let http = reqwest::Client::new();
    let external = eventually(Duration::from_secs(20), || async {
        let stats: ccm_carrier_sim::ledger::Stats = http
            .get(format!("{sim_url}/stats"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        stats
            .attempts
            .get(&request.msg_id())
            .map(|a| a.external_call_id.clone())
    })
    .await
    .expect("the attempt is placed");
    let bucket = ccm_core::nats::bucket(&js, names::KV_PLACEMENTS)
        .await
        .expect("placements bucket");
    let recorded = eventually(Duration::from_secs(10), || async {
        placements::lookup(&bucket, &external).await.ok().flatten()
    })
    .await
    .expect("the carrier's id is recorded");
    assert_eq!(
        recorded,
        PlacedAttempt {
            call_id: request.call_id,
            campaign_id: id,
            attempt: 2,
        }
    );
}

/// carrier-sim's ledger (`GET /stats`), or `None` while it does not answer.
pub async fn sim_stats(
    http: &reqwest::Client,
    sim_url: &str,
) -> Option<ccm_carrier_sim::ledger::Stats> {
    http.get(format!("{sim_url}/stats"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()
}

/// Starts carrier-sim with calls that last a minute and callbacks that go nowhere: only the
/// placement requests matter. Returns its URL.
pub async fn silent_carrier(shutdown: &CancellationToken) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let sim = SimConfig {
        callback_base: "http://127.0.0.1:9".into(),
        call_ms: 60_000,
        ..SimConfig::default()
    };
    tokio::spawn(ccm_carrier_sim::run(sim, listener, shutdown.clone()));
    url
}
