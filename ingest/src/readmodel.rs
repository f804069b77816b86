//! Reads of the PostgreSQL read model (written only by the projector), plus the one lookup
//! that must also see JetStream: where a call is now.

use async_nats::jetstream::stream::DirectGetErrorKind;
use ccm_core::{CallEvent, CallId, CampaignId, subjects, topology::names};

use crate::AppState;

/// Why the read model could not answer.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot query the read model")]
    Database(#[from] sqlx::Error),
    #[error("cannot read the call's latest event")]
    Nats(#[source] async_nats::Error),
}

/// The campaign and current attempt of a call, or `None` for an unknown call.
///
/// The read model knows the campaign (it lags by one projector batch). The attempt is then
/// taken from the call's latest lifecycle event in `CALL_EVENTS` when that is newer, so an
/// outcome is attributed to the attempt being dialled even before the projector caught up.
pub async fn locate_call(
    state: &AppState,
    call: CallId,
) -> Result<Option<(CampaignId, u32)>, ReadError> {
    let row: Option<(i64, i32)> =
        sqlx::query_as("SELECT campaign_id, attempt_count FROM calls WHERE call_id = $1")
            .bind(call.as_uuid())
            .fetch_optional(&state.pg)
            .await?;
    let Some((campaign, attempt)) = row else {
        return Ok(None);
    };
    let Some(campaign) = u64::try_from(campaign)
        .ok()
        .and_then(|c| CampaignId::new(c).ok())
    else {
        return Ok(None);
    };
    let mut attempt = u32::try_from(attempt).unwrap_or(1).max(1);
    let events = state
        .js
        .get_stream(names::CALL_EVENTS)
        .await
        .map_err(|e| ReadError::Nats(e.into()))?;
    match events
        .direct_get_last_for_subject(subjects::event(campaign, call))
        .await
    {
        Ok(message) => {
            if let Ok(event) = serde_json::from_slice::<CallEvent>(&message.payload) {
                attempt = attempt.max(event.attempt);
            }
        }
        Err(e) if e.kind() == DirectGetErrorKind::NotFound => {}
        Err(e) => return Err(ReadError::Nats(e.into())),
    }
    Ok(Some((campaign, attempt)))
}
