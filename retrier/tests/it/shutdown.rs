//! Issue 19 item 5: a service exits within seconds of its signal whatever its dependencies do.
//! With nats-server and PostgreSQL gone (as when `cargo xtask up` stops everything at once),
//! the retrier used to wait on NATS time-outs (a flush and a drain that never complete).

use std::time::{Duration, Instant};

use ccm_tests::TestEnv;

use crate::support::{Retrier, shipped_policy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retrier_exits_within_seconds_when_nats_and_postgres_are_gone() {
    let mut env = TestEnv::start().await.expect("env");
    env.provision().await.expect("provision");
    let policy = std::fs::read_to_string(shipped_policy()).expect("policy");
    let retrier = Retrier::start(&env, &policy);
    // Running: its consumers pull and its reaper has started.
    tokio::time::sleep(Duration::from_secs(2)).await;
    tokio::task::block_in_place(|| {
        env.local_nats.as_mut().expect("local nats").kill();
        env.local_postgres.as_mut().expect("local postgres").stop();
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let begun = Instant::now();
    let stopped = retrier.stop_within(Duration::from_secs(10)).await;
    assert!(
        stopped,
        "the retrier was still running 10 s after its signal with its servers gone"
    );
    assert!(
        // The grace for tasks (3 s), then at most a second each to flush and drain.
        begun.elapsed() < Duration::from_secs(6),
        "the retrier took {:?} to stop",
        begun.elapsed()
    );
}
