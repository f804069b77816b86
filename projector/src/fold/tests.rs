use ccm_core::{CallId, CampaignId, OutcomeSource, PhoneNumber, PhoneRule};
use chrono::TimeZone;
use rand::{SeedableRng, seq::SliceRandom};

use super::*;

fn at(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000 + secs, 0)
        .single()
        .expect("valid time")
}

/// A call's whole life: RNR on attempt 1 (with a FAILED outcome reason), picked on attempt 2.
fn life(call: CallId) -> Vec<Item> {
    let campaign = CampaignId::new(7).expect("id");
    let phone = PhoneNumber::parse("+14155550100", PhoneRule::Lenient).expect("phone");
    let request = |attempt: u32, t: i64| DialRequest {
        call_id: call,
        campaign_id: campaign,
        phone_number: phone.clone(),
        attempt,
        max_attempts: 3,
        created_at: at(0),
        queued_at: at(t),
        custom_fields: Default::default(),
        expires_at: None,
        alternate: None,
        callback: None,
    };
    let event = |attempt: u32, t: i64, kind: EventKind| CallEvent {
        call_id: call,
        campaign_id: campaign,
        attempt,
        at: at(t),
        kind,
    };
    let dialing = EventKind::Dialing {
        phone_number: phone.clone(),
        max_attempts: 3,
        created_at: at(0),
        custom_fields: Default::default(),
        expires_at: None,
        alternate: None,
    };
    let outcome = |status, secs, id: &str, reason: Option<&str>| EventKind::Outcome {
        status,
        source: OutcomeSource::Carrier,
        raw_status: Some(format!("raw-{id}")),
        duration_secs: secs,
        external_call_id: Some(id.to_owned()),
        reason: reason.map(str::to_owned),
        callback: None,
    };
    let events = [
        event(1, 2, dialing.clone()),
        event(
            1,
            3,
            outcome(OutcomeStatus::Failed, Some(4), "CA1", Some("busy")),
        ),
        event(
            1,
            4,
            EventKind::Retrying {
                next_retry_at: at(60),
                reason: "RNR".into(),
            },
        ),
        event(2, 61, dialing),
        event(2, 62, outcome(OutcomeStatus::Picked, Some(30), "CA2", None)),
        event(2, 63, EventKind::Completed),
    ];
    let mut items = vec![
        Item::Queued {
            seq: 1,
            request: request(1, 1),
            payload: String::new(),
        },
        Item::Queued {
            seq: 2,
            request: request(2, 60),
            payload: String::new(),
        },
    ];
    items.extend(
        events
            .into_iter()
            .enumerate()
            .map(|(i, event)| Item::Event {
                seq: 10 + i as u64,
                event,
                payload: String::new(),
                resolves: None,
            }),
    );
    items
}

fn fold_all(items: &[Item]) -> CallRow {
    let mut fold = Fold::default();
    for item in items {
        fold.add(item, true);
    }
    fold.calls.into_values().next().expect("one call")
}

#[test]
fn a_whole_life_folds_to_the_final_state() {
    let row = fold_all(&life(CallId::new()));
    assert_eq!(row.status, CallStatus::Completed);
    assert_eq!(row.attempt_count, 2);
    assert_eq!(row.total_call_time, 34);
    assert_eq!(row.external_call_id.as_deref(), Some("CA2"));
    assert_eq!(row.raw_status.as_deref(), Some("raw-CA2"));
    assert_eq!(row.last_attempt_at, Some(at(61)));
    assert_eq!(row.updated_at, at(63));
    assert_eq!(row.created_at, Some(at(0)));
    assert_eq!(row.next_retry_at, None);
    // The last reason given (attempt 1's retry) stays visible.
    assert_eq!(row.error_message.as_deref(), Some("RNR"));
}

#[test]
fn a_failed_outcome_does_not_outrank_the_retry_decided_from_it() {
    let items = life(CallId::new());
    // Queued 1, dialing 1, FAILED outcome 1, retrying 1 (items[1] is attempt 2's queueing).
    let attempt_one = [&items[..1], &items[2..5]].concat();
    let row = fold_all(&attempt_one);
    assert_eq!(row.status, CallStatus::Retrying);
    assert_eq!(row.next_retry_at, Some(at(60)));
}

