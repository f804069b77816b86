//! `POST /api/v1/callbacks/twilio`: Twilio's status callbacks.
//!
//! The dialer's Twilio adapter puts the call id, attempt and campaign in the `StatusCallback`
//! query, so a callback names the attempt it ends. The `X-Twilio-Signature` is checked
//! against `ingest.twilio.auth_token` over the URL as Twilio called it (`ingest.twilio.
//! public_url`, or `http://<Host>`, plus path and query) and the form parameters; a wrong or
//! missing signature is answered 403 and publishes nothing. Final statuses become an outcome
//! event with `Nats-Msg-Id` `<call>/<attempt>/outcome`, so a repeated callback is dropped by
//! the server; intermediate statuses (`ringing`, …) are acknowledged and ignored, which also
//! makes out-of-order delivery harmless.

use axum::{
    body::Bytes,
    extract::{OriginalUri, Query, State},
    http::{HeaderMap, StatusCode, header},
};
use ccm_core::{CallEvent, CallId, CampaignId, EventKind, OutcomeSource, twilio};
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
    let duration_secs = field("CallDuration").and_then(|d| d.parse::<u32>().ok());
    let Some(status) = twilio::outcome(&call_status, duration_secs) else {
        return Ok(StatusCode::NO_CONTENT);
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
        },
    );
    // The carrier knows nothing of traces: the outcome joins the call's own trace.
    let span = tracing::info_span!("carrier_callback", call = %event.call_id);
    ccm_core::trace_context::continue_call(&span, &state.js, event.campaign_id, event.call_id)
        .await;
    ccm_core::nats::publish_event(&state.js, &event)
        .instrument(span)
        .await
        .map_err(AppError::unavailable)?;
    Ok(StatusCode::NO_CONTENT)
}

/// The carriers' signed callbacks.
pub(crate) fn routes() -> Vec<Entry> {
    vec![own("Twilio's signature", routes!(twilio))]
}
