//! `RETRIES`: entries fire on time, once, whichever replica holds them.

use std::{collections::HashMap, time::Duration};

use ccm_core::RetryEntry;
use ccm_tests::TestEnv;
use chrono::Utc;
use futures::StreamExt;

use crate::support::{Retrier, messages, request};

const ANY_TIME: &str = "status_retry_rules:\n  RNR: {should_retry: true}\n";

async fn schedule(js: &async_nats::jetstream::Context, entry: &RetryEntry) {
    ccm_core::nats::publish_json(js, entry.subject(), &entry.msg_id(), None, entry)
        .await
        .expect("entry stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn due_entries_fire_within_a_second_short_and_long_waits_alike() {
    let env = TestEnv::start().await.expect("test environment");
    env.provision().await.expect("provision");
    let js = env.jetstream().await.expect("jetstream");
    let client = env.nats().await.expect("client");
    let mut dials = client.subscribe("calls.dial.>").await.expect("subscribe");
    let retrier = Retrier::start(&env, ANY_TIME);

    // One held in memory at once, one NAK-delayed first (beyond the 20 s hold window).
    let mut due = HashMap::new();
    for (n, wait) in [(1, Duration::from_secs(2)), (2, Duration::from_secs(27))] {
        let entry = RetryEntry {
            due_at: Utc::now() + chrono::Duration::from_std(wait).expect("duration"),
            request: request(5, &format!("+1555000100{n}"), 2),
            window_deferral: None,
        };
        schedule(&js, &entry).await;
        due.insert(entry.request.call_id, entry.due_at);
    }
    let mut lateness = Vec::new();
    while !due.is_empty() {
        let message = tokio::time::timeout(Duration::from_secs(40), dials.next())
            .await
            .expect("a retry fires in time")
            .expect("subscription open");
        let arrived = Utc::now();
        let dial: ccm_core::DialRequest = serde_json::from_slice(&message.payload).expect("dial");
        let due_at = due.remove(&dial.call_id).expect("an entry fires once");
        assert_eq!(dial.attempt, 2);
        let headers = message.headers.expect("headers");
        assert_eq!(
            headers.get("Nats-Msg-Id").map(|v| v.as_str().to_owned()),
            Some(format!("{}/2", dial.call_id))
        );
        let late = arrived - due_at;
        eprintln!(
            "retry due {due_at} fired {} ms late",
            late.num_milliseconds()
        );
        lateness.push(late);
    }
    for late in lateness {
        assert!(late >= chrono::Duration::zero(), "never early: {late}");
        assert!(
            late < chrono::Duration::milliseconds(1000),
            "within 1 s: {late}"
        );
    }
    // Acked entries leave the work queue.
    let left = ccm_tests::eventually(Duration::from_secs(5), || async {
        (messages(&js, "RETRIES").await == 0).then_some(())
    })
    .await;
    assert!(left.is_some(), "RETRIES is empty once the entries fired");
    retrier.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_entries_and_publish_each_exactly_once() {
    let env = TestEnv::start().await.expect("test environment");
    env.provision().await.expect("provision");
    let js = env.jetstream().await.expect("jetstream");
    let (a, b) = (
        Retrier::start(&env, ANY_TIME),
        Retrier::start(&env, ANY_TIME),
    );
    const ENTRIES: usize = 200;
    let due_at = Utc::now() + chrono::Duration::seconds(3);
    for n in 0..ENTRIES {
        let entry = RetryEntry {
            due_at,
            request: request(9, &format!("+1555{n:07}"), 3),
            window_deferral: None,
        };
        schedule(&js, &entry).await;
    }
    let published = ccm_tests::eventually(Duration::from_secs(15), || async {
        let n = messages(&js, "CALLS").await;
        (n as usize >= ENTRIES).then_some(n)
    })
    .await
    .expect("every entry fires");
    let fired_by = Utc::now() - due_at;
    eprintln!(
        "{ENTRIES} entries due together all published {} ms after due",
        fired_by.num_milliseconds()
    );
    // A second look a moment later: nothing fires twice.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(messages(&js, "CALLS").await, published);
    assert_eq!(published as usize, ENTRIES);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_entry_becomes_a_dead_letter_instead_of_looping() {
    let env = TestEnv::start().await.expect("test environment");
    env.provision().await.expect("provision");
    let js = env.jetstream().await.expect("jetstream");
    let retrier = Retrier::start(&env, ANY_TIME);
    js.send_publish(
        "calls.retry.5",
        async_nats::jetstream::message::PublishMessage::build()
            .payload("not an entry".into())
            .message_id("garbage"),
    )
    .await
    .expect("publish")
    .await
    .expect("stored");
    let dlq = ccm_retrier::dlq::Dlq::open(js.clone()).await.expect("dlq");
    let letters = ccm_tests::eventually(Duration::from_secs(10), || async {
        let filter = ccm_retrier::dlq::Filter {
            stream: Some("RETRIES".into()),
            limit: 5,
            ..Default::default()
        };
        dlq.list(&filter).await.ok().filter(|l| !l.is_empty())
    })
    .await
    .expect("the entry is dead-lettered");
    assert_eq!(letters[0].payload, serde_json::json!("not an entry"));
    assert!(
        letters[0].reason.contains("undecodable"),
        "{}",
        letters[0].reason
    );
    let gone = ccm_tests::eventually(Duration::from_secs(5), || async {
        (messages(&js, "RETRIES").await == 0).then_some(())
    })
    .await;
    assert!(gone.is_some(), "removed from RETRIES");
    assert_eq!(messages(&js, "CALLS").await, 0);
    retrier.stop().await;
}

/// Strands every entry now in `RETRIES`, as the server left two entries after a retrier was
/// killed holding them and nats-server restarted: stored, at or below `retrier_retries`' ack
/// floor, pending nowhere, so never delivered again. (A work queue only takes consumers that
/// deliver all: the consumer is made again with a filter no entry matches, a later entry of
/// that filter is delivered and acked, which moves the floor past the others, and the filter
/// is then removed.)
async fn strand_stored_entries(js: &async_nats::jetstream::Context) {
    use async_nats::jetstream::consumer::{PullConsumer, pull};
    let retries = js.get_stream("RETRIES").await.expect("RETRIES");
    let was = retries
        .consumer_info("retrier_retries")
        .await
        .expect("consumer")
        .config
        .clone();
    let config = |filter: &str| pull::Config {
        durable_name: was.durable_name.clone(),
        description: was.description.clone(),
        ack_wait: was.ack_wait,
        max_deliver: was.max_deliver,
        max_ack_pending: was.max_ack_pending,
        max_waiting: was.max_waiting,
        filter_subject: filter.to_owned(),
        ..Default::default()
    };
    retries
        .delete_consumer("retrier_retries")
        .await
        .expect("delete");
    let elsewhere: PullConsumer = retries
        .create_consumer(config("calls.retry.999999"))
        .await
        .expect("made again, filtered");
    let marker = RetryEntry {
        due_at: Utc::now(),
        request: request(999_999, "+15550009999", 2),
        window_deferral: None,
    };
    schedule(js, &marker).await;
    let mut batch = elsewhere
        .fetch()
        .max_messages(1)
        .messages()
        .await
        .expect("fetch");
    let delivered = batch.next().await.expect("the marker").expect("message");
    delivered.double_ack().await.expect("acked");
    retries
        .create_consumer(config(""))
        .await
        .expect("filter removed");
    let floor = retries
        .consumer_info("retrier_retries")
        .await
        .expect("consumer")
        .ack_floor
        .stream_sequence;
    let first = retries
        .clone()
        .info()
        .await
        .expect("info")
        .state
        .first_sequence;
    assert!(
        first <= floor,
        "the entries are at or below the ack floor ({first} > {floor})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_the_consumer_no_longer_delivers_is_put_back_and_fires_once() {
    let env = TestEnv::start().await.expect("test environment");
    env.provision().await.expect("provision");
    let js = env.jetstream().await.expect("jetstream");
    let client = env.nats().await.expect("client");
    let mut dials = client.subscribe("calls.dial.>").await.expect("subscribe");

    // One entry whose call still waits for attempt 2, one whose call ended meanwhile.
    let waiting = RetryEntry {
        due_at: Utc::now(),
        request: request(7, "+15550002001", 2),
        window_deferral: None,
    };
    let ended = RetryEntry {
        due_at: Utc::now(),
        request: request(7, "+15550002002", 2),
        window_deferral: None,
    };
    schedule(&js, &waiting).await;
    schedule(&js, &ended).await;
    let done = ccm_core::CallEvent::now(
        ended.request.call_id,
        ended.request.campaign_id,
        2,
        ccm_core::EventKind::Completed,
    );
    ccm_core::nats::publish_event(&js, &done)
        .await
        .expect("event");
    strand_stored_entries(&js).await;

    let mut config = env.config();
    config.retrier.stranded_sweep_ms = 300;
    let retrier = Retrier::start_with(&env, ANY_TIME, config);
    let message = tokio::time::timeout(Duration::from_secs(10), dials.next())
        .await
        .expect("the stranded entry fires (two sweeps of 300 ms)")
        .expect("subscription open");
    let dial: ccm_core::DialRequest = serde_json::from_slice(&message.payload).expect("dial");
    assert_eq!(
        dial.call_id, waiting.request.call_id,
        "only the waiting call goes on"
    );
    assert_eq!(dial.attempt, 2);
    assert_eq!(
        message
            .headers
            .expect("headers")
            .get("Nats-Msg-Id")
            .map(|v| v.as_str().to_owned()),
        Some(waiting.dial_msg_id()),
        "the attempt's own id, so a second dial message of it is dropped"
    );
    // Neither comes again, and both stranded entries leave the stream.
    let again = tokio::time::timeout(Duration::from_secs(2), dials.next()).await;
    assert!(again.is_err(), "one dial message: {again:?}");
    let left = ccm_tests::eventually(Duration::from_secs(5), || async {
        (messages(&js, "RETRIES").await == 0).then_some(())
    })
    .await;
    assert!(left.is_some(), "RETRIES is empty");
    retrier.stop().await;
}
