//! Callees who opt out: a call to one of these numbers is answered, and its final callback
//! says the callee asked not to be called again (the old contract's `"opt_out": true`;
//! Twilio's `Digits` of a `<Gather>`, the configured `opt_out_digits`). Set from the command
//! line (`--opt-out-number`) and replaced at run time with `PUT /opt_outs` (a JSON list of
//! E.164 numbers), so a test can make a number opt out from a given moment on.

use std::{
    collections::BTreeSet,
    sync::{Arc, PoisonError, RwLock},
};

use axum::{Json, extract::State, response::IntoResponse, response::Response};

use crate::SimState;

/// The numbers that opt out.
#[derive(Debug, Clone, Default)]
pub struct OptOuts {
    inner: Arc<RwLock<BTreeSet<String>>>,
}

impl OptOuts {
    pub fn new(numbers: &[String]) -> Self {
        Self {
            inner: Arc::new(RwLock::new(numbers.iter().cloned().collect())),
        }
    }

    /// Whether the callee at `number` opts out.
    pub fn contains(&self, number: &str) -> bool {
        self.inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(number)
    }

    fn replace(&self, numbers: Vec<String>) {
        *self.inner.write().unwrap_or_else(PoisonError::into_inner) = numbers.into_iter().collect();
    }
}

/// `PUT /opt_outs`: replaces the numbers that opt out.
pub async fn put(State(state): State<SimState>, Json(numbers): Json<Vec<String>>) -> Response {
    tracing::info!(?numbers, "opt-outs changed");
    state.opt_outs.replace(numbers.clone());
    Json(numbers).into_response()
}
