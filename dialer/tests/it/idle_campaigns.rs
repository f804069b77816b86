//! Dialers pull only campaigns with work (issue 23): an idle campaign costs a dialer no pull
//! and no trunk line, and a call published in it is dialled at once, woken by the call itself;
//! a wake-up lost on the way is made up by the consumer sweep.
//!
//! Generated: the seed (printed; `CCM_SEED=<n>` replays it) draws a sequence of publishes,
//! messages taken and handed back with a delay by a stranger (as another replica would),
//! pauses and resumes over a few campaigns shared by two dialer replicas, with a sweep too
//! slow to help: every call must still be dialled.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use ccm_core::{
    CallEvent, CallId, Campaign, CampaignId, CampaignState, EventKind,
    config::{CarrierConfig, SimCarrierConfig},
    metrics::{get, sample},
    subjects,
    topology::names,
};
use ccm_tests::{TestEnv, eventually};
use futures::StreamExt;
use rand::{Rng, SeedableRng, rngs::StdRng};
use tokio_util::sync::CancellationToken;

use crate::metrics::{campaign, dial};

/// When each call's `Dialing` was seen, by a core subscription on every event.
#[derive(Clone, Default)]
struct Dialled(Arc<Mutex<HashMap<CallId, Instant>>>);

impl Dialled {
    async fn watch(client: &async_nats::Client, shutdown: &CancellationToken) -> Self {
        let dialled = Self::default();
        let mut events = client
            .subscribe(subjects::LIFECYCLE_ALL)
            .await
            .expect("subscribe");
        client.flush().await.expect("flush");
        let (seen, stop) = (dialled.clone(), shutdown.clone());
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    () = stop.cancelled() => return,
                    next = events.next() => match next { Some(m) => m, None => return },
                };
                if let Ok(event) = serde_json::from_slice::<CallEvent>(&message.payload)
                    && matches!(event.kind, EventKind::Dialing { .. })
                {
                    seen.lock()
                        .entry(event.call_id)
                        .or_insert_with(Instant::now);
                }
            }
        });
        dialled
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<CallId, Instant>> {
        self.0.lock().expect("not poisoned")
    }

    fn at(&self, call: CallId) -> Option<Instant> {
        self.lock().get(&call).copied()
    }
}

async fn put(campaigns: &jetstream::kv::Store, doc: &Campaign) {
    campaigns
        .put(
            doc.id.to_string(),
            serde_json::to_vec(doc).expect("json").into(),
        )
        .await
        .expect("put campaign");
}

fn ids(n: u64) -> Vec<CampaignId> {
    (1..=n)
        .map(|i| CampaignId::new(1000 + i).expect("id"))
        .collect()
}

/// A dialer placing every call with the in-process simulator, calls lasting a minute.
fn config(env: &TestEnv, max_calls: u32, sweep_secs: u64) -> ccm_core::Config {
    let mut config = env.config();
    config.dialer.max_calls = max_calls;
    config.dialer.consumer_sweep_secs = sweep_secs;
    config.dialer.carrier = CarrierConfig::Sim(SimCarrierConfig {
        call_ms: 60_000,
        ..Default::default()
    });
    config
}

async fn consumers_exist(js: &jetstream::Context, campaigns: &[CampaignId]) {
    let calls = js.get_stream(names::CALLS).await.expect("CALLS");
    for &id in campaigns {
        eventually(Duration::from_secs(30), || async {
            calls
                .consumer_info(subjects::dial_consumer(id))
                .await
                .ok()
                .map(|_| ())
        })
        .await
        .expect("the dialer creates every dial consumer");
    }
}

/// Outstanding pulls on the campaign's consumer, all replicas together.
async fn pulls(js: &jetstream::Context, id: CampaignId) -> Option<usize> {
    let calls = js.get_stream(names::CALLS).await.ok()?;
    let info = calls
        .consumer_info(subjects::dial_consumer(id))
        .await
        .ok()?;
    Some(info.num_waiting)
}

/// 60 running campaigns, no call queued, and a trunk of 6 lines: a call published in five of
/// them must each be dialled within a second. Before dormancy each campaign held a line
/// for a 5 s long poll in turn, so a call waited up to 10 rounds, 50 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_call_in_an_idle_campaign_is_dialled_within_a_second_with_fewer_lines_than_campaigns()
 {
    let env = TestEnv::start().await.expect("env");
    env.provision().await.expect("provision");
    let js = env.jetstream().await.expect("js");
    let client = env.nats().await.expect("client");
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let campaigns = ccm_core::nats::bucket(&js, names::KV_CAMPAIGNS)
        .await
        .expect("bucket");
    let all = ids(60);
    for &id in &all {
        put(&campaigns, &campaign(id, 5)).await;
    }
    let addr: SocketAddr = (
        [127, 0, 0, 1],
        ccm_tests::process::free_port().expect("port"),
    )
        .into();
    let mut config = config(&env, 6, 30);
    config.dialer.metrics_listen = Some(addr);
    tokio::spawn(ccm_dialer::run(config, shutdown.clone()));
    consumers_exist(&js, &all).await;
    let dialled = Dialled::watch(&client, &shutdown).await;
    // Settled: the workers have had the time to take their turns.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let busy: Vec<CampaignId> = all.iter().step_by(12).copied().collect();
    let mut published = Vec::new();
    for &id in &busy {
        let request = dial(id, 1);
        published.push((request.call_id, Instant::now()));
        ccm_core::nats::publish_dial(&js, &request)
            .await
            .expect("publish");
    }
    // Bounded: 15 s, then report how many were still waiting.
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline && published.iter().any(|(c, _)| dialled.at(*c).is_none()) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let waits: Vec<Option<Duration>> = published
        .iter()
        .map(|(call, at)| dialled.at(*call).map(|d| d.duration_since(*at)))
        .collect();
    println!("first calls dialled after {waits:?}");
    assert!(
        waits
            .iter()
            .all(|w| w.is_some_and(|w| w < Duration::from_secs(1))),
        "every first call dialled within a second: {waits:?} (None: not after 15 s)"
    );

    // The idle campaigns hold no pull (the busy ones poll while their calls live), and the
    // gauge counts only the busy ones.
    let idle: Vec<CampaignId> = all
        .iter()
        .filter(|id| !busy.contains(id))
        .copied()
        .collect();
    eventually(Duration::from_secs(10), || async {
        for &id in &idle {
            if pulls(&js, id).await? != 0 {
                return None;
            }
        }
        Some(())
    })
    .await
    .expect("no idle campaign holds a pull");
    let active = eventually(Duration::from_secs(10), || async {
        let text = get(addr, "/metrics").await.ok()?.1;
        sample(&text, "ccm_dialer_active_campaigns", &[]).filter(|n| *n <= busy.len() as f64)
    })
    .await;
    assert!(
        active.is_some(),
        "at most the busy campaigns are active: {active:?}"
    );
}

