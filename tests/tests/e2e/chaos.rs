//! Short fault scenarios: the services as real processes under a few hundred calls while a
//! fault hits them; the auditor then checks every invariant (see `ccm_tests::chaos`).
//! `cargo xtask chaos` runs the long version.

use std::time::Duration;

use ccm_tests::{
    NatsCluster, TestEnv,
    chaos::{self, Audit, CarrierApi, Fault, Scenario, Service},
};

const CALLS_PER_CAMPAIGN: u32 = 80;

async fn check(scenario: Scenario) -> Audit {
    let mut env = TestEnv::start().await.expect("test environment");
    let mut scenario = scenario;
    scenario.verbose = true;
    let audit = chaos::run(&scenario, &mut env, None)
        .await
        .expect("the scenario ran");
    assert_passed(&audit);
    audit
}

fn assert_passed(audit: &Audit) {
    eprintln!("{}", Audit::table(std::slice::from_ref(audit)));
    assert!(audit.passed(), "{audit:#?}");
    assert!(audit.accepted > 0, "no call was accepted: {audit:#?}");
}

fn kill(service: Service) -> Fault {
    Fault::Kill {
        service,
        instance: 0,
        down: Duration::from_secs(1),
    }
}

// A killed dialer's calls keep their campaign's slots until AckWait (30 s) ends. A killed
// retrier's fetched retries wait for the 60 s AckWait of `retrier_retries`, which would take
// this test past a minute: `cargo xtask chaos` runs that one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_dialer_killed_mid_load() {
    let audit = check(Scenario::new(
        "kill -9 dialer",
        CALLS_PER_CAMPAIGN,
        vec![kill(Service::Dialer)],
    ))
    .await;
    assert!(audit.retries > 0, "the mix produced retries: {audit:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_ingest_and_projector_killed_mid_load() {
    check(Scenario::new(
        "kill -9 ingest, projector",
        CALLS_PER_CAMPAIGN,
        vec![kill(Service::Ingest), kill(Service::Projector)],
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_nats_server_restarted_mid_load() {
    check(Scenario::new(
        "nats-server restart",
        CALLS_PER_CAMPAIGN,
        vec![Fault::NatsRestart {
            down: Duration::from_secs(2),
        }],
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_postgres_down_for_ten_seconds() {
    check(Scenario::new(
        "PostgreSQL down 10 s",
        CALLS_PER_CAMPAIGN,
        vec![Fault::PostgresOutage {
            down: Duration::from_secs(10),
        }],
    ))
    .await;
}

// The old contract's callbacks name only the call: ingest finds the attempt from the call's
// latest event in JetStream. Crediting them by the read model's attempt count (which runs
// ahead to a queued retry, and stops while PostgreSQL is down) gave a timed-out attempt's
// late callback to the next attempt, which was then never placed ("attempts {1, 3}").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_postgres_down_with_old_contract_callbacks() {
    let mut scenario = Scenario::new(
        "PostgreSQL down 10 s, old-contract callbacks",
        CALLS_PER_CAMPAIGN,
        vec![Fault::PostgresOutage {
            down: Duration::from_secs(10),
        }],
    );
    scenario.carrier = CarrierApi::OldContract;
    let audit = check(scenario).await;
    assert!(audit.retries > 0, "the mix produced retries: {audit:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_carrier_errors_latency_and_callback_faults() {
    let audit = check(Scenario::new(
        "carrier faults",
        CALLS_PER_CAMPAIGN,
        vec![
            Fault::CarrierErrors {
                rate: 0.5,
                hold: Duration::from_secs(3),
            },
            Fault::CarrierLatency {
                latency_ms: 1500,
                hold: Duration::from_secs(3),
            },
            Fault::Callbacks {
                drop: 0.1,
                duplicate: 0.3,
                reorder: 0.3,
                hold: Duration::from_secs(4),
            },
        ],
    ))
    .await;
    assert!(audit.injected_errors > 0, "the 503 burst hit: {audit:#?}");
}

// Faults at the same time, not one after another: the dialer is killed and PostgreSQL stopped
// while carrier-sim answers half of the placements 503 and drops, duplicates and reorders
// callbacks; the projector is killed too. The killed dialer's calls hold their slots until
// AckWait (30 s) ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_faults_at_the_same_time() {
    let audit = check(Scenario::new(
        "at once: kill -9 dialer, projector, PostgreSQL down, carrier 503, callbacks",
        CALLS_PER_CAMPAIGN,
        vec![Fault::Together(vec![
            Fault::CarrierErrors {
                rate: 0.5,
                hold: Duration::from_secs(12),
            },
            Fault::Callbacks {
                drop: 0.1,
                duplicate: 0.3,
                reorder: 0.3,
                hold: Duration::from_secs(12),
            },
            kill(Service::Dialer),
            kill(Service::Projector),
            Fault::PostgresOutage {
                down: Duration::from_secs(5),
            },
        ])],
    ))
    .await;
    assert!(audit.injected_errors > 0, "the 503s hit: {audit:#?}");
    assert!(audit.retries > 0, "the mix produced retries: {audit:#?}");
}

// A carrier down for longer than the dialer's technical retries dead-letters the calls it
// was placing: a dial message's 8th and last delivery comes after 7 NAK delays (0.5 s doubling,
// capped at 30 s, each plus up to 100 % jitter: 62-123 s in all, 92 s on average), its letter
// one more delay later. With cap 4 the first four calls of each campaign start at once, and
// those whose 8th delivery falls inside the 110 s outage are dead-lettered; the calls queued
// behind them are dialled when slots free up, mostly after it. The auditor requires letters:
// exactly the dead-lettered calls, each with its request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_carrier_outage_dead_letters_calls() {
    let mut scenario = Scenario::new(
        "carrier down 110 s (dead letters)",
        12,
        vec![Fault::CarrierErrors {
            rate: 1.0,
            hold: Duration::from_secs(110),
        }],
    );
    scenario.cap = 4;
    scenario.warmup = Duration::ZERO;
    scenario.expect_dead_letters = true;
    let audit = check(scenario).await;
    assert!(
        audit.dead_lettered > 0,
        "calls were dead-lettered: {audit:#?}"
    );
    assert_eq!(audit.dlq_letters, audit.dead_lettered, "{audit:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_three_node_cluster_loses_a_node_mid_load() {
    let mut env = TestEnv::start().await.expect("test environment");
    let mut cluster = tokio::task::spawn_blocking(NatsCluster::start)
        .await
        .expect("cluster task")
        .expect("3-node cluster");
    cluster
        .ready(Duration::from_secs(30))
        .await
        .expect("cluster ready");
    let mut scenario = Scenario::new(
        "3-node cluster, node killed",
        CALLS_PER_CAMPAIGN,
        vec![Fault::NatsNodeKill {
            node: 0,
            down: Duration::from_secs(3),
        }],
    );
    scenario.verbose = true;
    let audit = chaos::run(&scenario, &mut env, Some(&mut cluster))
        .await
        .expect("the scenario ran");
    assert_passed(&audit);
}
