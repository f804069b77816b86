//! `ccm_core::consumer` against a real nats-server: each decision of a [`Delivery`], the
//! NAK of a dropped one, the TERM the server records with its reason, and the worker loop.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use async_nats::jetstream::{
    self,
    consumer::{PullConsumer, pull},
};
use ccm_core::consumer::{self, OnShutdown, Options, Poison};
use ccm_tests::{TestEnv, eventually};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

/// A stream `T` on `t.>` and its consumer `c` with `ack_wait` (long, so that a message seen
/// again soon was NAKed, not timed out) and `max_deliver`.
async fn setup(env: &TestEnv, ack_wait: Duration) -> (jetstream::Context, PullConsumer) {
    let js = env.jetstream().await.expect("jetstream");
    let stream = js
        .create_stream(jetstream::stream::Config {
            name: "T".into(),
            subjects: vec!["t.>".into()],
            ..Default::default()
        })
        .await
        .expect("stream");
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("c".into()),
            ack_wait,
            max_deliver: 5,
            ..Default::default()
        })
        .await
        .expect("consumer");
    (js, consumer)
}

async fn publish(js: &jetstream::Context, n: usize) {
    for i in 0..n {
        js.publish(format!("t.{i}"), format!("m{i}").into())
            .await
            .expect("publish")
            .await
            .expect("stored");
    }
}

fn options() -> Options {
    Options::new("c", 10, Duration::from_millis(300))
}

