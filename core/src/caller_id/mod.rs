//! Caller-ID pools: the numbers a campaign dials from, instead of the carrier adapter's one
//! `from`.
//!
//! A pool is parsed once ([`CallerIdPool::parse`], and again whenever a stored campaign
//! document is read), so everything downstream holds numbers in E.164 form with their
//! locality already known. Which number an attempt shows is the pure [`choice::preference`]
//! order (local presence, then a stable hash) walked past paused and capped numbers by
//! [`choice::choose`]; the per-number caps are the rules of [`caps`], which the dialer enforces
//! across replicas in one compare-and-set record per number.

pub mod caps;
pub mod choice;
pub mod health;

use serde::{Deserialize, Serialize};

use crate::phone::{PhoneError, PhoneNumber, PhoneRule};

/// The most numbers a pool may hold (the preference order is computed per attempt).
pub const MAX_NUMBERS: usize = 1000;

/// A pool as sent in a campaign body and kept in the campaign document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSpec {
    /// The numbers: `"+14155550100"` or `{"number": "+14155550100", "paused": true}`.
    pub numbers: Vec<NumberSpec>,
    /// Prefer a number with the callee's area code, then one of their region, then of their
    /// country (default true).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub local_presence: bool,
    /// The same callee always sees the same number (while it is neither paused nor capped):
    /// a stable hash of the callee's number, not a rotation. Otherwise each attempt hashes
    /// its own id, which spreads a callee's attempts over the equally local numbers.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub consistent: bool,
    /// Attempts per number in any 60 minutes, across all dialers; absent: no cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts_per_hour: Option<u32>,
    /// Attempts per number in any 24 hours, across all dialers; absent: no cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts_per_day: Option<u32>,
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

/// One number of a pool as sent: the bare number, or the number with its state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum NumberSpec {
    Plain(String),
    Full {
        number: String,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        paused: bool,
    },
}

/// Why a pool was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error("a caller-id pool needs 1 to {MAX_NUMBERS} numbers (got {0})")]
    Size(usize),
    #[error("caller-id pool: {0}")]
    Number(#[from] PhoneError),
    #[error("caller-id pool lists {0} twice")]
    Duplicate(String),
    #[error("caller-id pool caps must be at least 1")]
    ZeroCap,
}

/// Where a number is, as far as local presence cares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Locality {
    /// The country calling code (`1` for the NANP).
    pub country_code: Option<u16>,
    /// The ISO 3166 region, when libphonenumber knows it.
    pub region: Option<String>,
    /// The NANP area code (the first three digits of a ten-digit national number); other
    /// plans' area codes vary in length and are matched by region only.
    pub area: Option<String>,
}

impl Locality {
    /// Reads the locality of `number` through libphonenumber; parts it cannot tell stay
    /// unknown (a lenient test number such as `+15550000001` still has its area code).
    pub fn of(number: &PhoneNumber) -> Self {
        let Ok(parsed) = phonenumber::parse(None, number.as_str()) else {
            return Self::default();
        };
        let country_code = parsed.code().value();
        let national = parsed.national().value().to_string();
        let area = (country_code == 1 && national.len() == 10).then(|| national[..3].to_owned());
        Self {
            country_code: Some(country_code),
            region: parsed.country().id().map(|id| format!("{id:?}")),
            area,
        }
    }
}

/// One number of a parsed pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolNumber {
    pub number: PhoneNumber,
    pub paused: bool,
    pub locality: Locality,
}

/// A parsed pool: numbers in E.164 form, unique, with their locality; caps at least 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "PoolSpec", into = "PoolSpec")]
pub struct CallerIdPool {
    numbers: Vec<PoolNumber>,
    pub local_presence: bool,
    pub consistent: bool,
    pub caps: caps::Caps,
}

impl CallerIdPool {
    /// Parses a pool under the deployment's phone rule.
    pub fn parse(spec: PoolSpec, rule: PhoneRule) -> Result<Self, PoolError> {
        if spec.numbers.is_empty() || spec.numbers.len() > MAX_NUMBERS {
            return Err(PoolError::Size(spec.numbers.len()));
        }
        if spec.max_attempts_per_hour == Some(0) || spec.max_attempts_per_day == Some(0) {
            return Err(PoolError::ZeroCap);
        }
        let mut numbers: Vec<PoolNumber> = Vec::with_capacity(spec.numbers.len());
        for entry in spec.numbers {
            let (raw, paused) = match entry {
                NumberSpec::Plain(n) => (n, false),
                NumberSpec::Full { number, paused } => (number, paused),
            };
            let number = PhoneNumber::parse(&raw, rule)?;
            if numbers.iter().any(|n| n.number == number) {
                return Err(PoolError::Duplicate(number.to_string()));
            }
            numbers.push(PoolNumber {
                locality: Locality::of(&number),
                number,
                paused,
            });
        }
        Ok(Self {
            numbers,
            local_presence: spec.local_presence,
            consistent: spec.consistent,
            caps: caps::Caps {
                per_hour: spec.max_attempts_per_hour,
                per_day: spec.max_attempts_per_day,
            },
        })
    }

