//! Outcomes: decided once, whatever is delivered twice; retry entries survive a restart.

use std::time::Duration;

use async_nats::jetstream;
use ccm_core::{CallEvent, EventKind, OutcomeSource, OutcomeStatus, RetryEntry};
use ccm_tests::{TestEnv, eventually};
use chrono::Utc;

use crate::support::{Retrier, events, messages, request, retry_entry};

const HOUR_LATER: &str = "status_retry_rules:\n  RNR: {should_retry: true, backoff: [1h]}\n";

async fn consumer_idle(js: &jetstream::Context, stream: &str, name: &str) -> bool {
    let Ok(mut consumer) = js
        .get_consumer_from_stream::<jetstream::consumer::pull::Config, _, _>(name, stream)
        .await
    else {
        return false;
    };
    consumer
        .info()
        .await
        .is_ok_and(|i| i.num_pending == 0 && i.num_ack_pending == 0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outcome_delivered_twice_is_decided_once() {
    let env = TestEnv::start().await.expect("test environment");
    env.provision().await.expect("provision");
    let js = env.jetstream().await.expect("jetstream");
    let retrier = Retrier::start(&env, HOUR_LATER);
    let dial = request(3, "+15550004001", 1);
    let dialing = CallEvent {
        call_id: dial.call_id,
        campaign_id: dial.campaign_id,
        attempt: 1,
        at: Utc::now(),
        kind: EventKind::Dialing {
            phone_number: dial.phone_number.clone(),
            max_attempts: 3,
            created_at: dial.created_at,
            custom_fields: Default::default(),
            expires_at: None,
            alternate: None,
        },
    };
    ccm_core::nats::publish_event(&js, &dialing)
        .await
        .expect("dialing");
    let outcome = CallEvent {
        kind: EventKind::Outcome {
            status: OutcomeStatus::Rnr,
            source: OutcomeSource::Carrier,
            raw_status: Some("no-answer".into()),
            duration_secs: None,
            external_call_id: None,
            reason: None,
            callback: None,
        },
        at: Utc::now(),
        ..dialing.clone()
    };
    // The same outcome twice, as a carrier repeating its callback after the de-duplication
    // window would deliver it.
    ccm_core::nats::publish_event(&js, &outcome)
        .await
        .expect("outcome");
    ccm_core::nats::publish_json(&js, outcome.subject(), "repeat", None, &outcome)
        .await
        .expect("repeated outcome");
    let idle = eventually(Duration::from_secs(10), || async {
        consumer_idle(&js, "CALL_EVENTS", "retrier_outcomes")
            .await
            .then_some(())
    })
    .await;
    assert!(idle.is_some(), "both outcomes handled");
    let history = events(&js, &dial).await;
    let retrying: Vec<_> = history
        .iter()
        .filter(|e| matches!(e.kind, EventKind::Retrying { .. }))
        .collect();
    assert_eq!(retrying.len(), 1, "{history:#?}");
    let EventKind::Retrying { next_retry_at, .. } = retrying[0].kind else {
        unreachable!()
    };
    let wait = next_retry_at - outcome.at;
    assert!(
        (3_590..=3_610).contains(&wait.num_seconds()),
        "an hour later: {wait}"
    );
    assert_eq!(messages(&js, "RETRIES").await, 1, "one entry");
    let entry = retry_entry(&js, 1).await;
    assert_eq!((entry.request.attempt, entry.due_at), (2, next_retry_at));
    retrier.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_held_by_a_stopped_retrier_fire_once_from_the_next() {
    let env = TestEnv::start().await.expect("test environment");
    env.provision().await.expect("provision");
    let js = env.jetstream().await.expect("jetstream");
    const ENTRIES: u64 = 50;
    let due_at = Utc::now() + chrono::Duration::seconds(6);
    for n in 0..ENTRIES {
        let entry = RetryEntry {
            due_at,
            request: request(4, &format!("+1555100{n:04}"), 2),
            window_deferral: None,
        };
        ccm_core::nats::publish_json(&js, entry.subject(), &entry.msg_id(), None, &entry)
            .await
            .expect("entry");
    }
    let first = Retrier::start(&env, HOUR_LATER);
    // Wait until the first replica holds every entry, then stop it before they are due.
    let held = eventually(Duration::from_secs(5), || async {
        let mut consumer: jetstream::consumer::PullConsumer = js
            .get_consumer_from_stream("retrier_retries", "RETRIES")
            .await
            .ok()?;
        let info = consumer.info().await.ok()?;
        (info.num_ack_pending as u64 == ENTRIES).then_some(())
    })
    .await;
    assert!(held.is_some(), "the first retrier holds the entries");
    first.stop().await;
    assert_eq!(messages(&js, "CALLS").await, 0, "nothing fired before due");
    let second = Retrier::start(&env, HOUR_LATER);
    let fired = eventually(Duration::from_secs(15), || async {
        (messages(&js, "CALLS").await >= ENTRIES).then_some(())
    })
    .await;
    if fired.is_none() {
        let mut consumer: jetstream::consumer::PullConsumer = js
            .get_consumer_from_stream("retrier_retries", "RETRIES")
            .await
            .expect("consumer");
        let info = consumer.info().await.expect("info").clone();
        panic!(
            "only {} of {ENTRIES} fired; consumer: pending {} ack_pending {} redelivered {} waiting {}",
            messages(&js, "CALLS").await,
            info.num_pending,
            info.num_ack_pending,
            info.num_redelivered,
            info.num_waiting
        );
    }
    let late = Utc::now() - due_at;
    assert!(
        late < chrono::Duration::seconds(2),
        "fired {late} after due"
    );
    // Nothing fires twice, and the work queue is empty.
    let done = eventually(Duration::from_secs(5), || async {
        (messages(&js, "RETRIES").await == 0).then_some(())
    })
    .await;
    assert!(done.is_some());
    assert_eq!(messages(&js, "CALLS").await, ENTRIES);
    second.stop().await;
}
