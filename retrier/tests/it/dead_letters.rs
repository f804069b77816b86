//! Dead letters: a message that exhausts `max_deliver` is moved to `DLQ` intact, and the
//! operator's redrive and discard act on it once.

use std::time::Duration;

use async_nats::{
    HeaderMap,
    jetstream::{self, AckKind, consumer::pull},
};
use ccm_core::{DialRequest, EventKind};
use ccm_retrier::dlq::{Dlq, DlqError, Filter, header};
use ccm_tests::{TestEnv, eventually};
use futures::StreamExt;

use crate::support::{Retrier, events, request, shipped_policy};

/// Creates a consumer that gives up after `max_deliver` deliveries, and plays a consumer
/// that fails every message it gets: NAK, until the server stops redelivering, then one
/// more pull (nats-server 2.9 emits the advisory on the next pull).
pub async fn exhaust(
    js: &jetstream::Context,
    stream: &str,
    filter: &str,
    name: &str,
    max_deliver: i64,
) {
    let stream = js.get_stream(stream).await.expect("stream");
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some(name.into()),
            filter_subject: filter.into(),
            max_deliver,
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .expect("consumer");
    let mut naks = 0;
    let mut idle = 0;
    while idle < 2 {
        let mut batch = consumer
            .fetch()
            .max_messages(1)
            .expires(Duration::from_millis(500))
            .messages()
            .await
            .expect("fetch");
        let mut got = false;
        while let Some(message) = batch.next().await {
            let message = message.expect("message");
            message.ack_with(AckKind::Nak(None)).await.expect("nak");
            naks += 1;
            got = true;
        }
        idle = if got { 0 } else { idle + 1 };
    }
    assert_eq!(naks, max_deliver, "delivered exactly max_deliver times");
}

