//! The scalar values of a retry policy, each validated while it is deserialised.
//!
//! Validating inside `Deserialize` (rather than after loading) is what lets a bad value be
//! reported with the line and column where it stands in the YAML file.

use std::{fmt, str::FromStr, time::Duration};

use chrono::{NaiveTime, Weekday};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Deserialises a string and parses it inside the visitor, so that the YAML deserialiser marks
/// a parse error with the scalar's own line rather than its container's.
fn parse_str<'de, D, T>(d: D, parse: fn(&str) -> Result<T, String>) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    struct Visit<T>(fn(&str) -> Result<T, String>);
    impl<T> serde::de::Visitor<'_> for Visit<T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<T, E> {
            (self.0)(v).map_err(E::custom)
        }
    }
    d.deserialize_str(Visit(parse))
}

/// A time zone from the IANA database (`"UTC"`, `"America/New_York"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeZone(pub chrono_tz::Tz);

impl Default for TimeZone {
    fn default() -> Self {
        Self(chrono_tz::UTC)
    }
}

impl<'de> Deserialize<'de> for TimeZone {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_str(d, |text| {
            text.parse::<chrono_tz::Tz>()
                .map(Self)
                .map_err(|_| format!("unknown time zone {text:?}"))
        })
    }
}

impl Serialize for TimeZone {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.name())
    }
}

/// A day of the week, spelled in full and in lower case as the old file does (`monday`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Day(pub Weekday);

const DAY_NAMES: [(&str, Weekday); 7] = [
    ("monday", Weekday::Mon),
    ("tuesday", Weekday::Tue),
    ("wednesday", Weekday::Wed),
    ("thursday", Weekday::Thu),
    ("friday", Weekday::Fri),
    ("saturday", Weekday::Sat),
    ("sunday", Weekday::Sun),
];

impl<'de> Deserialize<'de> for Day {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_str(d, |text| {
            let lower = text.to_ascii_lowercase();
            DAY_NAMES
                .iter()
                .find(|(name, _)| *name == lower)
                .map(|(_, day)| Self(*day))
                .ok_or_else(|| format!("{text:?} is not a day of the week"))
        })
    }
}

impl Serialize for Day {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let name = DAY_NAMES
            .iter()
            .find(|(_, d)| *d == self.0)
            .map_or("monday", |(n, _)| n);
        s.serialize_str(name)
    }
}

/// A time of day written `HH:MM`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ClockTime(pub NaiveTime);

impl<'de> Deserialize<'de> for ClockTime {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_str(d, |text| {
            NaiveTime::parse_from_str(text, "%H:%M")
                .map(Self)
                .map_err(|_| format!("{text:?} is not a time of day (HH:MM)"))
        })
    }
}

impl Serialize for ClockTime {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.format("%H:%M").to_string())
    }
}

/// A duration written as a number and a unit: `30s`, `10m`, `4h`, `1d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

/// The text is not a duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a duration (a positive number and a unit: s, m, h or d, as in 10m)")]
pub struct BadDuration(pub String);

impl FromStr for HumanDuration {
    type Err = BadDuration;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadDuration(s.to_owned());
        let text = s.trim();
        let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let (number, unit) = text.split_at(split);
        let number: u64 = number.parse().map_err(|_| bad())?;
        let seconds = match unit.trim() {
            "s" => 1,
            "m" => 60,
            "h" => 3_600,
            "d" => 86_400,
            _ => return Err(bad()),
        };
        if number == 0 {
            return Err(bad());
        }
        number
            .checked_mul(seconds)
            .map(|n| Self(Duration::from_secs(n)))
            .ok_or_else(bad)
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.as_secs();
        match secs {
            s if s % 86_400 == 0 => write!(f, "{}d", s / 86_400),
            s if s % 3_600 == 0 => write!(f, "{}h", s / 3_600),
            s if s % 60 == 0 => write!(f, "{}m", s / 60),
            s => write!(f, "{s}s"),
        }
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_str(d, |text| {
            text.parse().map_err(|e: BadDuration| e.to_string())
        })
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A jitter fraction in `0.0..=1.0`: a delay `d` becomes a value in `d·(1 ± fraction)`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
#[serde(transparent)]
pub struct Jitter(f64);

impl Jitter {
    /// Accepts a fraction in `0.0..=1.0`.
    pub fn new(fraction: f64) -> Option<Self> {
        (0.0..=1.0).contains(&fraction).then_some(Self(fraction))
    }

    pub fn fraction(&self) -> f64 {
        self.0
    }
}

impl<'de> Deserialize<'de> for Jitter {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl serde::de::Visitor<'_> for Visit {
            type Value = Jitter;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a fraction between 0 and 1")
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Jitter, E> {
                Jitter::new(v).ok_or_else(|| {
                    E::custom(format!("jitter {v} must be a fraction between 0 and 1"))
                })
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Jitter, E> {
                self.visit_f64(v as f64)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Jitter, E> {
                self.visit_f64(v as f64)
            }
        }
        d.deserialize_f64(Visit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_a_number_and_a_unit() {
        assert_eq!("10m".parse(), Ok(HumanDuration(Duration::from_secs(600))));
        assert_eq!("4h".parse(), Ok(HumanDuration(Duration::from_secs(14_400))));
        assert_eq!(" 2s ".parse(), Ok(HumanDuration(Duration::from_secs(2))));
        assert_eq!("1d".parse(), Ok(HumanDuration(Duration::from_secs(86_400))));
        for bad in ["10", "m", "0m", "10x", "-5m", "1.5h", ""] {
            assert!(bad.parse::<HumanDuration>().is_err(), "{bad}");
        }
        assert_eq!(HumanDuration(Duration::from_secs(5400)).to_string(), "90m");
    }

    #[test]
    fn days_times_and_zones_parse_the_old_spelling() {
        let day: Day = serde_yaml_ng::from_str("Saturday").expect("day");
        assert_eq!(day.0, Weekday::Sat);
        assert!(serde_yaml_ng::from_str::<Day>("someday").is_err());
        let time: ClockTime = serde_yaml_ng::from_str("\"23:59\"").expect("time");
        assert_eq!(time.0, NaiveTime::from_hms_opt(23, 59, 0).expect("valid"));
        assert!(serde_yaml_ng::from_str::<ClockTime>("\"24:00\"").is_err());
        let tz: TimeZone = serde_yaml_ng::from_str("Europe/Paris").expect("zone");
        assert_eq!(tz.0, chrono_tz::Europe::Paris);
        assert!(serde_yaml_ng::from_str::<TimeZone>("Mars/Olympus").is_err());
        assert!(serde_yaml_ng::from_str::<Jitter>("1.5").is_err());
        assert_eq!(
            serde_yaml_ng::from_str::<Jitter>("0.2")
                .map(|j| j.fraction())
                .ok(),
            Some(0.2)
        );
    }
}
