//! Reading a call's history: the short read of a first attempt's outcome agrees with the
//! whole walk, and anything else is read whole.

use ccm_core::{CallEvent, EventKind, OutcomeSource, OutcomeStatus};
use ccm_retrier::history::CallHistory;
use ccm_tests::TestEnv;
use chrono::Utc;

use crate::support::request;

fn event(request: &ccm_core::DialRequest, attempt: u32, kind: EventKind) -> CallEvent {
    CallEvent {
        call_id: request.call_id,
        campaign_id: request.campaign_id,
        attempt,
        at: Utc::now(),
        kind,
    }
}

fn dialing(request: &ccm_core::DialRequest) -> EventKind {
    EventKind::Dialing {
        phone_number: request.phone_number.clone(),
        max_attempts: request.max_attempts,
        created_at: request.created_at,
        custom_fields: Default::default(),
        expires_at: None,
        alternate: None,
    }
}

fn outcome(status: OutcomeStatus) -> EventKind {
    EventKind::Outcome {
        status,
        source: OutcomeSource::Carrier,
        raw_status: None,
        duration_secs: None,
        external_call_id: None,
        reason: None,
        callback: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_attempts_short_read_agrees_with_the_whole_walk() {
    let env = TestEnv::start().await.expect("test environment");
    env.provision().await.expect("provision");
    let js = env.jetstream().await.expect("jetstream");
    let stream = js.get_stream("CALL_EVENTS").await.expect("CALL_EVENTS");
    let first = request(7, "+15550001001", 1);
    // Other calls' messages around this call's, so the walk has something to skip.
    let other = request(7, "+15550001002", 1);
    ccm_core::nats::publish_event(&js, &event(&other, 1, dialing(&other)))
        .await
        .expect("publish");
    ccm_core::nats::publish_event(&js, &event(&first, 1, dialing(&first)))
        .await
        .expect("publish");
    ccm_core::nats::publish_event(&js, &event(&other, 1, outcome(OutcomeStatus::Rnr)))
        .await
        .expect("publish");
    let seq = ccm_core::nats::publish_event(&js, &event(&first, 1, outcome(OutcomeStatus::Picked)))
        .await
        .expect("publish")
        .sequence;

    let whole = CallHistory::read(&stream, first.campaign_id, first.call_id)
        .await
        .expect("whole");
    let short = CallHistory::read_for(&stream, first.campaign_id, first.call_id, 1, Some(seq))
        .await
        .expect("short");
    assert_eq!(short.events, whole.events);
    assert_eq!(short.outcomes, whole.outcomes);
    assert_eq!(short.outcomes.len(), 1);
    assert_eq!(short.outcomes[0].status, OutcomeStatus::Picked);
    assert_eq!(short.facts(), whole.facts());
    assert!(short.settled(1).is_none());

    // Once the attempt is decided the latest event is no longer its Dialing: the whole
    // history is read, and it says the attempt is settled.
    ccm_core::nats::publish_event(&js, &event(&first, 1, EventKind::Completed))
        .await
        .expect("publish");
    let again = CallHistory::read_for(&stream, first.campaign_id, first.call_id, 1, Some(seq))
        .await
        .expect("again");
    assert_eq!(again.events.len(), 2);
    assert!(again.settled(1).is_some());
}
