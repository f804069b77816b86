use chrono::{NaiveDate, NaiveTime, TimeZone, Utc, Weekday};
use chrono_tz::Tz;

use super::*;
use crate::phone::{PhoneNumber, PhoneRule};

fn hm(h: u32, m: u32) -> NaiveTime {
    NaiveTime::from_hms_opt(h, m, 0).expect("time")
}

fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, 0)
        .single()
        .expect("utc")
}

fn weekdays(start: NaiveTime, end: NaiveTime) -> Vec<DayHours> {
    use Weekday::*;
    vec![DayHours {
        days: vec![Mon, Tue, Wed, Thu, Fri],
        start,
        end,
    }]
}

const NEW_YORK: Tz = chrono_tz::America::New_York;

#[test]
fn inside_the_window_it_is_open_now_and_before_it_opens_at_the_start() {
    let s = Schedule::new(Some(&weekdays(hm(9, 0), hm(17, 0))), None, &[]).expect("schedule");
    // Wednesday 2026-01-14, 10:00 in New York (EST, UTC-5).
    let inside = utc(2026, 1, 14, 15, 0);
    assert_eq!(s.next_open(NEW_YORK, inside), Some(inside));
    assert!(s.is_open(NEW_YORK, inside));
    // 07:30 local: opens at 09:00 local.
    assert_eq!(
        s.next_open(NEW_YORK, utc(2026, 1, 14, 12, 30)),
        Some(utc(2026, 1, 14, 14, 0))
    );
    // 17:00 local is closed (the end is excluded): the next day at 09:00.
    assert_eq!(
        s.next_open(NEW_YORK, utc(2026, 1, 14, 22, 0)),
        Some(utc(2026, 1, 15, 14, 0))
    );
}

#[test]
fn the_week_wraps_from_friday_evening_to_monday_and_to_a_single_weekday() {
    let s = Schedule::new(Some(&weekdays(hm(9, 0), hm(17, 0))), None, &[]).expect("schedule");
    // Friday 2026-01-16 18:00 EST → Monday 2026-01-19 09:00 EST.
    assert_eq!(
        s.next_open(NEW_YORK, utc(2026, 1, 16, 23, 0)),
        Some(utc(2026, 1, 19, 14, 0))
    );
    let sundays = [DayHours {
        days: vec![Weekday::Sun],
        start: hm(12, 0),
        end: hm(13, 0),
    }];
    let s = Schedule::new(Some(&sundays), None, &[]).expect("schedule");
    // Monday 2026-01-19 noon UTC → Sunday 2026-01-25 12:00 UTC.
    assert_eq!(
        s.next_open(Tz::UTC, utc(2026, 1, 19, 12, 0)),
        Some(utc(2026, 1, 25, 12, 0))
    );
}

#[test]
fn blackout_dates_are_skipped_in_the_callee_zone() {
    let christmas = NaiveDate::from_ymd_opt(2026, 12, 25).expect("date");
    let s =
        Schedule::new(Some(&weekdays(hm(9, 0), hm(17, 0))), None, &[christmas]).expect("schedule");
    // Thursday 24 December, 18:00 EST: Friday 25 is blacked out, the weekend has no hours.
    assert_eq!(
        s.next_open(NEW_YORK, utc(2026, 12, 24, 23, 0)),
        Some(utc(2026, 12, 28, 14, 0))
    );
    // Blackout dates alone: every other day is open all day.
    let only = Schedule::new(None, None, &[christmas]).expect("schedule");
    assert_eq!(
        only.next_open(Tz::UTC, utc(2026, 12, 25, 10, 0)),
        Some(utc(2026, 12, 26, 0, 0))
    );
    assert_eq!(Schedule::new(None, None, &[]), None, "no rule: any time");
}

