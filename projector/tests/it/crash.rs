//! A projector killed in the middle of its work loses and duplicates nothing.

use std::time::Duration;

use ccm_tests::TestEnv;
use chrono::Utc;

use crate::support::{self, Running};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborting_the_projector_mid_batch_loses_and_duplicates_nothing() {
    let env = TestEnv::start().await.expect("test env");
    env.provision().await.expect("provision");
    let js = env.jetstream().await.expect("jetstream");
    let pool = env.pg().await.expect("pg");
    let messages = support::lives(4000, 2, Utc::now());
    support::publish_all(&js, &messages).await;

    let mut config = support::config(&env);
    config.projector.batch_size = 200;
    let projector = Running::start(config.clone());
    // Abort as soon as some batches are committed, while most are still to come.
    let started = ccm_tests::eventually(Duration::from_secs(30), || async {
        (support::event_rows(&pool).await > 0).then_some(())
    })
    .await;
    assert!(started.is_some(), "nothing projected");
    projector.abort().await;
    let at_abort = support::event_rows(&pool).await;
    assert!(
        at_abort < i64::try_from(messages.len()).expect("count"),
        "the projector finished before it could be aborted"
    );

    // A new projector takes over; what the old one had in flight is redelivered after the
    // consumers' ack wait (30 s).
    let projector = Running::start(config);
    support::wait_for_rows(&pool, messages.len(), Duration::from_secs(75)).await;
    projector.stop().await;
    assert_eq!(
        support::event_rows(&pool).await,
        i64::try_from(messages.len()).expect("count")
    );
    assert_eq!(
        support::dump(&pool).await,
        support::reference_dump(&env, "reference").await,
        "the tables differ from a clean projection (lost or doubled messages)"
    );
}
