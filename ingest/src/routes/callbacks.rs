//! `POST /api/v1/callbacks/twilio`: Twilio's status callbacks.
//!
//! The dialer's Twilio adapter puts the call id, attempt and campaign in the `StatusCallback`
//! query, so a callback names the attempt it ends. The `X-Twilio-Signature` is checked
//! against `ingest.twilio.auth_token` over the URL as Twilio called it (`ingest.twilio.
//! public_url`, or `http://<Host>`, plus path and query) and the form parameters; a wrong or
//! missing signature is answered 403 and publishes nothing. Final statuses become an outcome
//! event with `Nats-Msg-Id` `<call>/<attempt>/outcome`, so a repeated callback is dropped by
//! the server; intermediate statuses (`ringing`, …) are acknowledged and ignored, which also
//! makes out-of-order delivery harmless. The outcome is copied to the dialer the URL names
//! (`dialer`; see [`ccm_core::outcome_route`]). A callback whose `Digits` (a `<Gather>`'s keypad
//! input) equal `ingest.twilio.opt_out_digits` is the callee's opt-out, recorded before
//! anything else ([`crate::opt_out`]). `CallbackAt` (and `CallbackTimeZone`), sent by a voice
//! agent that heard "call me back at five", ask for a callback: carried on the outcome, the
//! retrier schedules it (`ccm_core::callback`).

use axum::{
    body::Bytes,
    extract::{OriginalUri, Query, State},
    http::{HeaderMap, StatusCode, header},
};
use ccm_core::{
    CallEvent, CallId, CampaignId, EventKind, OutcomeSource, PhoneNumber, outcome_route,
    phone::PhoneRule, twilio,
};
use serde::Deserialize;
use tracing::Instrument;
use utoipa_axum::routes;

use crate::routes::table::{Entry, own};
use crate::{AppState, error::AppError};

/// The attempt named in the callback URL's query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AttemptRef {
    /// The call (UUID).
    #[param(value_type = uuid::Uuid)]
    pub call_id: CallId,
    /// The attempt, from 1.
    pub attempt: u32,
    /// The call's campaign.
    #[param(value_type = u64)]
    pub campaign_id: CampaignId,
    /// The address of the dialer that placed the attempt, which the outcome is copied to
    /// (absent from URLs made by older dialers: then read from the attempt's `Dialing`).
    #[serde(default)]
    pub dialer: Option<String>,
}

fn forbidden(detail: &str) -> AppError {
    AppError::Client {
        status: StatusCode::FORBIDDEN,
        code: "invalid_signature",
        detail: detail.into(),
    }
}

/// Verifies and publishes one Twilio status callback.
#[utoipa::path(post, path = "/api/v1/callbacks/twilio", tag = "carrier callbacks",
    params(AttemptRef),
    request_body(content = crate::openapi::TwilioStatusCallback,
        content_type = "application/x-www-form-urlencoded"),
    // Authenticated by `X-Twilio-Signature`, not by an API token.
    security(()),
    responses(
        (status = 204, description = "Accepted (final statuses published as the attempt's outcome)"),
        (status = 400, description = "Not a form, or the URL names no attempt", body = crate::openapi::Problem),
        (status = 403, description = "X-Twilio-Signature missing or wrong", body = crate::openapi::Problem),
        (status = 503, description = "NATS unavailable", body = crate::openapi::Problem),
    ))]
