use chrono::{DateTime, Duration, Timelike, Utc};
use chrono_tz::Tz;
use rand::{Rng, SeedableRng, rngs::StdRng};

use super::{
    AdvanceOn, AlternateNumbers, ContactNumber, LimitReset, NumbersError,
    plan::{Attempt, Next, Situation, local_date, next, start_of_day},
};
use crate::{OutcomeStatus, PhoneNumber, events::OutcomeSource};

fn seed() -> u64 {
    let seed = std::env::var("CCM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("seed {seed} (CCM_SEED={seed} replays it)");
    seed
}

fn number(n: &str, label: &str) -> ContactNumber {
    ContactNumber {
        number: n.parse::<PhoneNumber>().unwrap(),
        label: label.into(),
    }
}

/// Zones with and without DST, and some whose DST change happens at midnight.
const ZONES: [Tz; 7] = [
    chrono_tz::UTC,
    chrono_tz::Europe::Paris,
    chrono_tz::America::New_York,
    chrono_tz::America::Santiago,
    chrono_tz::America::Havana,
    chrono_tz::Asia::Kolkata,
    chrono_tz::Pacific::Chatham,
];

#[test]
fn a_list_of_numbers_is_checked_for_count_labels_and_repeats() {
    assert_eq!(super::check(&[]), Err(NumbersError::Count));
    let ok = [
        number("+33142685300", "mobile"),
        number("+33142685301", "home"),
        number("+33142685302", "work_2"),
    ];
    assert_eq!(super::check(&ok), Ok(()));
    let repeated = [ok[0].clone(), ok[1].clone(), ok[0].clone()];
    assert!(matches!(
        super::check(&repeated),
        Err(NumbersError::Duplicate {
            index: 2,
            first: 0,
            ..
        })
    ));
    for bad in ["", "Home", "home phone", "x".repeat(25).as_str()] {
        let list = [ok[0].clone(), number("+33142685309", bad)];
        assert!(
            matches!(
                super::check(&list),
                Err(NumbersError::Label { index: 1, .. })
            ),
            "{bad:?}"
        );
    }
    let many: Vec<ContactNumber> = (0..11)
        .map(|i| number(&format!("+3314268531{i:02}"), "other"))
        .collect();
    assert_eq!(super::check(&many), Err(NumbersError::Count));
}

#[test]
fn a_contact_without_a_list_has_its_one_number() {
    let phone: PhoneNumber = "+33142685300".parse().unwrap();
    let own = super::of_contact(&phone, &[]);
    assert_eq!(own, vec![number("+33142685300", "primary")]);
    let list = [
        number("+33142685300", "mobile"),
        number("+33142685301", "home"),
    ];
    assert_eq!(super::of_contact(&phone, &list), list.to_vec());
    // A stored contact written before the list existed reads as before.
    let old =
        r#"{"campaign_id":1,"phone_number":"+33142685300","created_at":"2026-01-01T00:00:00Z"}"#;
    let contact: crate::campaign::Contact = serde_json::from_str(old).unwrap();
    assert!(contact.numbers.is_empty());
    assert!(!serde_json::to_string(&contact).unwrap().contains("numbers"));
}

#[test]
fn a_policy_names_an_outcome_and_no_zero_limit() {
    let policy: AlternateNumbers = serde_json::from_str(
        r#"{"advance_on": ["RNR", "UNREACHABLE"], "max_attempts_per_number": 2}"#,
    )
    .unwrap();
    assert_eq!(policy.check(), Ok(()));
    assert_eq!(policy.reset, LimitReset::Daily);
    assert!(policy.advances(OutcomeStatus::Rnr, OutcomeSource::Carrier));
    assert!(policy.advances(OutcomeStatus::Failed, OutcomeSource::Rejected));
    assert!(!policy.advances(OutcomeStatus::Failed, OutcomeSource::Carrier));
    assert!(!policy.advances(OutcomeStatus::Disconnected, OutcomeSource::Carrier));
    let none = AlternateNumbers {
        advance_on: vec![],
        ..policy.clone()
    };
    assert!(none.check().is_err());
    let zero = AlternateNumbers {
        max_attempts_per_contact: Some(0),
        ..policy
    };
    assert!(zero.check().is_err());
    assert!(serde_json::from_str::<AlternateNumbers>(r#"{"advance_on": ["BUSY"]}"#).is_err());
}

struct Case {
    policy: AlternateNumbers,
    barred: Vec<bool>,
    current: usize,
    advance: bool,
    attempts: Vec<Attempt>,
    zone: Tz,
    due: DateTime<Utc>,
}

impl Case {
    fn situation(&self) -> Situation<'_> {
        Situation {
            policy: &self.policy,
            barred: &self.barred,
            current: self.current,
            advance: self.advance,
            attempts: &self.attempts,
            zone: self.zone,
            due: self.due,
        }
    }

    /// Attempts of `number` that count against the limits on the due date.
    fn counted(&self, number: Option<usize>) -> usize {
        let day = local_date(self.zone, self.due);
        self.attempts
            .iter()
            .filter(|a| {
                self.policy.reset == LimitReset::Never || local_date(self.zone, a.at) == day
            })
            .filter(|a| number.is_none_or(|n| a.number == n))
            .count()
    }

    fn open(&self, i: usize) -> bool {
        !self.barred[i]
            && self
                .policy
                .max_attempts_per_number
                .is_none_or(|max| self.counted(Some(i)) < max as usize)
    }

    fn contact_open(&self) -> bool {
        self.policy
            .max_attempts_per_contact
            .is_none_or(|max| self.counted(None) < max as usize)
    }

    /// The order the numbers are preferred in.
    fn order(&self) -> Vec<usize> {
        let n = self.barred.len();
        let from = usize::from(self.advance);
        (from..from + n).map(|k| (self.current + k) % n).collect()
    }
}

fn case(rng: &mut StdRng) -> Case {
    let count = rng.random_range(1..=4);
    let some = |rng: &mut StdRng| rng.random_bool(0.6).then(|| rng.random_range(1..=4));
    let policy = AlternateNumbers {
        advance_on: vec![AdvanceOn::Rnr],
        max_attempts_per_number: some(rng),
        max_attempts_per_contact: some(rng),
        reset: if rng.random_bool(0.8) {
            LimitReset::Daily
        } else {
            LimitReset::Never
        },
    };
    let zone = ZONES[rng.random_range(0..ZONES.len())];
    // Around a DST change of several zones, so midnights and gaps are crossed.
    let base = "2026-03-28T12:00:00Z".parse::<DateTime<Utc>>().unwrap()
        + Duration::days(rng.random_range(0..250));
    let mut at = base;
    let attempts: Vec<Attempt> = (0..rng.random_range(1..=8))
        .map(|_| {
            at += Duration::minutes(rng.random_range(1..=600));
            Attempt {
                number: rng.random_range(0..count),
                at,
            }
        })
        .collect();
    let current = attempts.last().map_or(0, |a| a.number);
    let due = at + Duration::minutes(rng.random_range(0..=2000));
    Case {
        policy,
        barred: (0..count).map(|_| rng.random_bool(0.25)).collect(),
        current,
        advance: rng.random_bool(0.5),
        attempts,
        zone,
        due,
    }
}

/// Generated: a dialled number is allowed and under both limits on the due date, and it is
/// the first such in the preferred order (advance: the next number, wrapping; otherwise the
/// same one first); the call waits for local midnight only when limits alone stand in the
/// way and they reset, and ends only when every number is barred or limits never reset.
#[test]
fn the_next_number_is_the_first_open_one_in_order_else_midnight_else_the_end() {
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    for round in 0..20_000 {
        let c = case(&mut rng);
        let decided = next(&c.situation());
        let first_open = c.order().into_iter().find(|&i| c.open(i));
        let any_allowed = c.barred.iter().any(|b| !b);
        let why = format!("seed {seed} round {round}: {decided:?}");
        match decided {
            Next::Dial { index } => {
                assert!(c.contact_open(), "{why}");
                assert_eq!(Some(index), first_open, "{why}");
                if c.advance && c.barred.len() > 1 && index == c.current {
                    // Back on the same number only when no other one is open.
                    assert!(
                        (0..c.barred.len()).all(|i| i == c.current || !c.open(i)),
                        "{why}"
                    );
                }
            }
            Next::Tomorrow { index, not_before } => {
                assert!(any_allowed, "{why}");
                assert_eq!(c.policy.reset, LimitReset::Daily, "{why}");
                assert!(!c.contact_open() || first_open.is_none(), "{why}");
                assert!(!c.barred[index], "{why}");
                // The callee's next local midnight (or the first instant of that day).
                let day = local_date(c.zone, c.due);
                assert!(not_before > c.due, "{why}");
                assert_eq!(
                    local_date(c.zone, not_before),
                    day.succ_opt().unwrap(),
                    "{why}"
                );
                assert_eq!(
                    local_date(c.zone, not_before - Duration::seconds(1)),
                    day,
                    "{why}"
                );
                // And there the counts have reset: the number is dialled.
                let later = Case {
                    due: not_before,
                    attempts: c.attempts.clone(),
                    policy: c.policy.clone(),
                    barred: c.barred.clone(),
                    ..c
                };
                assert_eq!(next(&later.situation()), Next::Dial { index }, "{why}");
            }
            Next::Exhausted { reason } => {
                assert!(!any_allowed || c.policy.reset == LimitReset::Never, "{why}");
                assert!(first_open.is_none() || !c.contact_open(), "{why}");
                assert!(
                    reason.contains("numbers") || reason.contains("number"),
                    "{why}"
                );
            }
        }
    }
}

/// Generated: the limits count only the due date's attempts in the callee's zone, so
/// moving every attempt to the callee's previous day always reopens an allowed number.
#[test]
fn the_counts_reset_at_the_callees_local_midnight() {
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    for round in 0..5_000 {
        let mut c = case(&mut rng);
        c.policy.reset = LimitReset::Daily;
        let day = local_date(c.zone, c.due);
        let midnight = start_of_day(c.zone, day);
        // Every attempt a little before the callee's midnight: yesterday, locally.
        for a in &mut c.attempts {
            a.at = midnight - Duration::seconds(rng.random_range(1..=3600));
        }
        let decided = next(&c.situation());
        let why = format!("seed {seed} round {round}: {decided:?}");
        if c.barred.iter().all(|b| *b) {
            assert!(matches!(decided, Next::Exhausted { .. }), "{why}");
        } else {
            assert!(matches!(decided, Next::Dial { .. }), "{why}");
        }
    }
}

#[test]
fn the_start_of_a_day_is_its_midnight_or_the_end_of_a_gap_over_it() {
    // Santiago springs forward at local midnight (2026-09-06 00:00 → 01:00).
    let zone = chrono_tz::America::Santiago;
    let day = chrono::NaiveDate::from_ymd_opt(2026, 9, 6).unwrap();
    let start = start_of_day(zone, day).with_timezone(&zone);
    assert_eq!(start.date_naive(), day);
    assert_eq!((start.hour(), start.minute()), (1, 0));
    let paris = start_of_day(chrono_tz::Europe::Paris, day);
    assert_eq!(
        paris,
        "2026-09-05T22:00:00Z".parse::<DateTime<Utc>>().unwrap()
    );
}

#[test]
fn mobile_then_home_then_work_then_the_end_when_limits_never_reset() {
    let policy = AlternateNumbers {
        advance_on: vec![AdvanceOn::Rnr],
        max_attempts_per_number: Some(1),
        max_attempts_per_contact: None,
        reset: LimitReset::Never,
    };
    let t = "2026-12-06T10:00:00Z".parse::<DateTime<Utc>>().unwrap();
    let mut attempts = vec![Attempt { number: 0, at: t }];
    let barred = [false, false, false];
    let step = |attempts: &[Attempt], current| {
        next(&Situation {
            policy: &policy,
            barred: &barred,
            current,
            advance: true,
            attempts,
            zone: chrono_tz::Europe::Paris,
            due: t + Duration::hours(1),
        })
    };
    assert_eq!(step(&attempts, 0), Next::Dial { index: 1 });
    attempts.push(Attempt { number: 1, at: t });
    assert_eq!(step(&attempts, 1), Next::Dial { index: 2 });
    attempts.push(Attempt { number: 2, at: t });
    let Next::Exhausted { reason } = step(&attempts, 2) else {
        panic!("not exhausted")
    };
    assert_eq!(
        reason,
        "all 3 numbers of the contact reached their attempt limits (max_attempts_per_number 1)"
    );
}