    /// The numbers, in the order they were given.
    pub fn numbers(&self) -> &[PoolNumber] {
        &self.numbers
    }

    /// Whether `number` is in the pool.
    pub fn contains(&self, number: &PhoneNumber) -> bool {
        self.numbers.iter().any(|n| &n.number == number)
    }

    /// Pauses or resumes `number`; false when it is not in the pool.
    pub fn set_paused(&mut self, number: &PhoneNumber, paused: bool) -> bool {
        match self.numbers.iter_mut().find(|n| &n.number == number) {
            Some(n) => {
                n.paused = paused;
                true
            }
            None => false,
        }
    }
}

impl TryFrom<PoolSpec> for CallerIdPool {
    type Error = PoolError;

    /// A stored pool was parsed when it was written; read back under the lenient rule,
    /// which every stored number satisfies whatever rule admitted it.
    fn try_from(spec: PoolSpec) -> Result<Self, Self::Error> {
        Self::parse(spec, PhoneRule::Lenient)
    }
}

impl From<CallerIdPool> for PoolSpec {
    fn from(pool: CallerIdPool) -> Self {
        Self {
            numbers: pool
                .numbers
                .into_iter()
                .map(|n| {
                    if n.paused {
                        NumberSpec::Full {
                            number: n.number.to_string(),
                            paused: true,
                        }
                    } else {
                        NumberSpec::Plain(n.number.to_string())
                    }
                })
                .collect(),
            local_presence: pool.local_presence,
            consistent: pool.consistent,
            max_attempts_per_hour: pool.caps.per_hour,
            max_attempts_per_day: pool.caps.per_day,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(numbers: &[&str]) -> PoolSpec {
        PoolSpec {
            numbers: numbers
                .iter()
                .map(|n| NumberSpec::Plain((*n).to_owned()))
                .collect(),
            local_presence: true,
            consistent: false,
            max_attempts_per_hour: None,
            max_attempts_per_day: None,
        }
    }

    #[test]
    fn a_pool_is_parsed_once_into_e164_numbers_with_their_locality() {
        let pool = CallerIdPool::parse(
            spec(&["+1 (415) 555-2671", "+44 20 7946 0958"]),
            PhoneRule::Strict,
        )
        .expect("valid");
        let [sf, london] = pool.numbers() else {
            panic!("two numbers")
        };
        assert_eq!(sf.number.as_str(), "+14155552671");
        assert_eq!(sf.locality.area.as_deref(), Some("415"));
        assert_eq!(sf.locality.region.as_deref(), Some("US"));
        assert_eq!(london.locality.region.as_deref(), Some("GB"));
        assert_eq!(london.locality.country_code, Some(44));
        assert_eq!(london.locality.area, None);
    }

    #[test]
    fn a_bad_pool_is_refused_with_its_reason() {
        let rule = PhoneRule::Lenient;
        assert_eq!(
            CallerIdPool::parse(spec(&[]), rule),
            Err(PoolError::Size(0))
        );
        assert!(matches!(
            CallerIdPool::parse(spec(&["abc"]), rule),
            Err(PoolError::Number(_))
        ));
        assert_eq!(
            CallerIdPool::parse(spec(&["+15550000001", "+1 555 000 0001"]), rule),
            Err(PoolError::Duplicate("+15550000001".into()))
        );
        let mut zero = spec(&["+15550000001"]);
        zero.max_attempts_per_day = Some(0);
        assert_eq!(CallerIdPool::parse(zero, rule), Err(PoolError::ZeroCap));
        assert!(CallerIdPool::parse(spec(&["+1555000001"]), PhoneRule::Strict).is_err());
    }

    #[test]
    fn a_stored_pool_reads_back_as_written_with_its_paused_numbers() {
        let json = serde_json::json!({
            "numbers": ["+15550000001", {"number": "+15550000002", "paused": true}],
            "consistent": true,
            "max_attempts_per_hour": 10,
        });
        let mut pool: CallerIdPool = serde_json::from_value(json.clone()).expect("parses");
        assert!(pool.numbers()[1].paused);
        assert!(pool.local_presence, "on by default");
        assert_eq!(serde_json::to_value(&pool).expect("ser"), json);
        let first = pool.numbers()[0].number.clone();
        assert!(pool.set_paused(&first, true));
        assert!(!pool.set_paused(&"+15559999999".parse().expect("n"), true));
        let again: CallerIdPool =
            serde_json::from_value(serde_json::to_value(&pool).expect("ser")).expect("parses");
        assert!(again.numbers().iter().all(|n| n.paused));
        assert!(
            serde_json::from_value::<CallerIdPool>(serde_json::json!({"numbers": []})).is_err()
        );
    }
}
