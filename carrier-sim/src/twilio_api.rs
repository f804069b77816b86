//! A Twilio-compatible `POST /2010-04-01/Accounts/{AccountSid}/Calls.json`.
//!
//! Basic auth with the account sid and auth token; form fields `To`, `From`, `Url`,
//! `StatusCallback`, repeated `StatusCallbackEvent`, `Timeout`, `MachineDetection`. Status
//! callbacks are form posts to `StatusCallback`, signed with `X-Twilio-Signature` exactly as
//! Twilio signs them: `ringing` at placement when asked for, the final status at the end.
//! The outcome maps onto Twilio's statuses as ccm maps them back: PICKED → `completed` with a
//! duration, DISCONNECTED → `completed` lasting 0 s, RNR → `no-answer` or `busy`, FAILED →
//! `failed`.

use axum::{
    Json,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use base64::{Engine, engine::general_purpose::STANDARD};
use ccm_core::OutcomeStatus;
use serde_json::json;

use crate::{
    SimState,
    callback::{self, Callback},
    chance,
    ledger::Placement,
    outcome,
};

pub(crate) fn twilio_error(status: StatusCode, code: u32, message: impl Into<String>) -> Response {
    let message = message.into();
    (
        status,
        Json(json!({"code": code, "message": message, "status": status.as_u16()})),
    )
        .into_response()
}

pub(crate) fn authorised(state: &SimState, sid: &str, headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some(encoded) = value.strip_prefix("Basic ") else {
        return false;
    };
    let Ok(decoded) = STANDARD.decode(encoded.trim()) else {
        return false;
    };
    let expected = format!(
        "{}:{}",
        state.config.twilio_account_sid, state.config.twilio_auth_token
    );
    sid == state.config.twilio_account_sid && decoded == expected.as_bytes()
}

/// The value of the first form field `name`.
fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// `POST /2010-04-01/Accounts/{sid}/Calls.json`.
pub async fn create_call(
    State(state): State<SimState>,
    Path(sid): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !authorised(&state, &sid, &headers) {
        return twilio_error(StatusCode::UNAUTHORIZED, 20003, "Authenticate");
    }
    let Ok(form) = serde_urlencoded::from_bytes::<Vec<(String, String)>>(&body) else {
        return twilio_error(StatusCode::BAD_REQUEST, 21000, "the body is not a form");
    };
    let (Some(to), Some(from)) = (field(&form, "To"), field(&form, "From")) else {
        return twilio_error(StatusCode::BAD_REQUEST, 21201, "To and From are required");
    };
    if field(&form, "Url").is_none() && field(&form, "Twiml").is_none() {
        return twilio_error(StatusCode::BAD_REQUEST, 21205, "Url or Twiml is required");
    }
    let scripted = state.script.next();
    if let Some(scripted) = scripted.filter(|s| !s.placed) {
        return crate::script::answer(scripted, StatusCode::CREATED.into_response()).await;
    }
    if scripted.is_none()
        && let Some(fault) = crate::inject_faults(&state).await
    {
        return fault;
    }
    if scripted.is_none() && chance(state.config.reject_rate) {
        state.ledger.count_rejected();
        return twilio_error(
            StatusCode::BAD_REQUEST,
            21217,
            format!("{to} is not reachable"),
        );
    }
    let status_callback = field(&form, "StatusCallback").map(str::to_owned);
    // The campaign is only known to ccm; its adapter names it in the callback URL's query.
    let campaign = status_callback
        .as_deref()
        .and_then(|url| url.split_once('?'))
        .and_then(|(_, query)| {
            serde_urlencoded::from_str::<Vec<(String, String)>>(query)
                .ok()?
                .into_iter()
                .find_map(|(k, v)| (k == "campaign_id").then_some(v))
        })
        .unwrap_or_else(|| "twilio".into());
    let key = headers
        .get("Idempotency-Key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| status_callback.clone())
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let placement = state
        .ledger
        .place_in(&sid, state.config.account_limits(), &key, &campaign, to);
    let (call_sid, new) = match placement {
        // Twilio's answer over the account's CPS: 429 with error 20429.
        Placement::Throttled { retry_after_ms } => {
            return crate::throttle::too_many(
                retry_after_ms,
                json!({"code": 20429, "message": "Too Many Requests", "status": 429}),
            );
        }
        Placement::New { external_call_id } => (external_call_id, true),
        Placement::Repeat { external_call_id } => (external_call_id, false),
    };
    if new {
        let timeout = field(&form, "Timeout").and_then(|t| t.parse().ok());
        state.ledger.set_ring_timeout(&key, timeout);
        state.ledger.set_caller_id(&key, Some(from));
    }
    if new && let Some(url) = status_callback {
        schedule_callbacks(&state, key, &form, &call_sid, url);
    }
    let created = (
        StatusCode::CREATED,
        Json(json!({
            "sid": call_sid,
            "account_sid": sid,
            "to": to,
            "from": from,
            "status": "queued",
            "direction": "outbound-api",
            "api_version": "2010-04-01",
            "uri": format!("/2010-04-01/Accounts/{sid}/Calls/{call_sid}.json"),
        })),
    )
        .into_response();
    match scripted {
        Some(scripted) => crate::script::answer(scripted, created).await,
        None => created,
    }
}

fn schedule_callbacks(
    state: &SimState,
    key: String,
    form: &[(String, String)],
    call_sid: &str,
    url: String,
) {
    let events: Vec<&str> = form
        .iter()
        .filter(|(k, _)| k == "StatusCallbackEvent")
        .flat_map(|(_, v)| v.split_whitespace())
        .collect();
    let machine_detection = field(form, "MachineDetection").is_some();
    let base = |status: &str, sequence: u32| -> Vec<(String, String)> {
        [
            ("CallSid", call_sid),
            ("AccountSid", state.config.twilio_account_sid.as_str()),
            ("From", field(form, "From").unwrap_or_default()),
            ("To", field(form, "To").unwrap_or_default()),
            ("Direction", "outbound-api"),
            ("ApiVersion", "2010-04-01"),
            ("CallStatus", status),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .chain([("SequenceNumber".to_owned(), sequence.to_string())])
        .collect()
    };
    let sign = |params: Vec<(String, String)>| {
        let signature = ccm_core::twilio::signature(&state.config.twilio_auth_token, &url, &params);
        Callback::Form {
            url: url.clone(),
            params,
            signature,
        }
    };
    let mut intermediate = Vec::new();
    if events.contains(&"ringing") {
        intermediate.push(sign(base("ringing", 1)));
    }
    let to = field(form, "To").unwrap_or_default();
    let opted_out = state.opt_outs.contains(to);
    let length = state.config.call_length();
    let asks_back = state.callback_asks.ask(&state.config, to, length);
    // A callee who asks to be called back answered; else by the call (opted out, a number
    // never answering, a caller id labelled spam) or drawn from the mix.
    let drawn = if asks_back.is_some() {
        outcome::answered(&state.config)
    } else {
        outcome::of_call(&state.config, to, field(form, "From"), opted_out)
    };
    let status = match drawn.status {
        OutcomeStatus::Picked | OutcomeStatus::Disconnected => "completed",
        OutcomeStatus::Rnr if chance(1.0 / 3.0) => "busy",
        OutcomeStatus::Rnr => "no-answer",
        OutcomeStatus::Failed => "failed",
    };
    let mut last = base(status, 2);
    last.push(("CallDuration".into(), drawn.duration_secs.to_string()));
    if machine_detection && status == "completed" {
        let who = if chance(state.config.machine_rate) {
            "machine_start"
        } else {
            "human"
        };
        last.push(("AnsweredBy".into(), who.into()));
    }
    if opted_out {
        last.push(("Digits".into(), state.config.opt_out_digits.clone()));
        state.ledger.count_opt_out();
    }
    if let Some(at) = asks_back {
        last.push(("CallbackAt".into(), at));
        state.ledger.count_callback_request();
    }
    callback::schedule(state, key, length, intermediate, sign(last));
}
