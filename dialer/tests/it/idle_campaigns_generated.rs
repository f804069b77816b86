//! Generated: the seed (printed; `CCM_SEED=<n>` replays it) draws a sequence of publishes,
//! calls taken and handed back with a delay by a stranger (as another replica would), pauses
//! and resumes over a few campaigns shared by two dialer replicas, with a sweep too slow to
//! help: every call must still be dialled, woken by its own publish or kept polling for.

use std::{collections::HashSet, time::Duration};

use async_nats::jetstream::{AckKind, consumer::PullConsumer};
use ccm_core::{CallId, Campaign, CampaignState, subjects, topology::names};
use ccm_tests::{TestEnv, eventually};
use futures::StreamExt;
use rand::{Rng, SeedableRng, rngs::StdRng};
use tokio_util::sync::CancellationToken;

use crate::{
    idle_campaigns::{Dialled, config, consumers_exist, ids, put},
    metrics::{campaign, dial},
};

/// What the generated run does next.
#[derive(Debug, Clone, Copy)]
enum Step {
    Publish(usize),
    /// A stranger takes one queued call and hands it back with this delay.
    HandBack(usize, Duration),
    Pause(usize),
    Resume(usize),
    Wait(Duration),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_calls_in_dormant_campaigns_are_all_dialled_without_the_sweep() {
    let seed = std::env::var("CCM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    println!("seed {seed} (replay with CCM_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);

    let env = TestEnv::start().await.expect("env");
    env.provision().await.expect("provision");
    let js = env.jetstream().await.expect("js");
    let client = env.nats().await.expect("client");
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let campaigns = ccm_core::nats::bucket(&js, names::KV_CAMPAIGNS)
        .await
        .expect("bucket");
    let all = ids(6);
    let mut docs: Vec<Campaign> = all.iter().map(|&id| campaign(id, 50)).collect();
    for doc in &docs {
        put(&campaigns, doc).await;
    }
    // Two replicas, and a sweep far slower than the run: it must not be what finds the calls.
    for _ in 0..2 {
        tokio::spawn(ccm_dialer::run(config(&env, 100, 600), shutdown.clone()));
    }
    consumers_exist(&js, &all).await;
    let dialled = Dialled::watch(&client, &shutdown).await;
    let calls = js.get_stream(names::CALLS).await.expect("CALLS");

    let mut published: HashSet<CallId> = HashSet::new();
    let mut log = Vec::new();
    let mut longest_hand_back = Duration::ZERO;
    for n in 0..30u32 {
        let c = rng.random_range(0..all.len());
        let step = match rng.random_range(0..10) {
            0..=3 => Step::Publish(c),
            4 | 5 => Step::HandBack(c, Duration::from_millis(rng.random_range(100..3_000))),
            6 => Step::Pause(c),
            7 => Step::Resume(c),
            _ => Step::Wait(Duration::from_millis(rng.random_range(0..1_500))),
        };
        log.push(format!("{n}: {step:?}"));
        match step {
            Step::Publish(c) => {
                let request = dial(all[c], n);
                published.insert(request.call_id);
                ccm_core::nats::publish_dial(&js, &request)
                    .await
                    .expect("publish");
            }
            Step::HandBack(c, delay) => {
                let consumer: PullConsumer = calls
                    .get_consumer(&subjects::dial_consumer(all[c]))
                    .await
                    .expect("consumer");
                let mut batch = consumer
                    .fetch()
                    .max_messages(1)
                    .expires(Duration::from_millis(100))
                    .messages()
                    .await
                    .expect("fetch");
                if let Some(Ok(message)) = batch.next().await {
                    longest_hand_back = longest_hand_back.max(delay);
                    message
                        .ack_with(AckKind::Nak(Some(delay)))
                        .await
                        .expect("nak");
                }
            }
            Step::Pause(c) | Step::Resume(c) => {
                docs[c].state = if matches!(step, Step::Pause(_)) {
                    CampaignState::Paused
                } else {
                    CampaignState::Running
                };
                put(&campaigns, &docs[c]).await;
            }
            Step::Wait(d) => tokio::time::sleep(d).await,
        }
    }
    for doc in docs.iter_mut().filter(|d| d.state == CampaignState::Paused) {
        doc.state = CampaignState::Running;
        put(&campaigns, doc).await;
    }
    let bound = longest_hand_back + Duration::from_secs(8);
    eventually(bound, || async {
        published
            .iter()
            .all(|c| dialled.at(*c).is_some())
            .then_some(())
    })
    .await
    .unwrap_or_else(|| {
        let left = published
            .iter()
            .filter(|c| dialled.at(**c).is_none())
            .count();
        panic!(
            "seed {seed}: {left} of {} calls not dialled within {bound:?} of the end:\n{}",
            published.len(),
            log.join("\n")
        )
    });
}
