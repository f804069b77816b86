//! When the supervisor looks at a campaign again without being told: at its next start or
//! end date ([`ccm_core::Campaign::next_change_after`]), or shortly after a change it could
//! not apply. One instant per campaign; setting it again replaces it.
//!
//! This is what replaced re-reading the whole `campaigns` bucket every two seconds: that cost
//! every replica a read per campaign per round whether anything was due or not (issue 23).

use std::collections::{BTreeSet, HashMap};

use ccm_core::CampaignId;
use tokio::time::Instant;

#[derive(Debug, Default)]
pub(crate) struct Timers {
    order: BTreeSet<(Instant, CampaignId)>,
    at: HashMap<CampaignId, Instant>,
}

impl Timers {
    /// Look at `id` again at `when` (replacing any earlier setting).
    pub(crate) fn set(&mut self, id: CampaignId, when: Instant) {
        if let Some(old) = self.at.insert(id, when) {
            self.order.remove(&(old, id));
        }
        self.order.insert((when, id));
    }

    /// Nothing to look at again for `id` (it was deleted, or has no date ahead).
    pub(crate) fn clear(&mut self, id: CampaignId) {
        if let Some(old) = self.at.remove(&id) {
            self.order.remove(&(old, id));
        }
    }

    /// The earliest instant set, if any.
    pub(crate) fn next(&self) -> Option<Instant> {
        self.order.first().map(|(at, _)| *at)
    }

    /// Takes the campaigns due at `now`.
    pub(crate) fn due(&mut self, now: Instant) -> Vec<CampaignId> {
        let mut due = Vec::new();
        while let Some(&(at, id)) = self.order.first() {
            if at > now {
                break;
            }
            self.order.pop_first();
            self.at.remove(&id);
            due.push(id);
        }
        due
    }
}

/// The tokio instant of a wall-clock one (now for one already past).
pub(crate) fn instant_of(at: chrono::DateTime<chrono::Utc>) -> Instant {
    let ahead = (at - chrono::Utc::now()).to_std().unwrap_or_default();
    Instant::now() + ahead
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn each_campaign_has_one_instant_and_due_ones_come_out_in_order() {
        let id = |n| CampaignId::new(n).expect("id");
        let now = Instant::now();
        let mut t = Timers::default();
        t.set(id(1), now + Duration::from_secs(5));
        t.set(id(2), now + Duration::from_secs(1));
        t.set(id(1), now + Duration::from_secs(2));
        t.set(id(3), now + Duration::from_secs(9));
        t.clear(id(3));
        assert_eq!(t.next(), Some(now + Duration::from_secs(1)));
        assert_eq!(t.due(now), vec![]);
        assert_eq!(t.due(now + Duration::from_secs(4)), vec![id(2), id(1)]);
        assert_eq!(t.next(), None, "a replaced or cleared instant is gone");
    }
}
