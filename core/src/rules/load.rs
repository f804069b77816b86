//! Loading and validating rule files: every error names the file and the line.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{Rule, Rules};

/// Why the rule files cannot be used; the service refuses to start.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("cannot read rule file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Not YAML, a field missing, unknown or of the wrong type.
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// Well-formed but meaningless (hours that end before they start, no source, …).
    #[error("{path}:{line}: rule {id}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        id: String,
        message: String,
    },
}

impl RulesError {
    /// The line the error is on (1-based), when it has one.
    pub fn line(&self) -> Option<usize> {
        match self {
            Self::Read { .. } => None,
            Self::Parse { line, .. } | Self::Invalid { line, .. } => Some(*line),
        }
    }
}

/// A rule file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PackFile {
    /// What the pack is and is not (free text; the shipped packs say they are not legal advice).
    #[serde(default)]
    #[allow(dead_code)]
    about: Option<String>,
    rules: Vec<Rule>,
}

impl Rules {
    /// Loads `files` in order (a later rule replaces an earlier one of the same id).
    pub fn load(files: &[PathBuf]) -> Result<Self, RulesError> {
        let mut rules = Vec::new();
        for path in files {
            let text = std::fs::read_to_string(path).map_err(|source| RulesError::Read {
                path: path.clone(),
                source,
            })?;
            rules.extend(parse(path, &text)?);
        }
        Ok(Self::from_rules(rules))
    }

    /// Rules from texts, as if each were a file named by its path (for tests and tools).
    pub fn from_texts(files: &[(&Path, &str)]) -> Result<Self, RulesError> {
        let mut rules = Vec::new();
        for (path, text) in files {
            rules.extend(parse(path, text)?);
        }
        Ok(Self::from_rules(rules))
    }
}

/// Parses and validates one file.
fn parse(path: &Path, text: &str) -> Result<Vec<Rule>, RulesError> {
    let pack: PackFile = serde_yaml_ng::from_str(text).map_err(|e| {
        let (line, column) = e.location().map_or((1, 1), |l| (l.line(), l.column()));
        RulesError::Parse {
            path: path.to_owned(),
            line,
            column,
            message: e.to_string(),
        }
    })?;
    let mut seen = std::collections::HashSet::new();
    for (index, rule) in pack.rules.iter().enumerate() {
        let invalid = |message: String| RulesError::Invalid {
            path: path.to_owned(),
            line: line_of(text, &rule.id, index),
            id: rule.id.clone(),
            message,
        };
        if let Err(message) = check(rule) {
            return Err(invalid(message));
        }
        if !seen.insert(rule.id.as_str()) {
            return Err(invalid("the id is used twice in this file".into()));
        }
    }
    Ok(pack.rules)
}

/// What makes a rule meaningless.
fn check(rule: &Rule) -> Result<(), String> {
    let id_ok = !rule.id.is_empty()
        && rule
            .id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !id_ok {
        return Err("id must be letters, digits, '-', '_' or '.'".into());
    }
    if !jurisdiction_ok(&rule.jurisdiction) {
        return Err(format!(
            "jurisdiction {:?} is neither a country (US) nor a subdivision (US-FL)",
            rule.jurisdiction
        ));
    }
    if rule.source.trim().is_empty() {
        return Err("source must name the law the rule follows".into());
    }
    if let Some(hours) = &rule.hours {
        crate::window::validate(hours)
            .map_err(|e| e.to_string().replace("calling_hours", "hours"))?;
    }
    if rule.max_per_24h == Some(0) {
        return Err("max_per_24h must be at least 1".into());
    }
    if !rule.has_schedule() && rule.max_per_24h.is_none() {
        return Err("the rule sets nothing: hours, no_call_days, holidays or max_per_24h".into());
    }
    if rule.has_schedule() {
        let schedule = crate::window::Schedule::of_rule(
            rule.hours.as_deref(),
            &rule.no_call_days,
            &rule.holidays,
        );
        if schedule
            .next_open(chrono_tz::Tz::UTC, chrono::Utc::now())
            .is_none()
        {
            return Err("the rule allows no time at all".into());
        }
    }
    Ok(())
}

fn jurisdiction_ok(code: &str) -> bool {
    let upper = |s: &str, len: std::ops::RangeInclusive<usize>, digits: bool| {
        len.contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_uppercase() || (digits && b.is_ascii_digit()))
    };
    match code.split_once('-') {
        None => upper(code, 2..=2, false),
        Some((country, sub)) => upper(country, 2..=2, false) && upper(sub, 1..=3, true),
    }
}

/// The line (1-based) of the rule with `id`: its `id:` line, else the `index`-th `- ` item's
/// `id:` line, else 1.
fn line_of(text: &str, id: &str, index: usize) -> usize {
    let ids: Vec<(usize, String)> = text
        .lines()
        .enumerate()
        .filter_map(|(n, line)| {
            let value = line
                .trim_start()
                .trim_start_matches('-')
                .trim_start()
                .strip_prefix("id:")?;
            Some((n + 1, value.trim().trim_matches(['"', '\'']).to_owned()))
        })
        .collect();
    ids.iter()
        .find(|(_, value)| value == id)
        .or_else(|| ids.get(index))
        .map_or(1, |(n, _)| *n)
}