/// Waits until the consumer has nothing pending nor un-acked.
async fn settled(consumer: &PullConsumer) -> bool {
    eventually(Duration::from_secs(5), || {
        let mut consumer = consumer.clone();
        async move {
            let info = consumer.info().await.ok()?;
            (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
        }
    })
    .await
    .is_some()
}

#[tokio::test]
async fn a_dropped_delivery_is_nacked_and_comes_back_at_once() {
    let env = TestEnv::start().await.expect("env");
    let (js, consumer) = setup(&env, Duration::from_secs(60)).await;
    publish(&js, 1).await;
    let first = consumer::fetch(&consumer, &options()).await.expect("fetch");
    assert_eq!(first.len(), 1);
    drop(first);
    // Well within the 60 s ack_wait: only a NAK brings it back this soon.
    let again = eventually(Duration::from_secs(5), || async {
        let batch = consumer::fetch(&consumer, &options()).await.ok()?;
        (!batch.is_empty()).then_some(batch)
    })
    .await
    .expect("redelivered after the drop");
    assert_eq!(again[0].info().expect("info").delivered, 2);
    assert_eq!(&again[0].payload[..], b"m0");
    for delivery in again {
        delivery.ack().await.expect("ack");
    }
}

#[tokio::test]
async fn each_decision_does_what_it_says() {
    let env = TestEnv::start().await.expect("env");
    let (js, consumer) = setup(&env, Duration::from_secs(60)).await;
    publish(&js, 4).await;
    let mut batch = consumer::fetch(&consumer, &options())
        .await
        .expect("fetch")
        .into_iter();
    let (acked, double, naked, abandoned) = (
        batch.next().expect("1"),
        batch.next().expect("2"),
        batch.next().expect("3"),
        batch.next().expect("4"),
    );
    acked.ack().await.expect("ack");
    double.double_ack().await.expect("double ack");
    naked
        .nak(Some(Duration::from_millis(700)))
        .await
        .expect("nak");
    abandoned.abandon();
    // The NAKed one is not back before its delay, then comes back alone: the acked ones are
    // done, the abandoned one waits for ack_wait (60 s).
    let soon = consumer::fetch(
        &consumer,
        &Options::new("c", 10, Duration::from_millis(200)),
    )
    .await
    .expect("fetch");
    assert!(soon.is_empty(), "back before its delay: {soon:?}");
    let later = eventually(Duration::from_secs(5), || async {
        let batch = consumer::fetch(&consumer, &options()).await.ok()?;
        (!batch.is_empty()).then_some(batch)
    })
    .await
    .expect("the NAKed message comes back");
    assert_eq!(later.len(), 1);
    assert_eq!(&later[0].payload[..], b"m2");
    for delivery in later {
        delivery.progress().await.expect("progress");
        delivery.ack().await.expect("ack");
    }
    let held = eventually(Duration::from_secs(5), || {
        let mut consumer = consumer.clone();
        async move {
            let info = consumer.info().await.ok()?;
            (info.num_ack_pending == 1 && info.num_pending == 0).then_some(())
        }
    })
    .await;
    assert!(held.is_some(), "only the abandoned message is held");
}

#[tokio::test]
async fn a_terminated_message_is_recorded_with_its_reason_and_never_redelivered() {
    let env = TestEnv::start().await.expect("env");
    // A short ack_wait: a message the TERM did not settle would be back within a second.
    let (js, consumer) = setup(&env, Duration::from_secs(1)).await;
    let nats = env.nats().await.expect("nats");
    let mut advisories = nats
        .subscribe("$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.>")
        .await
        .expect("subscribe");
    nats.flush().await.expect("flush");
    publish(&js, 1).await;
    let options = Options {
        poison: Poison::Term,
        ..options()
    };
    let batch = consumer::fetch(&consumer, &options).await.expect("fetch");
    let seq = batch[0].info().expect("info").stream_sequence;
    for delivery in batch {
        delivery
            .poison("undecodable: expected value\nat line 1")
            .await
            .expect("term");
    }
    let advisory = loop {
        let advisory = tokio::time::timeout(Duration::from_secs(5), advisories.next())
            .await
            .expect("an advisory")
            .expect("a message");
        if advisory.subject.as_str() == "$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.T.c" {
            break advisory;
        }
    };
    let advisory: serde_json::Value =
        serde_json::from_slice(&advisory.payload).expect("advisory json");
    assert_eq!(advisory["type"], "io.nats.jetstream.advisory.v1.terminated");
    assert_eq!(advisory["stream"], "T");
    assert_eq!(advisory["consumer"], "c");
    assert_eq!(advisory["stream_seq"].as_u64(), Some(seq));
    assert_eq!(advisory["reason"], "undecodable: expected value at line 1");
    // Past two ack_waits, nothing comes back.
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    let after = consumer::fetch(&consumer, &options).await.expect("fetch");
    assert!(after.is_empty(), "redelivered after TERM: {after:?}");
    assert!(settled(&consumer).await);
}

#[tokio::test]
async fn the_poison_policy_decides_skip_or_nak() {
    let env = TestEnv::start().await.expect("env");
    let (js, consumer) = setup(&env, Duration::from_secs(60)).await;
    publish(&js, 1).await;
    let nak = Options {
        poison: Poison::Nak(Duration::from_millis(100)),
        ..options()
    };
    for delivery in consumer::fetch(&consumer, &nak).await.expect("fetch") {
        delivery.poison("bad").await.expect("nak");
    }
    let skip = Options {
        poison: Poison::Skip,
        ..options()
    };
    let again = eventually(Duration::from_secs(5), || async {
        let batch = consumer::fetch(&consumer, &skip).await.ok()?;
        (!batch.is_empty()).then_some(batch)
    })
    .await
    .expect("a NAKed poison message comes back");
    for delivery in again {
        assert_eq!(delivery.info().expect("info").delivered, 2);
        delivery.poison("bad").await.expect("skip");
    }
    assert!(settled(&consumer).await, "a skipped message is acked");
}

/// The worker loop hands every message to a handler, a handler that returns without
/// deciding (or panics) gets its message NAKed, and messages pulled after the shutdown
/// signal are settled by the shutdown policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_loop_handles_every_message_and_naks_what_a_handler_drops() {
    let env = TestEnv::start().await.expect("env");
    let (js, consumer) = setup(&env, Duration::from_secs(60)).await;
    publish(&js, 20).await;
    let seen = Arc::new(AtomicUsize::new(0));
    let shutdown = CancellationToken::new();
    let options = Options {
        concurrency: 4,
        on_shutdown: OnShutdown::Nak(None),
        ..options()
    };
    let worker = {
        let (consumer, seen, shutdown) = (consumer.clone(), seen.clone(), shutdown.clone());
        tokio::spawn(async move {
            consumer::run(
                &consumer,
                &options,
                move |delivery| {
                    let seen = seen.clone();
                    async move {
                        let first = delivery.info().expect("info").delivered == 1;
                        seen.fetch_add(1, Ordering::SeqCst);
                        // Every even message fails its first time: once by an early return,
                        // once by a panic; both are NAKed by the drop.
                        let n: usize = delivery.subject[2..].parse().expect("n");
                        if first && n.is_multiple_of(4) {
                            return;
                        }
                        if first && n % 4 == 2 {
                            panic!("handler failure");
                        }
                        delivery.ack().await.expect("ack");
                    }
                },
                &shutdown,
            )
            .await;
        })
    };
    assert!(settled(&consumer).await, "every message acked in the end");
    assert_eq!(
        seen.load(Ordering::SeqCst),
        30,
        "20 messages, 10 of them twice"
    );
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(3), worker)
        .await
        .expect("stops within its pull expiry")
        .expect("joined");
}
