//! The callee's calling rules at dial time: where the callee is, which rules of the packs
//! apply, when the campaign's window and those rules are open together, and what the
//! frequency limits allow. What was seen is kept in [`Seen`], carried in the admission facts
//! for the audit trail.
//!
//! The contact is read (for its zone and postal code) only when something needs the callee:
//! a campaign window, a rule pack or a frequency limit.

use std::sync::Arc;

use ccm_core::{
    DialRequest,
    rules::{
        FrequencyLimit, Rules,
        frequency::{Count, Limits},
    },
    window::{Jurisdiction, PlaceSource, Schedule, ZoneSource, next_open_all},
};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::{call::CallContext, window::Window};

/// The rules and limits every call is checked against (loaded at start).
#[derive(Debug, Clone, Default)]
pub struct Compliance {
    pub rules: Arc<Rules>,
    /// Cross-campaign limits of the configuration ([`ccm_core::Config::frequency_limits`]).
    pub limits: Vec<FrequencyLimit>,
}

impl Compliance {
    fn idle(&self) -> bool {
        self.rules.is_empty() && self.limits.is_empty()
    }
}

/// What the compliance checks of one attempt saw.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    /// The callee's zones (IANA names) and why they were chosen.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub zones: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone_source: Option<ZoneSource>,
    /// The callee's jurisdiction and how it was found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jurisdiction: Option<Jurisdiction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jurisdiction_source: Option<PlaceSource>,
    /// The ids of the pack rules applied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<String>,
    /// The frequency counts seen, per limit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub counts: Vec<Count>,
    /// The zones and limits as checked, for counting the attempt after the pacing wait.
    #[serde(skip)]
    pub(crate) checked_zones: Vec<Tz>,
    #[serde(skip)]
    pub(crate) limits: Limits,
}

/// The checks' verdict.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checked {
    /// When the campaign's window and the rules are next open together, if closed now.
    pub window_opens: Option<DateTime<Utc>>,
    /// When the frequency limits permit the next attempt, if not now.
    pub limited_until: Option<DateTime<Utc>>,
    pub seen: Seen,
}

/// Why the checks could not be made (the message is handed back and tried again).
#[derive(Debug, thiserror::Error)]
pub enum ComplianceError {
    #[error("cannot read the contact")]
    Contact(#[source] ccm_core::contacts::ContactReadError),
    #[error(transparent)]
    Frequency(crate::frequency::CapError),
}

/// Checks `request` at `now` under its campaign's `window` (none: a campaign document the
/// dialer cannot read), the packs and the limits, without counting the attempt.
pub async fn check(
    ctx: &CallContext,
    request: &DialRequest,
    window: Option<&Window>,
    now: DateTime<Utc>,
) -> Result<Checked, ComplianceError> {
    let schedule: Option<&Schedule> = window.and_then(|w| w.schedule.as_ref());
    if schedule.is_none() && ctx.compliance.idle() {
        return Ok(Checked::default());
    }
    let callee = ccm_core::contacts::callee(
        &ctx.contacts,
        request.campaign_id,
        window.and_then(|w| w.campaign_zone.as_deref()),
        &request.phone_number,
    )
    .await
    .map_err(ComplianceError::Contact)?;
    let purpose = window.map(|w| w.purpose).unwrap_or_default();
    let jurisdiction = callee.jurisdiction.as_ref().map(|(j, _)| j);
    let applicable = ctx.compliance.rules.applicable(jurisdiction, purpose);
    let mut schedules: Vec<&Schedule> = applicable.schedules().collect();
    schedules.extend(schedule);
    // A window that never opens is not waited for (the attempt is placed rather than parked
    // for ever), as before rule packs.
    let window_opens = next_open_all(&schedules, &callee.zones, now).filter(|at| *at > now);
    let limits = Limits {
        cap_24h: applicable.cap_24h().map(|(_, cap)| cap),
        per_days: ctx.compliance.limits.clone(),
    };
    let verdict = ctx
        .frequency
        .peek(request.dialled(), &limits, &callee.zones, now)
        .await
        .map_err(ComplianceError::Frequency)?;
    Ok(Checked {
        window_opens,
        limited_until: verdict.wait_until,
        seen: Seen {
            zones: callee.zones.iter().map(|z| z.name().to_owned()).collect(),
            zone_source: Some(callee.zone_source),
            jurisdiction: callee.jurisdiction.as_ref().map(|(j, _)| j.clone()),
            jurisdiction_source: callee.jurisdiction.as_ref().map(|(_, s)| *s),
            rules: applicable.ids(),
            counts: verdict.counts,
            checked_zones: callee.zones,
            limits,
        },
    })
}

/// The audit record's section of what the rules saw.
pub fn audited(seen: &Seen) -> ccm_core::attempt_audit::RulesSeen {
    ccm_core::attempt_audit::RulesSeen {
        jurisdiction: seen.jurisdiction.clone(),
        jurisdiction_source: seen.jurisdiction_source,
        rules: seen.rules.clone(),
        counts: seen.counts.clone(),
    }
}

/// The callee's zones, why, and the local time in each at `now`, when the callee was looked
/// up (a window, a pack or a limit needed them).
pub fn time_seen(seen: &Seen, now: DateTime<Utc>) -> Option<ccm_core::attempt_audit::TimeSeen> {
    let source = seen.zone_source?;
    Some(ccm_core::attempt_audit::TimeSeen {
        zones: seen.zones.clone(),
        source,
        local: seen
            .checked_zones
            .iter()
            .map(|z| {
                now.with_timezone(z)
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, false)
            })
            .collect(),
    })
}

