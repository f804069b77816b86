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
    /// Set when the callee asked, during a call, not to be called again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opted_out: Option<OptOut>,
}

/// The call during which the callee opted out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OptOut {
    pub call_id: crate::ids::CallId,
    pub campaign_id: CampaignId,
    pub attempt: u32,
    /// How the carrier said it: `digits` (a `<Gather>`), `callback` (`opt_out: true`).
    pub via: String,
}

/// The reason an attempt to an opted-out number ends with.
pub const OPTED_OUT: &str = "opted_out";

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

/// The dialer's check right before placing: the reason the number may not be called, if it
/// is listed (the list named; `opted_out` when the entry came from the callee's own opt-out,
/// which ends the call as such), with what was read for the attempt's audit record: each list
/// checked and the revision of the number's entry on it (a listing, or the removal of one).
pub async fn checked(
    bucket: &kv::Store,
    campaign: CampaignId,
    phone: &PhoneNumber,
) -> Result<(Option<String>, crate::attempt_audit::DncSeen), kv::EntryError> {
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
        Some((DncList::Global, &global))
    } else {
        lists[1].listed.then_some((campaign_list, &own))
    };
    let refusal = listed.map(|(list, entry)| {
        // An entry that does not decode still lists the number.
        let opted_out = entry
            .as_ref()
            .and_then(|e| serde_json::from_slice::<DncEntry>(&e.value).ok())
            .is_some_and(|e| e.opted_out.is_some());
        if opted_out {
            OPTED_OUT.to_owned()
        } else {
            list.refusal(phone)
        }
    });
    Ok((refusal, crate::attempt_audit::DncSeen { lists }))
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
