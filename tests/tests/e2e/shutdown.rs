//! Issue 19 item 5, for the services the retrier's and webhooks' own tests do not cover: each
//! exits within seconds of its signal with nats-server and PostgreSQL gone (as when `cargo
//! xtask up` stops everything at once).

use std::time::{Duration, Instant};

use ccm_core::Config;
use ccm_tests::TestEnv;
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

type Service = fn(Config, CancellationToken) -> BoxFuture<'static, ()>;

fn dialer(config: Config, stop: CancellationToken) -> BoxFuture<'static, ()> {
    Box::pin(async move {
        let _ = ccm_dialer::run(config, stop).await;
    })
}

fn projector(config: Config, stop: CancellationToken) -> BoxFuture<'static, ()> {
    Box::pin(async move {
        let _ = ccm_projector::run(config, stop).await;
    })
}

fn ingest(config: Config, stop: CancellationToken) -> BoxFuture<'static, ()> {
    Box::pin(async move {
        let _ = ccm_ingest::run(config, stop).await;
    })
}

async fn exits_in_time(name: &str, service: Service, limit: Duration) {
    let mut env = TestEnv::start().await.expect("env");
    env.provision().await.expect("provision");
    let mut config = env.config();
    config.ingest.listen = "127.0.0.1:0".parse().expect("address");
    let stop = CancellationToken::new();
    let task = tokio::spawn(service(config, stop.clone()));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!task.is_finished(), "{name} is running");
    tokio::task::block_in_place(|| {
        env.local_nats.as_mut().expect("local nats").kill();
        env.local_postgres.as_mut().expect("local postgres").stop();
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let begun = Instant::now();
    stop.cancel();
    let ended = tokio::time::timeout(Duration::from_secs(15), task).await;
    assert!(
        ended.is_ok(),
        "{name} was still running 15 s after its signal with its servers gone"
    );
    assert!(
        begun.elapsed() < limit,
        "{name} took {:?} to stop",
        begun.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dialer_exits_within_seconds_when_its_servers_are_gone() {
    // The dialer lets live calls end for 10 s (none here), then abandons the rest 3 s later.
    exits_in_time("the dialer", dialer, Duration::from_secs(14)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_projector_exits_within_seconds_when_its_servers_are_gone() {
    exits_in_time("the projector", projector, Duration::from_secs(7)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_exits_within_seconds_when_its_servers_are_gone() {
    exits_in_time("ingest", ingest, Duration::from_secs(5)).await;
}
