//! Calling rules by jurisdiction (issue 21, items 4 and 5): rule packs and frequency limits.
//!
//! A rule pack is YAML (`config/rules/*.yaml`, listed in `compliance.rule_files`): rules, each
//! for a country (`US`) or a state or province (`US-FL`, ISO 3166-2), optionally for one
//! campaign purpose, each with its `source` (the statute) and `as_of` date. A rule may set
//! permitted local hours per weekday, weekdays with no calls, dates with no calls (public
//! holidays) and a rolling 24-hour cap of attempts per number. Files load in order; a later
//! rule with the id of an earlier one replaces it (a deployment overrides a shipped rule with
//! its own file, or switches it off with `enabled: false`). [`Rules::load`] validates
//! everything at start, and an error names the file and line.
//!
//! Applying them ([`Rules::applicable`]): every enabled rule whose jurisdiction covers the
//! callee's ([`crate::window::callee`]) and whose purpose is the campaign's (or unset) applies;
//! their schedules are intersected with the campaign's calling window
//! ([`crate::window::next_open_all`]), and the smallest 24-hour cap counts. The cross-campaign
//! limits "K attempts in D local days" are [`FrequencyLimit`]s, decided with the caps by
//! [`frequency::next_allowed`]. This is not legal advice: the shipped packs are a starting point
//! an operator must check against the law that binds them.

pub mod frequency;
mod load;

use chrono::{NaiveDate, Weekday};
use serde::{Deserialize, Serialize};

pub use load::RulesError;

use crate::{
    campaign::Purpose,
    window::{DayHours, Jurisdiction, Schedule},
};

/// One rule as written in a pack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Unique across the loaded files; a later file's rule of the same id replaces it.
    pub id: String,
    /// `US`, or `US-FL` (ISO 3166-2).
    pub jurisdiction: String,
    /// Only for campaigns of this purpose; all campaigns when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<Purpose>,
    /// Local hours per weekday during which calls are permitted; all day when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hours: Option<Vec<DayHours>>,
    /// Weekdays with no calls (e.g. `[sun]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub no_call_days: Vec<Weekday>,
    /// Local dates with no calls (public holidays).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub holidays: Vec<NaiveDate>,
    /// Attempts per number in any rolling 24 hours, across campaigns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_per_24h: Option<u32>,
    /// The law or regulation the rule follows.
    pub source: String,
    /// When the rule was last checked against its source.
    pub as_of: NaiveDate,
    #[serde(default = "enabled", skip_serializing_if = "Clone::clone")]
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

fn enabled() -> bool {
    true
}

impl Rule {
    /// Whether the rule restricts when calls are placed (not only how many).
    fn has_schedule(&self) -> bool {
        self.hours.is_some() || !self.no_call_days.is_empty() || !self.holidays.is_empty()
    }
}

/// A limit of attempts per number across campaigns: at most `max_attempts` in the callee's
/// last `days` local days (today included), as Amazon Connect's `CommunicationLimit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrequencyLimit {
    pub max_attempts: u32,
    pub days: u32,
}

/// The longest `days` of a [`FrequencyLimit`]: the `attempts` bucket keeps a number's record
/// for 35 days after its last attempt (`nats/streams/KV_attempts.json`).
pub const MAX_LIMIT_DAYS: u32 = 31;

/// A rule in force, ready for arithmetic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    pub rule: Rule,
    /// `None` for a rule that only caps.
    pub schedule: Option<Schedule>,
}

/// The rules in force after every file was loaded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    rules: Vec<Loaded>,
}

/// The rules that apply to one call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applicable<'a> {
    pub rules: Vec<&'a Loaded>,
}

impl Applicable<'_> {
    /// The schedules to intersect with the campaign's window.
    pub fn schedules(&self) -> impl Iterator<Item = &Schedule> {
        self.rules.iter().filter_map(|r| r.schedule.as_ref())
    }

    /// The smallest rolling 24-hour cap, with the id of its rule.
    pub fn cap_24h(&self) -> Option<(&str, u32)> {
        self.rules
            .iter()
            .filter_map(|r| r.rule.max_per_24h.map(|cap| (r.rule.id.as_str(), cap)))
            .min_by_key(|(_, cap)| *cap)
    }

    pub fn ids(&self) -> Vec<String> {
        self.rules.iter().map(|r| r.rule.id.clone()).collect()
    }
}

impl Rules {
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Every rule in force, in load order.
    pub fn iter(&self) -> impl Iterator<Item = &Loaded> {
        self.rules.iter()
    }

    /// The rules for a callee in `jurisdiction` (none when it is unknown) called by a campaign
    /// of `purpose`.
    pub fn applicable(
        &self,
        jurisdiction: Option<&Jurisdiction>,
        purpose: Purpose,
    ) -> Applicable<'_> {
        let Some(jurisdiction) = jurisdiction else {
            return Applicable::default();
        };
        Applicable {
            rules: self
                .rules
                .iter()
                .filter(|r| jurisdiction.covers(&r.rule.jurisdiction))
                .filter(|r| r.rule.purpose.is_none_or(|p| p == purpose))
                .collect(),
        }
    }

    /// Rules from parsed rules (already validated), later ids replacing earlier ones.
    fn from_rules(rules: Vec<Rule>) -> Self {
        let mut kept: Vec<Rule> = Vec::new();
        for rule in rules {
            match kept.iter_mut().find(|k| k.id == rule.id) {
                Some(slot) => *slot = rule,
                None => kept.push(rule),
            }
        }
        let rules = kept
            .into_iter()
            .filter(|r| r.enabled)
            .map(|rule| Loaded {
                schedule: rule.has_schedule().then(|| {
                    Schedule::of_rule(rule.hours.as_deref(), &rule.no_call_days, &rule.holidays)
                }),
                rule,
            })
            .collect();
        Self { rules }
    }
}

#[cfg(test)]
mod tests;
