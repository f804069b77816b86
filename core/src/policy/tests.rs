//! Unit tests of the policy: the old file, bad files, and decisions with a fixed clock.

use std::path::Path;

use chrono::{DateTime, Utc};

use super::*;

/// The old system's file, byte for byte.
const OLD_FILE: &str = include_str!("testdata/old_retry_config.yaml");
/// The file shipped in `config/`.
const SHIPPED_FILE: &str = include_str!("../../../config/retry.yaml");

fn old() -> RetryPolicy {
    RetryPolicy::parse(OLD_FILE, Path::new("retry_config.yaml")).expect("the old file loads")
}

fn at(text: &str) -> DateTime<Utc> {
    text.parse().expect("RFC 3339 time")
}

fn outcomes(statuses: &[(OutcomeStatus, &str)]) -> Vec<PastOutcome> {
    statuses
        .iter()
        .enumerate()
        .map(|(i, (status, t))| PastOutcome {
            attempt: i as u32 + 1,
            status: *status,
            at: at(t),
        })
        .collect()
}

fn invalid(text: &str) -> (usize, String) {
    match RetryPolicy::parse(text, Path::new("bad.yaml")) {
        Err(PolicyError::Invalid {
            path,
            line,
            message,
            ..
        }) => {
            assert_eq!(path, Path::new("bad.yaml"));
            (line, message)
        }
        other => panic!("expected an invalid policy, got {other:?}"),
    }
}

use OutcomeStatus::{Disconnected, Failed, Picked, Rnr};

#[test]
fn the_old_file_loads_unchanged_with_every_section() {
    let policy = old();
    assert_eq!(policy.global_rules.len(), 2);
    let weekday = &policy.global_rules[0];
    assert_eq!(weekday.name, "Weekday Business Hours");
    assert_eq!(weekday.days.len(), 5);
    assert_eq!(weekday.time_slots[0].max_attempts, 3);
    assert_eq!(weekday.time_slots[0].retry_interval_minutes, 5);
    assert_eq!(
        policy.global_rules[1].time_slots[0].retry_interval_minutes,
        90
    );
    assert_eq!(policy.defaults, Defaults::default());
    assert_eq!(policy.status_retry_rules[&Failed].max_attempts, Some(1));
    assert!(!policy.status_retry_rules[&Picked].should_retry);
    assert!(policy.status_retry_rules[&Rnr].increment_attempt);
    assert_eq!(policy.timezone.0, chrono_tz::UTC);
    assert_eq!(
        policy.scheduler,
        SchedulerSettings {
            check_interval_minutes: 10,
            batch_size: 100,
            max_concurrent_retries: 50
        }
    );
}

#[test]
fn the_shipped_file_is_the_old_one_plus_commented_extensions() {
    let shipped = RetryPolicy::parse(SHIPPED_FILE, Path::new("config/retry.yaml")).expect("loads");
    assert_eq!(shipped, old());
}

#[test]
fn bad_files_name_the_line_and_the_problem() {
    let (line, message) =
        invalid("global_rules:\n  - name: x\n    days: [monday, funday]\n    time_slots: []\n");
    assert_eq!(line, 3, "{message}");
    assert!(message.contains("funday"), "{message}");

    let (line, message) = invalid(
        "timezone: UTC\nglobal_rules:\n  - days: [monday]\n    time_slots:\n      - start_time: \"18:00\"\n        end_time: \"09:00\"\n        max_attempts: 1\n        retry_interval_minutes: 5\n",
    );
    assert!((5..=8).contains(&line), "line {line}: {message}");
    assert!(message.contains("start must come first"), "{message}");

    let (line, message) = invalid("defaults:\n  max_attempts: 3\ntimezone: Mars/Base\n");
    assert_eq!(line, 3, "{message}");
    assert!(message.contains("Mars/Base"), "{message}");

    let (line, message) =
        invalid("status_retry_rules:\n  RNR:\n    should_retry: true\n    backoff: [10m, 1hour]\n");
    assert_eq!(line, 4, "{message}");
    assert!(message.contains("1hour"), "{message}");

    let (line, message) = invalid("defaults:\n  max_atempts: 3\n");
    assert_eq!(line, 2, "{message}");
    assert!(message.contains("max_atempts"), "{message}");

    let (line, message) = invalid("jitter: 0.1\ntimezon: UTC\n");
    assert_eq!(line, 2, "{message}");
    let (_, message) = invalid("status_retry_rules:\n  BUSY: {should_retry: true}\n");
    assert!(message.contains("BUSY"), "{message}");
    let (_, message) = invalid("jitter: 2\n");
    assert!(message.contains("between 0 and 1"), "{message}");
}

#[test]
fn load_reports_a_missing_file() {
    let err = RetryPolicy::load(Path::new("/nonexistent/retry.yaml")).expect_err("missing");
    assert!(matches!(err, PolicyError::Read { .. }), "{err:?}");
}

