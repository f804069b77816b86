//! Caller-id caps against a real NATS server: each pool number's record of uses, written by
//! compare-and-set, shared by dialer replicas.
//!
//! Generated (the seed is printed; `CCM_SEED=<n>` replays it): the caps, the pool's size and
//! how many attempts race through two replicas (each its own connection).

use std::{collections::BTreeMap, sync::Arc};

use ccm_core::{
    PhoneNumber,
    caller_id::{
        caps::Caps,
        choice::{Choice, choose},
    },
    topology::names,
};
use ccm_dialer::caller_id::CallerIds;
use ccm_tests::TestEnv;
use chrono::Utc;
use rand::{Rng, SeedableRng, rngs::StdRng};

fn seed() -> u64 {
    let seed = std::env::var("CCM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    println!("seed {seed} (replay with CCM_SEED={seed})");
    seed
}

/// Attempts race for a pool through two replicas: each number is used exactly up to its
/// tightest cap, never once more, and the attempts beyond the pool's total wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_racing_for_a_pool_use_each_number_exactly_up_to_its_cap() {
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let env = TestEnv::start().await.expect("env");
    env.provision().await.expect("provision");
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let js = env.jetstream().await.expect("js");
        replicas.push(Arc::new(CallerIds {
            bucket: js.get_key_value(names::KV_ATTEMPTS).await.expect("bucket"),
        }));
    }
    for round in 0..3 {
        let caps = Caps {
            per_hour: Some(rng.random_range(1..4)),
            per_day: rng.random_bool(0.5).then(|| rng.random_range(1..6)),
        };
        let cap = caps
            .per_hour
            .into_iter()
            .chain(caps.per_day)
            .min()
            .expect("cap") as usize;
        let pool: Vec<PhoneNumber> = (0..rng.random_range(1..4))
            .map(|i| format!("+1212736{round}{i:03}").parse().expect("number"))
            .collect();
        let racers = pool.len() * cap + rng.random_range(1..8);
        let now = Utc::now();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..racers {
            let (replica, pool) = (replicas[i % 2].clone(), pool.clone());
            tasks.spawn(async move {
                let order: Vec<&PhoneNumber> = pool.iter().collect();
                choose(&order, |n| replica.take(n, &caps, now))
                    .await
                    .expect("kv")
            });
        }
        let mut used: BTreeMap<PhoneNumber, usize> = BTreeMap::new();
        let mut waited = 0;
        while let Some(choice) = tasks.join_next().await {
            match choice.expect("task") {
                Choice::Use(n) => *used.entry(n).or_default() += 1,
                Choice::Wait(at) => {
                    assert!(at > now, "seed {seed}");
                    waited += 1;
                }
                Choice::NoneActive => panic!("seed {seed}: the pool has no paused number"),
            }
        }
        assert_eq!(used.len(), pool.len(), "seed {seed}: every number used");
        assert!(
            used.values().all(|n| *n == cap),
            "seed {seed}: {used:?}, cap {cap}"
        );
        assert_eq!(waited, racers - pool.len() * cap, "seed {seed}");
    }
}
