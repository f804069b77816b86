//! Consent to be called, as every service sees it: the types of consent, the `consents` KV
//! bucket the dialer reads right before placing, and the one check both ingest and the dialer
//! make.
//!
//! The records themselves (who gave what consent, when, with which evidence, and who revoked
//! it, when and how) are kept in PostgreSQL by ingest, which owns them (`ingest/migrations/`,
//! `ingest/src/consent_store.rs`). The bucket holds, per number and type, only what a check
//! needs: the ids of the consents of that type that are valid now, and the last revocation.
//! Ingest writes it after every grant and before answering a revocation, so a revocation made
//! through any replica suppresses the number on every dialer at its next check (a point
//! lookup, like the do-not-call lists of [`crate::dnc`]).

use async_nats::jetstream::kv;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::phone::PhoneNumber;

/// What a consent allows, as the rules that require consent name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsentType {
    /// Prior express written consent (TCPA, 47 CFR 64.1200(f)(9)): telemarketing with an
    /// autodialer or a prerecorded voice.
    PriorExpressWritten,
    /// Prior express consent (the number was given for the purpose): informational calls
    /// with an autodialer.
    PriorExpress,
    /// Consent to informational calls (reminders, notifications, surveys).
    Informational,
    /// Consent to be called by an artificial or AI-generated voice (FCC declaratory ruling
    /// of February 2024: AI voices are "artificial" under the TCPA).
    AiVoice,
    /// Consent to the call being recorded.
    Recording,
}

impl ConsentType {
    /// Every type, in wire order.
    pub const ALL: [ConsentType; 5] = [
        Self::PriorExpressWritten,
        Self::PriorExpress,
        Self::Informational,
        Self::AiVoice,
        Self::Recording,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PriorExpressWritten => "prior_express_written",
            Self::PriorExpress => "prior_express",
            Self::Informational => "informational",
            Self::AiVoice => "ai_voice",
            Self::Recording => "recording",
        }
    }

    /// The type named `name`, if any.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == name)
    }
}

/// The bucket key of `phone`'s consents of type `kind`: `<digits>.<type>`.
pub fn key(phone: &PhoneNumber, kind: ConsentType) -> String {
    format!("{}.{}", phone.digits(), kind.as_str())
}

/// What the bucket holds for one number and type.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentState {
    /// The consents of this type valid now (granted, not revoked), oldest first.
    #[serde(default)]
    pub valid: Vec<Uuid>,
    /// The last revocation of a consent of this type, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<Revocation>,
}

/// A revocation as the check reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    pub consent_id: Uuid,
    pub at: DateTime<Utc>,
    /// How: `api`, `opt_out` (asked during a call), `erasure`.
    pub how: String,
}

/// Why a call needing consent may not be placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsentRefusal {
    /// No valid consent of the type was ever recorded for the number.
    ConsentRequired,
    /// The number had consent of the type and it was revoked.
    ConsentRevoked,
}

impl ConsentRefusal {
    /// The reason a refused call ends with, and the API's error code.
    pub fn code(self) -> &'static str {
        match self {
            Self::ConsentRequired => "consent_required",
            Self::ConsentRevoked => "consent_revoked",
        }
    }
}

/// What a consent check saw: kept with the decision it fed (the dialer's admission facts, for
/// the audit trail), so it says which consent allowed a call, or why none did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentSeen {
    /// The type the campaign requires.
    pub required: ConsentType,
    /// The valid consent relied on (the oldest), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consent_id: Option<Uuid>,
    /// Why there is none, if there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<ConsentRefusal>,
    /// The revocation behind [`ConsentRefusal::ConsentRevoked`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<Revocation>,
}

