//! Generated fault scenarios (see `ccm_tests::chaos::generate`): a seeded schedule of client
//! operations mixed with kill -9 of the services, nats-server stopped or frozen and
//! PostgreSQL down, against the services as real processes; then every invariant is
//! audited. A failure prints its seed and the command that replays it; `cargo xtask chaos
//! --generated --seed N --minutes M` runs long ones.

use std::time::Duration;

use ccm_tests::{
    TestEnv,
    chaos::{
        generate::{Knobs, schedule},
        generated,
    },
};

/// Each seed's operations and faults last this long; the calls then have
/// [`Knobs::settle_bound`] to end (a healthy run stops waiting as soon as they have).
const RUN: Duration = Duration::from_secs(60);

/// Runs `seed` with `instances` processes of every service (`cargo xtask chaos --instances`).
async fn check(seed: u64, instances: usize) {
    let mut knobs = Knobs::new(RUN);
    knobs.instances = instances;
    let schedule = schedule(seed, &knobs);
    let mut env = TestEnv::start().await.expect("test environment");
    let report = generated::run(&schedule, &mut env, knobs.settle_bound(), true)
        .await
        .expect("the generated run ran");
    eprintln!("{}", report.render());
    assert!(report.audit.accepted > 0, "no call was accepted");
    assert!(
        report.passed(),
        "seed {seed} broke an invariant; replay: {}",
        generated::replay_command(seed, RUN.as_secs(), instances)
    );
}

// Seed 1 was kept out of this set until session 8 (2026-12-05): it once left a call open past
// a 120 s settle, and its replays showed why. Its last calls are placements whose result was
// lost to a fault; the dialer cannot name those to hang them up, so it holds their slot for the
// maximum duration plus the longest ring (121 s) by design: it settled 130-133 s after its
// schedule in five replays, and the settle is now `Knobs::settle_bound`. One replay also
// placed a sixth call in a campaign of cap 5, three seconds after its cap went 6, 10, 5: a consumer written
// for a moment with the older cap, closed in `dialer/src/cap.rs`.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_generated_seed_1() {
    check(1, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_generated_seed_2() {
    check(2, 1).await;
}

// Seed 7 with two processes of every service (issue 23): it kills the second retrier while that
// retrier holds two retry entries, then restarts nats-server. Five of thirteen runs lost a call
// (the server kept the entries but had lost their pending state, so they were never delivered
// again) until the retrier's stranded-entry sweep put such entries back; see docs/reliability.md,
// "Stranded retry entries".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_generated_seed_7_two_of_every_service() {
    check(7, 2).await;
}