#[test]
fn picked_completes_and_unretried_outcomes_fail() {
    let mut policy = old();
    let now = at("2026-11-25T12:00:00Z");
    let history = outcomes(&[(Picked, "2026-11-25T12:00:00Z")]);
    assert_eq!(
        policy.decide(Picked, 1, 3, &history, now, 0.0),
        Decision::Complete
    );
    policy
        .status_retry_rules
        .get_mut(&Disconnected)
        .expect("rule")
        .should_retry = false;
    let history = outcomes(&[(Disconnected, "2026-11-25T12:00:00Z")]);
    assert_eq!(
        policy.decide(Disconnected, 1, 3, &history, now, 0.0),
        Decision::Fail {
            reason: "DISCONNECTED is not retried by the policy".into()
        }
    );
}

#[test]
fn rnr_inside_the_weekday_slot_retries_after_the_slot_interval_until_max_attempts() {
    let policy = old();
    // Wednesday.
    let mut history = Vec::new();
    let mut now = at("2026-11-25T12:00:00Z");
    for attempt in 1..=2 {
        history.push(PastOutcome {
            attempt,
            status: Rnr,
            at: now,
        });
        let decision = policy.decide(Rnr, attempt, 3, &history, now, 0.0);
        let Decision::Retry { at: next, .. } = decision else {
            panic!("{decision:?}")
        };
        assert_eq!(next - now, chrono::Duration::minutes(5));
        now = next;
    }
    history.push(PastOutcome {
        attempt: 3,
        status: Rnr,
        at: now,
    });
    assert_eq!(
        policy.decide(Rnr, 3, 3, &history, now, 0.0),
        Decision::Fail {
            reason: "Max retry attempts reached (3)".into()
        }
    );
}

#[test]
fn failed_is_retried_once_per_its_status_rule() {
    let policy = old();
    let now = at("2026-11-25T12:00:00Z");
    let history = outcomes(&[(Failed, "2026-11-25T12:00:00Z")]);
    assert!(matches!(
        policy.decide(Failed, 1, 3, &history, now, 0.0),
        Decision::Retry { .. }
    ));
    let history = outcomes(&[
        (Failed, "2026-11-25T12:00:00Z"),
        (Failed, "2026-11-25T12:05:00Z"),
    ]);
    assert_eq!(
        policy.decide(Failed, 2, 3, &history, now, 0.0),
        Decision::Fail {
            reason: "Max retry attempts for FAILED reached (1)".into()
        }
    );
    // Another outcome in between does not reset the FAILED budget.
    let history = outcomes(&[
        (Failed, "2026-11-25T12:00:00Z"),
        (Rnr, "2026-11-25T12:05:00Z"),
        (Failed, "2026-11-25T12:10:00Z"),
    ]);
    assert!(matches!(
        policy.decide(Failed, 3, 5, &history, now, 0.0),
        Decision::Fail { .. }
    ));
}

#[test]
fn a_retry_falling_outside_the_slots_moves_to_the_next_slot_start() {
    let policy = old();
    // Friday 23:58: five minutes later is Saturday 00:03, before the weekend slot opens.
    let now = at("2026-11-27T23:58:00Z");
    let history = outcomes(&[(Rnr, "2026-11-27T23:58:00Z")]);
    let decision = policy.decide(Rnr, 1, 3, &history, now, 0.0);
    assert_eq!(
        decision,
        Decision::Retry {
            at: at("2026-11-28T10:00:00Z"),
            reason: "RNR on attempt 1".into()
        }
    );
    // Saturday 08:00 is outside every slot: the default interval (60 min) still lands before
    // 10:00, so the retry waits for the slot.
    let now = at("2026-11-28T08:00:00Z");
    let Decision::Retry { at: next, .. } = policy.decide(Rnr, 1, 3, &history, now, 0.0) else {
        panic!("retried")
    };
    assert_eq!(next, at("2026-11-28T10:00:00Z"));
    // Saturday 12:00 is inside the weekend slot: its 90-minute interval applies.
    let now = at("2026-11-28T12:00:00Z");
    let Decision::Retry { at: next, .. } = policy.decide(Rnr, 1, 3, &history, now, 0.0) else {
        panic!("retried")
    };
    assert_eq!(next, at("2026-11-28T13:30:00Z"));
}

#[test]
fn a_slot_that_used_up_its_attempts_waits_for_the_next_slot() {
    let policy = old();
    // Two attempts inside Saturday's slot (max 2 there), a call allowed 5 in all.
    let history = outcomes(&[(Rnr, "2026-11-28T10:00:00Z"), (Rnr, "2026-11-28T11:30:00Z")]);
    let now = at("2026-11-28T11:30:00Z");
    let Decision::Retry { at: next, .. } = policy.decide(Rnr, 2, 5, &history, now, 0.0) else {
        panic!("retried")
    };
    assert_eq!(next, at("2026-11-29T10:00:00Z"), "Sunday's slot start");
}

