//! Dead letters: a message that exhausts `max_deliver` is moved to `DLQ` intact, and the
//! operator's redrive and discard act on it once.

use std::time::Duration;

use async_nats::{
    HeaderMap,
    jetstream::{self, AckKind, consumer::pull},
};
use ccm_core::{CallEvent, DialRequest, EventKind};
use ccm_retrier::dlq::{Dlq, DlqError, Filter, header};
use ccm_tests::{TestEnv, eventually};
use chrono::Utc;
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
    let naks = nak_until_given_up(js, stream, filter, name, max_deliver).await;
    assert_eq!(naks, max_deliver, "delivered exactly max_deliver times");
}

/// As [`exhaust`], for any number of messages: returns how many NAKs it took.
async fn nak_until_given_up(
    js: &jetstream::Context,
    stream: &str,
    filter: &str,
    name: &str,
    max_deliver: i64,
) -> i64 {
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
    naks
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
    exhaust(&js, "CALLS", "calls.dial.77", "dial_77", 3).await;

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
    assert_eq!(letter.consumer.as_deref(), Some("dial_77"));
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

/// Waits until the retrier has handled every advisory captured so far.
async fn advisories_handled(js: &jetstream::Context) {
    let done = eventually(Duration::from_secs(15), || async {
        let mut consumer: jetstream::consumer::PullConsumer = js
            .get_consumer_from_stream("retrier_advisories", "ADVISORIES")
            .await
            .ok()?;
        let info = consumer.info().await.ok()?;
        (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
    })
    .await;
    assert!(done.is_some(), "the retrier handles the advisories");
}

/// Issue 16: the projector giving up on a call's messages (as it does on a value Postgres
/// refuses) used to dead-letter the call: `DeadLettered` published, number released, the
/// messages deleted from `CALLS` and `CALL_EVENTS`. Only a dial consumer may do that; any
/// other reader's messages are parked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_other_than_a_dial_consumer_parks_the_message_and_leaves_the_call_alone() {
    let env = TestEnv::start().await.expect("test environment");
    env.provision().await.expect("provision");
    let js = env.jetstream().await.expect("jetstream");
    let retrier = Retrier::start(
        &env,
        &std::fs::read_to_string(shipped_policy()).expect("policy"),
    );
    let active = js.get_key_value("active_calls").await.expect("bucket");

    // A live call: its number claimed, its attempt queued and being dialled.
    let dial = request(55, "+15550005555", 1);
    let key = dial.phone_number.digits().to_owned();
    active
        .create(&key, dial.call_id.to_string().into())
        .await
        .expect("claim");
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

    // The projector's consumers give up on both; so does an operator's own reader.
    let calls = js.get_stream("CALLS").await.expect("CALLS");
    let call_events = js.get_stream("CALL_EVENTS").await.expect("CALL_EVENTS");
    calls
        .delete_consumer("projector_calls")
        .await
        .expect("provisioned consumer");
    call_events
        .delete_consumer("projector_events")
        .await
        .expect("provisioned consumer");
    // (Not asserting the deliveries here: before the fix, the first advisory's DeadLettered
    // event was one more message for the event readers.)
    nak_until_given_up(&js, "CALLS", "calls.dial.55", "projector_calls", 2).await;
    nak_until_given_up(
        &js,
        "CALL_EVENTS",
        "calls.event.55.>",
        "projector_events",
        2,
    )
    .await;
    nak_until_given_up(&js, "CALL_EVENTS", "calls.event.55.>", "audit_reader", 2).await;

    let dlq = Dlq::open(js.clone()).await.expect("dlq");
    let filter = Filter {
        call: Some(dial.call_id),
        limit: 10,
        ..Default::default()
    };
    eventually(Duration::from_secs(15), || async {
        dlq.list(&filter).await.ok().filter(|l| l.len() >= 3)
    })
    .await
    .expect("three records reach the DLQ");
    advisories_handled(&js).await;
    let records = dlq.list(&filter).await.expect("list");
    assert!(records.iter().all(|r| r.parked), "{records:#?}");
    assert_eq!(records.len(), 3, "{records:#?}");
    let by = |consumer: &str| {
        records
            .iter()
            .find(|r| r.consumer.as_deref() == Some(consumer))
            .unwrap_or_else(|| panic!("a record of {consumer}: {records:?}"))
            .clone()
    };
    let (of_calls, of_events, of_audit) = (
        by("projector_calls"),
        by("projector_events"),
        by("audit_reader"),
    );
    for (record, stream, seq) in [
        (&of_calls, "CALLS", queued),
        (&of_events, "CALL_EVENTS", dialing_seq),
        (&of_audit, "CALL_EVENTS", dialing_seq),
    ] {
        assert!(record.parked, "{record:?}");
        assert_eq!(
            (record.stream.as_str(), record.source_seq),
            (stream, Some(seq))
        );
        assert!(record.reason.contains("parked"), "{}", record.reason);
    }

    // Nothing ended, freed or deleted.
    calls
        .get_raw_message(queued)
        .await
        .expect("the dial message stays in CALLS");
    call_events
        .get_raw_message(dialing_seq)
        .await
        .expect("the event stays in CALL_EVENTS");
    assert_eq!(
        active.get(&key).await.expect("kv").as_deref(),
        Some(dial.call_id.to_string().as_bytes()),
        "the claim stays"
    );
    let history = events(&js, &dial).await;
    assert_eq!(history, vec![dialing.clone()], "no DeadLettered");

    // Redrive replays the event to the projector alone: its consumer is reset to it.
    let replayed = dlq.redrive(of_events.seq).await.expect("replay");
    assert_eq!(replayed.attempt, None);
    let again: jetstream::consumer::PullConsumer = call_events
        .get_consumer("projector_events")
        .await
        .expect("consumer");
    let mut batch = again
        .fetch()
        .max_messages(1)
        .expires(Duration::from_secs(2))
        .messages()
        .await
        .expect("fetch");
    let message = batch
        .next()
        .await
        .expect("delivered again")
        .expect("message");
    assert_eq!(
        message.info().expect("info").stream_sequence,
        dialing_seq,
        "the projector sees the parked event again"
    );
    assert!(matches!(
        dlq.show(of_events.seq).await,
        Err(DlqError::NotFound(_))
    ));
    // A reader that may not see a message twice is not replayed automatically.
    assert!(matches!(
        dlq.redrive(of_audit.seq).await,
        Err(DlqError::ReplayByHand { source_seq, .. }) if source_seq == dialing_seq
    ));
    // Discarding a parked record deletes the record only.
    let discarded = dlq.discard(of_calls.seq).await.expect("discard");
    assert!(discarded.parked);
    assert!(matches!(
        dlq.show(of_calls.seq).await,
        Err(DlqError::NotFound(_))
    ));
    calls
        .get_raw_message(queued)
        .await
        .expect("the dial message stays in CALLS");
    assert_eq!(
        active.get(&key).await.expect("kv").as_deref(),
        Some(dial.call_id.to_string().as_bytes()),
        "the claim stays"
    );
    assert_eq!(events(&js, &dial).await, vec![dialing], "no Failed");
    retrier.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dial_letter_listed_by_campaign_is_discarded_once() {
    let env = TestEnv::start().await.expect("test environment");
    env.provision().await.expect("provision");
    let js = env.jetstream().await.expect("jetstream");
    let retrier = Retrier::start(
        &env,
        &std::fs::read_to_string(shipped_policy()).expect("policy"),
    );
    let dial = request(88, "+15550008888", 1);
    ccm_core::nats::publish_dial(&js, &dial)
        .await
        .expect("published");
    exhaust(&js, "CALLS", "calls.dial.88", "dial_88", 2).await;

    let dlq = Dlq::open(js.clone()).await.expect("dlq");
    let by_campaign = eventually(Duration::from_secs(15), || async {
        dlq.list(&Filter {
            campaign: Some(dial.campaign_id),
            limit: 10,
            ..Default::default()
        })
        .await
        .ok()
        .filter(|l| !l.is_empty())
    })
    .await
    .expect("the letter reaches the DLQ");
    assert_eq!(by_campaign.len(), 1);
    assert!(!by_campaign[0].parked);
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
    retrier.stop().await;
}
