//! A Postgres outage delays the projection and loses nothing.

use std::time::Duration;

use ccm_tests::TestEnv;
use chrono::Utc;

use crate::support::{self, Running};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_for_ten_seconds_then_everything_appears() {
    let mut env = TestEnv::start().await.expect("test env");
    env.provision().await.expect("provision");
    let js = env.jetstream().await.expect("jetstream");
    let before = support::lives(100, 3, Utc::now());
    support::publish_all(&js, &before).await;
    let projector = Running::start(support::config(&env));
    {
        let pool = env.pg().await.expect("pg");
        support::wait_for_rows(&pool, before.len(), Duration::from_secs(30)).await;
        pool.close().await;
    }

    let pg = env.local_postgres.as_mut().expect("local postgres backend");
    tokio::task::block_in_place(|| pg.stop());
    let down = tokio::time::Instant::now();
    // Published while Postgres is down, in two waves.
    let during = support::lives(300, 3, Utc::now());
    let (first, second) = during.split_at(during.len() / 2);
    support::publish_all(&js, first).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    support::publish_all(&js, second).await;
    tokio::time::sleep_until(down + Duration::from_secs(10)).await;
    tokio::task::block_in_place(|| pg.restart()).expect("restart postgres");

    let pool = env.pg().await.expect("pg");
    support::wait_for_rows(&pool, before.len() + during.len(), Duration::from_secs(30)).await;
    projector.stop().await;
    assert_eq!(
        support::dump(&pool).await,
        support::reference_dump(&env, "reference").await,
        "the tables differ from a clean projection"
    );
}
