//! Completes campaigns on the system's behalf: when their end date passes, and, for a started
//! draft, when no call of it is left.
//!
//! Ingest runs this because it is the writer of the `campaigns` bucket and the one service
//! that sees both JetStream and the read model. Every replica runs it; the change is a
//! compare-and-set of the document that re-checks its condition, so two replicas complete a
//! campaign once.
//!
//! "No call left" is decided from facts that only ever move forward, in this order: the
//! campaign's dial consumer holds nothing (queued or in flight), `RETRIES` holds nothing for
//! it, the projector has read every dial message of the campaign (its consumer's ack floor is
//! past the campaign's last one on `CALLS`), and the read model shows every call of the
//! campaign in a terminal state. A call between two stages (its outcome published, the
//! retrier not yet decided) is still non-terminal in the read model, and a call the read
//! model does not know yet has a dial message the projector has not passed, so neither is
//! mistaken for the end. A call accepted in the instant the campaign completes is not lost:
//! the dialer ends it `CANCELLED` (`campaign completed`).

use std::time::Duration;

use ccm_core::{
    Campaign, CampaignId, CampaignState, subjects,
    topology::names::{CALLS, RETRIES},
};
use chrono::Utc;
use futures::TryStreamExt;
use tokio_util::sync::CancellationToken;

use crate::{AppState, campaign_store};

/// How often campaigns are checked. Completion is bookkeeping, not a deadline: a couple of
/// seconds keeps the cost at a few requests per running campaign.
const CHECK_EVERY: Duration = Duration::from_secs(2);

/// The projector's consumer on `CALLS`.
const PROJECTOR_CALLS: &str = "projector_calls";

/// Why a campaign could not be checked this time (it is checked again on the next tick).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("NATS")]
    Nats(#[source] async_nats::Error),
    #[error("read model")]
    Database(#[source] sqlx::Error),
}

fn nats(e: impl Into<async_nats::Error>) -> CheckError {
    CheckError::Nats(e.into())
}

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

async fn check(state: &AppState, campaign: &Campaign) -> Result<(), CheckError> {
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

/// Whether no call of the campaign is left anywhere (see the module's documentation).
pub async fn no_call_left(state: &AppState, id: CampaignId) -> Result<bool, CheckError> {
    let calls = state.js.get_stream(CALLS).await.map_err(nats)?;
    let dial = calls
        .consumer_info(subjects::dial_consumer(id))
        .await
        .map_err(nats)?;
    if dial.num_pending > 0 || dial.num_ack_pending > 0 {
        return Ok(false);
    }
    let retries = state.js.get_stream(RETRIES).await.map_err(nats)?;
    let scheduled: Vec<(String, usize)> = retries
        .info_with_subjects(subjects::retry(id))
        .await
        .map_err(nats)?
        .try_collect()
        .await
        .map_err(nats)?;
    if scheduled.iter().any(|(_, n)| *n > 0) {
        return Ok(false);
    }
    let last_dial = match calls.direct_get_last_for_subject(subjects::dial(id)).await {
        Ok(message) => message.sequence,
        Err(e) if e.kind() == async_nats::jetstream::stream::DirectGetErrorKind::NotFound => 0,
        Err(e) => return Err(nats(e)),
    };
    let projector = calls.consumer_info(PROJECTOR_CALLS).await.map_err(nats)?;
    if projector.ack_floor.stream_sequence < last_dial {
        return Ok(false);
    }
    let open: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM calls WHERE campaign_id = $1 AND {}",
        ccm_core::events::CALL_IS_OPEN_SQL
    ))
    .bind(id.as_i64())
    .fetch_one(&state.pg)
    .await
    .map_err(CheckError::Database)?;
    Ok(open == 0)
}
