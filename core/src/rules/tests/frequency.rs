//! The frequency decisions, against a slow count and at their edges.

use chrono::{DateTime, Duration, TimeZone, Utc};
use chrono_tz::Tz;
use rand::{Rng, SeedableRng, rngs::StdRng};

use crate::rules::{
    FrequencyLimit,
    frequency::{Limits, next_allowed},
};

fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, 0)
        .single()
        .expect("utc")
}

const ZONES: [Tz; 5] = [
    chrono_tz::America::New_York,
    chrono_tz::America::Los_Angeles,
    chrono_tz::America::Boise,
    chrono_tz::Australia::Lord_Howe,
    chrono_tz::UTC,
];

/// Whether one more attempt is within every limit at `at`, counted the slow way.
fn allowed(attempts: &[DateTime<Utc>], limits: &Limits, zones: &[Tz], at: DateTime<Utc>) -> bool {
    let rolling = attempts
        .iter()
        .filter(|a| **a > at - Duration::hours(24) && **a <= at)
        .count();
    if limits.cap_24h.is_some_and(|cap| rolling >= cap as usize) {
        return false;
    }
    limits.per_days.iter().all(|limit| {
        zones.iter().all(|zone| {
            let today = at.with_timezone(zone).date_naive();
            let count = attempts
                .iter()
                .filter(|a| **a <= at)
                .filter(|a| {
                    let date = a.with_timezone(zone).date_naive();
                    (today - date).num_days() < i64::from(limit.days) && date <= today
                })
                .count();
            count < limit.max_attempts as usize
        })
    })
}

/// Generated: the moment `next_allowed` gives is allowed and the second before it is not;
/// `None` means allowed now. Histories around DST changes, in zones with half-hour shifts and
/// for callees in two zones.
#[test]
fn the_earliest_permitted_moment_is_exact() {
    let seed: u64 = rand::random();
    println!("seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let anchors = [
        utc(2026, 3, 8, 7, 0),
        utc(2026, 11, 1, 6, 0),
        utc(2026, 4, 5, 15, 0),
        utc(2026, 7, 1, 12, 0),
    ];
    for round in 0..3000 {
        let now = anchors[round % anchors.len()]
            + Duration::seconds(rng.random_range(-3 * 86_400..3 * 86_400));
        let attempts: Vec<_> = (0..rng.random_range(0..12))
            .map(|_| now - Duration::seconds(rng.random_range(0..10 * 86_400)))
            .collect();
        let limits = Limits {
            cap_24h: rng.random_bool(0.6).then(|| rng.random_range(1..5)),
            per_days: (0..rng.random_range(0..3))
                .map(|_| FrequencyLimit {
                    max_attempts: rng.random_range(1..6),
                    days: rng.random_range(1..8),
                })
                .collect(),
        };
        let zones: Vec<Tz> = match rng.random_range(0..3) {
            0 => vec![ZONES[rng.random_range(0..ZONES.len())]],
            1 => vec![chrono_tz::America::Boise, chrono_tz::America::Los_Angeles],
            _ => vec![
                chrono_tz::America::New_York,
                chrono_tz::Australia::Lord_Howe,
            ],
        };
        let ctx =
            format!("seed {seed} round {round}: now {now}, {attempts:?}, {limits:?}, {zones:?}");
        match next_allowed(&attempts, &limits, &zones, now) {
            None => assert!(allowed(&attempts, &limits, &zones, now), "{ctx}"),
            Some(at) => {
                assert!(at > now, "{ctx}");
                assert!(
                    allowed(&attempts, &limits, &zones, at),
                    "not allowed at {at}: {ctx}"
                );
                assert!(
                    !allowed(&attempts, &limits, &zones, at - Duration::seconds(1)),
                    "allowed before {at}: {ctx}"
                );
            }
        }
    }
}

#[test]
fn k_in_d_counts_local_days_not_utc_days() {
    // 2 attempts in 2 local days. Los Angeles, Sunday 2026-11-01 (fall back at 02:00 PDT).
    let la = [chrono_tz::America::Los_Angeles];
    let limits = Limits {
        cap_24h: None,
        per_days: vec![FrequencyLimit {
            max_attempts: 2,
            days: 2,
        }],
    };
    // Saturday 23:00 PDT (06:00 UTC Sunday) and Sunday 10:00 PST (18:00 UTC).
    let attempts = [utc(2026, 11, 1, 6, 0), utc(2026, 11, 1, 18, 0)];
    let now = utc(2026, 11, 1, 20, 0);
    // Saturday's attempt leaves the window at Monday's local midnight: 08:00 UTC (PST).
    assert_eq!(
        next_allowed(&attempts, &limits, &la, now),
        Some(utc(2026, 11, 2, 8, 0))
    );
    // Counted in UTC days both would be on Sunday and leave only on Tuesday.
    assert_eq!(
        next_allowed(&attempts, &limits, &[Tz::UTC], now),
        Some(utc(2026, 11, 3, 0, 0))
    );
}

#[test]
fn frequency_limits_are_checked_at_load_and_the_old_daily_cap_is_one_of_them() {
    let mut config = crate::Config::default();
    config.dialer.max_attempts_per_number_per_day = 2;
    config.compliance.frequency_limits = vec![FrequencyLimit {
        max_attempts: 3,
        days: 7,
    }];
    assert!(config.validate().is_ok());
    assert_eq!(
        config.frequency_limits(),
        vec![
            FrequencyLimit {
                max_attempts: 3,
                days: 7
            },
            FrequencyLimit {
                max_attempts: 2,
                days: 1
            }
        ]
    );
    for bad in [
        FrequencyLimit {
            max_attempts: 3,
            days: 32,
        },
        FrequencyLimit {
            max_attempts: 0,
            days: 1,
        },
        FrequencyLimit {
            max_attempts: 1,
            days: 0,
        },
    ] {
        config.compliance.frequency_limits = vec![bad];
        let err = config.validate().expect_err("refused");
        assert!(
            err.to_string().contains("compliance.frequency_limits"),
            "{err}"
        );
    }
}
