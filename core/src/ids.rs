//! Identifier newtypes.
//!
//! Ids are parsed once at the edge (HTTP path, JSON body, NATS subject) and carried as typed
//! values afterwards, so a campaign id can never be confused with a call id and every subject
//! token built from an id is known to be safe.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Why a string is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// A call id must be a UUID, as the old system's `call_id` was.
    #[error("call id {0:?} is not a UUID")]
    Call(String),
    /// A campaign id is a positive integer, as the old system's primary keys were.
    #[error("campaign id {0:?} is not a positive integer")]
    Campaign(String),
}

/// The id of one call (all of its attempts share it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CallId(Uuid);

impl CallId {
    /// A fresh id. Version 7 UUIDs sort by creation time, which keeps index inserts local.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    /// The underlying UUID, for database binds.
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl Default for CallId {
    fn default() -> Self {
        Self::new()
    }
}

impl From<Uuid> for CallId {
    fn from(value: Uuid) -> Self {
        Self(value)
    }
}

impl FromStr for CallId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s.trim())
            .map(Self)
            .map_err(|_| IdError::Call(s.to_owned()))
    }
}

impl fmt::Display for CallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// The id of a campaign: a positive integer, so the old API's integer ids keep working and the
/// id is a valid NATS subject token as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct CampaignId(u64);

impl CampaignId {
    /// Accepts any positive integer.
    pub fn new(value: u64) -> Result<Self, IdError> {
        if value == 0 {
            return Err(IdError::Campaign(value.to_string()));
        }
        Ok(Self(value))
    }

    /// The numeric value.
    pub fn get(&self) -> u64 {
        self.0
    }

    /// The value as Postgres stores it (`bigint`).
    pub fn as_i64(&self) -> i64 {
        // Ids are allocated sequentially from 1, so they never reach i64::MAX in practice;
        // saturate rather than wrap if a hand-made id ever does.
        i64::try_from(self.0).unwrap_or(i64::MAX)
    }
}

impl FromStr for CampaignId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let value: u64 = s
            .trim()
            .parse()
            .map_err(|_| IdError::Campaign(s.to_owned()))?;
        Self::new(value)
    }
}

impl fmt::Display for CampaignId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Old clients send campaign ids both as JSON numbers and as strings ("1"); accept both.
impl<'de> Deserialize<'de> for CampaignId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Number(n) => Self::new(n),
            Raw::Text(s) => s.parse(),
        }
        .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn campaign_ids_are_positive_integers() {
        assert_eq!("42".parse::<CampaignId>().map(|c| c.get()), Ok(42));
        assert!("0".parse::<CampaignId>().is_err());
        assert!("-1".parse::<CampaignId>().is_err());
        assert!("abc".parse::<CampaignId>().is_err());
        assert!("1.5".parse::<CampaignId>().is_err());
    }

    #[test]
    fn campaign_id_deserializes_from_number_or_string() {
        let a: CampaignId = serde_json::from_str("7").expect("number");
        let b: CampaignId = serde_json::from_str("\"7\"").expect("string");
        assert_eq!(a, b);
        assert!(serde_json::from_str::<CampaignId>("\"x\"").is_err());
        assert!(serde_json::from_str::<CampaignId>("0").is_err());
    }

    #[test]
    fn call_ids_round_trip_through_text() {
        let id = CallId::new();
        assert_eq!(id.to_string().parse::<CallId>(), Ok(id));
        assert!("not-a-uuid".parse::<CallId>().is_err());
    }
}
