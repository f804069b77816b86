//! Calling windows: when a campaign may call, in the callee's local time.
//!
//! A campaign allows hours per weekday ([`DayHours`], or its single daily `calling_window`
//! for every day) minus blackout dates. [`Schedule::next_open`] answers "when may this callee
//! be called, at or after `now`": `now` itself inside the window, else the next opening. The
//! arithmetic is done on local dates in the callee's zone and every local time is resolved
//! through `chrono-tz`, so daylight-saving changes move the window with the callee's clock: a
//! local opening time that does not exist (spring forward) opens at the first local time
//! after the gap, one that exists twice (fall back) opens at the earlier.
//!
//! The callee's zones are [`callee_zones`]: the contact's own IANA zone, else the zones of the
//! number's prefix ([`number_zones`]: `+1 206` is Pacific time whatever the campaign's zone),
//! else the zone of the number's region when that region has exactly one, else the campaign's
//! zone, else UTC. A prefix that spans zones gives several, and the window must be open in all
//! of them at once ([`Schedule::next_open_in_all`]), the most restrictive reading.
//!
//! [`callee`] is the full answer: the zones and why they were chosen (a contact's postal code
//! comes before the number's prefix), and the callee's jurisdiction (country, US state or
//! Canadian province) that picks the calling rules of `crate::rules`. Several schedules (the
//! campaign's and each applicable rule's) apply together through [`next_open_all`].

mod allowed;
mod callee;
mod jurisdiction;
mod number_zones;
mod postal;
mod zones;

pub use allowed::first_allowed;
pub use callee::{Callee, ContactPlace, PlaceSource, ZoneSource, callee};
pub use jurisdiction::{Jurisdiction, number_jurisdiction};
pub use number_zones::number_zones;
pub use postal::{PostalPlace, postal_place};

#[cfg(test)]
mod tests;

use std::collections::BTreeSet;

use chrono::{DateTime, Datelike, Days, NaiveDate, NaiveTime, TimeZone, Timelike, Utc, Weekday};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::{
    campaign::{CallingWindow, Campaign},
    phone::PhoneNumber,
};

/// How far ahead an opening is looked for: a year of blackout dates at most.
const SEARCH_DAYS: u64 = 367;
const SECONDS_PER_DAY: u32 = 24 * 60 * 60;

/// Local hours on some weekdays, e.g. `{"days": ["mon", "tue"], "start": "09:00", "end":
/// "17:00"}`; `start` < `end`, both `HH:MM` (or `HH:MM:SS`), the end excluded. A window across midnight is two
/// entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DayHours {
    #[serde(with = "weekdays")]
    pub days: Vec<Weekday>,
    #[serde(with = "crate::campaign::hhmm")]
    pub start: NaiveTime,
    #[serde(with = "crate::campaign::hhmm")]
    pub end: NaiveTime,
}

/// Weekdays written `mon` … `sun` (any of chrono's spellings are read).
mod weekdays {
    use chrono::Weekday;
    use serde::{Deserialize, Deserializer, Serializer, ser::SerializeSeq};

    pub fn serialize<S: Serializer>(days: &[Weekday], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(days.len()))?;
        for day in days {
            seq.serialize_element(&day.to_string().to_lowercase())?;
        }
        seq.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Weekday>, D::Error> {
        Vec::<Weekday>::deserialize(d)
    }
}

/// Why calling hours are refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    #[error("calling_hours[{0}]: start must be before end")]
    Order(usize),
    #[error("calling_hours[{0}]: days must name at least one weekday")]
    NoDays(usize),
    #[error("calling_hours allow no time at all")]
    Empty,
}

/// Checks calling hours as an operator wrote them.
pub fn validate(hours: &[DayHours]) -> Result<(), WindowError> {
    for (i, entry) in hours.iter().enumerate() {
        if entry.start >= entry.end {
            return Err(WindowError::Order(i));
        }
        if entry.days.is_empty() {
            return Err(WindowError::NoDays(i));
        }
    }
    if hours.is_empty() {
        return Err(WindowError::Empty);
    }
    Ok(())
}

/// A campaign's calling hours, ready for arithmetic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// Local `[start, end)` seconds of the day, per weekday from Monday.
    days: [Vec<(u32, u32)>; 7],
    blackout: BTreeSet<NaiveDate>,
}

fn seconds(time: NaiveTime) -> u32 {
    time.num_seconds_from_midnight()
}

impl Schedule {
    /// The schedule of `campaign`; `None` when it may call at any time.
    pub fn of(campaign: &Campaign) -> Option<Self> {
        Self::new(
            campaign.calling_hours.as_deref(),
            campaign.calling_window,
            &campaign.blackout_dates,
        )
    }

    /// Weekday hours win over a daily window; with neither, every day is open all day.
    pub fn new(
        hours: Option<&[DayHours]>,
        daily: Option<CallingWindow>,
        blackout: &[NaiveDate],
    ) -> Option<Self> {
        let mut days: [Vec<(u32, u32)>; 7] = Default::default();
        match (hours, daily) {
            (Some(hours), _) => {
                for entry in hours {
                    for day in &entry.days {
                        days[day.num_days_from_monday() as usize]
                            .push((seconds(entry.start), seconds(entry.end)));
                    }
                }
            }
            (None, Some(window)) => {
                for day in &mut days {
                    day.push((seconds(window.start), seconds(window.end)));
                }
            }
            (None, None) if blackout.is_empty() => return None,
            (None, None) => {
                for day in &mut days {
                    day.push((0, SECONDS_PER_DAY));
                }
            }
        }
        for day in &mut days {
            day.sort_unstable();
        }
        Some(Self {
            days,
            blackout: blackout.iter().copied().collect(),
        })
    }

