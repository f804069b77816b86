//! A campaign's phone numbers ("contacts"), kept in the `contacts` KV bucket.
//!
//! The read model is written only by the projector, so it lags behind the API by a batch.
//! The old API let a client add numbers and immediately bulk-call "the campaign's numbers",
//! which needs read-your-writes: the bucket gives that. Each number is one key
//! `<campaign>.<digits>`, created if absent, so adding a number twice is harmless and
//! concurrent adds never lose one. A campaign's numbers are listed from the bucket stream's
//! subjects (one subject per key) in a single request, without reading any value.

use async_nats::jetstream::kv;
use ccm_core::{CampaignId, CustomFields, PhoneNumber, campaign::Contact, topology::names};
use chrono::Utc;
use futures::{StreamExt, TryStreamExt, stream};

use crate::AppState;

use ccm_core::contacts::key;

/// Adds numbers to a campaign; returns those that were not there before, in input order.
pub async fn add(
    state: &AppState,
    campaign: CampaignId,
    phones: Vec<PhoneNumber>,
) -> Result<Vec<PhoneNumber>, async_nats::Error> {
    let outcomes: Vec<Result<Option<PhoneNumber>, async_nats::Error>> = stream::iter(phones)
        .map(|phone| async move {
            let contact = Contact {
                campaign_id: campaign,
                phone_number: phone.clone(),
                created_at: Utc::now(),
                time_zone: None,
                postal_code: None,
                fields: Default::default(),
                expires_at: None,
                numbers: Vec::new(),
            };
            let value = serde_json::to_vec(&contact)?;
            match state
                .contacts
                .create(key(campaign, &phone), value.into())
                .await
            {
                Ok(_) => Ok(Some(phone)),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
                Err(e) => Err(e.into()),
            }
        })
        .buffered(256)
        .collect()
        .await;
    let mut created = Vec::new();
    for outcome in outcomes {
        if let Some(phone) = outcome? {
            created.push(phone);
        }
    }
    Ok(created)
}

/// Writes contacts with their details, replacing what was stored for the same numbers.
pub async fn put(state: &AppState, contacts: Vec<Contact>) -> Result<usize, async_nats::Error> {
    let written: Vec<Result<(), async_nats::Error>> = stream::iter(contacts)
        .map(|contact| async move {
            let value = serde_json::to_vec(&contact)?;
            state
                .contacts
                .put(
                    key(contact.campaign_id, &contact.phone_number),
                    value.into(),
                )
                .await?;
            Ok(())
        })
        .buffered(256)
        .collect()
        .await;
    let n = written.len();
    written.into_iter().collect::<Result<Vec<()>, _>>()?;
    Ok(n)
}

/// The custom fields and expiry of each of `phones` (contacts of `campaign`), in the same
/// order: none for a number added without any, or whose contact is gone.
pub async fn fields(
    state: &AppState,
    campaign: CampaignId,
    phones: &[PhoneNumber],
) -> Result<Vec<(CustomFields, Option<chrono::DateTime<Utc>>)>, async_nats::Error> {
    // Owned keys: futures borrowing the slice's items would make the handler's future
    // lifetime-generic, which axum's `Send` bound cannot express.
    let keys: Vec<String> = phones.iter().map(|phone| key(campaign, phone)).collect();
    type Read = Result<(CustomFields, Option<chrono::DateTime<Utc>>), async_nats::Error>;
    let read: Vec<Read> = stream::iter(keys)
        .map(|key| async move {
            let value = state.contacts.get(key).await?;
            // A value that does not decode has no fields to give; the call is still made.
            Ok(value
                .and_then(|v| serde_json::from_slice::<Contact>(&v).ok())
                .map(|c| (c.fields, c.expires_at))
                .unwrap_or_default())
        })
        .buffered(256)
        .collect()
        .await;
    read.into_iter().collect()
}

/// Every number of a campaign, sorted.
pub async fn list(
    state: &AppState,
    campaign: CampaignId,
) -> Result<Vec<PhoneNumber>, async_nats::Error> {
    let prefix = format!("$KV.{}.{campaign}.", names::KV_CONTACTS);
    let stream = state
        .js
        .get_stream(format!("KV_{}", names::KV_CONTACTS))
        .await?;
    let subjects: Vec<(String, usize)> = stream
        .info_with_subjects(format!("{prefix}*"))
        .await?
        .try_collect()
        .await?;
    let mut phones: Vec<PhoneNumber> = subjects
        .into_iter()
        .filter_map(|(subject, _)| subject.strip_prefix(&prefix).and_then(|d| d.parse().ok()))
        .collect();
    phones.sort();
    Ok(phones)
}