#[test]
fn slots_are_read_in_the_policy_time_zone() {
    let text = "timezone: America/New_York\nglobal_rules:\n  - name: office\n    days: [monday, tuesday]\n    time_slots:\n      - {start_time: \"09:00\", end_time: \"17:00\", max_attempts: 3, retry_interval_minutes: 30}\nstatus_retry_rules:\n  RNR: {should_retry: true}\n";
    let policy = RetryPolicy::parse(text, Path::new("ny.yaml")).expect("loads");
    // Monday 16:50 in New York (EST, UTC-5): 30 minutes later is after 17:00.
    let now = at("2026-11-30T21:50:00Z");
    let history = outcomes(&[(Rnr, "2026-11-30T21:50:00Z")]);
    let Decision::Retry { at: next, .. } = policy.decide(Rnr, 1, 3, &history, now, 0.0) else {
        panic!("retried")
    };
    assert_eq!(next, at("2026-12-01T14:00:00Z"), "Tuesday 09:00 EST");
    // Tuesday 17:00 to the next Monday 09:00.
    assert_eq!(
        policy.next_slot_start(at("2026-12-01T22:01:00Z")),
        Some(at("2026-12-07T14:00:00Z"))
    );
}

#[test]
fn backoff_lists_and_jitter_shape_the_delay() {
    let text =
        "status_retry_rules:\n  RNR: {should_retry: true, backoff: [10m, 1h, 4h], jitter: 0.5}\n";
    let policy = RetryPolicy::parse(text, Path::new("b.yaml")).expect("loads");
    let now = at("2026-11-25T12:00:00Z");
    let mut history = Vec::new();
    for (attempt, minutes) in [(1, 10), (2, 60), (3, 240), (4, 240)] {
        history.push(PastOutcome {
            attempt,
            status: Rnr,
            at: now,
        });
        let Decision::Retry { at: next, .. } = policy.decide(Rnr, attempt, 9, &history, now, 0.0)
        else {
            panic!("retried")
        };
        assert_eq!(
            next - now,
            chrono::Duration::minutes(minutes),
            "attempt {attempt}"
        );
    }
    let history = &history[..1];
    for (sample, minutes) in [(1.0, 15), (-1.0, 5), (0.5, 12)] {
        let Decision::Retry { at: next, .. } = policy.decide(Rnr, 1, 9, history, now, sample)
        else {
            panic!("retried")
        };
        assert_eq!(
            next - now,
            chrono::Duration::seconds(minutes * 60 + if sample == 0.5 { 30 } else { 0 })
        );
    }
}

#[test]
fn outcomes_that_do_not_increment_do_not_use_up_attempts() {
    let text = "status_retry_rules:\n  DISCONNECTED: {should_retry: true, increment_attempt: false, max_attempts: 4}\n  RNR: {should_retry: true}\n";
    let policy = RetryPolicy::parse(text, Path::new("i.yaml")).expect("loads");
    let now = at("2026-11-25T12:00:00Z");
    let t = "2026-11-25T12:00:00Z";
    let history = outcomes(&[
        (Rnr, t),
        (Disconnected, t),
        (Disconnected, t),
        (Disconnected, t),
    ]);
    assert!(matches!(
        policy.decide(Disconnected, 4, 2, &history, now, 0.0),
        Decision::Retry { .. }
    ));
    let history = outcomes(&[(Rnr, t), (Disconnected, t), (Rnr, t)]);
    assert_eq!(
        policy.decide(Rnr, 3, 2, &history, now, 0.0),
        Decision::Fail {
            reason: "Max retry attempts reached (2)".into()
        }
    );
}

#[test]
fn a_redelivered_outcome_counts_once() {
    let policy = old();
    let now = at("2026-11-25T12:00:00Z");
    let t = "2026-11-25T12:00:00Z";
    let mut history = outcomes(&[(Rnr, t), (Rnr, t)]);
    history.push(history[1]);
    assert!(matches!(
        policy.decide(Rnr, 2, 3, &history, now, 0.0),
        Decision::Retry { .. }
    ));
}

#[test]
fn a_campaign_override_replaces_what_it_names() {
    let policy = old();
    let change: PolicyOverride = serde_json::from_value(serde_json::json!({
        "timezone": "Asia/Tokyo",
        "status_retry_rules": {"RNR": {"should_retry": true, "backoff": ["2s"]}},
        "jitter": 0.1
    }))
    .expect("override parses");
    let merged = policy.with_override(Some(&change));
    assert_eq!(merged.timezone.0, chrono_tz::Asia::Tokyo);
    assert_eq!(merged.status_retry_rules[&Rnr].backoff.len(), 1);
    assert_eq!(
        merged.status_retry_rules[&Failed],
        policy.status_retry_rules[&Failed]
    );
    assert_eq!(merged.global_rules, policy.global_rules);
    assert_eq!(policy.with_override(None), policy);
    assert!(
        serde_json::from_value::<PolicyOverride>(serde_json::json!({"timezone": "x"})).is_err()
    );
}
