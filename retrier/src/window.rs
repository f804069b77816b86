//! Retries and the campaign's calling window.
//!
//! The dialer puts off any attempt whose callee may not be called now, so a retry due outside
//! the window would wait in any case. Moving its time to the window's opening here makes the
//! `RETRIES` entry and the `Retrying` event (its `next_retry_at`, which operators and webhook
//! receivers read) say when the attempt will really be placed. The callee's zone is found as
//! the dialer finds it ([`ccm_core::window::callee_zone`]), so both agree on the opening.

use async_nats::jetstream::kv;
use ccm_core::{Campaign, CampaignId, PhoneNumber, window::Schedule};
use chrono::{DateTime, Utc};

/// The contact could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read contact {key}")]
pub struct ContactError {
    key: String,
    #[source]
    source: async_nats::Error,
}

/// When a retry the policy wants at `at` may be placed: `at` when the campaign has no window
/// or the window is open then, else the window's next opening after `at` (still `at` when the
/// window never opens, as the dialer then places the attempt rather than park it for ever).
pub async fn retry_time(
    contacts: &kv::Store,
    campaign: Option<&Campaign>,
    phone: &PhoneNumber,
    at: DateTime<Utc>,
) -> Result<DateTime<Utc>, ContactError> {
    let Some((campaign, schedule)) = campaign.and_then(|c| Schedule::of(c).map(|s| (c, s))) else {
        return Ok(at);
    };
    let contact_zone = contact_zone(contacts, campaign.id, phone).await?;
    let zone = ccm_core::window::callee_zone(
        contact_zone.as_deref(),
        phone,
        campaign.time_zone.as_deref(),
    );
    Ok(schedule.next_open(zone, at).unwrap_or(at))
}

/// The contact's own zone, if it was given one.
async fn contact_zone(
    contacts: &kv::Store,
    campaign: CampaignId,
    phone: &PhoneNumber,
) -> Result<Option<String>, ContactError> {
    let key = format!("{campaign}.{}", phone.digits());
    match contacts.get(key.clone()).await {
        Ok(value) => Ok(value
            .and_then(|v| serde_json::from_slice::<ccm_core::campaign::Contact>(&v).ok())
            .and_then(|c| c.time_zone)),
        Err(e) if e.kind() == kv::EntryErrorKind::InvalidKey => Ok(None),
        Err(e) => Err(ContactError {
            key,
            source: e.into(),
        }),
    }
}
