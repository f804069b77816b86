//! `PUT /api/v1/callback/`: the old API's way for a carrier to report an attempt's outcome.
//!
//! The outcome is published on `calls.outcome.<campaign>.<call>` with the de-duplication id
//! `<call>/<attempt>/outcome`, so a repeated callback is dropped by the server (and the
//! retrier ignores an outcome for an attempt already decided). The answer comes only after
//! JetStream stored it; then a copy goes to the dialer the attempt's `Dialing` names (the old
//! contract has no field for it; see [`ccm_core::outcome_route`]).
//!
//! The body names the call but not the attempt. When it carries the carrier's id of the call
//! (`external_call_id`) and the dialer recorded that id for this same call when it placed
//! the attempt ([`ccm_core::placements`]), the callback is credited to that attempt, so a
//! callback of attempt n that arrives after attempt n+1 was placed stays n's. Otherwise (no
//! id, an id never recorded or already expired, or the bucket unreadable) the attempt is
//! the call's latest one ([`readmodel::locate_call`]), right for every callback that arrives
//! before the next attempt is placed.
//!
//! `opt_out: true` says the callee asked not to be called again: the number is put on the
//! do-not-call list before the outcome is stored ([`crate::opt_out`]).

use axum::extract::State;
use ccm_core::{CallEvent, CallId, CampaignId, EventKind, OutcomeSource, OutcomeStatus};
use serde_json::{Value, json};
use tracing::Instrument;

use super::text;
use crate::{
    AppState,
    compat_error::{CompatError, CompatJson},
    readmodel,
};

#[utoipa::path(put, path = "/api/v1/callback/", tag = "compatible", request_body = crate::openapi::Callback,
    responses(
        (status = 200, description = "{success, call_id, status} once the outcome is stored", body = Object),
        (status = 400, description = "call_id and status are required | Invalid status | opt_out must be true or false", body = crate::openapi::CompatError),
        (status = 404, description = "Call not found", body = crate::openapi::CompatError),
        (status = 503, description = "Broker unavailable; retry_after 60", body = crate::openapi::CompatError),
    ))]
pub(crate) async fn callback(
    State(state): State<AppState>,
    CompatJson(body): CompatJson,
) -> Result<axum::Json<Value>, CompatError> {
    let (Some(raw_call), Some(raw_status)) = (text(&body, "call_id"), text(&body, "status")) else {
        return Err(CompatError::bad_request("call_id and status are required"));
    };
    let status: OutcomeStatus = raw_status.parse().map_err(|_| {
        CompatError::bad_request(
            "Invalid status. Must be one of: [PICKED, DISCONNECTED, RNR, FAILED]",
        )
    })?;
    let not_found = || CompatError::not_found("Call not found");
    let call: CallId = raw_call.parse().map_err(|_| not_found())?;
    let duration_secs = match body.get("call_duration") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .and_then(|d| u32::try_from(d).ok())
                .ok_or_else(|| {
                    CompatError::bad_request("call_duration must be a non-negative integer")
                })?,
        ),
    };
    // The callee asked not to be called again (see `crate::opt_out`).
    let opt_out = match body.get("opt_out") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(CompatError::bad_request("opt_out must be true or false")),
    };
    let external_call_id = text(&body, "external_call_id").map(str::to_owned);
    let placed = match &external_call_id {
        Some(external) => placed_attempt(&state, call, external).await,
        None => None,
    };
    let (campaign_id, attempt) = match placed {
        Some(placed) => placed,
        None => readmodel::locate_call(&state, call)
            .await
            .map_err(CompatError::unavailable)?
            .ok_or_else(not_found)?,
    };
    let unfinished = if opt_out {
        let at = crate::routes::callbacks::AttemptRef {
            call_id: call,
            attempt,
            campaign_id,
            dialer: None,
        };
        crate::routes::callbacks::hear(&state, &at, None, "callback")
            .await
            .map_err(|e| match e {
                crate::error::AppError::Client { status, detail, .. } => {
                    CompatError::new(status, detail)
                }
                e => CompatError::unavailable(crate::error_chain(&e)),
            })?
    } else {
        None
    };
    let event = CallEvent::now(
        call,
        campaign_id,
        attempt,
        EventKind::Outcome {
            status,
            source: OutcomeSource::Carrier,
            raw_status: Some(raw_status.to_owned()),
            duration_secs,
            external_call_id,
            reason: None,
            // The callee asked to be called back (`ccm_core::callback`).
            callback: text(&body, "callback_at").map(|at| ccm_core::AskedCallback {
                at: at.to_owned(),
                time_zone: text(&body, "callback_time_zone").map(str::to_owned),
            }),
        },
    );
    // The carrier knows nothing of traces: the outcome joins the call's own trace.
    let span = tracing::info_span!("carrier_callback", call = %event.call_id);
    ccm_core::trace_context::continue_call(&span, &state.js, event.campaign_id, event.call_id)
        .await;
    // The old contract carries no dialer address: the attempt's `Dialing` names it.
    ccm_core::outcome_route::publish_carrier_outcome(&state.js, &event, None)
        .instrument(span)
        .await
        .map_err(|e| CompatError::unavailable(crate::error_chain(&e)))?;
    if let Some(e) = unfinished {
        // The outcome is stored; the carrier's resend repeats only the unfinished steps.
        return Err(CompatError::unavailable(crate::error_chain(&e)));
    }
    Ok(axum::Json(
        json!({"success": true, "call_id": call, "status": status.as_str()}),
    ))
}

/// The campaign and attempt the carrier's id `external` was placed for, when the dialer
/// recorded it for this `call`. A record naming another call is ignored: a carrier's id must
/// never move an outcome to a call the callback did not name. A failed read is no answer
/// either: the call's latest attempt is then the best guess, as before the record existed.
async fn placed_attempt(
    state: &AppState,
    call: CallId,
    external: &str,
) -> Option<(CampaignId, u32)> {
    match ccm_core::placements::lookup(&state.placements, external).await {
        Ok(Some(placed)) if placed.call_id == call => {
            Some((placed.campaign_id, placed.attempt.max(1)))
        }
        Ok(Some(placed)) => {
            tracing::warn!(%call, recorded_call = %placed.call_id, external_call_id = external,
                "the carrier's id was placed for another call; ignored");
            None
        }
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(%call, error = %crate::error_chain(&e),
                "cannot read the carrier's id; the call's latest attempt is credited");
            None
        }
    }
}
