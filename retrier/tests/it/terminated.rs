//! Messages TERMed with a reason (`ccm_core::consumer`): the server's MSG_TERMINATED
//! advisory is captured like MAX_DELIVERIES, so a reader's poison is parked at once and a
//! dial message is still dead-lettered, never lost.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};
use ccm_core::{
    CallEvent, EventKind,
    consumer::{self, Options},
};
use ccm_retrier::dlq::{Dlq, Filter};
use ccm_tests::{TestEnv, eventually};
use chrono::Utc;

use crate::support::{Retrier, events, request, shipped_policy};

/// Pulls `name` (created on `stream` with `filter` if it does not exist) and TERMs every
/// message it brings with `reason`; returns how many.
async fn term_all(
    js: &jetstream::Context,
    stream: &str,
    filter: &str,
    name: &'static str,
    reason: &str,
) -> usize {
    let stream = js.get_stream(stream).await.expect("stream");
    let consumer = stream
        .get_or_create_consumer(
            name,
            pull::Config {
                durable_name: Some(name.into()),
                filter_subject: filter.into(),
                ..Default::default()
            },
        )
        .await
        .expect("consumer");
    let options = Options::new(name, 10, Duration::from_millis(500));
    let mut termed = 0;
    for delivery in consumer::fetch(&consumer, &options).await.expect("fetch") {
        delivery.term(reason).await.expect("term");
        termed += 1;
    }
    termed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_message_is_parked_with_its_reason_and_a_terminated_dial_message_dead_lettered()
 {
    let env = TestEnv::start().await.expect("test environment");
    env.provision().await.expect("provision");
    let js = env.jetstream().await.expect("jetstream");
    let retrier = Retrier::start(
        &env,
        &std::fs::read_to_string(shipped_policy()).expect("policy"),
    );
    let dial = request(56, "+15550005656", 1);
    let queued = ccm_core::nats::publish_dial(&js, &dial)
        .await
        .expect("dial")
        .sequence;
    let dialing = CallEvent {
        call_id: dial.call_id,
        campaign_id: dial.campaign_id,
        attempt: 1,
        at: Utc::now(),
        kind: EventKind::Dialing {
            phone_number: dial.phone_number.clone(),
            max_attempts: dial.max_attempts,
            created_at: dial.created_at,
            custom_fields: Default::default(),
            expires_at: None,
            alternate: None,
        },
    };
    let dialing_seq = ccm_core::nats::publish_event(&js, &dialing)
        .await
        .expect("event")
        .sequence;

    // The projector finds the event undecodable; a dial consumer (which ccm never lets TERM)
    // gives up on the attempt.
    let termed = term_all(
        &js,
        "CALL_EVENTS",
        "calls.event.>",
        "projector_events",
        "undecodable: expected value at line 1",
    )
    .await;
    assert_eq!(termed, 1);
    let termed = term_all(
        &js,
        "CALLS",
        "calls.dial.56",
        "dial_56",
        "cannot ever be placed",
    )
    .await;
    assert_eq!(termed, 1);

    let dlq = Dlq::open(js.clone()).await.expect("dlq");
    let filter = Filter {
        call: Some(dial.call_id),
        limit: 10,
        ..Default::default()
    };
    let records = eventually(Duration::from_secs(15), || async {
        dlq.list(&filter).await.ok().filter(|l| l.len() >= 2)
    })
    .await
    .expect("both terminated messages reach the DLQ");
    assert_eq!(records.len(), 2, "{records:#?}");
    let parked = records
        .iter()
        .find(|r| r.consumer.as_deref() == Some("projector_events"))
        .expect("the projector's record");
    assert!(parked.parked, "{parked:?}");
    assert_eq!(parked.source_seq, Some(dialing_seq));
    assert!(
        parked
            .reason
            .contains("undecodable: expected value at line 1"),
        "{}",
        parked.reason
    );
    let letter = records
        .iter()
        .find(|r| r.consumer.as_deref() == Some("dial_56"))
        .expect("the dial consumer's letter");
    assert!(!letter.parked, "{letter:?}");
    assert!(
        letter.reason.contains("cannot ever be placed"),
        "{}",
        letter.reason
    );
    assert_eq!(letter.source_seq, Some(queued));
    // The call is dead-lettered as by max_deliver; the parked event stays in its stream.
    let dead = eventually(Duration::from_secs(10), || async {
        events(&js, &dial)
            .await
            .into_iter()
            .find(|e| matches!(e.kind, EventKind::DeadLettered { .. }))
    })
    .await;
    assert!(dead.is_some(), "DeadLettered published");
    let call_events = js.get_stream("CALL_EVENTS").await.expect("CALL_EVENTS");
    call_events
        .get_raw_message(dialing_seq)
        .await
        .expect("the parked event is kept");
    retrier.stop().await;
}