#[test]
fn any_order_and_any_grouping_gives_the_same_row() {
    let items = life(CallId::new());
    let expected = fold_all(&items);
    let mut rng = rand::rngs::StdRng::seed_from_u64(6);
    for _ in 0..500 {
        let mut shuffled = items.clone();
        shuffled.shuffle(&mut rng);
        // Fold in two groups, then merge the groups, as a batch is merged into a stored row.
        let split = 1 + (rand::Rng::random_range(&mut rng, 0..shuffled.len() - 1));
        let mut left = fold_all(&shuffled[..split]);
        let right = fold_all(&shuffled[split..]);
        left.merge(right);
        assert_eq!(left, expected);
    }
}

#[test]
fn metrics_count_each_event_once_by_kind() {
    let mut fold = Fold::default();
    for item in life(CallId::new()) {
        fold.add(&item, true);
    }
    let counters = fold
        .daily
        .values()
        .copied()
        .fold(DailyCounters::default(), |a, b| DailyCounters {
            initiated: a.initiated + b.initiated,
            picked: a.picked + b.picked,
            failed: a.failed + b.failed,
            retries: a.retries + b.retries,
            duration_seconds: a.duration_seconds + b.duration_seconds,
            ..a
        });
    assert_eq!(counters.initiated, 1, "only attempt 1 is a new call");
    assert_eq!(
        (counters.picked, counters.failed, counters.retries),
        (1, 1, 1)
    );
    assert_eq!(counters.duration_seconds, 34);
    let started: i64 = fold.concurrency.values().map(|(s, _)| s).sum();
    let ended: i64 = fold.concurrency.values().map(|(_, e)| e).sum();
    assert_eq!((started, ended), (2, 2));
}

#[test]
fn custom_fields_come_from_the_dial_request_or_the_dialing_event_in_any_order() {
    let fields: ccm_core::CustomFields = [("plan".to_owned(), "gold".to_owned())].into();
    let mut items = life(CallId::new());
    for item in &mut items {
        match item {
            Item::Queued { request, .. } => request.custom_fields = fields.clone(),
            Item::Event { event, .. } => {
                if let EventKind::Dialing { custom_fields, .. } = &mut event.kind {
                    *custom_fields = fields.clone();
                }
            }
            _ => {}
        }
    }
    assert_eq!(fold_all(&items).custom_fields.as_ref(), Some(&fields));
    items.reverse();
    assert_eq!(fold_all(&items).custom_fields.as_ref(), Some(&fields));
    // Only the later events (no dial request, no Dialing): the row has none.
    let later: Vec<Item> = items
        .into_iter()
        .filter(|i| {
            matches!(i, Item::Event { event, .. } if !matches!(event.kind, EventKind::Dialing { .. }))
        })
        .collect();
    assert_eq!(fold_all(&later).custom_fields, None);
}

#[test]
fn an_expired_call_ends_expired_with_its_reason() {
    let mut items = life(CallId::new());
    // Queued, then expired instead of dialled.
    items.truncate(1);
    let Item::Queued { request, .. } = &items[0] else {
        panic!("queued first");
    };
    let expired = CallEvent {
        call_id: request.call_id,
        campaign_id: request.campaign_id,
        attempt: 1,
        at: at(5),
        kind: EventKind::Expired {
            reason: "queued 7s without being dialled".into(),
        },
    };
    items.push(Item::Event {
        seq: 9,
        event: expired,
        payload: String::new(),
        resolves: None,
    });
    let row = fold_all(&items);
    assert_eq!(row.status, CallStatus::Expired);
    assert_eq!(row.status.as_str(), "EXPIRED");
    assert_eq!(
        row.error_message.as_deref(),
        Some("queued 7s without being dialled")
    );
    assert!(row.phase_rank >= 5, "terminal: the campaign can finish");
}
