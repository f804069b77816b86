//! Frequency limits against a real NATS server: the per-number record of recent attempts,
//! written by compare-and-set, shared by dialer replicas and campaigns.
//!
//! Generated (the seed is printed; `CCM_SEED=<n>` replays it): limits, a callee's zones and
//! how many attempts race for the number.

use std::sync::Arc;

use ccm_core::{
    PhoneNumber,
    phone::PhoneRule,
    rules::{FrequencyLimit, frequency::Limits},
    topology::names,
};
use ccm_dialer::frequency::Frequency;
use ccm_tests::TestEnv;
use chrono::{DateTime, Duration, TimeZone, Utc};
use chrono_tz::Tz;
use rand::{Rng, SeedableRng, rngs::StdRng};

fn seed() -> u64 {
    let seed = std::env::var("CCM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    println!("seed {seed} (replay with CCM_SEED={seed})");
    seed
}

async fn replica(env: &TestEnv, keep: Duration) -> Frequency {
    let js = env.jetstream().await.expect("js");
    Frequency {
        bucket: js.get_key_value(names::KV_ATTEMPTS).await.expect("bucket"),
        keep,
    }
}

/// Attempts of two campaigns to one Florida number race through two replicas (each its own
/// connection): exactly as many are counted as the tightest limit allows, never one more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_racing_for_a_number_take_exactly_the_units_the_limits_allow() {
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let env = TestEnv::start().await.expect("env");
    env.provision().await.expect("provision");
    let replicas = [
        Arc::new(replica(&env, Duration::days(2)).await),
        Arc::new(replica(&env, Duration::days(2)).await),
    ];
    let now = Utc::now();
    for round in 0..4 {
        let phone =
            PhoneNumber::parse(&format!("+1305555{round:04}"), PhoneRule::Lenient).expect("phone");
        let limits = Limits {
            cap_24h: Some(rng.random_range(1..5)),
            per_days: if rng.random_bool(0.5) {
                vec![FrequencyLimit {
                    max_attempts: rng.random_range(1..6),
                    days: rng.random_range(1..4),
                }]
            } else {
                Vec::new()
            },
        };
        let allowed = limits
            .per_days
            .iter()
            .map(|l| l.max_attempts)
            .chain(limits.cap_24h)
            .min()
            .expect("a limit") as usize;
        let racers = rng.random_range(allowed + 1..allowed + 16);
        let zones = vec![chrono_tz::America::New_York];
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..racers {
            let (replica, phone, limits, zones) = (
                replicas[i % 2].clone(),
                phone.clone(),
                limits.clone(),
                zones.clone(),
            );
            // The campaign does not matter to the record: it is the number's, across campaigns.
            tasks.spawn(async move { replica.take(&phone, &limits, &zones, now).await });
        }
        let mut taken = 0;
        while let Some(result) = tasks.join_next().await {
            let verdict = result.expect("task").expect("take");
            match verdict.wait_until {
                None => taken += 1,
                Some(until) => assert!(until > now, "seed {seed}: {until} not after {now}"),
            }
        }
        assert_eq!(
            taken, allowed,
            "seed {seed} round {round}: {racers} racers, {limits:?}"
        );
        let again = replicas[0]
            .peek(&phone, &limits, &zones, now)
            .await
            .expect("peek");
        assert!(
            again.wait_until.is_some(),
            "seed {seed}: the limit is reached"
        );
        assert!(
            again.counts.iter().any(|c| c.seen as usize == allowed),
            "seed {seed}: {:?}",
            again.counts
        );
    }
}

/// A number called again and again, each attempt at the moment the limits said it may go:
/// every such attempt is taken, and an attempt before it never is. Times are given, not
/// waited for; the callee's days are local (Los Angeles, across the fall-back change).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_put_off_by_the_limits_is_taken_at_the_moment_they_named() {
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let env = TestEnv::start().await.expect("env");
    env.provision().await.expect("provision");
    let frequency = replica(&env, Duration::days(8)).await;
    let phone = PhoneNumber::parse("+13105550100", PhoneRule::Lenient).expect("phone");
    let zones: Vec<Tz> = vec![chrono_tz::America::Los_Angeles];
    let limits = Limits {
        cap_24h: Some(rng.random_range(1..4)),
        per_days: vec![FrequencyLimit {
            max_attempts: rng.random_range(2..6),
            days: rng.random_range(2..6),
        }],
    };
    let mut now: DateTime<Utc> = Utc
        .with_ymd_and_hms(2026, 10, 28, 15, 0, 0)
        .single()
        .expect("t");
    for step in 0..40 {
        now += Duration::seconds(rng.random_range(0..8 * 3600));
        let verdict = frequency
            .take(&phone, &limits, &zones, now)
            .await
            .expect("take");
        let Some(until) = verdict.wait_until else {
            continue;
        };
        let ctx = format!("seed {seed} step {step}: {now} -> {until}, {limits:?}");
        assert!(until > now, "{ctx}");
        let before = frequency
            .take(&phone, &limits, &zones, until - Duration::seconds(1))
            .await
            .expect("take");
        assert!(before.wait_until.is_some(), "taken a second early: {ctx}");
        let at = frequency
            .take(&phone, &limits, &zones, until)
            .await
            .expect("take");
        assert_eq!(at.wait_until, None, "refused at the named moment: {ctx}");
        now = until;
    }
}

/// A rule file with an error stops the dialer at start, and the error names the file and the
/// line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_rule_file_stops_the_dialer_at_start_naming_its_file_and_line() {
    let path = std::env::temp_dir().join(format!(
        "ccm-rules-{}-{}.yaml",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::write(
        &path,
        b"rules:\n  - id: ok\n    jurisdiction: US\n    max_per_24h: 5\n    source: x\n    as_of: 2026-12-05\n  - id: backwards\n    jurisdiction: US-FL\n    hours: [{days: [mon], start: \"20:00\", end: \"08:00\"}]\n    source: x\n    as_of: 2026-12-05\n",
    )
    .expect("write");
    let mut config = ccm_core::Config::default();
    config.compliance.rule_files = vec![path.clone()];
    let err = ccm_dialer::run(config, tokio_util::sync::CancellationToken::new())
        .await
        .expect_err("refuses to start");
    let shown = err.to_string();
    let _ = std::fs::remove_file(&path);
    assert!(
        shown.starts_with(&format!("{}:7: rule backwards", path.display())),
        "{shown}"
    );
}
