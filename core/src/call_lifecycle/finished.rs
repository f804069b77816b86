//! "This campaign has no call left": decided here once, for ingest's completion of a started
//! draft and for the webhooks' `campaign.completed`.
//!
//! A call is somewhere along a pipeline of stores, and each fact below only moves forward, so
//! they are read in the pipeline's order ([`CampaignProgress::read`]): the campaign's dial
//! consumer holds nothing (queued or in flight), `RETRIES` holds nothing for it, the projector
//! has read every dial message of the campaign (its consumer's ack floor is past the
//! campaign's last one on `CALLS`), and the read model shows no call of the campaign open
//! ([`super::CALL_IS_OPEN_SQL`]). A call between two stages (its outcome published, the
//! retrier not yet decided) is open in the read model, and a call the read model does not
//! know yet has a dial message the projector has not passed, so neither is taken for the end.

use async_nats::jetstream::{self, stream::DirectGetErrorKind};

use crate::{CampaignId, subjects, topology::names::CALLS};

/// The projector's consumer on `CALLS` (`nats/consumers/CALLS/projector_calls.json`): its ack
/// floor says how far the read model has read the queued calls.
const PROJECTOR_CALLS: &str = "projector_calls";

/// Where a campaign's calls are, as far as finishing it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CampaignProgress {
    /// Dial messages waiting for or held by a dialer (`num_pending + num_ack_pending`).
    pub dialling: u64,
    /// Attempts scheduled in `RETRIES`.
    pub scheduled: u64,
    /// Whether the projector has not yet read every dial message of the campaign.
    pub read_model_behind: bool,
    /// Calls the read model shows open.
    pub open: u64,
}

/// Whether the campaign has no call left: nothing queued, in flight or scheduled, and every
/// call the read model knows (which is every call, once it is not behind) has ended.
pub fn campaign_finished(progress: &CampaignProgress) -> bool {
    progress.dialling == 0
        && progress.scheduled == 0
        && !progress.read_model_behind
        && progress.open == 0
}

/// Why the progress could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ProgressError {
    #[error("NATS")]
    Nats(#[source] async_nats::Error),
    #[error("read model")]
    Database(#[source] sqlx::Error),
}

fn nats(e: impl Into<async_nats::Error>) -> ProgressError {
    ProgressError::Nats(e.into())
}

impl CampaignProgress {
    /// Reads the campaign's progress, in the pipeline's order. Stops at the first stage that
    /// still holds a call (the later ones are then left at their defaults): the answer is
    /// "not finished" whatever they hold.
    pub async fn read(
        js: &jetstream::Context,
        pg: &sqlx::PgPool,
        campaign: CampaignId,
    ) -> Result<CampaignProgress, ProgressError> {
        let mut progress = CampaignProgress::default();
        let calls = js.get_stream(CALLS).await.map_err(nats)?;
        let dial = calls
            .consumer_info(subjects::dial_consumer(campaign))
            .await
            .map_err(nats)?;
        progress.dialling = dial.num_pending + dial.num_ack_pending as u64;
        if progress.dialling > 0 {
            return Ok(progress);
        }
        progress.scheduled = crate::retries::count(js, campaign)
            .await
            .map_err(|e| ProgressError::Nats(e.into()))?;
        if progress.scheduled > 0 {
            return Ok(progress);
        }
        let last_dial = match calls
            .direct_get_last_for_subject(subjects::dial(campaign))
            .await
        {
            Ok(message) => message.sequence,
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => 0,
            Err(e) => return Err(nats(e)),
        };
        let projector = calls.consumer_info(PROJECTOR_CALLS).await.map_err(nats)?;
        progress.read_model_behind = projector.ack_floor.stream_sequence < last_dial;
        if progress.read_model_behind {
            return Ok(progress);
        }
        let open: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM calls WHERE campaign_id = $1 AND {}",
            super::CALL_IS_OPEN_SQL
        ))
        .bind(campaign.as_i64())
        .fetch_one(pg)
        .await
        .map_err(ProgressError::Database)?;
        progress.open = u64::try_from(open).unwrap_or(0);
        Ok(progress)
    }
}
