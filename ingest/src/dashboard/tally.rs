//! Per-campaign progress counts, kept from a read-model snapshot plus the events that
//! follow it.
//!
//! Each call is in exactly one bucket. A call's state only moves forward by
//! `(attempt, phase rank)`, the projector's own rule, so applying an event twice or out of
//! order changes nothing: the snapshot and the replayed events that overlap it can both be
//! applied. Calls still in flight (and calls finished recently) are kept one by one so their
//! bucket can be decremented when they move; calls that finished long ago are only counted.

use std::collections::{BTreeMap, HashMap};

use ccm_core::{
    CallEvent, CallId, CallStatus, CampaignId, DialRequest,
    call_lifecycle::{CallState, End},
};
use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

/// The buckets of the progress bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Bucket {
    Queued,
    Live,
    Retrying,
    Completed,
    Failed,
    Cancelled,
    DeadLettered,
}

impl Bucket {
    /// Where a call with this status at this phase rank belongs ([`CallState::stored`]). A
    /// FAILED outcome is still live: the retrier has not decided yet; a FAILED end is not.
    pub fn of(status: CallStatus, rank: u8) -> Bucket {
        match CallState::stored(status, rank) {
            Some(CallState::Ended(End::Completed)) => Bucket::Completed,
            Some(CallState::Ended(End::Cancelled)) => Bucket::Cancelled,
            Some(CallState::Ended(End::DeadLettered)) => Bucket::DeadLettered,
            // Expired or limited ended without being placed: a failure as far as the progress
            // bar goes.
            Some(CallState::Ended(End::Failed | End::Expired | End::Limited)) => Bucket::Failed,
            Some(CallState::Retrying) => Bucket::Retrying,
            Some(CallState::Queued) => Bucket::Queued,
            Some(CallState::Processing | CallState::Outcome(_)) => Bucket::Live,
            // A row no fold writes: placed by its rank alone.
            None if rank <= 1 => Bucket::Queued,
            None => Bucket::Live,
        }
    }

    fn is_final(self) -> bool {
        matches!(
            self,
            Bucket::Completed | Bucket::Failed | Bucket::Cancelled | Bucket::DeadLettered
        )
    }
}

/// Calls of one campaign per bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub queued: i64,
    pub live: i64,
    pub retrying: i64,
    pub completed: i64,
    pub failed: i64,
    pub cancelled: i64,
    pub dead_lettered: i64,
}

impl Counts {
    fn slot(&mut self, bucket: Bucket) -> &mut i64 {
        match bucket {
            Bucket::Queued => &mut self.queued,
            Bucket::Live => &mut self.live,
            Bucket::Retrying => &mut self.retrying,
            Bucket::Completed => &mut self.completed,
            Bucket::Failed => &mut self.failed,
            Bucket::Cancelled => &mut self.cancelled,
            Bucket::DeadLettered => &mut self.dead_lettered,
        }
    }

    /// Adds `n` calls to a bucket.
    pub fn add(&mut self, bucket: Bucket, n: i64) {
        *self.slot(bucket) += n;
    }

    pub fn total(&self) -> i64 {
        self.queued
            + self.live
            + self.retrying
            + self.completed
            + self.failed
            + self.cancelled
            + self.dead_lettered
    }
}

/// One call's known state.
#[derive(Debug, Clone, Copy)]
struct Known {
    campaign: CampaignId,
    key: (u32, u8),
    bucket: Bucket,
    at: DateTime<Utc>,
}

/// How long a rate is averaged over.
const RATE_WINDOW_SECS: i64 = 10;

/// The counts of every campaign, and the dial rate.
#[derive(Debug, Default)]
pub struct Tally {
    counts: BTreeMap<CampaignId, Counts>,
    calls: HashMap<CallId, Known>,
    /// Campaign → unix second → attempts placed (`Dialing` events) in that second.
    dials: HashMap<CampaignId, BTreeMap<i64, u32>>,
}

impl Tally {
    /// Counts calls the snapshot only knows in bulk (finished long ago).
    pub fn add_counted(&mut self, campaign: CampaignId, bucket: Bucket, n: i64) {
        self.counts.entry(campaign).or_default().add(bucket, n);
    }

