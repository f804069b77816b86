//! The old system's carrier contract: `POST /api/initiate-call`.
//!
//! The body is `{call_id, phone_number, campaign_id, campaign_name}`; the answer is 200
//! `{external_call_id, call_id, status}`. When the call ends the outcome is sent to
//! `PUT {callback_base}/api/v1/callback/` as `{call_id, status, call_duration,
//! external_call_id}` with the configured `X-Auth-Token`, statuses spelled as the old system
//! spelled them (`PICKED`, `DISCONNECTED`, `RNR`, `FAILED`).

use axum::{
    Json,
    extract::{State, rejection::JsonRejection},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use reqwest::Method;
use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::{
    SimState,
    callback::{self, Callback},
    chance,
    ledger::Placement,
    outcome,
};

/// The placement request of the old contract.
#[derive(Debug, Deserialize)]
pub struct InitiateCall {
    pub call_id: String,
    pub phone_number: String,
    /// A number in the old system, a string in some clients: both are accepted.
    pub campaign_id: Value,
    #[serde(default)]
    pub campaign_name: Option<String>,
    /// The contact's custom fields, recorded in the ledger with the attempt.
    #[serde(default)]
    pub custom_fields: BTreeMap<String, String>,
    /// How long the phone may ring (ccm's addition to the contract; the old system sent none).
    #[serde(default)]
    pub ring_timeout_secs: Option<u32>,
    /// The number the callee is shown, when ccm dials from a caller-id pool.
    #[serde(default)]
    pub caller_id: Option<String>,
}

fn bad_request(reason: impl Into<String>) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"error": reason.into()})),
    )
        .into_response()
}

/// `POST /api/initiate-call`.
pub async fn initiate_call(
    State(state): State<SimState>,
    headers: HeaderMap,
    body: Result<Json<InitiateCall>, JsonRejection>,
) -> Response {
    let Json(body) = match body {
        Ok(body) => body,
        Err(e) => return bad_request(e.body_text()),
    };
    if body.call_id.is_empty() || body.phone_number.is_empty() {
        return bad_request("call_id and phone_number are required");
    }
    let scripted = state.script.next();
    if let Some(scripted) = scripted.filter(|s| !s.placed) {
        return crate::script::answer(scripted, StatusCode::OK.into_response()).await;
    }
    if scripted.is_none()
        && let Some(fault) = crate::inject_faults(&state).await
    {
        return fault;
    }
    if scripted.is_none() && chance(state.config.reject_rate) {
        state.ledger.count_rejected();
        return bad_request(format!("number {} is not reachable", body.phone_number));
    }
    let campaign = match &body.campaign_id {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let key = headers
        .get("Idempotency-Key")
        .and_then(|v| v.to_str().ok())
        .map_or_else(|| body.call_id.clone(), str::to_owned);
    let external_call_id = match state.ledger.place_in(
        crate::throttle::HTTP_ACCOUNT,
        state.config.account_limits(),
        &key,
        &campaign,
        &body.phone_number,
    ) {
        Placement::Throttled { retry_after_ms } => {
            return crate::throttle::too_many(
                retry_after_ms,
                json!({"error": "too many calls for the account, retry later"}),
            );
        }
        Placement::Repeat { external_call_id } => {
            return Json(json!({
                "external_call_id": external_call_id,
                "call_id": body.call_id,
                "status": "initiated",
            }))
            .into_response();
        }
        Placement::New { external_call_id } => external_call_id,
    };
    state.ledger.set_fields(&key, body.custom_fields);
    state.ledger.set_ring_timeout(&key, body.ring_timeout_secs);
    state.ledger.set_caller_id(&key, body.caller_id.as_deref());
    let opted_out = state.opt_outs.contains(&body.phone_number);
    let drawn = outcome::of_call(
        &state.config,
        &body.phone_number,
        body.caller_id.as_deref(),
        opted_out,
    );
    let mut last = Callback::Json {
        method: Method::PUT,
        url: format!(
            "{}/api/v1/callback/",
            state.config.callback_base.trim_end_matches('/')
        ),
        token: state.config.callback_token.clone(),
        body: json!({
            "call_id": body.call_id,
            "status": drawn.status.to_string(),
            "call_duration": drawn.duration_secs,
            "external_call_id": external_call_id,
        }),
    };
    if opted_out {
        if let Callback::Json { body, .. } = &mut last {
            body["opt_out"] = true.into();
        }
        state.ledger.count_opt_out();
    }
    callback::schedule(&state, key, state.config.call_length(), Vec::new(), last);
    let placed = Json(json!({
        "external_call_id": external_call_id,
        "call_id": body.call_id,
        "campaign_name": body.campaign_name,
        "status": "initiated",
    }))
    .into_response();
    match scripted {
        Some(scripted) => crate::script::answer(scripted, placed).await,
        None => placed,
    }
}
