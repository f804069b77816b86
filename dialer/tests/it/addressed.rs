//! Outcomes addressed to the dialer waiting for them ([`ccm_core::outcome_route`]).
//!
//! Two dialer replicas place a generated set of calls; each talks to NATS through a proxy
//! that counts the outcome messages the server sends it. Each outcome must reach exactly the
//! replica whose `Dialing` names it: before addressing, both replicas received every outcome.
//! And a dialer that takes over attempts placed by a dialer that is gone (or by one that
//! recorded no address) still ends them by their outcomes at once, well before the periodic
//! read of the stream.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use ccm_core::{
    CallEvent, CampaignId, DialRequest, EventKind, OutcomeSource, OutcomeStatus,
    config::{CarrierConfig, HttpCarrierConfig, SecretUrl, SimCarrierConfig},
    outcome_route::{self, Address},
    subjects,
    topology::names,
};
use ccm_tests::{TestEnv, eventually};
use rand::{Rng, SeedableRng, rngs::StdRng};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_util::sync::CancellationToken;

use crate::{
    metrics::{campaign, dial},
    placements::silent_carrier,
};

fn seeded() -> (u64, StdRng) {
    let seed = std::env::var("CCM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("seed {seed} (CCM_SEED={seed} replays it)");
    (seed, StdRng::seed_from_u64(seed))
}

/// Whether a subject is an outcome's, on any route a dialer could hear it by.
fn outcome_subject(subject: &[u8]) -> bool {
    [&b"calls.outcome."[..], b"ccm.dialer.", b"ccm.dialers."]
        .iter()
        .any(|prefix| subject.starts_with(prefix))
}

/// Counts the outcome messages (`MSG`/`HMSG` on an outcome subject) in the server's side of a
/// NATS connection, fed in chunks as they arrive.
#[derive(Default)]
struct Counter {
    pending: Vec<u8>,
    /// Payload bytes (and their CRLF) still to skip.
    skip: usize,
}

impl Counter {
    fn feed(&mut self, chunk: &[u8], count: &AtomicU64) {
        self.pending.extend_from_slice(chunk);
        let mut at = 0;
        loop {
            if self.skip > 0 {
                let n = self.skip.min(self.pending.len() - at);
                self.skip -= n;
                at += n;
                if self.skip > 0 {
                    break;
                }
            }
            let Some(end) = self.pending[at..].windows(2).position(|w| w == b"\r\n") else {
                break;
            };
            let line = &self.pending[at..at + end];
            at += end + 2;
            let words: Vec<&[u8]> = line.split(|b| *b == b' ').collect();
            let size = match words.first().copied() {
                Some(b"MSG" | b"HMSG") => std::str::from_utf8(words[words.len() - 1])
                    .ok()
                    .and_then(|n| n.parse::<usize>().ok()),
                _ => None,
            };
            if let Some(size) = size {
                if outcome_subject(words[1]) {
                    count.fetch_add(1, Ordering::Relaxed);
                }
                self.skip = size + 2;
            }
        }
        self.pending.drain(..at);
    }
}

/// A TCP proxy to `target` that counts the outcome messages the server sends through it.
async fn counting_proxy(target: SocketAddr) -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let count = Arc::new(AtomicU64::new(0));
    let total = count.clone();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let Ok(outbound) = TcpStream::connect(target).await else {
                continue;
            };
            let (mut client_read, mut client_write) = inbound.into_split();
            let (mut server_read, mut server_write) = outbound.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
            });
            let count = total.clone();
            tokio::spawn(async move {
                let mut counter = Counter::default();
                let mut buf = vec![0; 64 * 1024];
                while let Ok(n) = server_read.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    counter.feed(&buf[..n], &count);
                    if client_write.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, count)
}

fn nats_address(env: &TestEnv) -> SocketAddr {
    env.config()
        .nats_url
        .expose()
        .trim_start_matches("nats://")
        .parse()
        .expect("nats address")
}

