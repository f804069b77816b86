//! The campaign's cap, counted on the server right before placing while a cap change is
//! recent.
//!
//! The cap is the dial consumer's `max_ack_pending`, so the server never hands out more of a
//! campaign's messages than it allows, whichever replicas pull. That holds only while the
//! consumer agrees with the document, and nats-server has no compare-and-set for consumer
//! updates: a writer that read the document just before the cap was lowered can write the
//! old, higher cap after the new one ([`ccm_core::dial_consumer`] puts it right a round trip
//! later). Meanwhile each replica with room under its own view of the cap has a pull waiting,
//! and the server serves them; those calls would stay live over the cap for their length
//! (`stale_cap::a_consumer_briefly_written_over_the_cap_places_no_call_over_it` placed 4 in
//! a campaign of 2).
//!
//! So for [`SETTLES_WITHIN`] after this replica sees a campaign's cap change (or starts
//! following one edited lately), each placement first asks the server how many of the campaign's messages
//! are held ([`ccm_core::dial_consumer::DialConsumers::held`], this one included) and reads
//! the stored cap; over it, the attempt is put off ([`PUT_OFF`]) instead of placed. Every
//! placed call is a held message, so a placement that saw at most `cap` held can never make
//! more than `cap` live; two that both see too many both wait, which errs on calling less.
//! Outside the window no request is added to the hot path.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use ccm_core::{Campaign, CampaignId};

/// How long after a cap change placements are counted on the server: longer than a stale
/// writer can take between reading the document and writing the consumer (its request
/// times out well before).
pub(crate) const SETTLES_WITHIN: Duration = Duration::from_secs(30);

/// How long an attempt over the cap is put off for (through `RETRIES`).
pub(crate) const PUT_OFF: chrono::TimeDelta = chrono::TimeDelta::seconds(1);

/// Campaigns whose cap changed recently, as this replica saw them.
#[derive(Debug, Default)]
pub struct CapChanges {
    until: Mutex<HashMap<CampaignId, Instant>>,
}

impl CapChanges {
    /// The campaign's cap changed (or this replica started following it) now.
    pub(crate) fn changed(&self, id: CampaignId) {
        let now = Instant::now();
        let mut until = self.until.lock().unwrap_or_else(|e| e.into_inner());
        // Forget the settled ones: the map stays as small as the campaigns changing.
        until.retain(|_, at| *at > now);
        until.insert(id, now + SETTLES_WITHIN);
    }

    /// Whether placements of the campaign are counted on the server now.
    pub(crate) fn recent(&self, id: CampaignId) -> bool {
        let until = self.until.lock().unwrap_or_else(|e| e.into_inner());
        until.get(&id).is_some_and(|at| *at > Instant::now())
    }
}

/// Whether a document first seen now may have had its cap changed within
/// [`SETTLES_WITHIN`]: edited after its creation, lately (a replica starting amid a change).
pub(crate) fn edited_lately(campaign: &Campaign, now: chrono::DateTime<chrono::Utc>) -> bool {
    campaign.updated_at > campaign.created_at
        && now - campaign.updated_at
            < chrono::TimeDelta::from_std(SETTLES_WITHIN).unwrap_or(chrono::TimeDelta::MAX)
}

/// Why the count could not be made (the message is handed back and tried again).
#[derive(Debug, thiserror::Error)]
pub enum CountError {
    #[error("cannot read the campaign")]
    Campaign(#[source] async_nats::Error),
    #[error(transparent)]
    Consumer(#[from] ccm_core::dial_consumer::DialConsumerError),
}

/// The rule: over the cap when more messages are held than the stored cap allows.
pub(crate) fn over(held: u64, cap: u32) -> bool {
    held > u64::from(cap.max(1))
}

/// Held messages and the stored cap, when the campaign is over it; `None` to place.
pub(crate) async fn count(
    ctx: &crate::call::CallContext,
    id: CampaignId,
) -> Result<Option<(u64, u32)>, CountError> {
    let (held, stored) = tokio::try_join!(
        async { Ok::<_, CountError>(ctx.consumers.held(id).await?) },
        async {
            ctx.campaigns
                .get(id.to_string())
                .await
                .map_err(|e| CountError::Campaign(e.into()))
        },
    )?;
    // A document gone or unreadable has no cap to hold to: the consumer's own applies.
    let Some(cap) = stored
        .and_then(|doc| serde_json::from_slice::<Campaign>(&doc).ok())
        .map(|c| c.max_concurrent_calls)
    else {
        return Ok(None);
    };
    Ok(over(held, cap).then_some((held, cap)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_messages_over_the_stored_cap_are_over_it() {
        assert!(!over(2, 2), "the message being placed is one of the held");
        assert!(over(3, 2));
        assert!(over(2, 0), "a cap of 0 is read as 1, as the consumer does");
        assert!(!over(1, 0));
    }

    #[test]
    fn only_a_document_edited_lately_after_its_creation_is_counted_when_first_seen() {
        let now = chrono::Utc::now();
        let mut c: Campaign = serde_json::from_value(serde_json::json!({
            "id": 1, "name": "c", "is_active": true, "max_concurrent_calls": 2,
            "max_attempts": 1, "created_at": now, "updated_at": now,
        }))
        .expect("campaign");
        assert!(!edited_lately(&c, now), "a new campaign has one writer");
        c.updated_at = now + chrono::TimeDelta::seconds(1);
        assert!(edited_lately(&c, now + chrono::TimeDelta::seconds(2)));
        assert!(!edited_lately(&c, now + chrono::TimeDelta::seconds(40)));
    }

    #[test]
    fn a_change_is_recent_for_its_campaign_only() {
        let changes = CapChanges::default();
        let (a, b) = (
            CampaignId::new(1).expect("id"),
            CampaignId::new(2).expect("id"),
        );
        assert!(!changes.recent(a));
        changes.changed(a);
        assert!(changes.recent(a));
        assert!(!changes.recent(b));
    }
}
