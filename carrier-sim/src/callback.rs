//! Sending a call's callbacks, with the configured faults.
//!
//! A call's intermediate callbacks (Twilio's `ringing`) go out when it is placed and the
//! final one when it ends, unless a fault says otherwise: dropped (the final callback is never
//! sent), duplicated (sent twice) or out of order (the final one first, the intermediate ones
//! after it). Delivery is retried a few times on network errors and 5xx, like a real
//! carrier's webhook delivery.

use std::time::Duration;

use reqwest::Method;

use crate::{SimState, chance};

/// One HTTP request to send back to ccm.
#[derive(Debug, Clone)]
pub enum Callback {
    /// The old contract: JSON with `X-Auth-Token`.
    Json {
        method: Method,
        url: String,
        token: String,
        body: serde_json::Value,
    },
    /// Twilio: a form, signed.
    Form {
        url: String,
        params: Vec<(String, String)>,
        signature: String,
    },
}

impl Callback {
    /// Reports a call hung up after `lasted`: a talk time it reported is cut to that (at
    /// least a second, so an answered call still shows as answered).
    pub fn shorten(&mut self, lasted: Duration) {
        let secs = lasted.as_secs().max(1);
        match self {
            Self::Json { body, .. } => {
                if body["call_duration"].as_u64().is_some_and(|d| d > secs) {
                    body["call_duration"] = secs.into();
                }
            }
            // The signature covers the parameters: a Twilio callback is left as drawn.
            Self::Form { .. } => {}
        }
    }
}

/// Deliveries tried per callback before giving up.
const DELIVERY_TRIES: u32 = 5;

/// Sends the call's callbacks over its life: `intermediate` now, `last` after `length`.
/// `key` is the attempt's key in the ledger, whose call stops being live when it ends.
pub fn schedule(
    state: &SimState,
    key: String,
    length: Duration,
    intermediate: Vec<Callback>,
    last: Callback,
) {
    let state = state.clone();
    let faults = state.faults();
    let reorder = chance(faults.reorder_rate);
    let drop_last = chance(faults.drop_rate);
    let duplicate = chance(faults.duplicate_rate);
    let hung_up = state.live.start(&key);
    let started = std::time::Instant::now();
    let mut last = last;
    let length = length + Duration::from_millis(faults.extra_call_ms);
    tokio::spawn(async move {
        if !reorder {
            for callback in &intermediate {
                deliver(&state, callback).await;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(length) => state.live.end(&key),
            // Ended early: the callback reports the time it lasted.
            () = hung_up.cancelled() => last.shorten(started.elapsed()),
            _ = state.shutdown.cancelled() => return,
        }
        state.ledger.end_attempt(&key);
        if drop_last {
            tracing::info!(%key, "fault: final callback dropped");
        } else {
            deliver(&state, &last).await;
            if duplicate {
                deliver(&state, &last).await;
            }
        }
        if reorder {
            for callback in &intermediate {
                deliver(&state, callback).await;
            }
        }
    });
}

/// Sends one callback, retrying on network errors and 5xx; records the result.
pub async fn deliver(state: &SimState, callback: &Callback) -> bool {
    let mut delay = Duration::from_millis(100);
    for _ in 0..DELIVERY_TRIES {
        let request = match callback {
            Callback::Json {
                method,
                url,
                token,
                body,
            } => {
                let mut request = state.http.request(method.clone(), url).json(body);
                if !token.is_empty() {
                    request = request.header("X-Auth-Token", token);
                }
                request
            }
            Callback::Form {
                url,
                params,
                signature,
            } => state
                .http
                .post(url)
                .header(ccm_core::twilio::SIGNATURE_HEADER, signature)
                .form(params),
        };
        match request.send().await {
            Ok(response) if response.status().is_success() => {
                state.ledger.count_callback(true);
                return true;
            }
            Ok(response) if response.status().is_client_error() => {
                tracing::warn!(status = %response.status(), "callback refused");
                break;
            }
            Ok(response) => tracing::warn!(status = %response.status(), "callback failed"),
            Err(e) => {
                tracing::warn!(error = %ccm_core::telemetry::chain(&e), "callback not delivered")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = state.shutdown.cancelled() => break,
        }
        delay *= 2;
    }
    state.ledger.count_callback(false);
    false
}
