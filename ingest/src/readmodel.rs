//! Reads of the PostgreSQL read model (written only by the projector), plus the one lookup
//! that must see JetStream first: which attempt of a call is the current one.

use ccm_core::{CallEvent, CallId, CampaignId, topology::names};

use crate::AppState;

/// Why the read model could not answer.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot query the read model")]
    Database(#[from] sqlx::Error),
    #[error("cannot read the call's latest event")]
    Nats(#[source] async_nats::Error),
}

/// The campaign and current attempt of a call, or `None` for an unknown call: where an old
/// contract callback, which names only the call, is credited.
///
/// The answer comes from the call's latest lifecycle event in `CALL_EVENTS` (any campaign):
/// the attempt the dialer placed last (`Dialing`), or the one the retrier or the dialer
/// decided last (`Retrying`, a terminal event), which JetStream records before anything
/// else sees it. The read model is not asked first: it lags the stream and counts an
/// attempt as soon as it is queued, so after a PostgreSQL outage, or while a retry waits, it
/// named an attempt that was never placed, and a late callback of the previous attempt
/// became that attempt's outcome (the dialer then never placed it). A late callback now
/// lands on its own, already decided attempt, where it is dropped as a duplicate.
///
/// Only a call with no lifecycle event at all (never dialled yet, or older than the
/// stream's retention) is looked up in the read model.
pub async fn locate_call(
    state: &AppState,
    call: CallId,
) -> Result<Option<(CampaignId, u32)>, ReadError> {
    if let Some(event) = latest_event(state, call).await? {
        return Ok(Some((event.campaign_id, event.attempt.max(1))));
    }
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
    Ok(Some((campaign, u32::try_from(attempt).unwrap_or(1).max(1))))
}

/// The call's newest lifecycle event, found by subject filter (`calls.event.*.<call>`)
/// because the campaign is not known yet. A stream "get last by subject" request carries the
/// filter in its body; a direct get would put it in the request subject, where a wildcard is
/// not allowed.
async fn latest_event(state: &AppState, call: CallId) -> Result<Option<CallEvent>, ReadError> {
    let events = state
        .js
        .get_stream_no_info(names::CALL_EVENTS)
        .await
        .map_err(|e| ReadError::Nats(e.into()))?;
    // An event that does not parse is not this service's to judge: the read model then
    // answers as for a call with no event.
    Ok(ccm_core::call_log::last_of_call(&events, call)
        .await
        .map_err(ReadError::Nats)?
        .and_then(ccm_core::call_log::Last::decoded))
}
