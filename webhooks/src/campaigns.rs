//! `campaign.completed`: sent when a campaign has no call left.
//!
//! Campaigns accept calls at any time, so a campaign "completes" for its subscribers each time
//! it has no call left, whether or not its document is ever `COMPLETED`. The deliverer sees
//! every terminal event, so a campaign with one becomes a candidate, checked about once a
//! second:
//!
//! 1. the read model must already show those terminal events (otherwise the projector is
//!    behind, and the candidate waits for the next check);
//! 2. the campaign must have no call left, decided by
//!    `ccm_core::call_lifecycle::campaign_finished`, the decision ingest completes started
//!    drafts with (nothing queued, in flight or scheduled, the projector past the campaign's
//!    last dial message, no call open in the read model). A candidate whose only obstacle is
//!    a projector still behind is checked again; any other obstacle is a call that will end
//!    with a terminal event of its own, which makes the campaign a candidate again.
//!
//! Then a `campaign.completed` message is queued for the endpoints that asked for it, with
//! the campaign's totals. Its `webhook-id` is `campaign/<id>/completed/<number of calls>`: a
//! repeated check queues it once, and a campaign given more calls later completes again with
//! a new id.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use async_nats::jetstream;
use ccm_core::{
    CampaignId,
    call_lifecycle::{CampaignProgress, campaign_finished},
    webhooks::Subscription,
};
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{payload::VERSION, queue::NewMessage};

/// The event type, as subscriptions name it.
pub const CAMPAIGN_COMPLETED: &str = "campaign.completed";

/// The campaign's totals when it completed.
#[derive(Debug, Serialize, sqlx::FromRow)]
struct Totals {
    calls: i64,
    completed: i64,
    failed: i64,
    cancelled: i64,
    dead_lettered: i64,
    /// Ended `EXPIRED`: not placed by its `expires_at`, or queued past the maximum queue age.
    expired: i64,
    /// Ended `LIMITED`: a frequency limit held its number past its `expires_at`.
    limited: i64,
    #[serde(skip)]
    seen: i64,
}

#[derive(Debug, Serialize)]
struct Payload {
    #[serde(rename = "type")]
    kind: &'static str,
    version: u32,
    timestamp: DateTime<Utc>,
    data: Data,
}

#[derive(Debug, Serialize)]
struct Data {
    campaign_id: CampaignId,
    #[serde(flatten)]
    totals: Totals,
}

/// A candidate whose terminal events the read model still does not show after this long is
/// dropped (with a warning): its calls were never projected, so no check could pass.
const GIVE_UP_AFTER: Duration = Duration::from_secs(600);

/// Campaigns with terminal events not yet checked: the calls, and when the first was seen.
#[derive(Debug, Default)]
pub struct Candidates(HashMap<CampaignId, (HashSet<Uuid>, Instant)>);

impl Candidates {
    /// Notes a terminal event of `call` in `campaign`.
    pub fn add(&mut self, campaign: CampaignId, call: Uuid) {
        self.0
            .entry(campaign)
            .or_insert_with(|| (HashSet::new(), Instant::now()))
            .0
            .insert(call);
    }

    /// Checks every candidate; answers the messages to queue for those that completed.
    /// Candidates whose terminal events the read model does not show yet are kept.
    pub async fn check(
        &mut self,
        pg: &PgPool,
        js: &jetstream::Context,
        subscriptions: &[std::sync::Arc<Subscription>],
    ) -> Vec<NewMessage> {
        let mut messages = Vec::new();
        let candidates: Vec<_> = self.0.drain().collect();
        for (campaign, (calls, since)) in candidates {
            let targets: Vec<&Subscription> = subscriptions
                .iter()
                .map(|s| s.as_ref())
                .filter(|s| wants(s, campaign))
                .collect();
            if targets.is_empty() {
                continue;
            }
            let totals = match totals(pg, campaign, &calls).await {
                Ok(totals) => totals,
                Err(e) => {
                    tracing::warn!(%campaign, error = %ccm_core::telemetry::chain(&e), "cannot check campaign completion");
                    self.0.insert(campaign, (calls, since));
                    continue;
                }
            };
            if totals.seen < calls.len() as i64 {
                if since.elapsed() < GIVE_UP_AFTER {
                    self.0.insert(campaign, (calls, since));
                } else {
                    tracing::warn!(%campaign, "terminal calls never reached the read model; completion not checked");
                }
                continue;
            }
            let progress = match CampaignProgress::read(js, pg, campaign).await {
                Ok(progress) => progress,
                Err(e) => {
                    // As when its dial consumer could not be read before: a campaign whose
                    // consumer is gone is not checked again until another call of it ends.
                    tracing::warn!(%campaign, error = %ccm_core::telemetry::chain(&e), "cannot read the campaign's progress");
                    continue;
                }
            };
            if !campaign_finished(&progress) {
                if progress.read_model_behind && since.elapsed() < GIVE_UP_AFTER {
                    self.0.insert(campaign, (calls, since));
                }
                continue;
            }
            let payload = Payload {
                kind: CAMPAIGN_COMPLETED,
                version: VERSION,
                timestamp: Utc::now(),
                data: Data {
                    campaign_id: campaign,
                    totals,
                },
            };
            let Ok(body) = serde_json::to_vec(&payload) else {
                continue;
            };
            let msg_id = format!(
                "campaign/{campaign}/completed/{}",
                payload.data.totals.calls
            );
            tracing::info!(%campaign, calls = payload.data.totals.calls, "campaign completed");
            for sub in targets {
                messages.push(NewMessage {
                    endpoint_id: sub.id.clone(),
                    msg_id: msg_id.clone(),
                    event_type: CAMPAIGN_COMPLETED.into(),
                    call_id: None,
                    campaign_id: campaign.as_i64(),
                    body: body.clone(),
                    skipped: !sub.enabled,
                });
            }
        }
        messages
    }
}

/// Whether `sub` asked for `campaign.completed` of `campaign` (enabled or not).
pub fn wants(sub: &Subscription, campaign: CampaignId) -> bool {
    sub.events.iter().any(|e| e == CAMPAIGN_COMPLETED)
        && (sub.campaign_ids.is_empty() || sub.campaign_ids.contains(&campaign))
}

async fn totals(
    pg: &PgPool,
    campaign: CampaignId,
    calls: &HashSet<Uuid>,
) -> Result<Totals, sqlx::Error> {
    let calls: Vec<Uuid> = calls.iter().copied().collect();
    // A FAILED outcome awaiting the retrier has status FAILED but is open: the phase decides.
    let ended = ccm_core::call_lifecycle::CALL_HAS_ENDED_SQL;
    sqlx::query_as(&format!(
        "SELECT count(*) AS calls,
             count(*) FILTER (WHERE status = 'COMPLETED') AS completed,
             count(*) FILTER (WHERE status = 'FAILED' AND {ended}) AS failed,
             count(*) FILTER (WHERE status = 'CANCELLED') AS cancelled,
             count(*) FILTER (WHERE status = 'DEAD_LETTERED') AS dead_lettered,
             count(*) FILTER (WHERE status = 'EXPIRED') AS expired,
             count(*) FILTER (WHERE status = 'LIMITED') AS limited,
             count(*) FILTER (WHERE call_id = ANY($2) AND {ended}) AS seen
         FROM calls WHERE campaign_id = $1"
    ))
    .bind(campaign.as_i64())
    .bind(calls)
    .fetch_one(pg)
    .await
}
