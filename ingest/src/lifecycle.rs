//! Completes campaigns on the system's behalf: when their end date passes, and, for a started
//! draft, when no call of it is left.
//!
//! Ingest runs this because it is the writer of the `campaigns` bucket and the one service
//! that sees both JetStream and the read model. Every replica runs it; the change is a
//! compare-and-set of the document that re-checks its condition, so two replicas complete a
//! campaign once.
//!
//! "No call left" is decided by `ccm_core::call_lifecycle::campaign_finished`, the one decision
//! the webhooks' `campaign.completed` uses too. A call accepted in the instant the campaign
//! completes is not lost: the dialer ends it `CANCELLED` (`campaign completed`).

use std::time::Duration;

use ccm_core::{
    Campaign, CampaignId, CampaignState,
    call_lifecycle::{CampaignProgress, ProgressError, campaign_finished},
};
use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::{AppState, campaign_store};

/// How often campaigns are checked. Completion is bookkeeping, not a deadline: a couple of
/// seconds keeps the cost at a few requests per running campaign.
const CHECK_EVERY: Duration = Duration::from_secs(2);

/// Checks every campaign every [`CHECK_EVERY`] until `stop`.
pub async fn run(state: AppState, stop: CancellationToken) {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let campaigns = match campaign_store::load_all(&state).await {
            Ok(campaigns) => campaigns,
            Err(e) => {
                tracing::debug!(error = ?e, "cannot list campaigns for completion");
                continue;
            }
        };
        for campaign in campaigns.iter().filter(|c| !c.state.is_final()) {
            if let Err(e) = check(&state, campaign).await {
                tracing::debug!(campaign = %campaign.id, error = %crate::error_chain(&e),
                    "completion check failed; checking again");
            }
        }
    }
}

async fn check(state: &AppState, campaign: &Campaign) -> Result<(), ProgressError> {
    let now = Utc::now();
    if campaign.is_past_end(now) {
        complete(
            state,
            campaign.id,
            move |c| c.is_past_end(now),
            "end date passed",
        )
        .await;
        return Ok(());
    }
    let waits_for_empty = |c: &Campaign| c.state == CampaignState::Running && c.complete_when_empty;
    if waits_for_empty(campaign) && no_call_left(state, campaign.id).await? {
        complete(state, campaign.id, waits_for_empty, "no call left").await;
    }
    Ok(())
}

async fn complete(state: &AppState, id: CampaignId, still: impl Fn(&Campaign) -> bool, why: &str) {
    match campaign_store::complete(state, id, still).await {
        Ok(Some(_)) => tracing::info!(campaign = %id, why, "campaign completed"),
        Ok(None) => {}
        Err(e) => tracing::debug!(campaign = %id, error = ?e, "completion not written"),
    }
}

/// Whether no call of the campaign is left anywhere (`ccm_core::call_lifecycle`).
pub async fn no_call_left(state: &AppState, id: CampaignId) -> Result<bool, ProgressError> {
    let progress = CampaignProgress::read(&state.js, &state.pg, id).await?;
    Ok(campaign_finished(&progress))
}
