//! Two deliveries of one attempt handled at once: both find nothing placed, and only the one
//! whose `Dialing` is stored first asks the carrier; the other waits for the same outcome.
//!
//! The campaign is paced, so each delivery waits for its slot between looking at the call
//! and publishing `Dialing`: the window in which a second delivery of the attempt (a dial
//! message redelivered after AckWait, or a second message of the attempt) used to place the
//! call a second time, its `Dialing` taken for one withdrawn earlier.

use std::time::Duration;

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
    placements::{silent_carrier, sim_stats as stats},
};

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
            callback: None,
        },
    };
    ccm_core::outcome_route::publish_carrier_outcome(&js, &outcome, None)
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

/// The same race with the two `Dialing` publishes further apart than the stream's
/// de-duplication window (made 200 ms here, 2 minutes in production): the window must not be
/// what keeps the second delivery from placing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_deliveries_further_apart_than_the_dedup_window_place_once() {
    let env = TestEnv::start().await.expect("env");
    env.provision().await.expect("provision");
    let js = env.jetstream().await.expect("js");
    let mut events = js
        .get_stream(names::CALL_EVENTS)
        .await
        .expect("CALL_EVENTS")
        .info()
        .await
        .expect("info")
        .config
        .clone();
    events.duplicate_window = Duration::from_millis(200);
    js.update_stream(&events).await.expect("short window");
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let sim_url = silent_carrier(&shutdown).await;

    // One call a second: the first call takes the first slot, the attempt's two deliveries
    // the next two, a second apart, five times the window.
    let id = CampaignId::new(66).expect("id");
    let mut paced = campaign(id, 5);
    paced.max_calls_per_second = Some(1);
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
    // The window set above stays: the dialer does not provision.
    config.provision = false;
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
    // Both deliveries have had their slot (3 s at most after the start) once the third
    // slot's time has passed; the second delivery then waits for the outcome.
    let calls = js.get_stream(names::CALLS).await.expect("CALLS");
    eventually(Duration::from_secs(20), || async {
        let info = calls
            .consumer_info(ccm_core::subjects::dial_consumer(id))
            .await
            .ok()?;
        (info.num_pending == 0 && info.num_ack_pending == 3 && info.delivered.stream_sequence >= 3)
            .then_some(())
    })
    .await
    .expect("all three messages delivered");
    let placed = eventually(Duration::from_secs(10), || async {
        let stats = stats(&http, &sim_url).await?;
        // The first call and the attempt; a second placement would come within the slot.
        (stats.placed >= 2).then_some(stats)
    })
    .await
    .expect("both calls placed");
    tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            let stats = stats(&http, &sim_url).await.expect("stats");
            assert_eq!(
                stats.attempts[&request.msg_id()].requests,
                1,
                "the carrier was asked once: {stats:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect_err("watched for three seconds");
    assert_eq!(placed.repeated_requests, 0);
}
