//! The callee's jurisdiction: country and, for `+1` numbers, US state or Canadian province.
//!
//! The area code's states and provinces come from `core/data/nanp_regions.tsv`
//! (libphonenumber's geocoding data, with its source and date; made by
//! `scripts/compliance_data.py`). An area code shared by provinces (`+1 902`: Nova Scotia and
//! Prince Edward Island) gives both, and the rules of both apply, the most restrictive reading.

use std::{collections::HashMap, sync::OnceLock};

use serde::{Deserialize, Serialize};

use crate::phone::PhoneNumber;

const NANP_REGIONS: &str = include_str!("../../data/nanp_regions.tsv");

/// A country (ISO 3166-1 alpha-2) and the subdivisions (ISO 3166-2, `US-FL`) the callee may
/// be in; none when only the country is known.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jurisdiction {
    pub country: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subdivisions: Vec<String>,
}

impl Jurisdiction {
    pub fn new(country: &str, subdivisions: impl IntoIterator<Item = String>) -> Self {
        Self {
            country: country.to_owned(),
            subdivisions: subdivisions.into_iter().collect(),
        }
    }

    /// Whether a rule written for `code` (`US` or `US-FL`) applies here.
    pub fn covers(&self, code: &str) -> bool {
        code == self.country || self.subdivisions.iter().any(|s| s == code)
    }
}

fn area_codes() -> &'static HashMap<&'static str, Vec<String>> {
    static MAP: OnceLock<HashMap<&'static str, Vec<String>>> = OnceLock::new();
    MAP.get_or_init(|| {
        NANP_REGIONS
            .lines()
            .filter(|line| !line.starts_with('#') && !line.is_empty())
            .filter_map(|line| line.split_once('\t'))
            .map(|(prefix, codes)| (prefix, codes.split(',').map(str::to_owned).collect()))
            .collect()
    })
}

/// The jurisdiction of `phone` from its number alone: a known `+1` area code's state or
/// province, else the number's region (country only), else `None`.
pub fn number_jurisdiction(phone: &PhoneNumber) -> Option<Jurisdiction> {
    let digits = phone.digits();
    if let Some(codes) = digits.get(..4).and_then(|p| area_codes().get(p)) {
        let country = codes.first()?.split('-').next()?;
        return Some(Jurisdiction::new(country, codes.iter().cloned()));
    }
    phone.region().map(|region| Jurisdiction::new(&region, []))
}