#[test]
fn a_window_opening_in_the_spring_forward_gap_opens_when_the_clock_jumps() {
    // Sunday 2026-03-08 in New York: 02:00 EST jumps to 03:00 EDT (07:00 UTC).
    let sunday = [DayHours {
        days: vec![Weekday::Sun],
        start: hm(2, 30),
        end: hm(4, 0),
    }];
    let s = Schedule::new(Some(&sunday), None, &[]).expect("schedule");
    assert_eq!(
        s.next_open(NEW_YORK, utc(2026, 3, 8, 5, 0)),
        Some(utc(2026, 3, 8, 7, 0))
    );
    // 04:00 EDT is 08:00 UTC: closed from then on.
    assert_eq!(
        s.next_open(NEW_YORK, utc(2026, 3, 8, 8, 0)),
        Some(utc(2026, 3, 15, 6, 30))
    );
}

#[test]
fn the_window_follows_the_local_clock_across_fall_back() {
    let s = Schedule::new(
        None,
        Some(CallingWindow {
            start: hm(9, 0),
            end: hm(17, 0),
        }),
        &[],
    )
    .expect("schedule");
    // Saturday 2026-10-31 is EDT (UTC-4); Sunday 2026-11-01 is EST (UTC-5) after 02:00.
    assert_eq!(
        s.next_open(NEW_YORK, utc(2026, 10, 31, 12, 0)),
        Some(utc(2026, 10, 31, 13, 0))
    );
    assert_eq!(
        s.next_open(NEW_YORK, utc(2026, 11, 1, 0, 0)),
        Some(utc(2026, 11, 1, 14, 0)),
        "09:00 EST, not 09:00 EDT"
    );
    // A window in the repeated hour opens at its first occurrence.
    let early = [DayHours {
        days: vec![Weekday::Sun],
        start: hm(1, 30),
        end: hm(3, 0),
    }];
    let s = Schedule::new(Some(&early), None, &[]).expect("schedule");
    assert_eq!(
        s.next_open(NEW_YORK, utc(2026, 11, 1, 0, 0)),
        Some(utc(2026, 11, 1, 5, 30)),
        "01:30 EDT"
    );
}

#[test]
fn calling_hours_are_validated() {
    assert_eq!(
        validate(&weekdays(hm(9, 0), hm(9, 0))),
        Err(WindowError::Order(0))
    );
    let no_days = [DayHours {
        days: vec![],
        start: hm(9, 0),
        end: hm(10, 0),
    }];
    assert_eq!(validate(&no_days), Err(WindowError::NoDays(0)));
    assert_eq!(validate(&[]), Err(WindowError::Empty));
    assert_eq!(validate(&weekdays(hm(9, 0), hm(17, 0))), Ok(()));
    let json = serde_json::json!([{"days": ["mon", "Saturday"], "start": "08:15", "end": "12:00"}]);
    let parsed: Vec<DayHours> = serde_json::from_value(json).expect("weekday names");
    assert_eq!(parsed[0].days, [Weekday::Mon, Weekday::Sat]);
}

#[test]
fn the_callee_zone_comes_from_the_contact_then_the_number_then_the_campaign() {
    let paris = PhoneNumber::parse("+33 1 42 68 53 00", PhoneRule::Strict).expect("FR");
    let us = PhoneNumber::parse("+1 212 555 0100", PhoneRule::Lenient).expect("US");
    let unknown_area = PhoneNumber::parse("+1 555 000 0001", PhoneRule::Lenient).expect("+1");
    assert_eq!(
        callee_zones(Some("Asia/Tokyo"), &paris, Some("UTC")),
        [chrono_tz::Asia::Tokyo]
    );
    assert_eq!(
        callee_zones(None, &paris, Some("America/Chicago")),
        [chrono_tz::Europe::Paris],
        "France has one zone"
    );
    assert_eq!(
        callee_zones(None, &us, Some("America/Chicago")),
        [NEW_YORK],
        "212 is New York, whatever the campaign's zone"
    );
    assert_eq!(
        callee_zones(None, &unknown_area, Some("America/Chicago")),
        [chrono_tz::America::Chicago],
        "an area code the map does not know: the campaign's"
    );
    assert_eq!(
        callee_zones(Some("Not/AZone"), &unknown_area, None),
        [Tz::UTC]
    );
    assert_eq!(region_zone("JP"), Some(chrono_tz::Asia::Tokyo));
    assert_eq!(region_zone("US"), None);
}

