//! Retries and callbacks, the campaign's calling window and the calling rules of the callee's jurisdiction.
//!
//! The dialer puts off any attempt whose callee may not be called now, so a retry due outside
//! the window would wait in any case. Moving its time to the next moment the campaign's window
//! and the applicable pack rules are open together makes the `RETRIES` entry and the `Retrying`
//! event (its `next_retry_at`, which operators and webhook receivers read) say when the attempt
//! will really be placed. The callee is found by the dialer's rule
//! ([`crate::contacts::callee`]), so both agree on the opening. Frequency limits are the
//! dialer's alone (it holds the per-number records): a retry over one is put off at dial time.

use async_nats::jetstream::kv;

use crate::{
    Campaign, PhoneNumber,
    rules::Rules,
    window::{Schedule, next_open_all},
};
use chrono::{DateTime, Utc};

/// When a retry the policy wants (or a callback the callee asked for) at `at` may be placed: `at` when nothing restricts it or all
/// is open then, else the next opening after `at` (still `at` when it never opens, as the
/// dialer then places the attempt rather than park it for ever).
pub async fn first_allowed(
    contacts: &kv::Store,
    rules: &Rules,
    campaign: Option<&Campaign>,
    phone: &PhoneNumber,
    at: DateTime<Utc>,
) -> Result<DateTime<Utc>, crate::contacts::ContactReadError> {
    let Some(campaign) = campaign else {
        return Ok(at);
    };
    let own = Schedule::of(campaign);
    if own.is_none() && rules.is_empty() {
        return Ok(at);
    }
    let callee =
        crate::contacts::callee(contacts, campaign.id, campaign.time_zone.as_deref(), phone)
            .await?;
    let jurisdiction = callee.jurisdiction.as_ref().map(|(j, _)| j);
    let applicable = rules.applicable(jurisdiction, campaign.purpose);
    let mut schedules: Vec<&Schedule> = applicable.schedules().collect();
    schedules.extend(own.as_ref());
    Ok(next_open_all(&schedules, &callee.zones, at).unwrap_or(at))
}
