//! # ccm-carrier-sim
//!
//! A fake telephony carrier that speaks, on one port, the two HTTP APIs ccm's carrier
//! adapters use, so the demo, tests and benchmarks exercise the real adapters and callbacks:
//!
//! - [`http_api`]: the old system's contract, `POST /api/initiate-call`, with outcomes sent
//!   back to `PUT {callback_base}/api/v1/callback/` carrying `X-Auth-Token`.
//! - [`twilio_api`]: `POST /2010-04-01/Accounts/{sid}/Calls.json` with basic auth, with
//!   status callbacks to the request's `StatusCallback`, signed with `X-Twilio-Signature`.
//! - [`ledger`]: every placed attempt (by idempotency key) and the peak of live calls per
//!   campaign, served at `GET /stats`, so tests can audit "placed at most once" and "cap never
//!   exceeded". `GET /health` answers 200.
//! - [`hangup`]: ending a live call early (both APIs), as the dialer does at its maximum
//!   duration; [`script`]: a sequence of scripted answers to placement requests.
//! - [`faults`]: 5xx, latency and callback faults changed at run time (`GET|PUT /faults`).
//! - [`throttle`]: each carrier account's calls per second and live calls, answered 429 with
//!   `Retry-After` over them.
//! - [`outcome`]: the outcome mix; [`callback`]: delivery with the configured faults
//!   (dropped, duplicated, out-of-order callbacks).

pub(crate) mod callback;
pub mod callback_ask;
pub(crate) mod faults;
pub(crate) mod hangup;
pub(crate) mod http_api;
pub mod ledger;
pub mod opt_out;
pub(crate) mod outcome;
pub mod script;
pub mod throttle;
pub(crate) mod twilio_api;

