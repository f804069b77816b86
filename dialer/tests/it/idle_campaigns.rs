//! Dialers pull only campaigns with work (issue 23): an idle campaign costs a dialer no pull
//! and no trunk line, and a call published in it is dialled at once, woken by the call itself;
//! a wake-up lost on the way is made up by the consumer sweep.
//! Generated sequences are in [`crate::idle_campaigns_generated`].

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use ccm_core::{
    CallEvent, CallId, Campaign, CampaignId, EventKind,
    config::{CarrierConfig, SimCarrierConfig},
    metrics::{get, sample},
    subjects,
    topology::names,
};
use ccm_tests::{TestEnv, eventually};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::metrics::{campaign, dial};

/// When each call's `Dialing` was seen, by a core subscription on every event.
#[derive(Clone, Default)]
pub(crate) struct Dialled(Arc<Mutex<HashMap<CallId, Instant>>>);

impl Dialled {
    pub(crate) async fn watch(client: &async_nats::Client, shutdown: &CancellationToken) -> Self {
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

    pub(crate) fn at(&self, call: CallId) -> Option<Instant> {
        self.lock().get(&call).copied()
    }
}

pub(crate) async fn put(campaigns: &jetstream::kv::Store, doc: &Campaign) {
    campaigns
        .put(
            doc.id.to_string(),
            serde_json::to_vec(doc).expect("json").into(),
        )
        .await
        .expect("put campaign");
}

pub(crate) fn ids(n: u64) -> Vec<CampaignId> {
    (1..=n)
        .map(|i| CampaignId::new(1000 + i).expect("id"))
        .collect()
}

/// A dialer placing every call with the in-process simulator, calls lasting a minute.
pub(crate) fn config(env: &TestEnv, max_calls: u32, sweep_secs: u64) -> ccm_core::Config {
    let mut config = env.config();
    config.dialer.max_calls = max_calls;
    config.dialer.consumer_sweep_secs = sweep_secs;
    config.dialer.carrier = CarrierConfig::Sim(SimCarrierConfig {
        call_ms: 60_000,
        ..Default::default()
    });
    config
}

pub(crate) async fn consumers_exist(js: &jetstream::Context, campaigns: &[CampaignId]) {
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
pub(crate) async fn pulls(js: &jetstream::Context, id: CampaignId) -> Option<usize> {
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
/// ([`ccm_core::dial_consumer::Work`]) relies on to keep a dialer pulling
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
    assert!(!consumers.work(id).await.expect("read").any(), "empty");

    for n in 1..=2 {
        ccm_core::nats::publish_dial(&js, &dial(id, n))
            .await
            .expect("publish");
    }
    assert!(consumers.work(id).await.expect("read").any(), "queued");
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
    assert!(consumers.work(id).await.expect("read").any());
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

/// A call published while the dialer is cut off from NATS never reaches its subscription:
/// the reconnect wakes every campaign, long before the (slow) sweep would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_published_while_the_dialer_was_disconnected_is_dialled_on_the_reconnect() {
    let env = TestEnv::start().await.expect("env");
    env.provision().await.expect("provision");
    let js = env.jetstream().await.expect("js");
    let client = env.nats().await.expect("client");
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let campaigns = ccm_core::nats::bucket(&js, names::KV_CAMPAIGNS)
        .await
        .expect("bucket");
    let id = CampaignId::new(1500).expect("id");
    put(&campaigns, &campaign(id, 5)).await;
    let mut config = config(&env, 100, 600);
    let target: SocketAddr = config
        .nats_url
        .expose()
        .trim_start_matches("nats://")
        .parse()
        .expect("nats address");
    let (cut, cut_rx) = tokio::sync::watch::channel(false);
    let via = crate::lost_outcome::proxy(target, cut_rx).await;
    config.nats_url = ccm_core::config::SecretUrl::new(format!("nats://{via}"));
    tokio::spawn(ccm_dialer::run(config, shutdown.clone()));
    consumers_exist(&js, &[id]).await;
    let dialled = Dialled::watch(&client, &shutdown).await;
    eventually(Duration::from_secs(10), || async {
        (pulls(&js, id).await? == 0).then_some(())
    })
    .await
    .expect("the campaign goes dormant");

    cut.send_replace(true);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let request = dial(id, 1);
    ccm_core::nats::publish_dial(&js, &request)
        .await
        .expect("published while the dialer is cut off");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let restored = Instant::now();
    cut.send_replace(false);
    // The reconnect takes a moment, and a read sent on the dying connection gives up after
    // 2 s: well under 5 s, against the 600 s sweep.
    eventually(Duration::from_secs(5), || async {
        dialled.at(request.call_id).map(|_| ())
    })
    .await
    .expect("the call is dialled after the reconnect, without waiting for the sweep");
    println!("dialled {:?} after the reconnect", restored.elapsed());
}
