//! A compare-and-set that loses a race on a replicated (R3) stream is read as a lost race,
//! whichever code the server answers: 10071 ("wrong last sequence: N") or 10164 ("wrong last
//! sequence", while another write to the subject is in flight), which async-nats 0.52 reports
//! as kind `Other`. A seeded, generated pattern of concurrent `update`s and raw publishes with
//! `Nats-Expected-Last-Subject-Sequence` of one key, all expecting the same revision.

use std::{collections::BTreeMap, time::Duration};

use async_nats::jetstream::{self, kv};
use ccm_core::nats::lost_race;
use ccm_tests::cluster::NatsCluster;
use chrono::Utc;
use rand::{Rng, SeedableRng, rngs::StdRng};

const BUCKET: &str = "lost_race";
const KEY: &str = "k";
/// Rounds stop once at least `MIN_ROUNDS` ran and enough 10164 answers were seen (on an
/// idle machine most lost races answer 10164); `MAX_ROUNDS` bounds them otherwise.
const MIN_ROUNDS: usize = 20;
const MAX_ROUNDS: usize = 300;
const ENOUGH_CONSTANT: usize = 20;

/// The server's error code somewhere in `e`'s source chain, if any.
fn server_code(e: &(dyn std::error::Error + 'static)) -> Option<u64> {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(j) = e.downcast_ref::<jetstream::Error>() {
            return Some(j.error_code().0);
        }
        next = e.source();
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_compare_and_set_on_a_replicated_bucket_is_a_lost_race_whatever_the_code() {
    let cluster = tokio::task::spawn_blocking(NatsCluster::start)
        .await
        .expect("join")
        .expect("cluster");
    cluster.ready(Duration::from_secs(30)).await.expect("ready");
    // One client per node, so writes reach the stream leader through the routes as well.
    let mut contexts = Vec::new();
    for i in 0..3 {
        let client = ccm_core::nats::connect(&cluster.node_url(i), "test")
            .await
            .expect("connect");
        contexts.push(jetstream::new(client));
    }
    let bucket = contexts[0]
        .create_key_value(kv::Config {
            bucket: BUCKET.into(),
            history: 1,
            num_replicas: 3,
            ..Default::default()
        })
        .await
        .expect("bucket");
    let mut stores = vec![bucket];
    for js in &contexts[1..] {
        stores.push(js.get_key_value(BUCKET).await.expect("bucket"));
    }

    let seed = std::env::var("CCM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| Utc::now().timestamp_micros() as u64);
    println!("seed {seed} (CCM_SEED={seed} replays it)");
    let mut rng = StdRng::seed_from_u64(seed);

    let mut codes: BTreeMap<String, usize> = BTreeMap::new();
    let mut misread = Vec::new();
    let mut rounds = 0;
    let constant = |codes: &BTreeMap<String, usize>| codes.get("10164").copied().unwrap_or(0);
    while rounds < MAX_ROUNDS && (rounds < MIN_ROUNDS || constant(&codes) < ENOUGH_CONSTANT) {
        rounds += 1;
        let revision = stores[0]
            .put(KEY, format!("r{rounds}").into())
            .await
            .expect("put");
        // The generated pattern: how many writers, which node and which API each uses, and
        // how long each waits (microseconds) before writing.
        let writers = rng.random_range(2..=12);
        let mut tasks = Vec::new();
        for w in 0..writers {
            let node = rng.random_range(0..3);
            let raw = rng.random_bool(0.5);
            let delay = Duration::from_micros(rng.random_range(0..300));
            let store = stores[node].clone();
            let js = contexts[node].clone();
            let value = format!("r{rounds}w{w}");
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                if raw {
                    let mut headers = async_nats::HeaderMap::new();
                    headers.insert(
                        async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                        revision.to_string().as_str(),
                    );
                    let sent = js
                        .publish_with_headers(format!("$KV.{BUCKET}.{KEY}"), headers, value.into())
                        .await
                        .expect("sent");
                    sent.await
                        .map(|_| ())
                        .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
                } else {
                    store
                        .update(KEY, value.into(), revision)
                        .await
                        .map(|_| ())
                        .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
                }
            }));
        }
        let mut won = 0;
        for task in tasks {
            match task.await.expect("join") {
                Ok(()) => won += 1,
                Err(e) => {
                    let code = server_code(e.as_ref()).map_or("none".into(), |c| c.to_string());
                    *codes.entry(code).or_default() += 1;
                    if !lost_race(e.as_ref()) {
                        misread.push(format!("round {rounds}: {e}"));
                    }
                }
            }
        }
        assert!(won <= 1, "seed {seed} round {rounds}: {won} writers won");
    }
    println!("seed {seed}: {rounds} rounds, failures by server code: {codes:?}");
    // Without a 10164 the run would not have exercised what it is about.
    assert!(
        constant(&codes) > 0,
        "seed {seed}: the cluster never answered 10164 in {rounds} rounds"
    );
    assert!(
        misread.is_empty(),
        "seed {seed}: {} of the lost compare-and-sets were not read as a lost race, e.g. {:?}",
        misread.len(),
        misread.iter().take(3).collect::<Vec<_>>()
    );
}