fn first(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).map(|v| v.as_str().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_dial_message_is_dead_lettered_intact_then_redriven_once() {
    let env = TestEnv::start().await.expect("test environment");
    env.provision().await.expect("provision");
    let js = env.jetstream().await.expect("jetstream");
    let retrier = Retrier::start(
        &env,
        &std::fs::read_to_string(shipped_policy()).expect("policy"),
    );
    let active = js.get_key_value("active_calls").await.expect("bucket");

    let dial = request(77, "+15550007777", 1);
    let key = dial.phone_number.digits().to_owned();
    active
        .create(&key, dial.call_id.to_string().into())
        .await
        .expect("claim");
    let mut headers = HeaderMap::new();
    headers.insert(
        "traceparent",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    );
    let body = serde_json::to_vec(&dial).expect("json");
    let ack =
        ccm_core::nats::publish_json(&js, dial.subject(), &dial.msg_id(), Some(headers), &dial)
            .await
            .expect("published");
    exhaust(&js, "CALLS", "calls.dial.77", "failing_dialer", 3).await;

    let dlq = Dlq::open(js.clone()).await.expect("dlq");
    let letters = eventually(Duration::from_secs(15), || async {
        dlq.list(&Filter {
            limit: 10,
            ..Default::default()
        })
        .await
        .ok()
        .filter(|l| !l.is_empty())
    })
    .await
    .expect("the message reaches the DLQ");
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(letter.stream, "CALLS");
    assert_eq!(letter.consumer.as_deref(), Some("failing_dialer"));
    assert_eq!(letter.deliveries, Some(3));
    assert_eq!(letter.source_seq, Some(ack.sequence));
    assert_eq!(letter.call_id, Some(dial.call_id));
    assert!(letter.reason.contains("max_deliver"), "{}", letter.reason);
    // Payload byte for byte, original headers kept.
    let stored = js
        .get_stream("DLQ")
        .await
        .expect("DLQ")
        .get_raw_message(letter.seq)
        .await
        .expect("raw");
    assert_eq!(stored.payload.as_ref(), body.as_slice());
    assert_eq!(stored.subject.as_str(), "calls.dlq.CALLS");
    assert!(first(&stored.headers, "traceparent").is_some_and(|t| t.starts_with("00-0af7")));
    assert_eq!(
        first(&stored.headers, header::ORIGINAL_MSG_ID),
        Some(dial.msg_id())
    );
    // The original is gone, the call shows it, the number is free.
    let calls = js.get_stream("CALLS").await.expect("CALLS");
    assert!(
        calls.get_raw_message(ack.sequence).await.is_err(),
        "original deleted"
    );
    let history = events(&js, &dial).await;
    assert!(
        matches!(history.last().map(|e| &e.kind), Some(EventKind::DeadLettered { reason }) if reason.contains("3 times")),
        "{history:?}"
    );
    let claim = eventually(Duration::from_secs(5), || async {
        active.get(&key).await.expect("kv").is_none().then_some(())
    })
    .await;
    assert!(claim.is_some(), "claim released");

    // Redrive: the call's next attempt, recorded, once.
    let redriven = dlq.redrive(letter.seq).await.expect("redrive");
    assert_eq!(redriven.attempt, Some(2));
    let last = calls
        .direct_get_last_for_subject("calls.dial.77")
        .await
        .expect("re-published");
    let again: DialRequest = serde_json::from_slice(&last.payload).expect("dial");
    assert_eq!((again.call_id, again.attempt), (dial.call_id, 2));
    assert_eq!(
        first(&last.headers, "Nats-Msg-Id"),
        Some(format!("{}/2", dial.call_id))
    );
    assert_eq!(
        active.get(&key).await.expect("kv").as_deref(),
        Some(dial.call_id.to_string().as_bytes())
    );
    let history = events(&js, &dial).await;
    assert!(
        matches!(history.last().map(|e| &e.kind), Some(EventKind::Retrying { reason, .. }) if reason.contains("Redriven")),
        "{history:?}"
    );
    assert!(matches!(
        dlq.redrive(letter.seq).await,
        Err(DlqError::NotFound(_))
    ));
    assert!(
        dlq.list(&Filter {
            limit: 10,
            ..Default::default()
        })
        .await
        .expect("list")
        .is_empty()
    );
    retrier.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_events_of_other_consumers_are_dead_lettered_and_can_be_discarded() {
    let env = TestEnv::start().await.expect("test environment");
    env.provision().await.expect("provision");
    let js = env.jetstream().await.expect("jetstream");
    let retrier = Retrier::start(
        &env,
        &std::fs::read_to_string(shipped_policy()).expect("policy"),
    );

    // An event the projector could never apply.
    let subject = format!("calls.event.88.{}", uuid::Uuid::now_v7());
    let ack = js
        .send_publish(
            subject.clone(),
            jetstream::message::PublishMessage::build()
                .payload("{not json".into())
                .message_id("poison-1"),
        )
        .await
        .expect("publish")
        .await
        .expect("stored");
    exhaust(
        &js,
        "CALL_EVENTS",
        "calls.event.88.>",
        "failing_projector",
        2,
    )
    .await;
    // And a dial message, to be discarded.
    let dial = request(88, "+15550008888", 1);
    ccm_core::nats::publish_dial(&js, &dial)
        .await
        .expect("published");
    exhaust(&js, "CALLS", "calls.dial.88", "failing_dialer_88", 2).await;

    let dlq = Dlq::open(js.clone()).await.expect("dlq");
    let all = eventually(Duration::from_secs(15), || async {
        dlq.list(&Filter {
            limit: 10,
            ..Default::default()
        })
        .await
        .ok()
        .filter(|l| l.len() == 2)
    })
    .await
    .expect("both reach the DLQ");
    let events_only = dlq
        .list(&Filter {
            stream: Some("CALL_EVENTS".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .expect("filtered");
    assert_eq!(events_only.len(), 1);
    assert_eq!(events_only[0].subject, subject);
    assert_eq!(events_only[0].payload, serde_json::json!("{not json"));
    let events_stream = js.get_stream("CALL_EVENTS").await.expect("stream");
    assert!(
        events_stream.get_raw_message(ack.sequence).await.is_err(),
        "original deleted"
    );

    let by_campaign = dlq
        .list(&Filter {
            campaign: Some(dial.campaign_id),
            limit: 10,
            ..Default::default()
        })
        .await
        .expect("filtered");
    assert_eq!(by_campaign.len(), 1, "{all:?}");
    let discarded = dlq.discard(by_campaign[0].seq).await.expect("discard");
    assert_eq!(discarded.call_id, Some(dial.call_id));
    let history = events(&js, &dial).await;
    assert!(
        matches!(history.last().map(|e| &e.kind), Some(EventKind::Failed { reason }) if reason.contains("discarded")),
        "{history:?}"
    );
    assert!(matches!(
        dlq.show(by_campaign[0].seq).await,
        Err(DlqError::NotFound(_))
    ));
    // Redriving the event letter puts it back on its subject.
    let redriven = dlq.redrive(events_only[0].seq).await.expect("redrive");
    assert_eq!(redriven.subject, subject);
    let back = events_stream
        .direct_get_last_for_subject(subject.as_str())
        .await
        .expect("back");
    assert_eq!(back.payload.as_ref(), b"{not json");
    retrier.stop().await;
}