async fn put_campaign(js: &async_nats::jetstream::Context, doc: &ccm_core::Campaign) {
    ccm_core::nats::bucket(js, names::KV_CAMPAIGNS)
        .await
        .expect("bucket")
        .put(
            doc.id.to_string(),
            serde_json::to_vec(doc).expect("json").into(),
        )
        .await
        .expect("put campaign");
}

/// Waits until every campaign's dial consumer holds and queues nothing.
async fn all_ended(
    js: &async_nats::jetstream::Context,
    campaigns: &[CampaignId],
    within: Duration,
) {
    let calls = js.get_stream(names::CALLS).await.expect("CALLS");
    eventually(within, || async {
        for id in campaigns {
            let info = calls
                .consumer_info(subjects::dial_consumer(*id))
                .await
                .ok()?;
            if info.num_pending != 0 || info.num_ack_pending != 0 {
                return None;
            }
        }
        Some(())
    })
    .await
    .expect("every call ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_dialer_replica_receives_only_the_outcomes_of_its_own_calls() {
    let (seed, mut rng) = seeded();
    let env = TestEnv::start().await.expect("env");
    env.provision().await.expect("provision");
    let js = env.jetstream().await.expect("js");
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();

    let mut queued: Vec<DialRequest> = Vec::new();
    let mut campaigns = Vec::new();
    for c in 0..rng.random_range(1..=3u64) {
        let id = CampaignId::new(300 + c).expect("id");
        put_campaign(&js, &campaign(id, rng.random_range(2..=6))).await;
        campaigns.push(id);
        for _ in 0..rng.random_range(5..=25u32) {
            // A number of its own: no frequency limit holds a call back.
            let request = dial(id, u32::try_from(queued.len()).expect("few"));
            ccm_core::nats::publish_dial(&js, &request)
                .await
                .expect("queue call");
            queued.push(request);
        }
    }
    let target = nats_address(&env);
    let mut counts = Vec::new();
    for _ in 0..2 {
        let (via, count) = counting_proxy(target).await;
        let mut config = env.config();
        config.nats_url = SecretUrl::new(format!("nats://{via}"));
        config.dialer.carrier = CarrierConfig::Sim(SimCarrierConfig {
            call_ms: rng.random_range(20..200),
            ..SimCarrierConfig::default()
        });
        tokio::spawn(ccm_dialer::run(config, shutdown.clone()));
        counts.push(count);
    }
    all_ended(&js, &campaigns, Duration::from_secs(60)).await;

    // Which dialer placed each call, as its `Dialing` names it.
    let events = js.get_stream(names::CALL_EVENTS).await.expect("events");
    let mut placed_by: HashMap<String, u64> = HashMap::new();
    for request in &queued {
        let subject = subjects::event(request.campaign_id, request.call_id);
        let mut from = None;
        let mut dialer = None;
        while let Ok(m) = events
            .direct_get_next_for_subject(subject.clone(), from)
            .await
        {
            from = Some(m.sequence + 1);
            let event: CallEvent = serde_json::from_slice(&m.payload).expect("event");
            if matches!(event.kind, EventKind::Dialing { .. }) {
                dialer = Address::of_headers(&m.headers);
            }
        }
        let dialer = dialer.unwrap_or_else(|| {
            panic!(
                "seed {seed}: call {} has no addressed Dialing",
                request.call_id
            )
        });
        *placed_by.entry(dialer.to_string()).or_default() += 1;
    }
    assert!(placed_by.len() <= 2, "seed {seed}: {placed_by:?}");
    // Copies sent after the last call ended have arrived by now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut received: Vec<u64> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    let mut placed: Vec<u64> = placed_by.values().copied().collect();
    placed.resize(2, 0);
    received.sort_unstable();
    placed.sort_unstable();
    eprintln!(
        "seed {seed}: {} calls; outcomes received by each replica {received:?}, calls placed by each {placed:?}",
        queued.len()
    );
    assert_eq!(
        received, placed,
        "seed {seed}: each replica must receive the outcomes of its own calls and no others"
    );
}

/// A `Dialing` of `request`'s attempt as a dialer at `by` (or one that records no address)
/// would have stored it before going away.
async fn placed_earlier(
    js: &async_nats::jetstream::Context,
    request: &DialRequest,
    by: Option<&Address>,
) {
    let dialing = CallEvent::of_request(
        request,
        EventKind::Dialing {
            phone_number: request.phone_number.clone(),
            max_attempts: request.max_attempts,
            created_at: request.created_at,
            custom_fields: request.custom_fields.clone(),
            expires_at: request.expires_at,
            alternate: None,
        },
    );
    ccm_core::nats::publish_json(
        js,
        dialing.subject(),
        &dialing.msg_id(),
        by.map(Address::headers),
        &dialing,
    )
    .await
    .expect("store Dialing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_placed_by_a_dialer_that_is_gone_end_by_their_outcomes_at_once() {
    let (seed, mut rng) = seeded();
    let env = TestEnv::start().await.expect("env");
    env.provision().await.expect("provision");
    let js = env.jetstream().await.expect("js");
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let sim_url = silent_carrier(&shutdown).await;

    // Calls last two minutes at the carrier: only their outcomes end them early.
    let id = CampaignId::new(320).expect("id");
    let n = rng.random_range(3..=10u32);
    let mut doc = campaign(id, n);
    doc.max_call_duration_secs = Some(120);
    put_campaign(&js, &doc).await;
    // Placed by a dialer that restarted since (its address is heard by nobody), by a dialer
    // that recorded no address (an older version), or not yet: this dialer places it.
    let gone = Address::fresh("dialer-0:1");
    let mut kinds = HashMap::new();
    let mut queued = Vec::new();
    for i in 0..n {
        let request = dial(id, i);
        // One of each kind at least, the rest drawn.
        let kind = u8::try_from(i)
            .ok()
            .filter(|i| *i < 3)
            .unwrap_or_else(|| rng.random_range(0..3u8));
        match kind {
            0 => placed_earlier(&js, &request, Some(&gone)).await,
            1 => placed_earlier(&js, &request, None).await,
            _ => {}
        }
        *kinds.entry(kind).or_insert(0) += 1;
        ccm_core::nats::publish_dial(&js, &request)
            .await
            .expect("queue call");
        queued.push(request);
    }
    eprintln!("seed {seed}: {n} calls; by the gone dialer, by an old one, by this one: {kinds:?}");
    let mut config = env.config();
    config.dialer.carrier = CarrierConfig::Http(HttpCarrierConfig {
        base_url: sim_url.clone().into(),
        ..HttpCarrierConfig::default()
    });
    tokio::spawn(ccm_dialer::run(config, shutdown.clone()));

    let calls = js.get_stream(names::CALLS).await.expect("CALLS");
    eventually(Duration::from_secs(20), || async {
        let info = calls
            .consumer_info(subjects::dial_consumer(id))
            .await
            .ok()?;
        (info.num_pending == 0 && info.num_ack_pending == usize::try_from(n).ok()?).then_some(())
    })
    .await
    .expect("the dialer holds every call");
    // Let the placements it makes itself finish: every call then waits for its outcome.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let started = Instant::now();
    for request in &queued {
        let outcome = CallEvent::now(
            request.call_id,
            id,
            request.attempt,
            EventKind::Outcome {
                status: OutcomeStatus::Picked,
                source: OutcomeSource::Carrier,
                raw_status: None,
                duration_secs: Some(3),
                external_call_id: None,
                reason: None,
                callback: None,
            },
        );
        // As ingest does with a callback that names no dialer.
        outcome_route::publish_carrier_outcome(&js, &outcome, None)
            .await
            .expect("outcome");
    }
    // The periodic read of the stream comes 30 s after a call started waiting: ending within
    // 10 s shows the copies ended them.
    all_ended(&js, &[id], Duration::from_secs(10)).await;
    eprintln!(
        "seed {seed}: every call ended {:?} after its outcome was published",
        started.elapsed()
    );
}
