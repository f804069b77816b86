//! E.164 phone numbers.
//!
//! Two rules exist. [`PhoneRule::Lenient`] is the rule of the system ccm replaces: strip
//! `+ - space ( )`, then require 7 to 15 digits. Its clients send numbers such as `+1555000001`
//! that no numbering plan would accept, so it stays the default. [`PhoneRule::Strict`] checks
//! the number against the numbering plans of libphonenumber (through the `phonenumber` port)
//! and also yields the region, which calling windows use to pick a time zone.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// Which validation a deployment applies (`phone_validation` in the configuration).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PhoneRule {
    /// The old system's rule: 7 to 15 digits after stripping punctuation.
    #[default]
    Lenient,
    /// Full validation against libphonenumber's metadata.
    Strict,
}

/// Why a string is not a phone number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhoneError {
    /// Something other than digits and `+ - space ( )` was present.
    #[error("phone number {0:?} contains characters other than digits and + - ( ) or spaces")]
    InvalidCharacters(String),
    /// Too few or too many digits.
    #[error("phone number {input:?} has {digits} digits; 7 to 15 are required")]
    Length { input: String, digits: usize },
    /// libphonenumber could not parse it at all.
    #[error("phone number {0:?} cannot be parsed as an international number")]
    Unparsable(String),
    /// libphonenumber parsed it, but no numbering plan allows it.
    #[error("phone number {0:?} is not a valid number in any numbering plan")]
    NotInPlan(String),
}

/// A phone number in E.164 form: `+` followed by 7 to 15 digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct PhoneNumber(String);

impl PhoneNumber {
    /// Parses `input` under `rule`.
    pub fn parse(input: &str, rule: PhoneRule) -> Result<Self, PhoneError> {
        let digits = lenient_digits(input)?;
        match rule {
            PhoneRule::Lenient => Ok(Self(format!("+{digits}"))),
            PhoneRule::Strict => {
                let parsed = phonenumber::parse(None, format!("+{digits}"))
                    .map_err(|_| PhoneError::Unparsable(input.to_owned()))?;
                if !phonenumber::is_valid(&parsed) {
                    return Err(PhoneError::NotInPlan(input.to_owned()));
                }
                let e164 = parsed.format().mode(phonenumber::Mode::E164).to_string();
                Ok(Self(e164))
            }
        }
    }

    /// The number as `+<digits>`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The digits without the `+`: the key of the `active_calls` bucket.
    pub fn digits(&self) -> &str {
        &self.0[1..]
    }

    /// The number's national forms, when libphonenumber can parse it: the national
    /// significant number (`4155552671`) and the national format (`(415) 555-2671`). Finding
    /// everything held about a person searches these as well as the E.164 form.
    pub fn national_forms(&self) -> Vec<String> {
        let Ok(parsed) = phonenumber::parse(None, &self.0) else {
            return Vec::new();
        };
        let mut forms = vec![
            parsed.national().value().to_string(),
            parsed
                .format()
                .mode(phonenumber::Mode::National)
                .to_string(),
        ];
        forms.retain(|f| !f.is_empty() && f.as_str() != self.digits());
        forms.dedup();
        forms
    }

    /// The ISO 3166 region of the number, when libphonenumber knows it.
    pub fn region(&self) -> Option<String> {
        let parsed = phonenumber::parse(None, &self.0).ok()?;
        parsed.country().id().map(|id| format!("{id:?}"))
    }
}

/// Applies the old system's rule and returns the bare digits.
fn lenient_digits(input: &str) -> Result<String, PhoneError> {
    let mut digits = String::with_capacity(input.len());
    for c in input.chars() {
        match c {
            '0'..='9' => digits.push(c),
            '+' | '-' | ' ' | '(' | ')' => {}
            _ => return Err(PhoneError::InvalidCharacters(input.to_owned())),
        }
    }
    if !(7..=15).contains(&digits.len()) {
        return Err(PhoneError::Length {
            input: input.to_owned(),
            digits: digits.len(),
        });
    }
    Ok(digits)
}

impl FromStr for PhoneNumber {
    type Err = PhoneError;

    /// Parses with the default (lenient) rule; data already stored is always in that form.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s, PhoneRule::Lenient)
    }
}

impl<'de> Deserialize<'de> for PhoneNumber {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        raw.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lenient_rule_matches_the_old_system() {
        let n = PhoneNumber::parse("+1 (555) 000-001", PhoneRule::Lenient).expect("valid");
        assert_eq!(n.as_str(), "+1555000001");
        assert_eq!(n.digits(), "1555000001");
        assert_eq!(
            PhoneNumber::parse("1234567", PhoneRule::Lenient)
                .expect("7")
                .as_str(),
            "+1234567"
        );
    }

    #[test]
    fn national_forms_are_the_significant_number_and_the_national_format() {
        let n = PhoneNumber::parse("+1 415 555 2671", PhoneRule::Lenient).expect("valid");
        assert_eq!(n.national_forms(), ["4155552671", "(415) 555-2671"]);
    }

    #[test]
    fn lenient_rule_rejects_with_a_reason() {
        assert!(matches!(
            PhoneNumber::parse("abc", PhoneRule::Lenient),
            Err(PhoneError::InvalidCharacters(_))
        ));
        assert!(matches!(
            PhoneNumber::parse("123", PhoneRule::Lenient),
            Err(PhoneError::Length { digits: 3, .. })
        ));
        assert!(matches!(
            PhoneNumber::parse("+1234567890123456", PhoneRule::Lenient),
            Err(PhoneError::Length { digits: 16, .. })
        ));
        let message = PhoneNumber::parse("123", PhoneRule::Lenient)
            .unwrap_err()
            .to_string();
        assert!(message.contains("7 to 15"), "{message}");
    }

    #[test]
    fn strict_rule_uses_numbering_plans_and_knows_the_region() {
        let n = PhoneNumber::parse("+44 20 7946 0958", PhoneRule::Strict).expect("UK number");
        assert_eq!(n.as_str(), "+442079460958");
        assert_eq!(n.region().as_deref(), Some("GB"));
        // Accepted by the old rule, but no numbering plan has it.
        assert!(PhoneNumber::parse("+1555000001", PhoneRule::Lenient).is_ok());
        assert!(PhoneNumber::parse("+1555000001", PhoneRule::Strict).is_err());
        assert!(PhoneNumber::parse("abc", PhoneRule::Strict).is_err());
    }
}
