//! Several numbers per contact (VICIdial's Auto-Alt-Dial, Genesys' `maxAttemptsPerNumber` /
//! `maxAttemptsPerContact`): the one owner of a contact's ordered list of numbers, of a
//! campaign's advance policy and of the decision which number a call dials next ([`plan`]).
//!
//! A contact keeps its key and identity, `<campaign>.<digits of its first number>`
//! ([`crate::contacts::key`]): a contact with one number is exactly what it was before. Its
//! further numbers are tried in order when an attempt ends with an outcome the campaign's
//! [`AlternateNumbers::advance_on`] names; attempts are counted per number and per contact
//! within the callee's local day, and the counts reset at the callee's local midnight.

use serde::{Deserialize, Serialize};

use crate::{OutcomeStatus, PhoneNumber, events::OutcomeSource};

pub mod plan;
#[cfg(test)]
mod tests;

/// Most numbers one contact may hold (Genesys allows ten phone columns per contact list).
pub const MAX_NUMBERS: usize = 10;
/// Longest label, in characters.
pub const MAX_LABEL_CHARS: usize = 24;
/// The label of a number given without one (a contact's only number, as before).
pub const DEFAULT_LABEL: &str = "primary";

/// One number of a contact and what it is (`mobile`, `home`, `work`, …).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactNumber {
    pub number: PhoneNumber,
    pub label: String,
}

/// The number an attempt dials when it is not the contact's first: its place in the
/// contact's list (0 is the first), the number and its label.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alternate {
    pub index: u32,
    pub number: PhoneNumber,
    pub label: String,
}

/// Why a contact's list of numbers is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NumbersError {
    #[error("numbers must hold 1 to {MAX_NUMBERS} items")]
    Count,
    #[error("numbers[{index}]: {number} is listed twice (first at numbers[{first}])")]
    Duplicate {
        index: usize,
        first: usize,
        number: String,
    },
    #[error(
        "numbers[{index}]: label {label:?} must be 1 to {MAX_LABEL_CHARS} characters of a-z, 0-9, '_' or '-'"
    )]
    Label { index: usize, label: String },
    #[error("phone_number {phone} must be the first of numbers ({first})")]
    NotFirst { phone: String, first: String },
}

/// Checks a label: short, lower-case, machine-friendly (it is a metric and CSV value).
pub fn check_label(label: &str) -> bool {
    !label.is_empty()
        && label.chars().count() <= MAX_LABEL_CHARS
        && label
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// Checks an ordered list of a contact's numbers: 1 to [`MAX_NUMBERS`], no number twice (by
/// its digits), every label valid. The first is the contact's own number (its key).
pub fn check(numbers: &[ContactNumber]) -> Result<(), NumbersError> {
    if numbers.is_empty() || numbers.len() > MAX_NUMBERS {
        return Err(NumbersError::Count);
    }
    for (index, n) in numbers.iter().enumerate() {
        if !check_label(&n.label) {
            return Err(NumbersError::Label {
                index,
                label: n.label.clone(),
            });
        }
        if let Some(first) = numbers[..index]
            .iter()
            .position(|m| m.number.digits() == n.number.digits())
        {
            return Err(NumbersError::Duplicate {
                index,
                first,
                number: n.number.to_string(),
            });
        }
    }
    Ok(())
}

/// The numbers of a contact whose own number is `phone` and whose stored further list is
/// `numbers` (empty for a contact written before, or with one number): never empty, `phone`
/// first.
pub fn of_contact(phone: &PhoneNumber, numbers: &[ContactNumber]) -> Vec<ContactNumber> {
    if numbers.first().is_some_and(|n| n.number == *phone) {
        numbers.to_vec()
    } else {
        vec![ContactNumber {
            number: phone.clone(),
            label: DEFAULT_LABEL.to_owned(),
        }]
    }
}

/// An outcome that moves a call on to the contact's next number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AdvanceOn {
    /// Nobody answered.
    Rnr,
    /// The line dropped.
    Disconnected,
    /// Any FAILED outcome.
    Failed,
    /// A FAILED outcome where the carrier refused the number itself (Twilio 21217 and other
    /// 4xx answers to the placement): the number cannot be reached.
    Unreachable,
}

impl AdvanceOn {
    /// Whether an attempt that ended `status` (from `source`) matches.
    pub fn matches(self, status: OutcomeStatus, source: OutcomeSource) -> bool {
        match self {
            Self::Rnr => status == OutcomeStatus::Rnr,
            Self::Disconnected => status == OutcomeStatus::Disconnected,
            Self::Failed => status == OutcomeStatus::Failed,
            Self::Unreachable => {
                status == OutcomeStatus::Failed && source == OutcomeSource::Rejected
            }
        }
    }
}

/// When the daily counts start again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitReset {
    /// At the callee's local midnight: a call whose numbers are all at their limit today
    /// waits for tomorrow (Genesys' daily reset).
    #[default]
    Daily,
    /// Never: a call whose numbers are all at their limit ends FAILED.
    Never,
}

/// A campaign's policy for contacts with several numbers. Absent on a campaign, its calls
/// dial only the contact's first number, as before.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlternateNumbers {
    /// The outcomes after which the next attempt dials the contact's next number (other
    /// outcomes retry the same number while it has attempts left).
    pub advance_on: Vec<AdvanceOn>,
    /// Attempts per number per local day (per call); none: no limit of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts_per_number: Option<u32>,
    /// Attempts per contact (all its numbers) per local day; none: no limit of its own (the
    /// campaign's `max_attempts` still bounds the call).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts_per_contact: Option<u32>,
    /// When the counts reset: `daily` (default) or `never`.
    #[serde(default)]
    pub reset: LimitReset,
}

/// Why an advance policy is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("alternate_numbers.advance_on must name at least one outcome")]
    NoOutcome,
    #[error("alternate_numbers.{0} must be at least 1")]
    ZeroLimit(&'static str),
}

impl AlternateNumbers {
    /// Checks the policy (a limit of 0 would never dial).
    pub fn check(&self) -> Result<(), PolicyError> {
        if self.advance_on.is_empty() {
            return Err(PolicyError::NoOutcome);
        }
        if self.max_attempts_per_number == Some(0) {
            return Err(PolicyError::ZeroLimit("max_attempts_per_number"));
        }
        if self.max_attempts_per_contact == Some(0) {
            return Err(PolicyError::ZeroLimit("max_attempts_per_contact"));
        }
        Ok(())
    }

    /// Whether an attempt that ended `status` from `source` moves the call on.
    pub fn advances(&self, status: OutcomeStatus, source: OutcomeSource) -> bool {
        self.advance_on.iter().any(|a| a.matches(status, source))
    }
}
