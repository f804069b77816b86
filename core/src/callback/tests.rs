use chrono::{Duration, TimeZone, Utc};
use rand::{Rng, SeedableRng, rngs::StdRng};

use super::*;
use crate::{CampaignId, OutcomeStatus, call_lifecycle::End};

fn event(attempt: u32, kind: EventKind) -> CallEvent {
    CallEvent::now(
        CallId::new(),
        CampaignId::new(1).expect("id"),
        attempt,
        kind,
    )
}

fn retrying(attempt: u32) -> CallEvent {
    event(
        attempt,
        EventKind::Retrying {
            next_retry_at: Utc::now(),
            reason: "RNR".into(),
        },
    )
}

fn rescheduled(attempt: u32, tag: u64) -> CallEvent {
    event(
        attempt,
        EventKind::Rescheduled {
            next_retry_at: Utc::now(),
            asked_for: Utc::now(),
            time_zone: None,
            moved: None,
            tag,
        },
    )
}

fn request(attempt: u32, callback: Option<u64>) -> DialRequest {
    DialRequest {
        call_id: CallId::new(),
        campaign_id: CampaignId::new(1).expect("id"),
        phone_number: "+15550001234".parse().expect("phone"),
        attempt,
        max_attempts: 3,
        created_at: Utc::now(),
        queued_at: Utc::now(),
        custom_fields: Default::default(),
        expires_at: None,
        callback,
        alternate: None,
    }
}

#[test]
fn an_asked_time_is_read_with_its_offset_or_in_the_given_or_the_callees_zone() {
    let exact = parse_asked("2026-12-07T17:00:00-05:00", None, None).expect("offset");
    assert_eq!(
        exact.at,
        Utc.with_ymd_and_hms(2026, 12, 7, 22, 0, 0).unwrap()
    );
    let local = parse_asked("2026-12-07T17:00", Some("Europe/Paris"), None).expect("zone");
    assert_eq!(
        local.at,
        Utc.with_ymd_and_hms(2026, 12, 7, 16, 0, 0).unwrap()
    );
    assert_eq!(local.time_zone.as_deref(), Some("Europe/Paris"));
    let callee = parse_asked("2026-12-07 17:00", None, Some(chrono_tz::America::Chicago))
        .expect("callee's zone");
    assert_eq!(
        callee.at,
        Utc.with_ymd_and_hms(2026, 12, 7, 23, 0, 0).unwrap()
    );
    assert!(matches!(
        parse_asked("at five", None, None),
        Err(AskError::Unparseable(_))
    ));
    assert!(matches!(
        parse_asked("2026-12-07T17:00", None, None),
        Err(AskError::NoZone(_))
    ));
    assert!(matches!(
        parse_asked("2026-12-07T17:00", Some("Mars/Olympus"), None),
        Err(AskError::Zone(_))
    ));
    // 02:30 on the day New York springs forward does not exist.
    assert!(matches!(
        parse_asked("2026-03-08T02:30", Some("America/New_York"), None),
        Err(AskError::Gap(..))
    ));
}

#[test]
fn only_a_call_waiting_for_its_next_attempt_takes_a_callback() {
    assert_eq!(planned_after(&retrying(2).kind, 2), Ok(2));
    assert_eq!(planned_after(&rescheduled(2, 7).kind, 2), Ok(2));
    assert_eq!(
        planned_after(&EventKind::Completed, 1),
        Err(Refusal::Ended(End::Completed))
    );
    let dialing = EventKind::Dialing {
        phone_number: "+15550001234".parse().expect("phone"),
        max_attempts: 3,
        created_at: Utc::now(),
        custom_fields: Default::default(),
        expires_at: None,
        alternate: None,
    };
    assert_eq!(planned_after(&dialing, 1), Err(Refusal::InProgress));
    let outcome = EventKind::Outcome {
        status: OutcomeStatus::Rnr,
        source: crate::OutcomeSource::Carrier,
        raw_status: None,
        duration_secs: None,
        external_call_id: None,
        reason: None,
        callback: None,
    };
    assert_eq!(planned_after(&outcome, 1), Err(Refusal::InProgress));
}

#[test]
fn asked_times_in_the_past_after_expiry_or_past_the_horizon_are_refused() {
    let now = Utc::now();
    let day = Duration::days(1);
    assert!(check_time(now + day, now, None, day * 3).is_ok());
    assert!(matches!(
        check_time(now - Duration::seconds(1), now, None, day),
        Err(Refusal::Past { .. })
    ));
    assert!(matches!(
        check_time(now + day * 2, now, Some(now + day), day * 3),
        Err(Refusal::AfterExpiry { .. })
    ));
    assert!(matches!(
        check_time(now + day * 4, now, None, day * 3),
        Err(Refusal::TooFar { .. })
    ));
    assert_eq!(moved(now, now), None);
    assert!(
        moved(now, now + day)
            .expect("moved")
            .contains("first allowed time")
    );
}

/// Generated: any sequence of plans for one attempt; only the attempt its last plan names is
/// placed, whichever entry (the policy's or any callback's) comes due.
#[test]
fn only_the_latest_plan_of_an_attempt_is_ever_placed() {
    let seed: u64 = rand::random();
    println!("seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    for _ in 0..500 {
        let attempt = rng.random_range(1..5);
        let mut entries = vec![None];
        let mut last = retrying(attempt);
        for _ in 0..rng.random_range(0..4) {
            let tag = rng.random::<u64>();
            entries.push(Some(tag));
            last = rescheduled(attempt, tag);
        }
        let placed: Vec<_> = entries
            .iter()
            .filter(|tag| plans(&last, &request(attempt + 1, **tag)))
            .collect();
        assert_eq!(placed.len(), 1, "seed {seed}: {entries:?} under {last:?}");
        assert_eq!(*placed[0], *entries.last().expect("one"), "seed {seed}");
        // Other attempts are not this rule's business.
        assert!(plans(&last, &request(attempt, Some(1))));
    }
}

/// Generated: the attempts that follow a callback plan, and only those, are callbacks.
#[test]
fn attempts_asked_for_by_the_callee_are_known_from_the_history() {
    let seed: u64 = rand::random();
    println!("seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    for _ in 0..300 {
        let attempts = rng.random_range(1..8u32);
        let mut events = Vec::new();
        let mut expected = std::collections::BTreeSet::new();
        for attempt in 1..attempts {
            events.push(retrying(attempt));
            if rng.random_bool(0.4) {
                events.push(rescheduled(attempt, rng.random()));
                // Asked again: still a callback.
                if rng.random_bool(0.3) {
                    events.push(rescheduled(attempt, rng.random()));
                }
                expected.insert(attempt + 1);
            }
        }
        assert_eq!(
            callback_attempts(&events),
            expected,
            "seed {seed}: {events:?}"
        );
    }
}
