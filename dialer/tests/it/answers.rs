//! Generated sequences of carrier answers: whatever the carrier (or a proxy in front of it)
//! answers, an attempt the carrier created is never placed a second time, and every attempt
//! ends.
//!
//! Each case scripts carrier-sim's answers to the placement requests at random (seed printed,
//! `CCM_SEED` replays one): placed and confirmed, refused (400), not taking requests (503:
//! nothing created), over the account's limits (429: nothing created, put off), and the answers that prove nothing — 500, 502 or 504 after the
//! call was created, or a confirmation later than the dialer's request timeout. The audit:
//! every attempt in the carrier's ledger was requested once, and every call has an outcome.

use std::time::Duration;

use ccm_carrier_sim::{SimConfig, script::Scripted};
use ccm_core::{
    CampaignId, EventKind, OutcomeSource,
    config::{CarrierConfig, HttpCarrierConfig},
    topology::names,
};
use ccm_tests::{TestEnv, eventually};
use rand::{Rng, SeedableRng, rngs::StdRng};
use tokio_util::sync::CancellationToken;

use crate::{
    expiry::{carrier, outcome, stats},
    metrics::{campaign, dial},
};

const CALLS: u32 = 12;
/// The dialer's request timeout; a slower confirmation is a lost answer.
const REQUEST_TIMEOUT_MS: u64 = 300;

/// One of the answers a carrier gives, and whether the call was created.
fn answer(rng: &mut StdRng) -> Scripted {
    let (status, placed, delay_ms) = match rng.random_range(0..9) {
        0 => (200, true, 0),
        1 => (503, false, 0),
        2 => (429, false, 0),
        3 => (400, false, 0),
        4 => (500, true, 0),
        5 => (502, true, 0),
        6 => (504, true, 0),
        7 => (502, false, 0),
        _ => (200, true, REQUEST_TIMEOUT_MS * 3),
    };
    Scripted {
        status,
        placed,
        delay_ms,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_carrier_answer_leads_to_a_second_placement_of_a_created_attempt() {
    let seed = std::env::var("CCM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("seed {seed} (CCM_SEED={seed} replays it)");
    let mut rng = StdRng::seed_from_u64(seed);
    let script: Vec<Scripted> = (0..CALLS * 2).map(|_| answer(&mut rng)).collect();

    let env = TestEnv::start().await.expect("env");
    env.provision().await.expect("provision");
    let js = env.jetstream().await.expect("js");
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    // Calls last a minute and call back nowhere: each ends by its maximum duration.
    let sim_url = carrier(
        SimConfig {
            call_ms: 60_000,
            ..SimConfig::default()
        },
        &shutdown,
    )
    .await;
    let http = reqwest::Client::new();
    let put = http
        .put(format!("{sim_url}/script"))
        .json(&script)
        .send()
        .await
        .expect("script");
    assert!(put.status().is_success());

    let id = CampaignId::new(65).expect("id");
    let mut doc = campaign(id, CALLS);
    doc.max_call_duration_secs = Some(2);
    ccm_core::nats::bucket(&js, names::KV_CAMPAIGNS)
        .await
        .expect("bucket")
        .put(
            id.to_string(),
            serde_json::to_vec(&doc).expect("json").into(),
        )
        .await
        .expect("put campaign");
    let requests: Vec<_> = (0..CALLS).map(|n| dial(id, n)).collect();
    for request in &requests {
        ccm_core::nats::publish_dial(&js, request)
            .await
            .expect("publish");
    }
    let mut config = env.config();
    config.dialer.carrier = CarrierConfig::Http(HttpCarrierConfig {
        base_url: sim_url.clone().into(),
        request_timeout_ms: REQUEST_TIMEOUT_MS,
        ..HttpCarrierConfig::default()
    });
    config.dialer.hangup_grace_ms = 200;
    // The retrier brings back the attempts a 429 put off.
    tokio::spawn(ccm_retrier::run(config.clone(), shutdown.clone()));
    tokio::spawn(ccm_dialer::run(config, shutdown.clone()));

    let events = js.get_stream(names::CALL_EVENTS).await.expect("events");
    let mut outcomes = Vec::new();
    for request in &requests {
        let ended = eventually(Duration::from_secs(60), || {
            outcome(&events, id, request.call_id)
        })
        .await
        .unwrap_or_else(|| panic!("seed {seed}: call {} never ended", request.call_id));
        outcomes.push(ended);
    }
    let stats = stats(&http, &sim_url).await.expect("stats");
    for (key, attempt) in &stats.attempts {
        assert_eq!(
            attempt.requests, 1,
            "seed {seed}: attempt {key} was requested again after the carrier created it; \
             script {script:?}; {stats:?}"
        );
    }
    assert_eq!(stats.repeated_requests, 0, "seed {seed}: {stats:?}");
    // An attempt whose placement was never confirmed ends showing why.
    for ended in &outcomes {
        let EventKind::Outcome { source, reason, .. } = &ended.kind else {
            panic!("seed {seed}: {ended:?}")
        };
        if *source == OutcomeSource::Timeout {
            let reason = reason.as_deref().unwrap_or_default();
            assert!(reason.starts_with("timeout"), "seed {seed}: {reason}");
        }
    }
    eprintln!(
        "seed {seed}: {} attempts placed, {} outcome-unknown",
        stats.placed,
        outcomes
            .iter()
            .filter(
                |o| matches!(&o.kind, EventKind::Outcome { reason: Some(r), .. }
                if r.contains("outcome unknown"))
            )
            .count()
    );
}
