//! `POST /api/v1/calls/{id}/reschedule`: the callee asked to be called back at a time of
//! their choosing ("call me back at five"). The rules are `ccm_core::callback`'s; this route
//! reads the request and answers.

use axum::{
    extract::{Path, State},
    http::StatusCode,
};
use ccm_core::{
    CallId,
    callback::{self, CallbackError, Refusal},
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{
    AppState,
    error::{ApiJson, AppError},
};

/// When the callee asked to be called back.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RescheduleBody {
    /// RFC 3339 with an offset (`2026-12-07T17:00:00-05:00`), or a local time
    /// (`2026-12-07T17:00`) read in `time_zone`, else in the callee's own zone when it is
    /// known for sure.
    #[schema(example = "2026-12-07T17:00")]
    pub at: String,
    /// An IANA zone (`America/New_York`): the callee's, in which a local `at` is read.
    #[serde(default)]
    #[schema(example = "America/New_York")]
    pub time_zone: Option<String>,
}

/// The scheduled callback.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Rescheduled {
    #[schema(value_type = uuid::Uuid)]
    pub call_id: CallId,
    /// The attempt that calls back (it does not count against the retry policy's limit).
    pub attempt: u32,
    /// The time asked for.
    pub asked_for: DateTime<Utc>,
    /// The zone a local `at` was read in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// When the callback is placed: `asked_for`, or the first time the calling window and
    /// the callee's calling rules allow after it.
    pub scheduled_at: DateTime<Utc>,
    /// Whether `scheduled_at` is later than `asked_for`.
    pub moved: bool,
    /// Why it was moved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Schedules the call's next attempt at the time the callee asked for.
///
/// The call must be waiting for its next attempt (`RETRYING`). The asked time is kept inside
/// the campaign's calling window and the callee's calling rules (moved to the first allowed
/// time after it, and the answer says so). The callback does not count against the retry
/// policy's attempt limit; frequency limits and legal caps count it like any attempt. The
/// number stays claimed while it waits, and cancelling the call or the campaign, erasing the
/// number or an opt-out still ends it. Asking again replaces the earlier callback.
#[utoipa::path(post, path = "/api/v1/calls/{id}/reschedule", tag = "calls",
    params(("id" = uuid::Uuid, Path, description = "The call id")),
    request_body = RescheduleBody,
    responses(
        (status = 200, body = Rescheduled),
        (status = 400, description = "Not a UUID", body = crate::openapi::Problem),
        (status = 404, description = "Unknown call", body = crate::openapi::Problem),
        (status = 409, description = "The call ended (`call_ended`), or an attempt of it is queued or in progress (`attempt_in_progress`)", body = crate::openapi::Problem),
        (status = 422, description = "`at` unparseable, in the past, after the call's expiry or too far ahead; unknown `time_zone`", body = crate::openapi::Problem),
    ))]
pub(crate) async fn reschedule(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<RescheduleBody>,
) -> Result<ApiJson<Rescheduled>, AppError> {
    let id: CallId = id
        .parse()
        .map_err(|e: ccm_core::ids::IdError| AppError::bad_request("invalid_id", e.to_string()))?;
    let events = state
        .js
        .get_stream(ccm_core::topology::names::CALL_EVENTS)
        .await
        .map_err(|e| AppError::unavailable(CallbackError::Read(e.into())))?;
    let Some(standing) = callback::standing(&events, id).await.map_err(answer)? else {
        // No event yet: a call queued for its first attempt, or none at all.
        return Err(if queued(&state, id).await? {
            answer(Refusal::InProgress.into())
        } else {
            AppError::not_found("call_not_found", format!("call {id} is not known"))
        });
    };
    let campaign_id = standing.event.campaign_id;
    let campaign = crate::campaign_store::load(&state, campaign_id)
        .await?
        .ok_or_else(|| {
            AppError::conflict(
                "campaign_not_found",
                format!("the call's campaign {campaign_id} no longer exists"),
            )
        })?;
    let ctx = callback::Context {
        js: &state.js,
        events: &events,
        contacts: &state.contacts,
        rules: &state.rules,
        horizon: state.callback_horizon,
    };
    let scheduled = callback::reschedule(
        ctx,
        &campaign,
        standing,
        &body.at,
        body.time_zone.as_deref(),
    )
    .await
    .map_err(answer)?;
    tracing::info!(call = %id, at = %scheduled.at, "callback scheduled");
    Ok(ApiJson(Rescheduled {
        call_id: id,
        attempt: scheduled.attempt,
        asked_for: scheduled.asked.at,
        time_zone: scheduled.asked.time_zone,
        scheduled_at: scheduled.at,
        moved: scheduled.moved.is_some(),
        reason: scheduled.moved,
    }))
}

/// Whether the read model knows the call (queued, with no event yet).
async fn queued(state: &AppState, id: CallId) -> Result<bool, AppError> {
    sqlx::query_scalar::<_, i32>("SELECT 1 FROM calls WHERE call_id = $1")
        .bind(id.as_uuid())
        .fetch_optional(&state.pg)
        .await
        .map(|row| row.is_some())
        .map_err(|e| AppError::unavailable(crate::readmodel::ReadError::Database(e)))
}

fn answer(error: CallbackError) -> AppError {
    let unprocessable = |code, detail: String| AppError::Client {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        code,
        detail,
    };
    match error {
        CallbackError::Refused(refusal) => {
            let detail = refusal.to_string();
            match refusal {
                Refusal::Ended(_) => AppError::conflict("call_ended", detail),
                Refusal::InProgress => AppError::conflict("attempt_in_progress", detail),
                Refusal::Past { .. } => unprocessable("in_the_past", detail),
                Refusal::AfterExpiry { .. } => unprocessable("after_expiry", detail),
                Refusal::TooFar { .. } => unprocessable("too_far_ahead", detail),
            }
        }
        CallbackError::Ask(e) => {
            let code = match e {
                callback::AskError::Zone(_) => "invalid_time_zone",
                _ => "invalid_time",
            };
            unprocessable(code, e.to_string())
        }
        CallbackError::NoFacts => AppError::conflict("call_without_dialing", error.to_string()),
        CallbackError::Contended => AppError::conflict("call_changing", error.to_string()),
        e @ (CallbackError::Read(_) | CallbackError::Contact(_) | CallbackError::Publish(_)) => {
            AppError::unavailable(e)
        }
    }
}
