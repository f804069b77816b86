//! Retries and the campaign's calling window.
//!
//! The dialer puts off any attempt whose callee may not be called now, so a retry due outside
//! the window would wait in any case. Moving its time to the window's opening here makes the
//! `RETRIES` entry and the `Retrying` event (its `next_retry_at`, which operators and webhook
//! receivers read) say when the attempt will really be placed. The callee's zone is found by
//! the dialer's rule ([`ccm_core::contacts::callee_zones`]), so both agree on the opening.

use async_nats::jetstream::kv;
use ccm_core::{Campaign, PhoneNumber, window::Schedule};
use chrono::{DateTime, Utc};

/// When a retry the policy wants at `at` may be placed: `at` when the campaign has no window
/// or the window is open then, else the window's next opening after `at` (still `at` when the
/// window never opens, as the dialer then places the attempt rather than park it for ever).
pub async fn retry_time(
    contacts: &kv::Store,
    campaign: Option<&Campaign>,
    phone: &PhoneNumber,
    at: DateTime<Utc>,
) -> Result<DateTime<Utc>, ccm_core::contacts::ContactReadError> {
    let Some((campaign, schedule)) = campaign.and_then(|c| Schedule::of(c).map(|s| (c, s))) else {
        return Ok(at);
    };
    let zones = ccm_core::contacts::callee_zones(
        contacts,
        campaign.id,
        campaign.time_zone.as_deref(),
        phone,
    )
    .await?;
    Ok(schedule.next_open_in_all(&zones, at).unwrap_or(at))
}
