//! A call that outlives its maximum duration is hung up at the carrier before its attempt
//! ends: the synthetic FAILED (`timeout`) is only published once the carrier confirmed the
//! hang-up, so the slot and the number are never freed while the line may be live.

use std::time::Duration;

use ccm_carrier_sim::{SimConfig, ledger::Stats};
use ccm_core::{
    CallEvent, CampaignId, EventKind, OutcomeSource,
    config::{CarrierConfig, HttpCarrierConfig},
    subjects,
    topology::names,
};
use ccm_tests::{TestEnv, eventually};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::{campaign, dial};

/// Starts carrier-sim with `sim` (callbacks go nowhere); returns its URL.
pub async fn carrier(sim: SimConfig, shutdown: &CancellationToken) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let sim = SimConfig {
        callback_base: "http://127.0.0.1:9".into(),
        ..sim
    };
    tokio::spawn(ccm_carrier_sim::run(sim, listener, shutdown.clone()));
    url
}

pub async fn stats(http: &reqwest::Client, sim_url: &str) -> Option<Stats> {
    http.get(format!("{sim_url}/stats"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()
}

/// The attempt's outcome, once stored.
pub async fn outcome(
    events: &async_nats::jetstream::stream::Stream,
    id: CampaignId,
    call: ccm_core::CallId,
) -> Option<CallEvent> {
    let stored = events
        .direct_get_last_for_subject(subjects::outcome(id, call))
        .await
        .ok()?;
    serde_json::from_slice(&stored.payload).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_past_its_maximum_duration_is_hung_up_before_it_ends() {
    let env = TestEnv::start().await.expect("env");
    env.provision().await.expect("provision");
    let js = env.jetstream().await.expect("js");
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    // The call would last a minute; the campaign allows one second.
    let sim_url = carrier(
        SimConfig {
            call_ms: 60_000,
            ..SimConfig::default()
        },
        &shutdown,
    )
    .await;
    let id = CampaignId::new(64).expect("id");
    let mut doc = campaign(id, 1);
    doc.max_call_duration_secs = Some(1);
    ccm_core::nats::bucket(&js, names::KV_CAMPAIGNS)
        .await
        .expect("bucket")
        .put(
            id.to_string(),
            serde_json::to_vec(&doc).expect("json").into(),
        )
        .await
        .expect("put campaign");
    let request = dial(id, 1);
    ccm_core::nats::publish_dial(&js, &request)
        .await
        .expect("publish");
    let mut config = env.config();
    config.dialer.carrier = CarrierConfig::Http(HttpCarrierConfig {
        base_url: sim_url.clone().into(),
        ..HttpCarrierConfig::default()
    });
    config.dialer.hangup_grace_ms = 300;
    tokio::spawn(ccm_dialer::run(config, shutdown.clone()));

    let events = js.get_stream(names::CALL_EVENTS).await.expect("events");
    let ended = eventually(Duration::from_secs(20), || {
        outcome(&events, id, request.call_id)
    })
    .await
    .expect("the attempt ends");
    // Read after the outcome: the hang-up came first.
    let http = reqwest::Client::new();
    let stats = stats(&http, &sim_url).await.expect("stats");
    let attempt = &stats.attempts[&request.msg_id()];
    assert!(
        attempt.hung_up,
        "the call was hung up at the carrier before the attempt ended: {stats:?}"
    );
    assert_eq!((stats.live, attempt.requests), (0, 1), "{stats:?}");
    let EventKind::Outcome { source, reason, .. } = &ended.kind else {
        panic!("{ended:?}")
    };
    // The carrier-sim's callback goes nowhere here, so the synthetic outcome stands.
    assert_eq!(
        (*source, reason.as_deref()),
        (OutcomeSource::Timeout, Some("timeout"))
    );
}

/// While the carrier does not confirm the hang-up the call stays held: no outcome, so no
/// retry and no free slot, and the hang-up is asked again until the carrier confirms it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_whose_hang_up_is_not_confirmed_stays_held_until_it_is() {
    let env = TestEnv::start().await.expect("env");
    env.provision().await.expect("provision");
    let js = env.jetstream().await.expect("js");
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let sim_url = carrier(
        SimConfig {
            call_ms: 60_000,
            ..SimConfig::default()
        },
        &shutdown,
    )
    .await;
    let http = reqwest::Client::new();
    let faults = |rate: f64| {
        http.put(format!("{sim_url}/faults"))
            .json(&serde_json::json!({"hangup_error_rate": rate}))
            .send()
    };
    assert!(faults(1.0).await.expect("faults").status().is_success());
    let id = CampaignId::new(67).expect("id");
    let mut doc = campaign(id, 1);
    doc.max_call_duration_secs = Some(1);
    ccm_core::nats::bucket(&js, names::KV_CAMPAIGNS)
        .await
        .expect("bucket")
        .put(
            id.to_string(),
            serde_json::to_vec(&doc).expect("json").into(),
        )
        .await
        .expect("put campaign");
    let request = dial(id, 1);
    ccm_core::nats::publish_dial(&js, &request)
        .await
        .expect("publish");
    let mut config = env.config();
    config.dialer.carrier = CarrierConfig::Http(HttpCarrierConfig {
        base_url: sim_url.clone().into(),
        ..HttpCarrierConfig::default()
    });
    config.dialer.hangup_grace_ms = 300;
    tokio::spawn(ccm_dialer::run(config, shutdown.clone()));

    // The hang-up is refused again and again (0.5 s, then 1 s apart): three refusals take
    // 1.5 s past the one-second maximum, and all the while the attempt has no outcome.
    let events = js.get_stream(names::CALL_EVENTS).await.expect("events");
    eventually(Duration::from_secs(20), || async {
        let now = stats(&http, &sim_url).await?;
        assert!(
            outcome(&events, id, request.call_id).await.is_none(),
            "an outcome while the carrier had not confirmed the hang-up: {now:?}"
        );
        (now.hangup_requests >= 3).then_some(())
    })
    .await
    .expect("the hang-up is asked again");
    let held = stats(&http, &sim_url).await.expect("stats");
    assert_eq!(held.live, 1, "the call is still live: {held:?}");

    assert!(faults(0.0).await.expect("faults").status().is_success());
    eventually(Duration::from_secs(20), || {
        outcome(&events, id, request.call_id)
    })
    .await
    .expect("the attempt ends once the hang-up is confirmed");
    let ended = stats(&http, &sim_url).await.expect("stats");
    assert!(ended.attempts[&request.msg_id()].hung_up, "{ended:?}");
    assert_eq!(ended.live, 0, "{ended:?}");
}