/// Issue 21 item 3: a `+1` contact without a zone was timed in the campaign's zone, so a
/// New York campaign's 9:00 rang at 6:00 in Seattle.
#[test]
fn a_seattle_number_in_a_new_york_campaign_is_called_in_pacific_time() {
    let seattle = PhoneNumber::parse("+1 206 555 0100", PhoneRule::Lenient).expect("US");
    let schedule = Schedule::new(Some(&weekdays(hm(9, 0), hm(17, 0))), None, &[]).expect("hours");
    let zones = callee_zones(None, &seattle, Some("America/New_York"));
    assert_eq!(zones, [chrono_tz::America::Los_Angeles]);
    // Wednesday 2026-01-14 14:00 UTC is 9:00 in New York and 6:00 in Seattle.
    let nine_in_new_york = utc(2026, 1, 14, 14, 0);
    assert_eq!(
        schedule.next_open_in_all(&zones, nine_in_new_york),
        Some(utc(2026, 1, 14, 17, 0)),
        "opens at 9:00 Pacific"
    );
}

/// An area code across two zones (208 2…: Boise, Mountain, and Los Angeles, Pacific): the
/// window holds in both, so 9:00-17:00 becomes 9:00 Pacific to 17:00 Mountain.
#[test]
fn an_area_code_across_two_zones_is_called_only_when_both_are_inside_the_window() {
    let idaho = PhoneNumber::parse("+1 208 299 0100", PhoneRule::Lenient).expect("US");
    let zones = callee_zones(None, &idaho, Some("America/New_York"));
    assert_eq!(
        zones,
        [chrono_tz::America::Boise, chrono_tz::America::Los_Angeles]
    );
    let schedule = Schedule::new(Some(&weekdays(hm(9, 0), hm(17, 0))), None, &[]).expect("hours");
    // 16:00 UTC: 9:00 Mountain, 8:00 Pacific: not yet.
    assert_eq!(
        schedule.next_open_in_all(&zones, utc(2026, 1, 14, 16, 0)),
        Some(utc(2026, 1, 14, 17, 0))
    );
    // 23:30 UTC: 16:30 Mountain, 15:30 Pacific: open.
    let inside = utc(2026, 1, 14, 23, 30);
    assert_eq!(schedule.next_open_in_all(&zones, inside), Some(inside));
    // 00:30 UTC Thursday: 17:30 Mountain (closed), 16:30 Pacific (open): Thursday 9:00 Pacific.
    assert_eq!(
        schedule.next_open_in_all(&zones, utc(2026, 1, 15, 0, 30)),
        Some(utc(2026, 1, 15, 17, 0))
    );
}

const POOL: [Tz; 6] = [
    NEW_YORK,
    chrono_tz::America::Chicago,
    chrono_tz::America::Denver,
    chrono_tz::America::Los_Angeles,
    chrono_tz::America::Phoenix,
    chrono_tz::Europe::London,
];

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 64, failure_persistence: None, ..Default::default() })]

    /// Generated: for random sets of zones and instants over a year (DST changes included),
    /// the answer is open in every zone and no earlier minute is.
    #[test]
    fn the_opening_in_all_zones_is_open_everywhere_and_the_earliest_such_minute(
        picks in proptest::collection::vec(0..POOL.len(), 1..=3),
        minute in 0i64..525_600,
    ) {
        let zones: Vec<Tz> = picks.iter().map(|i| POOL[*i]).collect();
        let schedule = Schedule::new(Some(&weekdays(hm(8, 0), hm(21, 0))), None, &[]).expect("hours");
        let now = utc(2026, 1, 1, 0, 0) + chrono::Duration::minutes(minute);
        let at = schedule.next_open_in_all(&zones, now).expect("an opening");
        let all_open = |t| zones.iter().all(|z| schedule.is_open(*z, t));
        proptest::prop_assert!(all_open(at), "{:?} at {}", zones, at);
        let mut t = now;
        while t < at {
            proptest::prop_assert!(!all_open(t), "{:?} open at {} before {}", zones, t, at);
            t += chrono::Duration::minutes(1);
        }
    }
}