use std::{
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{
    Json, Router,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use rand::Rng;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{faults::Faults, ledger::Ledger};

/// How the simulator behaves; every field is a command-line flag.
#[derive(Debug, Clone, clap::Args)]
pub struct SimConfig {
    /// Weight of PICKED outcomes.
    #[arg(long, default_value_t = 70)]
    pub picked: u32,
    /// Weight of DISCONNECTED outcomes.
    #[arg(long, default_value_t = 15)]
    pub disconnected: u32,
    /// Weight of RNR outcomes (no answer or busy).
    #[arg(long, default_value_t = 10)]
    pub rnr: u32,
    /// Weight of FAILED outcomes.
    #[arg(long, default_value_t = 5)]
    pub failed: u32,
    /// How long a call lasts before its outcome is called back, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub call_ms: u64,
    /// Random extra call length, up to this many milliseconds.
    #[arg(long, default_value_t = 0)]
    pub call_jitter_ms: u64,
    /// Base URL of ccm's ingest for the old contract's callbacks (`PUT …/api/v1/callback/`).
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub callback_base: String,
    /// `X-Auth-Token` sent with the old contract's callbacks.
    #[arg(long, env = "CARRIER_SIM_CALLBACK_TOKEN", default_value = "")]
    pub callback_token: String,
    /// The Twilio account sid accepted by the Twilio-compatible API.
    #[arg(long, default_value = "ACsimulator")]
    pub twilio_account_sid: String,
    /// The Twilio auth token: checked by basic auth and used to sign status callbacks.
    #[arg(
        long,
        env = "CARRIER_SIM_TWILIO_AUTH_TOKEN",
        default_value = "sim-auth-token"
    )]
    pub twilio_auth_token: String,
    /// Share of placement requests answered 503 without placing anything (0 to 1).
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    pub error_rate: f64,
    /// The first this many placement requests are answered 503 (a deterministic outage).
    #[arg(long, default_value_t = 0)]
    pub fail_first: u64,
    /// Share of placement requests refused with 400 (the number is "unreachable").
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    pub reject_rate: f64,
    /// Added latency of every placement response, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Share of final callbacks never sent.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    pub drop_rate: f64,
    /// Share of final callbacks sent twice.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    pub duplicate_rate: f64,
    /// Share of calls whose callbacks are sent out of order (final status before ringing).
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    pub reorder_rate: f64,
    /// Share of answered Twilio calls with machine detection that a machine answered
    /// (`AnsweredBy=machine_start`; the others `human`).
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    pub machine_rate: f64,
    /// Numbers (E.164) whose callees answer and opt out (see [`opt_out`]); repeat the flag or
    /// separate with commas.
    #[arg(long = "opt-out-number", value_delimiter = ',')]
    pub opt_out_numbers: Vec<String>,
    /// The keypad input an opted-out Twilio callee sends (`Digits`).
    #[arg(long, default_value = "9")]
    pub opt_out_digits: String,
    /// Caller ids (E.164) the carriers labelled as spam: calls showing them are never
    /// answered (no-answer, `RNR`). Repeat the flag or separate with commas.
    #[arg(long = "spam-caller-id", value_delimiter = ',')]
    pub spam_caller_ids: Vec<String>,
    /// New calls per second each carrier account may place; more are answered 429 with
    /// `Retry-After` ([`throttle`]). 0: unlimited.
    #[arg(long, env = "CARRIER_SIM_ACCOUNT_CPS", default_value_t = 0)]
    pub account_cps: u32,
    /// Live calls each carrier account may hold; more are answered 429. 0: unlimited.
    #[arg(long, env = "CARRIER_SIM_ACCOUNT_MAX_LIVE", default_value_t = 0)]
    pub account_max_live: u64,
    /// Numbers (E.164) nobody answers: every call to one ends RNR (a contact's mobile that
    /// rings out, so its next number is tried); repeat the flag or separate with commas.
    #[arg(long = "unanswered-number", value_delimiter = ',')]
    pub unanswered_numbers: Vec<String>,
    /// Numbers (E.164) whose callees answer their first call and ask to be called back (see
    /// [`callback_ask`]); repeat the flag or separate with commas.
    #[arg(long = "callback-number", value_delimiter = ',')]
    pub callback_numbers: Vec<String>,
    /// How long after the call's end those callees ask to be called back.
    #[arg(long, default_value_t = 5000)]
    pub callback_after_ms: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            picked: 70,
            disconnected: 15,
            rnr: 10,
            failed: 5,
            call_ms: 2000,
            call_jitter_ms: 0,
            callback_base: "http://127.0.0.1:8000".into(),
            callback_token: String::new(),
            twilio_account_sid: "ACsimulator".into(),
            twilio_auth_token: "sim-auth-token".into(),
            error_rate: 0.0,
            fail_first: 0,
            reject_rate: 0.0,
            latency_ms: 0,
            drop_rate: 0.0,
            duplicate_rate: 0.0,
            reorder_rate: 0.0,
            machine_rate: 0.0,
            opt_out_numbers: Vec::new(),
            opt_out_digits: "9".into(),
            spam_caller_ids: Vec::new(),
            account_cps: 0,
            account_max_live: 0,
            unanswered_numbers: Vec::new(),
            callback_numbers: Vec::new(),
            callback_after_ms: 5000,
        }
    }
}

impl SimConfig {
    /// Each carrier account's limits.
    pub fn account_limits(&self) -> throttle::Limits {
        throttle::Limits {
            per_second: self.account_cps,
            max_live: self.account_max_live,
        }
    }

    /// How long the next call lasts.
    pub fn call_length(&self) -> Duration {
        let jitter = if self.call_jitter_ms == 0 {
            0
        } else {
            rand::rng().random_range(0..=self.call_jitter_ms)
        };
        Duration::from_millis(self.call_ms + jitter)
    }
}

/// A share between 0 and 1, for the fault flags.
fn parse_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if (0.0..=1.0).contains(&rate) => Ok(rate),
        _ => Err(format!("{text} is not a share between 0 and 1")),
    }
}

