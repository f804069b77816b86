//! A contact's postal code: the callee's state or province and, where it tells, their zone.
//!
//! US ZIP codes (`12345`, `12345-6789`) are looked up in `core/data/us_zip.tsv` (ranges of
//! ZIP codes → state and IANA zone, from the PyPI package zipcodes, with its date; made by
//! `scripts/compliance_data.py`). Canadian postal codes (`K1A 0B1`, or just the forward
//! sortation area `K1A`) give the province by their first letter, Canada Post's published
//! rule; the zone only for provinces that have one (a Toronto or a Thunder Bay FSA both
//! start with `P`, so Ontario, British Columbia, Newfoundland and Labrador and the
//! territories leave the zone to the number).

use std::sync::OnceLock;

use chrono_tz::Tz;

use super::Jurisdiction;

const US_ZIP: &str = include_str!("../../data/us_zip.tsv");

/// What a postal code tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostalPlace {
    pub jurisdiction: Jurisdiction,
    pub zone: Option<Tz>,
}

/// A row of the ZIP data: `(first, last, state, zone)`.
type ZipRange = (u32, u32, &'static str, Option<Tz>);

/// The rows, sorted by `first`; parsed once.
fn zip_ranges() -> &'static [ZipRange] {
    static RANGES: OnceLock<Vec<ZipRange>> = OnceLock::new();
    RANGES.get_or_init(|| {
        let mut rows: Vec<_> = US_ZIP
            .lines()
            .filter(|line| !line.starts_with('#') && !line.is_empty())
            .filter_map(|line| {
                let mut cols = line.split('\t');
                let first = cols.next()?.parse().ok()?;
                let last = cols.next()?.parse().ok()?;
                let state = cols.next()?;
                let zone = cols.next().and_then(|z| z.parse().ok());
                Some((first, last, state, zone))
            })
            .collect();
        rows.sort_unstable_by_key(|r| r.0);
        rows
    })
}

/// The place of a US ZIP code (five digits, optionally `-` and four more).
fn us_zip(code: &str) -> Option<PostalPlace> {
    let five = code.split('-').next()?;
    if five.len() != 5 || !five.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let zip: u32 = five.parse().ok()?;
    let ranges = zip_ranges();
    let at = ranges.partition_point(|r| r.0 <= zip).checked_sub(1)?;
    let (_, last, state, zone) = ranges[at];
    (zip <= last).then(|| PostalPlace {
        jurisdiction: Jurisdiction::new("US", [format!("US-{state}")]),
        zone,
    })
}

/// Province by the first letter of a Canadian postal code (Canada Post), and its zone when
/// the province keeps one clock.
fn canadian(code: &str) -> Option<PostalPlace> {
    let compact: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    let bytes = compact.as_bytes();
    let shape = |i: usize, letter: bool| {
        bytes.get(i).is_some_and(|b| {
            if letter {
                b.is_ascii_alphabetic()
            } else {
                b.is_ascii_digit()
            }
        })
    };
    if !(compact.len() == 3 || compact.len() == 6)
        || !(0..compact.len()).all(|i| shape(i, i % 2 == 0))
    {
        return None;
    }
    let (provinces, zone): (&[&str], Option<&str>) = match bytes[0].to_ascii_uppercase() {
        b'A' => (&["NL"], None),
        b'B' => (&["NS"], Some("America/Halifax")),
        b'C' => (&["PE"], Some("America/Halifax")),
        b'E' => (&["NB"], Some("America/Moncton")),
        b'G' | b'H' | b'J' => (&["QC"], None),
        b'K' | b'L' | b'M' | b'N' | b'P' => (&["ON"], None),
        b'R' => (&["MB"], Some("America/Winnipeg")),
        b'S' => (&["SK"], Some("America/Regina")),
        b'T' => (&["AB"], Some("America/Edmonton")),
        b'V' => (&["BC"], None),
        b'X' => (&["NT", "NU"], None),
        b'Y' => (&["YT"], Some("America/Whitehorse")),
        _ => return None,
    };
    Some(PostalPlace {
        jurisdiction: Jurisdiction::new("CA", provinces.iter().map(|p| format!("CA-{p}"))),
        zone: zone.and_then(|z| z.parse().ok()),
    })
}

/// The place a postal code tells, `None` for a code of neither form or an unknown ZIP code.
pub fn postal_place(code: &str) -> Option<PostalPlace> {
    let code = code.trim();
    us_zip(code).or_else(|| canadian(code))
}
