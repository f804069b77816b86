//! Carrier adapters: how a call attempt is handed to a telephony carrier.
//!
//! An adapter only *places* the call. Its outcome always comes back as an outcome event on
//! `calls.outcome.<campaign>.<call>`: from a carrier callback through ingest, or published by
//! the adapter itself (the in-process simulator). The dialer waits for that event whatever
//! the adapter, so all adapters behave alike after placement.
//!
//! - [`sim`]: in process, for load tests.
//! - [`http`]: the old system's contract, `POST {base}/api/initiate-call`.
//! - [`twilio`]: Twilio's Programmable Voice REST API.

pub mod http;
pub mod sim;
pub mod twilio;

use std::sync::Arc;

use async_nats::jetstream;
use ccm_core::{DialRequest, config::CarrierConfig};
use futures::future::BoxFuture;

/// What the carrier said when the call was placed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    /// The carrier's id of the call, when it gives one.
    pub external_call_id: Option<String>,
}

/// Why a placement failed.
#[derive(Debug, thiserror::Error)]
pub enum CarrierError {
    /// The carrier could not be reached, answered 5xx, or refused our credentials: the call
    /// was certainly not placed.
    /// A technical failure, retried by redelivery and dead-lettered after `max_deliver`.
    #[error("carrier unavailable: {0}")]
    Unavailable(String),
    /// The carrier refused this call (4xx): the attempt ends FAILED with this reason.
    #[error("carrier rejected the call: {0}")]
    Rejected(String),
    /// The request may or may not have reached the carrier (a timeout after sending): the
    /// call is treated as placed, never placed again, and ends by its outcome or the timeout.
    #[error("carrier answer unknown: {0}")]
    Ambiguous(String),
}

/// The campaign a call belongs to, as the carrier is told about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CampaignInfo {
    pub name: Arc<str>,
    /// The campaign's calling window, when it has one (checked before placing, not sent).
    pub window: Option<Arc<crate::window::Window>>,
    /// The campaign's pacing (new calls per second), when it sets one.
    pub max_calls_per_second: Option<u32>,
}

/// A carrier adapter.
pub trait Carrier: Send + Sync + std::fmt::Debug + 'static {
    /// Places `call` with the carrier. Adapters send the attempt's id (`<call>/<attempt>`) as
    /// the carrier's idempotency key where the carrier has one.
    fn place<'a>(
        &'a self,
        call: &'a DialRequest,
        campaign: &'a CampaignInfo,
    ) -> BoxFuture<'a, Result<Placement, CarrierError>>;

    /// Whether this carrier's outcomes say which attempt they end. When they name only the
    /// call (the old contract), the dialer records the carrier's id of each placement so
    /// ingest can tell the attempts apart ([`crate::placements`]).
    fn outcomes_name_the_attempt(&self) -> bool {
        false
    }
}

/// Why an adapter could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot build the carrier's HTTP client")]
    Client(#[source] reqwest::Error),
    #[error("invalid carrier configuration: {0}")]
    Config(String),
}

/// The adapter the configuration names.
pub fn build(
    config: &CarrierConfig,
    js: &jetstream::Context,
) -> Result<Arc<dyn Carrier>, BuildError> {
    Ok(match config {
        CarrierConfig::Sim(sim) => Arc::new(sim::SimCarrier::new(js.clone(), sim.clone())),
        CarrierConfig::Http(http) => Arc::new(http::HttpCarrier::new(http.clone())?),
        CarrierConfig::Twilio(twilio) => Arc::new(twilio::TwilioCarrier::new(twilio.clone())?),
    })
}

/// Sorts a failed HTTP exchange: refused connections certainly placed nothing; anything that
/// may have reached the carrier (a timeout after sending) is ambiguous.
pub(crate) fn classify_send_error(e: &reqwest::Error) -> CarrierError {
    if e.is_connect() || e.is_builder() {
        CarrierError::Unavailable(e.to_string())
    } else {
        CarrierError::Ambiguous(e.to_string())
    }
}

/// Sorts a carrier's non-success answer. 5xx, 408 and 429 are unavailability. So are 401,
/// 403 and 404: they say our credentials or account are wrong, not that this call is, and
/// ending every call of a campaign FAILED for a configuration mistake would burn its
/// attempts; redelivery and then the DLQ keep them for a redrive once it is fixed. Any other
/// 4xx refuses this call.
pub(crate) async fn classify_status(response: reqwest::Response) -> CarrierError {
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    // Carriers explain refusals in `message` (Twilio) or `error` (the old contract).
    let reason = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| {
            v.get("message")
                .or_else(|| v.get("error"))
                .and_then(|m| m.as_str())
                .map(str::to_owned)
        })
        .unwrap_or(body);
    let reason = format!(
        "{} {}",
        status.as_u16(),
        reason.chars().take(300).collect::<String>()
    );
    use reqwest::StatusCode;
    let technical = [
        StatusCode::UNAUTHORIZED,
        StatusCode::FORBIDDEN,
        StatusCode::NOT_FOUND,
        StatusCode::REQUEST_TIMEOUT,
        StatusCode::TOO_MANY_REQUESTS,
    ];
    if status.is_server_error() || technical.contains(&status) {
        CarrierError::Unavailable(reason)
    } else {
        CarrierError::Rejected(reason)
    }
}
