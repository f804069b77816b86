//! Scripted answers to placement requests (`PUT /script`), for tests that need a given
//! sequence of carrier answers: each placement request takes the next one, and once the
//! script is used up requests are answered as usual (with the faults in force).
//!
//! An answer may place the call and still report failure (a 502 or 504 from a proxy in front
//! of a carrier that created the call), or place it and answer too late for the dialer
//! (`delay_ms` past its request timeout): the answers that prove nothing.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use axum::{
    Json,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};

use crate::SimState;

/// One scripted answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scripted {
    /// The status answered; a success status answers as the API normally does.
    pub status: u16,
    /// Whether the call is placed (recorded in the ledger, called back) before answering.
    #[serde(default)]
    pub placed: bool,
    /// How long the answer takes, in milliseconds.
    #[serde(default)]
    pub delay_ms: u64,
}

/// The answers still to give.
#[derive(Debug, Clone, Default)]
pub struct Script {
    inner: Arc<Mutex<VecDeque<Scripted>>>,
}

impl Script {
    /// The answer to the next placement request, if one is scripted.
    pub fn next(&self) -> Option<Scripted> {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop_front()
    }

    fn replace(&self, answers: Vec<Scripted>) {
        *self.inner.lock().unwrap_or_else(PoisonError::into_inner) = answers.into();
    }
}

/// `PUT /script`: replaces the answers still to give.
pub async fn put(State(state): State<SimState>, Json(answers): Json<Vec<Scripted>>) -> Response {
    tracing::info!(?answers, "script changed");
    state.script.replace(answers.clone());
    Json(answers).into_response()
}

/// Waits `scripted.delay_ms`, then answers its status with `normal` when it is a success.
pub async fn answer(scripted: Scripted, normal: Response) -> Response {
    tokio::time::sleep(Duration::from_millis(scripted.delay_ms)).await;
    match StatusCode::from_u16(scripted.status) {
        Ok(status) if status.is_success() => normal,
        Ok(status) => (
            status,
            Json(serde_json::json!({"error": "scripted answer", "message": "scripted answer"})),
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}
