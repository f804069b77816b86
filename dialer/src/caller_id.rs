//! The caller id an attempt shows, chosen from its campaign's pool right before placing,
//! and the per-number caps across dialer replicas and campaigns.
//!
//! The choice is [`ccm_core::caller_id::choice`]'s; this module only keeps the numbers'
//! recent uses. One record per pool number in the `attempts` bucket (key
//! `caller_id.<digits>`, apart from the callees' `<digits>` records of [`crate::frequency`])
//! holds the times the number was shown in the last 24 hours. Counting an attempt is a
//! compare-and-set on the record's revision, as for the callees' frequency limits, so two
//! replicas can never both take a number's last unit: the loser reads again, sees the cap
//! reached and moves on to the next number of the order. A counted number whose placement
//! then fails stays counted (the caps err on the side of calling less).

use async_nats::jetstream::kv;
use ccm_core::{
    DialRequest, PhoneNumber,
    attempt_audit::CallerIdSeen,
    caller_id::{
        CallerIdPool,
        caps::{Caps, horizon},
        choice::{Choice, choose, preference},
    },
};
use chrono::{DateTime, Utc};

use crate::frequency::CapError;

/// Most compare-and-set rounds on one number before giving up (the message is handed back).
const MAX_ROUNDS: usize = 100;

/// How long an attempt of a campaign whose pool numbers are all paused waits before it is
/// looked at again (un-pausing does not wake it).
pub(crate) const ALL_PAUSED_RECHECK: chrono::Duration = chrono::Duration::seconds(60);

/// The records of the pools' numbers.
#[derive(Debug, Clone)]
pub struct CallerIds {
    pub bucket: kv::Store,
}

/// The one owner of the records' key format.
pub(crate) fn key(number: &PhoneNumber) -> String {
    format!("caller_id.{}", number.digits())
}

/// What the choice came to: the number to show, or when to look again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Chosen {
    pub caller_id: Option<PhoneNumber>,
    /// Set when no number could be shown now.
    pub wait_until: Option<DateTime<Utc>>,
    pub seen: CallerIdSeen,
}

/// Chooses the caller id of an attempt about to be placed, when its campaign has a pool, and
/// records the choice in `facts` (its wait, its audit section). Chosen (and counted against
/// its caps) last, and only for an attempt that goes otherwise: a deferred one would waste a
/// number's unit.
pub(crate) async fn choose_for(
    ctx: &crate::call::CallContext,
    request: &DialRequest,
    campaign: &crate::carrier::CampaignInfo,
    facts: &mut crate::admission::Facts,
) -> Result<Option<PhoneNumber>, CapError> {
    use crate::admission::{Decision, decide};
    let Some(pool) = &campaign.caller_id_pool else {
        return Ok(None);
    };
    if decide(facts) != Decision::Place {
        return Ok(None);
    }
    let chosen = ctx.caller_ids.choose(pool, request, Utc::now()).await?;
    facts.caller_id_wait = chosen.wait_until;
    facts.checks.caller_id = Some(chosen.seen);
    if let Some(number) = &chosen.caller_id {
        ccm_core::metrics::counter!("ccm_dialer_caller_id_attempts_total",
            "campaign" => request.campaign_id.to_string(),
            "caller_id" => number.to_string())
        .increment(1);
    }
    Ok(chosen.caller_id)
}

impl CallerIds {
    /// Chooses the number `request`'s attempt shows and counts it; `now` is the decision's.
    pub(crate) async fn choose(
        &self,
        pool: &CallerIdPool,
        request: &DialRequest,
        now: DateTime<Utc>,
    ) -> Result<Chosen, CapError> {
        let attempt = format!("{}/{}", request.call_id, request.attempt);
        // The phone that rings: an attempt at a contact's further number is local to it.
        let order = preference(pool, request.dialled(), &attempt);
        let choice = choose(&order, |number| self.take(number, &pool.caps, now)).await?;
        let mut seen = CallerIdSeen {
            active: order.len(),
            ..CallerIdSeen::default()
        };
        Ok(match choice {
            Choice::Use(number) => {
                seen.chosen = Some(number.clone());
                Chosen {
                    caller_id: Some(number),
                    wait_until: None,
                    seen,
                }
            }
            Choice::Wait(at) => {
                seen.free_at = Some(at);
                Chosen {
                    caller_id: None,
                    wait_until: Some(at),
                    seen,
                }
            }
            Choice::NoneActive => Chosen {
                caller_id: None,
                wait_until: Some(now + ALL_PAUSED_RECHECK),
                seen,
            },
        })
    }

    /// Counts one use of `number` at `now` when its caps permit (`None`), else says when
    /// it is free again. Without caps nothing is counted.
    pub async fn take(
        &self,
        number: &PhoneNumber,
        caps: &Caps,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, CapError> {
        if caps.is_empty() {
            return Ok(None);
        }
        let key = key(number);
        let kv_error = |e: async_nats::Error| CapError::Kv(key.clone(), e);
        for _ in 0..MAX_ROUNDS {
            let entry = self
                .bucket
                .entry(key.as_str())
                .await
                .map_err(|e| kv_error(e.into()))?;
            // The same record as the frequency limits keep: one reader and one writer of it.
            let (times, revision) = crate::frequency::record_of(entry.as_ref());
            if let Some(free) = caps.free_at(&times, now) {
                return Ok(Some(free));
            }
            let since = now - horizon();
            match crate::frequency::append(&self.bucket, &key, &times, revision, since, now).await {
                Ok(true) => return Ok(None),
                Ok(false) => continue,
                Err(e) => return Err(kv_error(e)),
            }
        }
        Err(CapError::Contended(key))
    }
}