impl ConsentSeen {
    /// The rule: a valid consent allows the call; otherwise it is refused, as revoked when the
    /// last consent of the type was revoked, as missing when there never was one.
    pub fn of(required: ConsentType, state: Option<&ConsentState>) -> Self {
        let valid = state.and_then(|s| s.valid.first().copied());
        let revoked = state.and_then(|s| s.revoked.clone());
        let refusal = match (valid, &revoked) {
            (Some(_), _) => None,
            (None, Some(_)) => Some(ConsentRefusal::ConsentRevoked),
            (None, None) => Some(ConsentRefusal::ConsentRequired),
        };
        Self {
            required,
            consent_id: valid,
            revoked: if valid.is_none() { revoked } else { None },
            refusal,
        }
    }
}

/// Why the bucket could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConsentError {
    #[error("cannot read the consents bucket")]
    Read(#[source] kv::EntryError),
    #[error("the consents bucket holds a value that does not decode at {key}")]
    Decode {
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

/// Reads the state of `phone`'s consents of type `kind` and decides.
pub async fn check(
    bucket: &kv::Store,
    phone: &PhoneNumber,
    kind: ConsentType,
) -> Result<ConsentSeen, ConsentError> {
    let state = read(bucket, phone, kind).await?.map(|(state, _)| state);
    Ok(ConsentSeen::of(kind, state.as_ref()))
}

/// The state of `phone`'s consents of type `kind` and its revision (for a compare-and-set
/// write); `None`: nothing was ever recorded.
pub async fn read(
    bucket: &kv::Store,
    phone: &PhoneNumber,
    kind: ConsentType,
) -> Result<Option<(ConsentState, u64)>, ConsentError> {
    let key = key(phone, kind);
    let Some(entry) = bucket
        .entry(key.as_str())
        .await
        .map_err(ConsentError::Read)?
    else {
        return Ok(None);
    };
    if entry.operation != kv::Operation::Put {
        return Ok(None);
    }
    let state = serde_json::from_slice(&entry.value)
        .map_err(|source| ConsentError::Decode { key, source })?;
    Ok(Some((state, entry.revision)))
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng, rngs::StdRng};

    use super::*;
    use crate::phone::PhoneRule;

    #[test]
    fn names_round_trip_and_keys_name_number_and_type() {
        for t in ConsentType::ALL {
            assert_eq!(ConsentType::parse(t.as_str()), Some(t));
            let json = serde_json::to_string(&t).expect("json");
            assert_eq!(json, format!("\"{}\"", t.as_str()));
        }
        let phone = PhoneNumber::parse("+1 555 000 1234", PhoneRule::Lenient).expect("phone");
        assert_eq!(key(&phone, ConsentType::AiVoice), "15550001234.ai_voice");
    }

    /// Generated: a call is allowed exactly when a valid consent exists, and the refusal says
    /// revoked only when a revocation is on record.
    #[test]
    fn allowed_exactly_with_a_valid_consent() {
        let seed: u64 = rand::random();
        println!("seed {seed}");
        let mut rng = StdRng::seed_from_u64(seed);
        for _ in 0..2_000 {
            let state = rng.random_bool(0.8).then(|| ConsentState {
                valid: (0..rng.random_range(0..3))
                    .map(|_| Uuid::now_v7())
                    .collect(),
                revoked: rng.random_bool(0.5).then(|| Revocation {
                    consent_id: Uuid::now_v7(),
                    at: Utc::now(),
                    how: "api".into(),
                }),
            });
            let seen = ConsentSeen::of(ConsentType::PriorExpressWritten, state.as_ref());
            let has_valid = state.as_ref().is_some_and(|s| !s.valid.is_empty());
            assert_eq!(seen.refusal.is_none(), has_valid, "seed {seed}: {state:?}");
            assert_eq!(seen.consent_id.is_some(), has_valid, "seed {seed}");
            if !has_valid {
                let revoked = state.as_ref().is_some_and(|s| s.revoked.is_some());
                let want = if revoked {
                    ConsentRefusal::ConsentRevoked
                } else {
                    ConsentRefusal::ConsentRequired
                };
                assert_eq!(seen.refusal, Some(want), "seed {seed}: {state:?}");
            }
        }
    }
}