pub(crate) async fn twilio(
    State(state): State<AppState>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    query: Result<Query<AttemptRef>, axum::extract::rejection::QueryRejection>,
    body: Bytes,
) -> Result<StatusCode, AppError> {
    let params: Vec<(String, String)> = serde_urlencoded::from_bytes(&body).map_err(|e| {
        AppError::bad_request("invalid_form", format!("the body is not a form: {e}"))
    })?;
    let given = headers
        .get(twilio::SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| forbidden("X-Twilio-Signature is missing"))?;
    let base = if state.config.twilio.public_url.is_empty() {
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        format!("http://{host}")
    } else {
        state
            .config
            .twilio
            .public_url
            .trim_end_matches('/')
            .to_owned()
    };
    let path = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    let url = format!("{base}{path}");
    if !twilio::verify(
        state.config.twilio.auth_token.expose(),
        &url,
        &params,
        given,
    ) {
        tracing::warn!(%url, "Twilio callback with a wrong signature refused");
        return Err(forbidden("X-Twilio-Signature does not match"));
    }
    // Checked after the signature: an unsigned request learns nothing about our URLs.
    let Query(attempt) = query.map_err(|e| {
        AppError::bad_request(
            "invalid_callback_url",
            format!("call_id, attempt, campaign_id: {e}"),
        )
    })?;
    let field = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let call_status = field("CallStatus")
        .ok_or_else(|| AppError::bad_request("invalid_callback", "CallStatus is missing"))?;
    // The callee's opt-out is recorded before anything else, whichever callback carries it
    // (a `<Gather>`'s action comes while the call is in progress).
    let opt_out_digits = state.config.twilio.opt_out_digits.trim();
    let opted_out =
        !opt_out_digits.is_empty() && field("Digits").is_some_and(|d| d.trim() == opt_out_digits);
    let unfinished = if opted_out {
        let to = field("To").and_then(|to| PhoneNumber::parse(&to, PhoneRule::Lenient).ok());
        hear(&state, &attempt, to, "digits").await?
    } else {
        None
    };
    let duration_secs = field("CallDuration").and_then(|d| d.parse::<u32>().ok());
    let Some(status) = twilio::outcome(&call_status, duration_secs) else {
        return unfinished.map_or(Ok(StatusCode::NO_CONTENT), |e| {
            Err(AppError::unavailable(e))
        });
    };
    let reason = field("AnsweredBy")
        .filter(|a| a.starts_with("machine") || a == "fax")
        .map(|a| format!("answered_by={a}"));
    let event = CallEvent::now(
        attempt.call_id,
        attempt.campaign_id,
        attempt.attempt,
        EventKind::Outcome {
            status,
            source: OutcomeSource::Carrier,
            raw_status: Some(call_status),
            duration_secs,
            external_call_id: field("CallSid"),
            reason,
            // An AI voice agent's "call me back at five" (its own status callback fields).
            callback: field("CallbackAt").map(|at| ccm_core::AskedCallback {
                at,
                time_zone: field("CallbackTimeZone"),
            }),
        },
    );
    // The carrier knows nothing of traces: the outcome joins the call's own trace.
    let span = tracing::info_span!("carrier_callback", call = %event.call_id);
    ccm_core::trace_context::continue_call(&span, &state.js, event.campaign_id, event.call_id)
        .await;
    let named = attempt
        .dialer
        .as_deref()
        .and_then(outcome_route::Address::parse);
    outcome_route::publish_carrier_outcome(&state.js, &event, named)
        .instrument(span)
        .await
        .map_err(AppError::unavailable)?;
    match unfinished {
        // The outcome is stored; the carrier's resend repeats only the unfinished steps.
        Some(e) => Err(AppError::unavailable(e)),
        None => Ok(StatusCode::NO_CONTENT),
    }
}

/// Records the callee's opt-out during `attempt` (see [`crate::opt_out`]), the number from
/// the callback (`to`) or, when it has none, from the call. `Ok(Some)`: the number is listed
/// but a later step failed, to be answered 503 once the outcome is stored.
pub(crate) async fn hear(
    state: &AppState,
    attempt: &AttemptRef,
    to: Option<PhoneNumber>,
    via: &'static str,
) -> Result<Option<crate::opt_out::OptOutError>, AppError> {
    let phone = match to {
        Some(phone) => phone,
        None => crate::opt_out::number_of(state, attempt.campaign_id, attempt.call_id)
            .await
            .map_err(AppError::Unavailable)?
            .ok_or_else(|| {
                AppError::not_found(
                    "call_not_found",
                    format!("no number is known for call {}", attempt.call_id),
                )
            })?,
    };
    let heard = crate::opt_out::Heard {
        call_id: attempt.call_id,
        campaign_id: attempt.campaign_id,
        attempt: attempt.attempt,
        phone,
        via,
    };
    match crate::opt_out::record(state, &heard).await {
        Ok(()) => Ok(None),
        Err(e) if e.listed() => {
            tracing::warn!(call = %heard.call_id, error = %crate::error_chain(&e), "opt-out recorded partly");
            Ok(Some(e))
        }
        Err(e) => Err(AppError::unavailable(e)),
    }
}

/// The carriers' signed callbacks.
pub(crate) fn routes() -> Vec<Entry> {
    vec![own("Twilio's signature", routes!(twilio))]
}
