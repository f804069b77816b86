//! Hanging up a live call, as the dialer does when a call outlives its maximum duration.
//!
//! - Twilio: `POST /2010-04-01/Accounts/{sid}/Calls/{CallSid}.json` with `Status=completed`
//!   (Twilio's way to end a call, or to cancel it while it still rings).
//! - The old contract, which has no such route, gets `POST /api/hangup-call` with
//!   `{call_id, external_call_id}` and the attempt as `Idempotency-Key`.
//!
//! A live call ends at once: its final callback is sent now, reporting the time it lasted, as
//! a carrier reports a call it hung up. Hanging up a call that already ended is answered 200
//! (nothing is live), an unknown one 404 (the `hangup_error_rate` fault answers 503 and leaves
//! the call live); every request is counted in the ledger and a live
//! call hung up is marked `hung_up`, so a test sees that the dialer ended it.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

use axum::{
    Json,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::SimState;

/// The calls live now, by ledger key: cancelling a call's token ends it early.
#[derive(Debug, Clone, Default)]
pub struct LiveCalls {
    inner: Arc<Mutex<HashMap<String, CancellationToken>>>,
}

impl LiveCalls {
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, CancellationToken>) -> T) -> T {
        f(&mut self.inner.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// The call under `key` starts; the token is cancelled when it is hung up.
    pub fn start(&self, key: &str) -> CancellationToken {
        let token = CancellationToken::new();
        self.with(|calls| calls.insert(key.to_owned(), token.clone()));
        token
    }

    /// The call under `key` ended by itself.
    pub fn end(&self, key: &str) {
        self.with(|calls| calls.remove(key));
    }

    /// Hangs the call under `key` up: whether it was live.
    pub fn hang_up(&self, key: &str) -> bool {
        self.with(|calls| calls.remove(key)).is_some_and(|token| {
            token.cancel();
            true
        })
    }
}

/// Ends the call under `key`, if known: 200 when it is (or was) placed, 404 otherwise; 503
/// with the call left live under the `hangup_error_rate` fault.
fn end(state: &SimState, key: Option<String>) -> Response {
    if crate::chance(state.faults().hangup_error_rate) {
        state.ledger.hang_up(None, false);
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": "simulated hang-up failure"})),
        )
            .into_response();
    }
    let live = key.as_deref().is_some_and(|k| state.live.hang_up(k));
    if state.ledger.hang_up(key.as_deref(), live) {
        tracing::info!(?key, live, "hung up");
        Json(json!({"status": "completed"})).into_response()
    } else {
        (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "no such call"})),
        )
            .into_response()
    }
}

/// `POST /2010-04-01/Accounts/{sid}/Calls/{CallSid}.json` with `Status=completed`.
pub async fn twilio(
    State(state): State<SimState>,
    Path((sid, file)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !crate::twilio_api::authorised(&state, &sid, &headers) {
        return crate::twilio_api::twilio_error(StatusCode::UNAUTHORIZED, 20003, "Authenticate");
    }
    let form = serde_urlencoded::from_bytes::<Vec<(String, String)>>(&body).unwrap_or_default();
    let status = form
        .iter()
        .find(|(k, _)| k == "Status")
        .map(|(_, v)| v.as_str());
    if !matches!(status, Some("completed" | "canceled")) {
        return crate::twilio_api::twilio_error(
            StatusCode::BAD_REQUEST,
            21220,
            "only Status=completed or canceled is supported",
        );
    }
    let call_sid = file.strip_suffix(".json").unwrap_or(&file);
    end(&state, state.ledger.key_of(call_sid))
}

/// The old contract's hang-up body.
#[derive(Debug, Deserialize)]
pub struct HangUpCall {
    #[serde(default)]
    pub call_id: Option<String>,
    #[serde(default)]
    pub external_call_id: Option<String>,
}

/// `POST /api/hangup-call`: the call is named by the attempt's `Idempotency-Key`, else by the
/// carrier's id.
pub async fn http(
    State(state): State<SimState>,
    headers: HeaderMap,
    Json(body): Json<HangUpCall>,
) -> Response {
    let key = headers
        .get("Idempotency-Key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| {
            body.external_call_id
                .as_deref()
                .and_then(|id| state.ledger.key_of(id))
        })
        .or(body.call_id);
    end(&state, key)
}