    /// Records one call's state (from the snapshot or an event); a state that is not newer
    /// than the known one is ignored.
    pub fn observe(
        &mut self,
        call: CallId,
        campaign: CampaignId,
        key: (u32, u8),
        bucket: Bucket,
        at: DateTime<Utc>,
    ) {
        if let Some(known) = self.calls.get_mut(&call) {
            if key <= known.key {
                return;
            }
            let old = known.bucket;
            *known = Known {
                campaign: known.campaign,
                key,
                bucket,
                at,
            };
            let counts = self.counts.entry(known.campaign).or_default();
            counts.add(old, -1);
            counts.add(bucket, 1);
            return;
        }
        self.calls.insert(
            call,
            Known {
                campaign,
                key,
                bucket,
                at,
            },
        );
        self.counts.entry(campaign).or_default().add(bucket, 1);
    }

    /// A dial message: the attempt is queued.
    pub fn dial(&mut self, request: &DialRequest) {
        self.observe(
            request.call_id,
            request.campaign_id,
            (request.attempt, CallState::Queued.rank()),
            Bucket::Queued,
            request.queued_at,
        );
    }

    /// A lifecycle event or outcome.
    pub fn event(&mut self, event: &CallEvent) {
        let rank = event.kind.phase_rank();
        self.observe(
            event.call_id,
            event.campaign_id,
            (event.attempt, rank),
            Bucket::of(event.kind.status(), rank),
            event.at,
        );
        if matches!(event.kind, ccm_core::events::EventKind::Dialing { .. }) {
            *self
                .dials
                .entry(event.campaign_id)
                .or_default()
                .entry(event.at.timestamp())
                .or_default() += 1;
        }
    }

    /// Forgets calls that finished (completed, failed, cancelled) before `older_than`: no
    /// event of theirs can be replayed any more, so they only need counting. Dead-lettered
    /// calls are kept, since a redrive brings them back. Also drops old rate samples.
    pub fn prune(&mut self, older_than: DateTime<Utc>, now: DateTime<Utc>) {
        self.calls.retain(|_, k| {
            !(k.bucket.is_final() && k.bucket != Bucket::DeadLettered && k.at < older_than)
        });
        let horizon = (now - Duration::seconds(RATE_WINDOW_SECS)).timestamp();
        self.dials.retain(|_, seconds| {
            seconds.retain(|s, _| *s >= horizon);
            !seconds.is_empty()
        });
    }

    /// The counts of every campaign that has calls.
    pub fn counts(&self) -> &BTreeMap<CampaignId, Counts> {
        &self.counts
    }

    /// Attempts placed per second by `campaign`, over the last complete seconds.
    pub fn dial_rate(&self, campaign: CampaignId, now: DateTime<Utc>) -> f64 {
        let end = now.timestamp();
        let start = end - RATE_WINDOW_SECS;
        let n: u32 = self
            .dials
            .get(&campaign)
            .map(|s| s.range(start..end).map(|(_, n)| n).sum())
            .unwrap_or(0);
        f64::from(n) / RATE_WINDOW_SECS as f64
    }

    /// How many calls are followed one by one.
    #[cfg(test)]
    pub fn followed(&self) -> usize {
        self.calls.len()
    }
}

#[cfg(test)]
mod tests {
    use ccm_core::{
        PhoneNumber,
        events::{EventKind, OutcomeSource},
        status::OutcomeStatus,
    };

    use super::*;

    fn campaign() -> CampaignId {
        CampaignId::new(4).expect("valid")
    }

    fn request(call: CallId, attempt: u32) -> DialRequest {
        DialRequest {
            call_id: call,
            campaign_id: campaign(),
            phone_number: "+15550001234".parse::<PhoneNumber>().expect("phone"),
            attempt,
            max_attempts: 3,
            created_at: Utc::now(),
            queued_at: Utc::now(),
            custom_fields: Default::default(),
            expires_at: None,
            alternate: None,
            callback: None,
        }
    }

    fn event(call: CallId, attempt: u32, kind: EventKind) -> CallEvent {
        CallEvent {
            call_id: call,
            campaign_id: campaign(),
            attempt,
            at: Utc::now(),
            kind,
        }
    }

    fn outcome(status: OutcomeStatus) -> EventKind {
        EventKind::Outcome {
            status,
            source: OutcomeSource::Carrier,
            raw_status: None,
            duration_secs: None,
            external_call_id: None,
            reason: None,
            callback: None,
        }
    }

