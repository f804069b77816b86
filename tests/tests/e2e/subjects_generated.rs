//! Erasures mixed with calls in flight, from a seeded schedule (`CCM_SEED` replays one): no
//! accepted call is lost or placed twice because an erase ran, an erase never removes a call
//! that has not ended (it answers 409 `call_in_progress` instead), no call of an erased number
//! is accepted afterwards, and once every call has ended each number erases cleanly.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::{Duration, Instant},
};

use ccm_tests::{TestEnv, eventually};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::{
    carrier_stack::{CarrierStack, Dialer, answering},
    subjects_walk::{Forms, walk},
};

const NUMBERS: usize = 10;
const STEPS: usize = 50;

fn number(i: usize) -> String {
    format!("+1415555020{i}")
}

/// What the client saw: (number, started, ended, status, body).
type Seen = Arc<Mutex<Vec<(usize, Instant, Instant, u16, Value)>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasures_mixed_with_calls_in_flight_lose_and_repeat_no_call() {
    let seed = std::env::var("CCM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    println!("seed {seed} (replay: CCM_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let env = TestEnv::start().await.expect("test environment");
    let stack = Arc::new(CarrierStack::start(&env, answering(rng.random_range(100..800))).await);
    let dialer = Dialer::start(stack.config.clone());
    let campaign = stack.campaign(2).await;
    // The projector migrates the read model as it starts; an erase reads it (the last
    // migration's table tells they have all run).
    let pg = env.pg().await.expect("postgres");
    let migrated = eventually(Duration::from_secs(20), || async {
        sqlx::query("SELECT 1 FROM counted_facts LIMIT 1")
            .execute(&pg)
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    assert!(migrated.is_some(), "the read model is migrated");

    let calls: Seen = Arc::default();
    let erases: Seen = Arc::default();
    let mut tasks = tokio::task::JoinSet::new();
    let mut last_called = None;
    for _ in 0..STEPS {
        let erase = rng.random_bool(0.25);
        // Erases aim mostly at the number just called, whose call is likely still live.
        let i = match last_called {
            Some(i) if erase && rng.random_bool(0.6) => i,
            _ => rng.random_range(0..NUMBERS),
        };
        if !erase {
            last_called = Some(i);
        }
        let (stack, seen) = (
            stack.clone(),
            if erase { erases.clone() } else { calls.clone() },
        );
        tasks.spawn(async move {
            let started = Instant::now();
            let (status, body) = if erase {
                let path = format!("/api/v1/subjects/{}/erase", number(i).replace('+', "%2B"));
                stack.send(&path, Value::Null).await
            } else {
                stack
                    .send(
                        "/api/v1/calls",
                        json!({"campaign_id": campaign, "phone_number": number(i)}),
                    )
                    .await
            };
            seen.lock()
                .await
                .push((i, started, Instant::now(), status, body));
        });
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..250))).await;
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("client task");
    }
    let calls = calls.lock().await.clone();
    let erases = erases.lock().await.clone();
    let accepted: BTreeSet<String> = calls
        .iter()
        .filter(|c| c.3 == 202)
        .map(|c| c.4["call_id"].as_str().expect("call_id").to_owned())
        .collect();
    println!(
        "seed {seed}: calls answered {:?}, erases {:?} (longest {:?})",
        calls.iter().map(|c| c.3).collect::<Vec<_>>(),
        erases.iter().map(|e| e.3).collect::<Vec<_>>(),
        erases.iter().map(|e| e.2 - e.1).max()
    );
    for erase in &erases {
        assert!(
            erase.3 == 200 || (erase.3 == 409 && erase.4["code"] == "call_in_progress"),
            "seed {seed}: {erase:?}"
        );
    }
    // No call of a number is accepted once an erase of it has succeeded.
    for erase in erases.iter().filter(|e| e.3 == 200) {
        for call in calls.iter().filter(|c| c.0 == erase.0 && c.1 > erase.2) {
            assert_ne!(
                call.3, 202,
                "seed {seed}: accepted after its erase: {call:?}"
            );
        }
    }

    // Every accepted call ends: none was lost with its messages.
    let ids: Vec<uuid::Uuid> = accepted.iter().map(|c| c.parse().expect("uuid")).collect();
    let ended = eventually(Duration::from_secs(60), || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM calls WHERE call_id = ANY($1) AND phase_rank >= 5",
        )
        .bind(&ids)
        .fetch_one(&pg)
        .await
        .ok()?;
        (n as usize == ids.len()).then_some(())
    })
    .await;
    let statuses: Vec<(String, i64)> = sqlx::query_as(
        "SELECT status, count(*) FROM calls WHERE call_id = ANY($1) GROUP BY status",
    )
    .bind(&ids)
    .fetch_all(&pg)
    .await
    .expect("statuses");
    assert!(
        ended.is_some(),
        "seed {seed}: calls not ended: {statuses:?}"
    );

    // None placed twice, none placed that was not accepted, nobody rung twice at once.
    let stats = stack.stats().await;
    assert_eq!(stats.repeated_requests, 0, "seed {seed}: {stats:?}");
    assert!(stats.number_peak <= 1, "seed {seed}: {stats:?}");
    let mut placed: BTreeMap<String, u32> = BTreeMap::new();
    for attempt in stats.attempts.values() {
        let call = attempt.key.split('/').next().unwrap_or_default().to_owned();
        assert!(accepted.contains(&call), "seed {seed}: {attempt:?}");
        *placed.entry(call).or_default() += attempt.requests;
    }
    assert!(
        placed.values().all(|n| *n == 1),
        "seed {seed}: placed more than once: {placed:?}"
    );

    // With every call ended, each number erases, and nothing of it is left but its entry on
    // the global do-not-call list.
    let js = env.jetstream().await.expect("jetstream");
    for i in 0..NUMBERS {
        let path = format!("/api/v1/subjects/{}/erase", number(i).replace('+', "%2B"));
        let erased = eventually(Duration::from_secs(20), || async {
            let (status, body) = stack.send(&path, Value::Null).await;
            (status == 200).then_some(body)
        })
        .await;
        assert!(erased.is_some(), "seed {seed}: {} never erases", number(i));
        let digits = number(i)[1..].to_owned();
        let left = walk(&js, &pg, &Forms::new(&[&number(i), &digits, &digits[1..]])).await;
        assert!(
            left.iter()
                .all(|f| f.name == "dnc" && f.what == format!("global.{digits}")),
            "seed {seed}: {} left in {left:?}",
            number(i)
        );
    }
    dialer.stop().await;
    Arc::into_inner(stack).expect("one owner").stop().await;
}
