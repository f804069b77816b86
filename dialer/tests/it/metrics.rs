//! The dialer's `/metrics`, `/healthz` and `/readyz` with a real NATS server.

use std::{net::SocketAddr, time::Duration};

use ccm_core::{
    CallId, Campaign, CampaignId, CampaignState, DialRequest, PhoneNumber, PhoneRule,
    config::{CarrierConfig, SimCarrierConfig},
    metrics::{get, sample},
    topology::names,
};
use ccm_tests::{TestEnv, eventually};
use chrono::Utc;
use tokio_util::sync::CancellationToken;

pub(crate) fn campaign(id: CampaignId, cap: u32) -> Campaign {
    let now = Utc::now();
    Campaign {
        id,
        name: "metrics".into(),
        description: String::new(),
        is_active: true,
        state: CampaignState::Running,
        max_concurrent_calls: cap,
        max_attempts: 1,
        retry_policy: None,
        created_at: now,
        updated_at: now,
        time_zone: None,
        calling_window: None,
        calling_hours: None,
        blackout_dates: Vec::new(),
        max_call_duration_secs: None,
        starts_at: None,
        ends_at: None,
        complete_when_empty: false,
        answering_machine: Default::default(),
        max_calls_per_second: None,
        purpose: Default::default(),
        ring_timeout_secs: None,
        required_consent: None,
        opt_out_list: Default::default(),
        caller_id_pool: None,
        carrier_weight: None,
        alternate_numbers: None,
        ended_at: None,
    }
}

pub(crate) fn dial(campaign: CampaignId, n: u32) -> DialRequest {
    let now = Utc::now();
    DialRequest {
        call_id: CallId::new(),
        campaign_id: campaign,
        phone_number: PhoneNumber::parse(&format!("+1555000{n:04}"), PhoneRule::Lenient)
            .expect("phone"),
        attempt: 1,
        max_attempts: 1,
        created_at: now,
        queued_at: now,
        custom_fields: Default::default(),
        expires_at: None,
        alternate: None,
        callback: None,
    }
}

async fn scrape(addr: SocketAddr) -> String {
    let (status, body) = get(addr, "/metrics").await.expect("scrape");
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_queued_and_placed_calls_are_exported_and_readyz_follows_nats() {
    let mut env = TestEnv::start().await.expect("env");
    env.provision().await.expect("provision");
    let js = env.jetstream().await.expect("js");
    let id = CampaignId::new(61).expect("id");
    // Cap 1, three calls: one live (the simulated call lasts a minute), two queued.
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
    for n in 1..=3 {
        ccm_core::nats::publish_dial(&js, &dial(id, n))
            .await
            .expect("publish");
    }
    let addr: SocketAddr = (
        [127, 0, 0, 1],
        ccm_tests::process::free_port().expect("port"),
    )
        .into();
    let mut config = env.config();
    config.dialer.metrics_listen = Some(addr);
    // The queue depth is read by the consumer sweep.
    config.dialer.consumer_sweep_secs = 1;
    config.dialer.carrier = CarrierConfig::Sim(SimCarrierConfig {
        call_ms: 60_000,
        ..Default::default()
    });
    let shutdown = CancellationToken::new();
    tokio::spawn(ccm_dialer::run(config, shutdown.clone()));

    let campaign = id.to_string();
    let labels = [("campaign", campaign.as_str())];
    let text = eventually(Duration::from_secs(20), || async {
        let text = get(addr, "/metrics").await.ok()?.1;
        let live = sample(&text, "ccm_dialer_live_calls", &labels);
        let queued = sample(&text, "ccm_dialer_queued_calls", &labels);
        // Sampled apart (the queue by the sweep, the lines every 5 s): wait for both.
        let lines = sample(&text, "ccm_dialer_trunk_lines_busy", &[]);
        (live == Some(1.0) && queued == Some(2.0) && lines == Some(1.0)).then_some(text)
    })
    .await;
    let Some(text) = text else {
        panic!(
            "expected one live and two queued calls:\n{}",
            scrape(addr).await
        )
    };
    assert_eq!(
        sample(&text, "ccm_dialer_calls_placed_total", &labels),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "ccm_dialer_carrier_request_duration_seconds_count",
            &[("carrier", "sim"), ("result", "placed")],
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(sample(&text, "ccm_dialer_trunk_lines_busy", &[]), Some(1.0));
    assert_eq!(get(addr, "/healthz").await.expect("healthz").0, 200);
    assert_eq!(get(addr, "/readyz").await.expect("readyz").0, 200);

    // NATS gone: not ready, though still alive.
    env.local_nats.as_mut().expect("local nats").stop();
    let unready = eventually(Duration::from_secs(15), || async {
        let (status, body) = get(addr, "/readyz").await.ok()?;
        (status == 503).then_some(body)
    })
    .await
    .expect("/readyz turns 503 without NATS");
    assert!(unready.contains("nats"), "{unready}");
    assert_eq!(get(addr, "/healthz").await.expect("healthz").0, 200);
    shutdown.cancel();
}

/// The dial consumers are listed once per consumer sweep, not also every few seconds for the
/// queue gauge: on a cluster each listed consumer is one request to its leader, so a listing
/// on a timer per replica grew with campaigns × replicas (issue 23). Failed first: the
/// gauge's own listing made 3 list requests in 12 s with the sweep set to 10 minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dial_consumers_are_listed_only_by_the_sweep() {
    use futures::StreamExt as _;
    let env = TestEnv::start().await.expect("env");
    env.provision().await.expect("provision");
    let client = env.nats().await.expect("client");
    let mut lists = client
        .subscribe("$JS.API.CONSUMER.LIST.CALLS")
        .await
        .expect("subscribe");
    let mut config = env.config();
    config.dialer.consumer_sweep_secs = 600;
    let shutdown = CancellationToken::new();
    tokio::spawn(ccm_dialer::run(config, shutdown.clone()));
    let mut listed = 0;
    let until = tokio::time::Instant::now() + Duration::from_secs(12);
    while let Ok(Some(_)) = tokio::time::timeout_at(until, lists.next()).await {
        listed += 1;
    }
    shutdown.cancel();
    assert_eq!(listed, 0, "list requests in 12 s with a 10-minute sweep");
}
