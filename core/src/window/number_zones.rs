//! The time zones a telephone number is in, from libphonenumber's prefix map
//! (`core/data/phone_zones.tsv`, with its source and date).
//!
//! A number takes the zones of its longest matching prefix: `+1 206` is Seattle, Pacific
//! time, where the country (`+1`, 42 zones) says nothing. An area code that spans zones
//! (`+1 208 2…`: Boise and Los Angeles) gives them all, and a calling window then applies in
//! each ([`super::Schedule::next_open_in_all`]).

use std::{collections::HashMap, sync::OnceLock};

use chrono::{NaiveDate, Offset, TimeZone};
use chrono_tz::Tz;

use crate::phone::PhoneNumber;

const DATA: &str = include_str!("../../data/phone_zones.tsv");

/// Prefix → zones; parsed once. Names chrono-tz does not know are left out.
fn map() -> &'static HashMap<&'static str, Vec<Tz>> {
    static MAP: OnceLock<HashMap<&'static str, Vec<Tz>>> = OnceLock::new();
    MAP.get_or_init(|| {
        DATA.lines()
            .filter(|line| !line.starts_with('#') && !line.is_empty())
            .filter_map(|line| line.split_once('\t'))
            .map(|(prefix, zones)| {
                let zones = zones.split(',').filter_map(|z| z.parse().ok()).collect();
                (prefix, zones)
            })
            .collect()
    })
}

/// The zones of `phone`, or `None` when the map does not place it: no prefix matches, or
/// only its country's does and that country spans zones with different offsets (a `+1`
/// number of an unknown area code could be anywhere from Guam to Newfoundland). Zones that
/// always keep the same time (London, Jersey, Guernsey) are one place for this purpose.
pub fn number_zones(phone: &PhoneNumber) -> Option<Vec<Tz>> {
    let digits = phone.digits();
    let map = map();
    let mut matched = (1..=digits.len())
        .rev()
        .filter_map(|len| map.get(&digits[..len]).map(|zones| (len, zones)));
    let (_, zones) = matched.next()?;
    let country_only = matched.next().is_none();
    if zones.is_empty() || (country_only && !same_clock(zones)) {
        return None;
    }
    Some(zones.clone())
}

/// Whether every zone shows the same offset in winter and in summer.
fn same_clock(zones: &[Tz]) -> bool {
    let offsets = |zone: &Tz| {
        [(1, 15), (7, 15)].map(|(month, day)| {
            let noon = NaiveDate::from_ymd_opt(2026, month, day)
                .and_then(|d| d.and_hms_opt(12, 0, 0))
                .unwrap_or_default();
            zone.offset_from_utc_datetime(&noon).fix().local_minus_utc()
        })
    };
    let first = zones.first().map(offsets);
    zones.iter().all(|z| Some(offsets(z)) == first)
}
