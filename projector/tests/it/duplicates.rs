//! A fact published again under another `Nats-Msg-Id` (a re-send outside the server's
//! duplicate window: two stream messages) is counted once: `total_call_time`, the daily
//! metrics and the concurrency stay what the first copy made them.

use std::time::Duration;

use ccm_tests::TestEnv;
use chrono::Utc;
use rand::{Rng, SeedableRng};

use crate::support::{self, Running};

/// The tables that count (everything but `call_events`, which records every message).
fn counted(dump: Vec<(&'static str, String)>) -> Vec<(&'static str, String)> {
    dump.into_iter()
        .filter(|(table, _)| *table != "call_events")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fact_published_twice_under_distinct_ids_is_counted_once() {
    let seed: u64 = std::env::var("CCM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    eprintln!("seed {seed} (CCM_SEED={seed} replays it)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let env = TestEnv::start().await.expect("test env");
    env.provision().await.expect("provision");
    let js = env.jetstream().await.expect("jetstream");
    let pool = env.pg().await.expect("pg");
    let messages = support::lives(40, 3, Utc::now());
    support::publish_all(&js, &messages).await;
    // What the originals alone must give, written in one go into another database.
    let reference = support::reference_dump(&env, "originals").await;

    // Every message has a chance of being sent again, some several times, each time under an
    // id of its own so the server stores every copy; every outcome is repeated at least once.
    let mut again = Vec::new();
    for m in &messages {
        let copies = if m.subject.starts_with("calls.outcome.") {
            rng.random_range(1..=3)
        } else {
            rng.random_range(0..=2)
        };
        for copy in 0..copies {
            let mut repeat = m.clone();
            repeat.msg_id = format!("{}/again/{copy}", m.msg_id);
            again.push(repeat);
        }
    }
    support::publish_all(&js, &again).await;

    let projector = Running::start(support::config(&env));
    support::wait_for_rows(&pool, messages.len() + again.len(), Duration::from_secs(30)).await;
    projector.stop().await;
    assert_eq!(
        counted(support::dump(&pool).await),
        counted(reference),
        "seed {seed}: repeated facts changed the counts"
    );
}