/// Counts the attempt now that it goes (after the pacing wait): `None` when counted, else
/// when the limits permit the next one (another attempt to the number took the last unit).
pub async fn take(
    ctx: &CallContext,
    request: &DialRequest,
    seen: &mut Seen,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, crate::frequency::CapError> {
    let verdict = ctx
        .frequency
        .take(request.dialled(), &seen.limits, &seen.checked_zones, now)
        .await?;
    if !verdict.counts.is_empty() {
        seen.counts = verdict.counts;
    }
    Ok(verdict.wait_until)
}

#[cfg(test)]
mod tests {
    use ccm_core::{
        phone::{PhoneNumber, PhoneRule},
        window::{ContactPlace, callee},
    };

    use super::*;

    /// What the audit trail records: the zone and jurisdiction with their reasons, the rules
    /// and counts; the working copies stay out.
    #[test]
    fn what_was_seen_serialises_with_its_reasons() {
        let phone = PhoneNumber::parse("+12125550100", PhoneRule::Lenient).expect("phone");
        let place = ContactPlace {
            time_zone: None,
            postal_code: Some("33101"),
        };
        let c = callee(place, &phone, None);
        let seen = Seen {
            zones: c.zones.iter().map(|z| z.name().to_owned()).collect(),
            zone_source: Some(c.zone_source),
            jurisdiction: c.jurisdiction.as_ref().map(|(j, _)| j.clone()),
            jurisdiction_source: c.jurisdiction.as_ref().map(|(_, s)| *s),
            rules: vec!["us-tcpa-hours".into(), "us-fl-24h".into()],
            counts: vec![Count {
                over: "24h".into(),
                limit: 3,
                seen: 2,
            }],
            checked_zones: c.zones.clone(),
            limits: Limits::default(),
        };
        let json = serde_json::to_value(&seen).expect("json");
        assert_eq!(
            json,
            serde_json::json!({
                "zones": ["America/New_York"], "zone_source": "postal_code",
                "jurisdiction": {"country": "US", "subdivisions": ["US-FL"]},
                "jurisdiction_source": "postal_code",
                "rules": ["us-tcpa-hours", "us-fl-24h"],
                "counts": [{"over": "24h", "limit": 3, "seen": 2}],
            })
        );
        let back: Seen = serde_json::from_value(json).expect("reads back");
        assert_eq!(back.rules, seen.rules);
    }
}