/// nats-server 2.15 counts a message handed back with a delay, and one whose holder died
/// (AckWait passed, not yet redelivered), in `num_ack_pending`: what the dormancy rule
/// ([`ccm_core::dial_consumer::DialConsumers::has_work`]) relies on to keep a dialer pulling
/// until they come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_handed_back_with_a_delay_or_left_by_a_dead_holder_counts_as_work() {
    let env = TestEnv::start().await.expect("env");
    env.provision().await.expect("provision");
    let js = env.jetstream().await.expect("js");
    let id = CampaignId::new(77).expect("id");
    let calls = js.get_stream(names::CALLS).await.expect("CALLS");
    let consumer: PullConsumer = calls
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some(subjects::dial_consumer(id)),
            filter_subject: subjects::dial(id),
            ack_wait: Duration::from_millis(500),
            ..Default::default()
        })
        .await
        .expect("consumer");
    let topology = ccm_core::topology::Topology::load(&env.config().streams).expect("topology");
    let consumers = ccm_core::dial_consumer::DialConsumers::new(&js, &topology).await;
    let counts = || async {
        let info = calls
            .consumer_info(subjects::dial_consumer(id))
            .await
            .expect("info");
        (info.num_pending, info.num_ack_pending)
    };
    assert!(!consumers.has_work(id).await.expect("read"), "empty");

    for n in 1..=2 {
        ccm_core::nats::publish_dial(&js, &dial(id, n))
            .await
            .expect("publish");
    }
    assert!(consumers.has_work(id).await.expect("read"), "queued");
    let mut batch = consumer
        .fetch()
        .max_messages(2)
        .expires(Duration::from_secs(2))
        .messages()
        .await
        .expect("fetch");
    let naked = batch.next().await.expect("one").expect("message");
    let _left = batch.next().await.expect("two").expect("message");
    naked
        .ack_with(AckKind::Nak(Some(Duration::from_secs(5))))
        .await
        .expect("nak");
    // The holder of the second "dies": its AckWait passes.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        counts().await,
        (0, 2),
        "both held: neither queued, both ack-pending"
    );
    assert!(consumers.has_work(id).await.expect("read"));
}

/// The test's own member of the dialers' queue group takes part of the wake-ups and drops
/// them, as a replica that does not know the campaign would: the sweep wakes those
/// campaigns within its interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wake_up_lost_on_the_way_is_made_up_by_the_sweep() {
    let env = TestEnv::start().await.expect("env");
    env.provision().await.expect("provision");
    let js = env.jetstream().await.expect("js");
    let client = env.nats().await.expect("client");
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let campaigns = ccm_core::nats::bucket(&js, names::KV_CAMPAIGNS)
        .await
        .expect("bucket");
    let all = ids(20);
    for &id in &all {
        put(&campaigns, &campaign(id, 5)).await;
    }
    tokio::spawn(ccm_dialer::run(config(&env, 100, 1), shutdown.clone()));
    consumers_exist(&js, &all).await;
    let dialled = Dialled::watch(&client, &shutdown).await;
    // Dormant: no campaign holds a pull.
    eventually(Duration::from_secs(10), || async {
        for &id in &all {
            if pulls(&js, id).await? != 0 {
                return None;
            }
        }
        Some(())
    })
    .await
    .expect("every campaign dormant");
    let mut thief = client
        .queue_subscribe(subjects::DIAL_ALL, ccm_dialer::wake::QUEUE_GROUP.into())
        .await
        .expect("join the queue group");
    client.flush().await.expect("flush");

    let mut published = Vec::new();
    for &id in &all {
        let request = dial(id, 1);
        published.push(request.call_id);
        ccm_core::nats::publish_dial(&js, &request)
            .await
            .expect("publish");
    }
    let mut stolen = 0;
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(200), thief.next()).await {
        stolen += 1;
    }
    assert!(stolen > 0, "the thief took some wake-ups");
    eventually(Duration::from_secs(4), || async {
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
        panic!("{left} calls not dialled within the sweep interval ({stolen} wake-ups stolen)")
    });
}

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