    /// The first instant at or after `now` at which the callee in `zone` may be called;
    /// `None` if the schedule opens on no day within a year.
    pub fn next_open(&self, zone: Tz, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let today = now.with_timezone(&zone).date_naive();
        // From the day before: a local date's window can still be open at `now` when the
        // zone's offset moved backwards across midnight.
        let first = today.checked_sub_days(Days::new(1))?;
        for offset in 0..=SEARCH_DAYS {
            let date = first.checked_add_days(Days::new(offset))?;
            if self.blackout.contains(&date) {
                continue;
            }
            let spans = &self.days[date.weekday().num_days_from_monday() as usize];
            for &(start, end) in spans {
                let (Some(opens), Some(closes)) =
                    (resolve(zone, date, start), resolve(zone, date, end))
                else {
                    continue;
                };
                if closes > now && opens < closes {
                    return Some(opens.max(now));
                }
            }
        }
        None
    }

    /// A schedule from its parts: hours per weekday (all day on every day when `None`),
    /// weekdays with no calls, and dates with no calls.
    pub fn of_rule(
        hours: Option<&[DayHours]>,
        no_call_days: &[Weekday],
        blackout: &[NaiveDate],
    ) -> Self {
        let mut schedule = Self::new(hours, None, blackout).unwrap_or_else(|| Self {
            days: std::array::from_fn(|_| vec![(0, SECONDS_PER_DAY)]),
            blackout: BTreeSet::new(),
        });
        for day in no_call_days {
            schedule.days[day.num_days_from_monday() as usize].clear();
        }
        schedule
    }

    /// Whether the callee in `zone` may be called at `now`.
    pub fn is_open(&self, zone: Tz, now: DateTime<Utc>) -> bool {
        self.next_open(zone, now) == Some(now)
    }

    /// The first instant at or after `now` at which the window is open in every one of
    /// `zones` (a callee who may be in any of them). When the zones' windows never overlap
    /// (a window narrower than the hours between them), the instant at which the last of them
    /// opens: no zone is called before its own opening. `None` if some zone never opens.
    pub fn next_open_in_all(&self, zones: &[Tz], now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        next_open_all(&[self], zones, now)
    }
}

/// The first instant at or after `now` at which every one of `schedules` is open in every one
/// of `zones`: the intersection of a campaign's window and the calling rules that apply. When
/// they never overlap, the instant at which the last of them opens (none is called before its
/// own opening). `None` if one never opens. No schedule at all: `now`.
pub fn next_open_all(
    schedules: &[&Schedule],
    zones: &[Tz],
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let latest_opening = |at: DateTime<Utc>| {
        schedules
            .iter()
            .flat_map(|s| zones.iter().map(move |zone| s.next_open(*zone, at)))
            .try_fold(at, |latest, opens| opens.map(|o| o.max(latest)))
    };
    let first = latest_opening(now)?;
    let mut at = first;
    // Each round moves `at` to a later opening; overlapping windows settle in a few rounds.
    for _ in 0..MAX_ROUNDS {
        let next = latest_opening(at)?;
        if next == at {
            return Some(at);
        }
        at = next;
    }
    Some(first)
}

/// Rounds of [`Schedule::next_open_in_all`] before windows are taken not to overlap.
const MAX_ROUNDS: usize = 32;

/// The instant of `second` (0 to 86,400) of local `date` in `zone`: the earlier of two when
/// the clock went back, the first valid local minute after the gap when it went forward.
pub(crate) fn resolve(zone: Tz, date: NaiveDate, second: u32) -> Option<DateTime<Utc>> {
    let midnight = date.and_hms_opt(0, 0, 0)?;
    let mut local = midnight + chrono::Duration::seconds(i64::from(second));
    // Gaps are at most a few hours long (at most one day in the whole database).
    for _ in 0..=24 * 60 {
        if let Some(instant) = zone.from_local_datetime(&local).earliest() {
            return Some(instant.with_timezone(&Utc));
        }
        local = local.with_second(0)? + chrono::Duration::minutes(1);
    }
    None
}

/// The zone of a region (ISO 3166 code) when it has exactly one.
pub fn region_zone(region: &str) -> Option<Tz> {
    let at = zones::SINGLE_ZONE
        .binary_search_by(|(r, _)| r.cmp(&region))
        .ok()?;
    zones::SINGLE_ZONE[at].1.parse().ok()
}

/// The zones the callee may be in (never empty): the contact's (if a valid IANA name), else
/// the number's prefix's, else its region's when it has one zone, else the campaign's, else
/// UTC. [`callee`] also takes a postal code and says why.
pub fn callee_zones(contact: Option<&str>, phone: &PhoneNumber, campaign: Option<&str>) -> Vec<Tz> {
    let place = ContactPlace {
        time_zone: contact,
        postal_code: None,
    };
    callee(place, phone, campaign).zones
}
