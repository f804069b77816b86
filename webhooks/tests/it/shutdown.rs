//! Issue 19 item 5: ccm-webhooks exits within seconds of its signal whatever its dependencies
//! do. With nats-server and PostgreSQL gone it used to wait on their time-outs (the delivery
//! log's writes, the leases' release, a NATS flush and drain).

use std::time::{Duration, Instant};

use ccm_tests::TestEnv;

use crate::support::{config, start_webhooks};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_exits_within_seconds_when_nats_and_postgres_are_gone() {
    let mut env = TestEnv::start().await.expect("env");
    env.provision().await.expect("provision");
    let webhooks = start_webhooks(config(&env));
    // Running: migrated, leases taken, pulling.
    tokio::time::sleep(Duration::from_secs(3)).await;
    tokio::task::block_in_place(|| {
        env.local_nats.as_mut().expect("local nats").kill();
        env.local_postgres.as_mut().expect("local postgres").stop();
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let begun = Instant::now();
    let stopped = webhooks.stop_within(Duration::from_secs(15)).await;
    assert!(
        stopped,
        "ccm-webhooks was still running 15 s after its signal with its servers gone"
    );
    assert!(
        // 2 s for the pull loop, 2 s for workers, log and leases, then at most a second each
        // to flush and drain.
        begun.elapsed() < Duration::from_secs(7),
        "ccm-webhooks took {:?} to stop",
        begun.elapsed()
    );
}
