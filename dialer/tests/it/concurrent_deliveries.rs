//! Two deliveries of one attempt handled at once: both find nothing placed, and only the one
//! whose `Dialing` is stored first asks the carrier; the other waits for the same outcome.
//!
//! The campaign is paced, so each delivery waits for its slot between looking at the call
//! and publishing `Dialing`: the window in which a second delivery of the attempt (a dial
//! message redelivered after AckWait, or a second message of the attempt) used to place the
//! call a second time, its `Dialing` taken for one withdrawn earlier.

use std::time::Duration;

use ccm_carrier_sim::ledger::Stats;
use ccm_core::{
    CallEvent, CampaignId, EventKind, OutcomeSource, OutcomeStatus,
    config::{CarrierConfig, HttpCarrierConfig},
    topology::names,
};
use ccm_tests::{TestEnv, eventually};
use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::{
    metrics::{campaign, dial},
    placements::silent_carrier,
};

async fn stats(http: &reqwest::Client, sim_url: &str) -> Option<Stats> {
    http.get(format!("{sim_url}/stats"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_deliveries_of_one_attempt_at_once_place_it_once() {
    let env = TestEnv::start().await.expect("env");
    env.provision().await.expect("provision");
    let js = env.jetstream().await.expect("js");
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();

    let sim_url = silent_carrier(&shutdown).await;

    // Two calls a second: the first call takes the first slot, so both deliveries of the
    // second wait half a second or more after looking.
    let id = CampaignId::new(63).expect("id");
    let mut paced = campaign(id, 5);
    paced.max_calls_per_second = Some(2);
    ccm_core::nats::bucket(&js, names::KV_CAMPAIGNS)
        .await
        .expect("bucket")
        .put(
            id.to_string(),
            serde_json::to_vec(&paced).expect("json").into(),
        )
        .await
        .expect("put campaign");
    ccm_core::nats::publish_dial(&js, &dial(id, 1))
        .await
        .expect("first call");
    let request = dial(id, 2);
    ccm_core::nats::publish_dial(&js, &request)
        .await
        .expect("the attempt");
    let again = format!("{}/again", request.msg_id());
    ccm_core::nats::publish_json(&js, request.subject(), &again, None, &request)
        .await
        .expect("the attempt a second time");

    let mut config = env.config();
    config.dialer.carrier = CarrierConfig::Http(HttpCarrierConfig {
        base_url: sim_url.clone().into(),
        ..HttpCarrierConfig::default()
    });
    tokio::spawn(ccm_dialer::run(config, shutdown.clone()));

    let http = reqwest::Client::new();
    eventually(Duration::from_secs(20), || async {
        let stats = stats(&http, &sim_url).await?;
        stats.attempts.contains_key(&request.msg_id()).then_some(())
    })
    .await
    .expect("the attempt is placed");
    // Its outcome, as the carrier's callback brings it: both deliveries end with it.
    let outcome = CallEvent {
        call_id: request.call_id,
        campaign_id: id,
        attempt: request.attempt,
        at: Utc::now(),
        kind: EventKind::Outcome {
            status: OutcomeStatus::Picked,
            source: OutcomeSource::Carrier,
            raw_status: None,
            duration_secs: Some(1),
            external_call_id: None,
            reason: None,
        },
    };
    ccm_core::nats::publish_event(&js, &outcome)
        .await
        .expect("outcome");
    let calls = js.get_stream(names::CALLS).await.expect("CALLS");
    eventually(Duration::from_secs(20), || async {
        let info = calls
            .consumer_info(ccm_core::subjects::dial_consumer(id))
            .await
            .ok()?;
        // Only the first call, lasting a minute, is still live.
        (info.num_pending == 0 && info.num_ack_pending == 1).then_some(())
    })
    .await
    .expect("both deliveries of the attempt ended");

    let stats = stats(&http, &sim_url).await.expect("stats");
    assert_eq!(
        stats.attempts[&request.msg_id()].requests,
        1,
        "the carrier was asked once: {stats:?}"
    );
    assert_eq!(stats.repeated_requests, 0);
}
