//! The `contacts` bucket: the one place its keys are built and its values read.
//!
//! A contact is one number of a campaign, kept under `<campaign>.<digits>` (written by ingest,
//! mirrored into `phone_numbers` by the projector). The dialer and the retrier read it for the
//! callee's time zone, and must find the same zone, or a retry scheduled at a window's opening
//! would be put off again at dial time: both go through [`callee_zones`].

use async_nats::jetstream::kv;
use chrono_tz::Tz;

use crate::{CampaignId, PhoneNumber, campaign::Contact};

/// The key of `phone` in `campaign`.
pub fn key(campaign: CampaignId, phone: &PhoneNumber) -> String {
    format!("{campaign}.{}", phone.digits())
}

/// The bucket did not answer.
#[derive(Debug, thiserror::Error)]
#[error("cannot read contact {key}")]
pub struct ContactReadError {
    key: String,
    #[source]
    source: async_nats::Error,
}

/// The contact of `phone` in `campaign`, if the campaign has it. A value that does not decode
/// (written by a later version, say) reads as no contact: the contact is an aid to dialling
/// (its zone, its fields), never a reason not to dial.
pub async fn get(
    contacts: &kv::Store,
    campaign: CampaignId,
    phone: &PhoneNumber,
) -> Result<Option<Contact>, ContactReadError> {
    let key = key(campaign, phone);
    match contacts.get(key.clone()).await {
        Ok(value) => Ok(value.and_then(|v| serde_json::from_slice::<Contact>(&v).ok())),
        // A key the bucket cannot hold cannot have been written either.
        Err(e) if e.kind() == kv::EntryErrorKind::InvalidKey => Ok(None),
        Err(e) => Err(ContactReadError {
            key,
            source: e.into(),
        }),
    }
}

/// The zones a call to `phone` in `campaign` is timed in (never empty): the contact's own
/// zone, else its postal code's, else the number's prefix's, else its region's, else the
/// campaign's (`campaign_zone`), else UTC ([`crate::window::callee`]).
pub async fn callee_zones(
    contacts: &kv::Store,
    campaign: CampaignId,
    campaign_zone: Option<&str>,
    phone: &PhoneNumber,
) -> Result<Vec<Tz>, ContactReadError> {
    Ok(callee(contacts, campaign, campaign_zone, phone)
        .await?
        .zones)
}

/// The callee of `phone` in `campaign`: zones and jurisdiction, and why
/// ([`crate::window::callee`] on the contact's zone and postal code).
pub async fn callee(
    contacts: &kv::Store,
    campaign: CampaignId,
    campaign_zone: Option<&str>,
    phone: &PhoneNumber,
) -> Result<crate::window::Callee, ContactReadError> {
    let contact = get(contacts, campaign, phone).await?;
    let place = crate::window::ContactPlace {
        time_zone: contact.as_ref().and_then(|c| c.time_zone.as_deref()),
        postal_code: contact.as_ref().and_then(|c| c.postal_code.as_deref()),
    };
    Ok(crate::window::callee(place, phone, campaign_zone))
}

/// [`callee_zones`] and which source gave them (for the attempt's audit record).
pub async fn callee_zones_why(
    contacts: &kv::Store,
    campaign: CampaignId,
    campaign_zone: Option<&str>,
    phone: &PhoneNumber,
) -> Result<(Vec<Tz>, crate::window::ZoneSource), ContactReadError> {
    let callee = callee(contacts, campaign, campaign_zone, phone).await?;
    Ok((callee.zones, callee.zone_source))
}