/// Draws `true` with probability `rate`.
pub(crate) fn chance(rate: f64) -> bool {
    rate > 0.0 && rand::rng().random_bool(rate.min(1.0))
}

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct SimState {
    pub config: Arc<SimConfig>,
    pub ledger: Arc<Ledger>,
    pub http: reqwest::Client,
    /// Placement requests seen, for `fail_first`.
    pub requests: Arc<AtomicU64>,
    /// Callback tasks stop when the simulator does.
    pub shutdown: CancellationToken,
    /// The faults in force, starting from the command line's; `PUT /faults` changes them.
    pub faults: Arc<RwLock<Faults>>,
    /// The calls live now, so a hang-up can end them.
    pub live: hangup::LiveCalls,
    /// Scripted answers still to give.
    pub script: script::Script,
    /// Numbers whose callees opt out.
    pub opt_outs: opt_out::OptOuts,
    /// Callees who asked to be called back.
    pub callback_asks: callback_ask::Asks,
}

impl SimState {
    /// The faults in force now.
    pub fn faults(&self) -> Faults {
        self.faults
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// Why the simulator stopped.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("the HTTP server failed")]
    Serve(#[source] std::io::Error),
    #[error("cannot build the HTTP client")]
    Client(#[source] reqwest::Error),
}

/// The simulator's routes.
pub fn router(state: SimState) -> Router {
    Router::new()
        .route(
            "/health",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/stats", get(stats))
        .route("/faults", get(get_faults).put(put_faults))
        .route("/script", axum::routing::put(script::put))
        .route("/opt_outs", axum::routing::put(opt_out::put))
        .route("/api/initiate-call", post(http_api::initiate_call))
        .route("/api/hangup-call", post(hangup::http))
        .route(
            "/2010-04-01/Accounts/{sid}/Calls.json",
            post(twilio_api::create_call),
        )
        .route(
            "/2010-04-01/Accounts/{sid}/Calls/{call}",
            post(hangup::twilio),
        )
        .with_state(state)
}

async fn stats(State(state): State<SimState>) -> Response {
    Json(state.ledger.snapshot()).into_response()
}

async fn get_faults(State(state): State<SimState>) -> Response {
    Json(state.faults()).into_response()
}

/// `PUT /faults`: replaces the faults in force (omitted fields are 0).
async fn put_faults(
    State(state): State<SimState>,
    body: Result<Json<Faults>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let faults = match body {
        Ok(Json(faults)) => faults,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(serde_json::json!({"error": e.body_text()})),
            )
                .into_response();
        }
    };
    if let Some(reason) = faults.invalid() {
        return (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({"error": reason})),
        )
            .into_response();
    }
    tracing::info!(?faults, "faults changed");
    *state
        .faults
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = faults.clone();
    Json(faults).into_response()
}

/// Serves on `listener` until `shutdown`.
pub async fn run(
    config: SimConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), SimError> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(SimError::Client)?;
    let state = SimState {
        faults: Arc::new(RwLock::new(Faults::from_config(&config))),
        ledger: Arc::new(Ledger::default()),
        http,
        requests: Arc::new(AtomicU64::new(0)),
        shutdown: shutdown.clone(),
        live: hangup::LiveCalls::default(),
        script: script::Script::default(),
        opt_outs: opt_out::OptOuts::new(&config.opt_out_numbers),
        callback_asks: callback_ask::Asks::default(),
        config: Arc::new(config),
    };
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "carrier-sim listening");
    }
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .map_err(SimError::Serve)
}

/// Applies the configured latency and error rate to a placement request: `Some` is the
/// fault response to send instead of placing.
pub(crate) async fn inject_faults(state: &SimState) -> Option<Response> {
    let faults = state.faults();
    if faults.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
    }
    let seen = state.requests.fetch_add(1, Ordering::Relaxed);
    if seen < state.config.fail_first || chance(faults.error_rate) {
        state.ledger.count_injected_error();
        return Some(
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(serde_json::json!({"error": "simulated carrier outage"})),
            )
                .into_response(),
        );
    }
    None
}
