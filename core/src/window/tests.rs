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
    assert_eq!(
        callee_zone(Some("Asia/Tokyo"), &paris, Some("UTC")),
        chrono_tz::Asia::Tokyo
    );
    assert_eq!(
        callee_zone(None, &paris, Some("America/Chicago")),
        chrono_tz::Europe::Paris,
        "France has one zone"
    );
    assert_eq!(
        callee_zone(None, &us, Some("America/Chicago")),
        chrono_tz::America::Chicago,
        "the US has several: the campaign's"
    );
    assert_eq!(callee_zone(Some("Not/AZone"), &us, None), Tz::UTC);
    assert_eq!(region_zone("JP"), Some(chrono_tz::Asia::Tokyo));
    assert_eq!(region_zone("US"), None);
}
