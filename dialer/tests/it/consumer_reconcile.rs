//! A campaign's dial consumer converges to the campaign's document, whatever was lost on the
//! way: the document is the source of truth, and the dialer (which follows the bucket)
//! brings the consumer's cap (`max_ack_pending`) and pause in line with it.
//!
//! Generated: the seed (printed; `CCM_SEED=<n>` replays it) draws a sequence of pauses,
//! resumes and cap changes, each cut at a random "crash" point: the document written and the
//! consumer never told (a writer killed between the two), the consumer changed and the
//! document write lost (the order ingest used to write them in), or both. The dialer itself
//! is stopped and started again at a random step, so it also starts on a stale consumer.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream::Stream};
use ccm_core::{Campaign, CampaignId, CampaignState, config::CarrierConfig, topology::names};
use ccm_tests::{TestEnv, eventually};
use rand::{Rng, SeedableRng, rngs::StdRng};
use tokio_util::sync::CancellationToken;

use crate::{metrics::campaign, placements::silent_carrier};

const STEPS: usize = 14;

/// Where the writer "crashed" while applying a change.
#[derive(Debug, Clone, Copy)]
enum Cut {
    /// The document was written; the consumer never heard of it.
    DocumentOnly,
    /// The consumer was changed; the document write was lost.
    ConsumerOnly,
    /// Both written.
    Neither,
}

fn paused(doc: &Campaign) -> bool {
    doc.state == CampaignState::Paused
}

/// Changes the consumer behind everybody's back, as the writer's lost half would have.
async fn write_consumer(calls: &Stream, name: &str, doc: &Campaign) {
    let mut config: consumer::Config = calls.consumer_info(name).await.expect("info").config;
    config.max_ack_pending = i64::from(doc.max_concurrent_calls);
    calls
        .create_consumer(config)
        .await
        .expect("update consumer");
    if paused(doc) {
        let until = async_nats::datetime::add_std_duration(
            async_nats::datetime::now(),
            Duration::from_secs(3_600),
        )
        .expect("instant");
        calls.pause_consumer(name, until).await.expect("pause");
    } else {
        calls.resume_consumer(name).await.expect("resume");
    }
}

async fn put(campaigns: &async_nats::jetstream::kv::Store, doc: &Campaign) {
    campaigns
        .put(
            doc.id.to_string(),
            serde_json::to_vec(doc).expect("json").into(),
        )
        .await
        .expect("put campaign");
}

fn start_dialer(config: &ccm_core::Config, parent: &CancellationToken) -> CancellationToken {
    let stop = parent.child_token();
    tokio::spawn(ccm_dialer::run(config.clone(), stop.clone()));
    stop
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dial_consumer_converges_to_the_document_after_any_crash_point() {
    let seed = std::env::var("CCM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    println!("seed {seed} (replay with CCM_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);

    let env = TestEnv::start().await.expect("env");
    env.provision().await.expect("provision");
    let js: jetstream::Context = env.jetstream().await.expect("js");
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let mut config = env.config();
    config.dialer.carrier = CarrierConfig::Http(ccm_core::config::HttpCarrierConfig {
        base_url: silent_carrier(&shutdown).await.into(),
        ..Default::default()
    });
    // A consumer changed with no document change (the "consumer only" cut) is found by the
    // sweep, not the watch: make it frequent.
    config.dialer.consumer_sweep_secs = 1;
    let campaigns = ccm_core::nats::bucket(&js, names::KV_CAMPAIGNS)
        .await
        .expect("campaigns bucket");
    let calls = js.get_stream(names::CALLS).await.expect("CALLS");

    let id = CampaignId::new(90).expect("id");
    let name = ccm_core::subjects::dial_consumer(id);
    let mut doc = campaign(id, 5);
    put(&campaigns, &doc).await;
    let mut dialer = Some(start_dialer(&config, &shutdown));
    eventually(Duration::from_secs(20), || async {
        calls.consumer_info(&name).await.ok().map(|_| ())
    })
    .await
    .expect("the dialer creates the dial consumer");

    let restart_at = rng.random_range(0..STEPS);
    let mut log = Vec::new();
    for step in 0..STEPS {
        if step == restart_at {
            if let Some(stop) = dialer.take() {
                stop.cancel();
            }
        } else if dialer.is_none() {
            dialer = Some(start_dialer(&config, &shutdown));
        }
        let mut next = doc.clone();
        match rng.random_range(0..3) {
            0 => next.state = CampaignState::Paused,
            1 => next.state = CampaignState::Running,
            _ => next.max_concurrent_calls = rng.random_range(1..=40),
        }
        let cut = match rng.random_range(0..3) {
            0 => Cut::DocumentOnly,
            1 => Cut::ConsumerOnly,
            _ => Cut::Neither,
        };
        log.push(format!(
            "{step}: {:?} cap {} {cut:?}",
            next.state, next.max_concurrent_calls
        ));
        match cut {
            Cut::DocumentOnly => {
                put(&campaigns, &next).await;
                doc = next;
            }
            Cut::ConsumerOnly => write_consumer(&calls, &name, &next).await,
            Cut::Neither => {
                put(&campaigns, &next).await;
                write_consumer(&calls, &name, &next).await;
                doc = next;
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..400))).await;
        if dialer.is_some() {
            converges(&calls, &name, &doc, seed, &log).await;
        }
    }
    if dialer.is_none() {
        dialer = Some(start_dialer(&config, &shutdown));
    }
    converges(&calls, &name, &doc, seed, &log).await;
    drop(dialer);
}

/// Within a few of the dialer's rescans, the consumer says what the document says.
async fn converges(calls: &Stream, name: &str, doc: &Campaign, seed: u64, log: &[String]) {
    let converged = eventually(Duration::from_secs(8), || async {
        let info = calls.consumer_info(name).await.ok()?;
        (info.config.max_ack_pending == i64::from(doc.max_concurrent_calls)
            && info.paused == paused(doc))
        .then_some(())
    })
    .await;
    let info = calls.consumer_info(name).await.expect("info");
    assert!(
        converged.is_some(),
        "seed {seed}: document {:?} cap {}, consumer paused {} cap {}; steps:\n{}",
        doc.state,
        doc.max_concurrent_calls,
        info.paused,
        info.config.max_ack_pending,
        log.join("\n")
    );
}
