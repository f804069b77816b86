//! A stopping projector gives back the batch it was collecting (NAK, through the consumer
//! runtime) instead of leaving it un-acknowledged until `ack_wait` (30 s): the replica that
//! takes over applies it at once.

use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use ccm_tests::{TestEnv, eventually};
use chrono::Utc;

use crate::support::{self, Running};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_projector_gives_its_unwritten_batch_back_at_once() {
    let env = TestEnv::start().await.expect("test env");
    env.provision().await.expect("provision");
    let js = env.jetstream().await.expect("jetstream");
    let pool = env.pg().await.expect("pg");
    // A batch that never closes by itself: every message stays in the one being collected.
    let mut config = support::config(&env);
    config.projector.batch_size = 10_000;
    config.projector.batch_wait_ms = 600_000;
    let projector = Running::start(config.clone());
    let published = support::lives(5, 4, Utc::now());
    support::publish_all(&js, &published).await;
    // Both consumers have been given everything, and hold it in their unwritten batches.
    let mut held = 0;
    for (consumer, stream) in [
        ("projector_calls", "CALLS"),
        ("projector_events", "CALL_EVENTS"),
    ] {
        let consumer: PullConsumer = js
            .get_consumer_from_stream(consumer, stream)
            .await
            .expect("consumer");
        held += eventually(Duration::from_secs(10), || {
            let mut consumer = consumer.clone();
            async move {
                let info = consumer.info().await.ok()?;
                (info.num_pending == 0 && info.num_ack_pending > 0).then_some(info.num_ack_pending)
            }
        })
        .await
        .expect("the projector holds the messages in its batch");
    }
    assert_eq!(support::event_rows(&pool).await, 0, "nothing written yet");
    projector.stop().await;

    // The next replica writes them well within the 30 s ack_wait (15 s: the machine may be
    // loaded; before the fix none was written in that time).
    config.projector.batch_size = 1000;
    config.projector.batch_wait_ms = 20;
    let next = Running::start(config);
    support::wait_for_rows(&pool, published.len(), Duration::from_secs(15)).await;
    assert!(held > 0);
    next.stop().await;
}