    fn dialing() -> EventKind {
        EventKind::Dialing {
            phone_number: "+15550001234".parse().expect("phone"),
            max_attempts: 3,
            created_at: Utc::now(),
            custom_fields: Default::default(),
            expires_at: None,
            alternate: None,
        }
    }

    #[test]
    fn a_call_moves_through_the_buckets_once_whatever_is_repeated() {
        let mut tally = Tally::default();
        let call = CallId::new();
        tally.dial(&request(call, 1));
        tally.dial(&request(call, 1));
        assert_eq!(tally.counts()[&campaign()].queued, 1);
        tally.event(&event(call, 1, dialing()));
        tally.event(&event(call, 1, outcome(OutcomeStatus::Failed)));
        let c = tally.counts()[&campaign()];
        assert_eq!((c.queued, c.live), (0, 1), "a FAILED outcome is still live");
        tally.event(&event(
            call,
            1,
            EventKind::Retrying {
                next_retry_at: Utc::now(),
                reason: "FAILED".into(),
            },
        ));
        // A late duplicate of the outcome does not move it back.
        tally.event(&event(call, 1, outcome(OutcomeStatus::Failed)));
        assert_eq!(tally.counts()[&campaign()].retrying, 1);
        tally.dial(&request(call, 2));
        tally.event(&event(call, 2, dialing()));
        tally.event(&event(call, 2, outcome(OutcomeStatus::Picked)));
        tally.event(&event(call, 2, EventKind::Completed));
        let c = tally.counts()[&campaign()];
        assert_eq!(c.completed, 1);
        assert_eq!(c.total(), 1, "one call, one bucket: {c:?}");
    }

    #[test]
    fn events_out_of_order_settle_on_the_latest_state() {
        let mut tally = Tally::default();
        let call = CallId::new();
        tally.event(&event(call, 1, EventKind::Completed));
        tally.event(&event(call, 1, dialing()));
        tally.dial(&request(call, 1));
        let c = tally.counts()[&campaign()];
        assert_eq!((c.completed, c.total()), (1, 1));
    }

    #[test]
    fn snapshot_rows_map_status_and_rank_to_buckets() {
        assert_eq!(Bucket::of(CallStatus::Failed, 3), Bucket::Live);
        assert_eq!(Bucket::of(CallStatus::Failed, 5), Bucket::Failed);
        assert_eq!(Bucket::of(CallStatus::Queued, 1), Bucket::Queued);
        assert_eq!(Bucket::of(CallStatus::Processing, 2), Bucket::Live);
        assert_eq!(Bucket::of(CallStatus::Rnr, 3), Bucket::Live);
        assert_eq!(
            Bucket::of(CallStatus::DeadLettered, 5),
            Bucket::DeadLettered
        );
    }

    #[test]
    fn pruned_calls_stay_counted_and_dead_letters_stay_followed() {
        let mut tally = Tally::default();
        let (done, dead) = (CallId::new(), CallId::new());
        tally.event(&event(done, 1, EventKind::Completed));
        tally.event(&event(
            dead,
            1,
            EventKind::DeadLettered {
                reason: "max deliveries".into(),
            },
        ));
        let later = Utc::now() + Duration::minutes(10);
        tally.prune(later, later);
        assert_eq!(tally.followed(), 1, "only the dead letter is followed");
        // A redrive re-queues the dead-lettered call as its next attempt.
        tally.dial(&request(dead, 2));
        let c = tally.counts()[&campaign()];
        assert_eq!((c.completed, c.dead_lettered, c.queued), (1, 0, 1));
    }

    #[test]
    fn the_dial_rate_counts_dialing_events_of_the_last_seconds() {
        let mut tally = Tally::default();
        let now = Utc::now();
        for _ in 0..20 {
            let mut e = event(CallId::new(), 1, dialing());
            e.at = now - Duration::seconds(2);
            tally.event(&e);
        }
        let rate = tally.dial_rate(campaign(), now);
        assert!((rate - 2.0).abs() < f64::EPSILON, "{rate}");
        assert!(tally.dial_rate(campaign(), now + Duration::seconds(60)) < f64::EPSILON);
    }
}
