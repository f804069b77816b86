//! A change made while paced calls wait for their slot is honoured by every call that has not
//! been placed yet: a pause, a cancel or a do-not-call listing stops the calls still waiting,
//! not only those queued behind them.
//!
//! Generated: the seed (printed; `CCM_SEED=<n>` replays it) orders the three kinds of change
//! and picks the moment of each within the pacing wait. A call whose check ran just before
//! the change may still reach the carrier a moment after it, so a placement counts as "after
//! the change" only past `MARGIN`; the slots are a quarter second apart, so a check made only
//! before the wait places calls for up to two seconds after the change.

use std::{collections::BTreeSet, time::Duration};

use ccm_carrier_sim::ledger::Stats;
use ccm_core::{
    CampaignId, CampaignState,
    config::{CarrierConfig, HttpCarrierConfig},
    dnc::{DncEntry, DncList},
    topology::names,
};
use ccm_tests::{TestEnv, eventually};
use chrono::Utc;
use rand::{Rng, SeedableRng, rngs::StdRng, seq::SliceRandom};
use tokio_util::sync::CancellationToken;

use crate::{
    metrics::{campaign, dial},
    placements::silent_carrier,
};

/// Calls queued per round; all wait for their slots at once.
const CALLS: u32 = 8;
/// The campaign's pace: a slot every 250 ms, so the last call waits 1.75 s.
const PER_SECOND: u32 = 4;
/// Time between a check made just before the change and its request reaching the carrier.
const MARGIN: Duration = Duration::from_millis(150);

#[derive(Debug, Clone, Copy)]
enum Change {
    Pause,
    Cancel,
    ListWaitingNumbers,
}

async fn stats(http: &reqwest::Client, sim_url: &str) -> Option<Stats> {
    http.get(format!("{sim_url}/stats"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()
}

fn placed_keys(stats: &Stats, campaign: CampaignId) -> BTreeSet<String> {
    stats
        .attempts
        .values()
        .filter(|a| a.campaign == campaign.to_string())
        .map(|a| a.key.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_call_is_placed_after_a_pause_cancel_or_listing_made_while_it_waited_for_its_slot() {
    let seed = std::env::var("CCM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    println!("seed {seed} (replay with CCM_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut changes = [Change::Pause, Change::Cancel, Change::ListWaitingNumbers];
    changes.shuffle(&mut rng);

    let env = TestEnv::start().await.expect("env");
    env.provision().await.expect("provision");
    let js = env.jetstream().await.expect("js");
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let sim_url = silent_carrier(&shutdown).await;
    let mut config = env.config();
    config.dialer.carrier = CarrierConfig::Http(HttpCarrierConfig {
        base_url: sim_url.clone().into(),
        ..HttpCarrierConfig::default()
    });
    // The retrier brings back the attempts a pause put off, when the campaign resumes.
    tokio::spawn(ccm_retrier::run(config.clone(), shutdown.clone()));
    tokio::spawn(ccm_dialer::run(config, shutdown.clone()));
    let campaigns = ccm_core::nats::bucket(&js, names::KV_CAMPAIGNS)
        .await
        .expect("campaigns bucket");
    let dnc = ccm_core::nats::bucket(&js, names::KV_DNC)
        .await
        .expect("dnc bucket");
    let http = reqwest::Client::new();

    for (round, change) in changes.into_iter().enumerate() {
        let round = u32::try_from(round).expect("round");
        let id = CampaignId::new(70 + u64::from(round)).expect("id");
        let mut doc = campaign(id, CALLS + 2);
        doc.max_calls_per_second = Some(PER_SECOND);
        campaigns
            .put(
                id.to_string(),
                serde_json::to_vec(&doc).expect("json").into(),
            )
            .await
            .expect("put campaign");
        let requests: Vec<_> = (0..CALLS).map(|n| dial(id, round * 100 + n)).collect();
        for request in &requests {
            ccm_core::nats::publish_dial(&js, request)
                .await
                .expect("queue call");
        }
        eventually(Duration::from_secs(20), || async {
            let stats = stats(&http, &sim_url).await?;
            (!placed_keys(&stats, id).is_empty()).then_some(())
        })
        .await
        .expect("the first call is placed");
        // Somewhere within the wait of the calls still queued behind the first slots.
        let delay = Duration::from_millis(rng.random_range(0..1_200));
        tokio::time::sleep(delay).await;
        let before = placed_keys(&stats(&http, &sim_url).await.expect("stats"), id);
        let mut listed = BTreeSet::new();
        match change {
            Change::Pause | Change::Cancel => {
                doc.state = if matches!(change, Change::Pause) {
                    CampaignState::Paused
                } else {
                    CampaignState::Cancelled
                };
                campaigns
                    .put(
                        id.to_string(),
                        serde_json::to_vec(&doc).expect("json").into(),
                    )
                    .await
                    .expect("change campaign");
            }
            Change::ListWaitingNumbers => {
                let entry = DncEntry {
                    added_at: Utc::now(),
                    reason: Some("asked not to be called".into()),
                    opted_out: None,
                };
                for request in requests.iter().filter(|r| !before.contains(&r.msg_id())) {
                    dnc.put(
                        DncList::Campaign(id).key(&request.phone_number),
                        serde_json::to_vec(&entry).expect("json").into(),
                    )
                    .await
                    .expect("list number");
                    listed.insert(request.msg_id());
                }
            }
        }
        tokio::time::sleep(MARGIN).await;
        let at_change = placed_keys(&stats(&http, &sim_url).await.expect("stats"), id);
        // Past every slot the calls had reserved.
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        let after = placed_keys(&stats(&http, &sim_url).await.expect("stats"), id);
        let late: Vec<_> = after.difference(&at_change).collect();
        match change {
            Change::Pause | Change::Cancel => assert!(
                late.is_empty(),
                "seed {seed}, {change:?} {delay:?} after the first placement: \
                 {} calls placed after it: {late:?}",
                late.len()
            ),
            Change::ListWaitingNumbers => {
                let late_listed: Vec<_> = late.iter().filter(|k| listed.contains(**k)).collect();
                assert!(
                    late_listed.is_empty(),
                    "seed {seed}, listed {delay:?} after the first placement: \
                     {} listed numbers dialled after the listing: {late_listed:?}",
                    late_listed.len()
                );
            }
        }
        if matches!(change, Change::Pause) {
            // The calls stopped by the pause were handed back, not lost: resuming places
            // every one of them.
            doc.state = CampaignState::Running;
            campaigns
                .put(
                    id.to_string(),
                    serde_json::to_vec(&doc).expect("json").into(),
                )
                .await
                .expect("resume campaign");
            eventually(Duration::from_secs(30), || async {
                let stats = stats(&http, &sim_url).await?;
                (placed_keys(&stats, id).len() == requests.len()).then_some(())
            })
            .await
            .expect("every paused call is placed after the resume");
        }
    }
}
