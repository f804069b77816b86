//! Where the callee is: their zones and their jurisdiction, and why each was chosen.
//!
//! The one place the dialer and the retrier learn a callee's local time and laws from: both
//! must find the same, or a retry scheduled at an opening would be put off again at dial time.

use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use super::{Jurisdiction, number_jurisdiction, number_zones, postal_place, region_zone};
use crate::phone::PhoneNumber;

/// Why the callee's zones are what they are, first match wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ZoneSource {
    /// The contact's own `time_zone`.
    Contact,
    /// The contact's postal code (a US ZIP code, a Canadian province with one zone).
    PostalCode,
    /// The number's longest known prefix (a `+1` area code, a country with one zone).
    AreaCode,
    /// The number's region, when it has a single zone.
    Region,
    /// The campaign's `time_zone`: nothing about the callee tells.
    Campaign,
    /// Nothing at all tells.
    Utc,
}

/// Why the callee's jurisdiction is what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlaceSource {
    PostalCode,
    AreaCode,
    /// The number's country only.
    Region,
}

/// The callee as calling rules see them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Callee {
    /// Never empty; several when the callee may be in any of them (the window must be open
    /// in all).
    pub zones: Vec<Tz>,
    pub zone_source: ZoneSource,
    pub jurisdiction: Option<(Jurisdiction, PlaceSource)>,
}

/// What the callee's contact says about where they are.
#[derive(Debug, Clone, Copy, Default)]
pub struct ContactPlace<'a> {
    /// The contact's IANA zone; an invalid name is ignored.
    pub time_zone: Option<&'a str>,
    pub postal_code: Option<&'a str>,
}

/// The callee of `phone`: zones from the contact's zone, else its postal code, else the
/// number's prefix, else its region (one zone), else the campaign's zone, else UTC; the
/// jurisdiction from the postal code, else the area code, else the number's country.
pub fn callee(contact: ContactPlace<'_>, phone: &PhoneNumber, campaign: Option<&str>) -> Callee {
    let postal = contact.postal_code.and_then(postal_place);
    let jurisdiction = match &postal {
        Some(place) => Some((place.jurisdiction.clone(), PlaceSource::PostalCode)),
        None => number_jurisdiction(phone).map(|j| {
            let source = if j.subdivisions.is_empty() {
                PlaceSource::Region
            } else {
                PlaceSource::AreaCode
            };
            (j, source)
        }),
    };
    let (zones, zone_source) = if let Some(zone) = contact.time_zone.and_then(|z| z.parse().ok()) {
        (vec![zone], ZoneSource::Contact)
    } else if let Some(zone) = postal.and_then(|p| p.zone) {
        (vec![zone], ZoneSource::PostalCode)
    } else if let Some(zones) = number_zones(phone) {
        (zones, ZoneSource::AreaCode)
    } else if let Some(zone) = phone.region().as_deref().and_then(region_zone) {
        (vec![zone], ZoneSource::Region)
    } else if let Some(zone) = campaign.and_then(|z| z.parse().ok()) {
        (vec![zone], ZoneSource::Campaign)
    } else {
        (vec![Tz::UTC], ZoneSource::Utc)
    };
    Callee {
        zones,
        zone_source,
        jurisdiction,
    }
}
