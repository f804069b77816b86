//! Do-not-call lists, kept in the `dnc` KV bucket.
//!
//! A number is listed globally (key `global.<digits>`) or for one campaign
//! (`<campaign>.<digits>`). Ingest refuses a listed number with the list named, and the dialer
//! checks again just before placing, so a number listed after its call was queued is never
//! dialled either. A KV bucket because every check is a point lookup that must see a listing
//! at once on every replica, and the lists must survive restarts like the rest of the state.

use async_nats::jetstream::kv;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{ids::CampaignId, phone::PhoneNumber};

/// Which list a number is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "list", content = "campaign_id")]
pub enum DncList {
    Global,
    Campaign(CampaignId),
}

impl DncList {
    /// The bucket key of `phone` on this list.
    pub fn key(self, phone: &PhoneNumber) -> String {
        match self {
            Self::Global => format!("global.{}", phone.digits()),
            Self::Campaign(id) => format!("{id}.{}", phone.digits()),
        }
    }

    /// A reason for refusing a call, naming the list.
    pub fn refusal(self, phone: &PhoneNumber) -> String {
        match self {
            Self::Global => format!("{phone} is on the global do-not-call list"),
            Self::Campaign(id) => format!("{phone} is on campaign {id}'s do-not-call list"),
        }
    }
}

/// What is stored for a listed number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DncEntry {
    pub added_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The list that forbids calling `phone` in `campaign`, if any (the global list first). Both
/// lists are read at once: this runs on every accepted call, where a second sequential round
/// trip would show in the API's latency.
pub async fn listed(
    bucket: &kv::Store,
    campaign: CampaignId,
    phone: &PhoneNumber,
) -> Result<Option<DncList>, kv::EntryError> {
    let campaign_list = DncList::Campaign(campaign);
    let (global, own) = futures::try_join!(
        bucket.get(DncList::Global.key(phone)),
        bucket.get(campaign_list.key(phone))
    )?;
    Ok(if global.is_some() {
        Some(DncList::Global)
    } else {
        own.map(|_| campaign_list)
    })
}

/// As [`listed`], with what was read for the attempt's audit record: each list checked and
/// the revision of the number's entry on it (a listing, or the removal of one).
pub async fn checked(
    bucket: &kv::Store,
    campaign: CampaignId,
    phone: &PhoneNumber,
) -> Result<(Option<DncList>, crate::attempt_audit::DncSeen), kv::EntryError> {
    let campaign_list = DncList::Campaign(campaign);
    let (global, own) = futures::try_join!(
        bucket.entry(DncList::Global.key(phone)),
        bucket.entry(campaign_list.key(phone))
    )?;
    let seen = |name: String, entry: &Option<kv::Entry>| crate::attempt_audit::DncListSeen {
        list: name,
        revision: entry.as_ref().map(|e| e.revision),
        listed: entry
            .as_ref()
            .is_some_and(|e| e.operation == kv::Operation::Put),
    };
    let lists = vec![
        seen("global".into(), &global),
        seen(format!("campaign:{campaign}"), &own),
    ];
    let listed = if lists[0].listed {
        Some(DncList::Global)
    } else {
        lists[1].listed.then_some(campaign_list)
    };
    Ok((listed, crate::attempt_audit::DncSeen { lists }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::phone::PhoneRule;

    #[test]
    fn keys_and_reasons_name_the_list() {
        let phone = PhoneNumber::parse("+1 555 000 1234", PhoneRule::Lenient).expect("phone");
        let campaign = CampaignId::new(7).expect("id");
        assert_eq!(DncList::Global.key(&phone), "global.15550001234");
        assert_eq!(DncList::Campaign(campaign).key(&phone), "7.15550001234");
        assert_eq!(
            DncList::Campaign(campaign).refusal(&phone),
            "+15550001234 is on campaign 7's do-not-call list"
        );
    }
}
