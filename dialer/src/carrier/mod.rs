//! Carrier adapters: how a call attempt is handed to a telephony carrier.
//!
//! An adapter only *places* the call. Its outcome always comes back as an outcome event on
//! `calls.outcome.<campaign>.<call>`: from a carrier callback through ingest, or published by
//! the adapter itself (the in-process simulator). The dialer waits for that event whatever
//! the adapter, so all adapters behave alike after placement.
//!
//! The outcome's core copy goes to the dialer that placed the attempt
//! ([`ccm_core::outcome_route`]). How its address reaches the publisher differs by adapter:
//! the simulator publishes in the dialer itself; Twilio is given the callback URL with each
//! call (`StatusCallback`), which names it (`dialer=<address>`); the old contract tells the
//! carrier nothing about callbacks (the carrier is configured with ingest's URL and echoes
//! only the call and its own id), so ingest reads the address from the attempt's `Dialing`.
//!
//! - [`sim`]: in process, for load tests.
//! - [`http`]: the old system's contract, `POST {base}/api/initiate-call`.
//! - [`twilio`]: Twilio's Programmable Voice REST API.

pub mod http;
pub mod sim;
pub mod twilio;

use std::{sync::Arc, time::Duration};

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
    /// The answer proves the carrier created nothing (the connection was refused, the
    /// credentials or the route were refused, the carrier said it cannot take requests now):
    /// a technical failure, retried by redelivery and dead-lettered after `max_deliver`.
    #[error("carrier unavailable: {0}")]
    Unavailable(String),
    /// The carrier refused this call (4xx): the attempt ends FAILED with this reason.
    #[error("carrier rejected the call: {0}")]
    Rejected(String),
    /// The call may have been created (a timeout after sending, a 5xx other than 503, a
    /// 409): the attempt is treated as placed, never placed again, and ends by its outcome
    /// or, at its maximum duration, as outcome-unknown.
    #[error("carrier answer unknown: {0}")]
    Ambiguous(String),
    /// Over the carrier account's limits (429): nothing was created; the account slows down
    /// and the attempt is put off, `retry_after` when the carrier said how long
    /// ([`crate::account`]).
    #[error("carrier account throttled: {reason}")]
    Throttled {
        reason: String,
        retry_after: Option<Duration>,
    },
}

/// How a carrier's failed answer to a placement request is taken ([`classify`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing was created: the `Dialing` record may be withdrawn and the attempt retried.
    NotPlaced,
    /// Nothing was created and the carrier refused this very call.
    Refused,
    /// The call may exist: never placed again.
    Unknown,
    /// Nothing was created: the account is over its limits (429). Not a failure of the
    /// attempt, which is put off, nor an outage.
    Throttled,
}

/// What came back from a placement request that did not succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// No connection was made (refused, DNS, TLS), or the request was never built: the
    /// carrier saw nothing.
    NotSent,
    /// The request may have been sent but no answer was read (a timeout, a reset).
    NoAnswer,
    /// The carrier (or a proxy in front of it) answered this status.
    Status(u16),
}

/// Sorts a failed answer. Only answers that prove nothing was created may be retried:
/// - no connection; 401, 403 and 404 (our credentials, account or route are refused: a
///   configuration mistake, so redelivery and then the DLQ keep the calls for a redrive
///   instead of burning their attempts); 408 (the request was not received in full); 503 (the
///   server says it is not taking requests now).
/// - 429: the carrier account is over its rate or its call limit ([`Verdict::Throttled`]).
/// - any other 4xx but 409 refuses this call.
/// - everything else may follow a created call: a timeout or reset after sending, 409 (an
///   idempotency conflict: a placement may exist), 500 (the carrier failed while handling
///   it), 502 and 504 (a proxy lost or timed out the carrier's answer), any other status.
pub fn classify(answer: Answer) -> Verdict {
    match answer {
        Answer::NotSent => Verdict::NotPlaced,
        Answer::NoAnswer => Verdict::Unknown,
        Answer::Status(429) => Verdict::Throttled,
        Answer::Status(401 | 403 | 404 | 408 | 503) => Verdict::NotPlaced,
        Answer::Status(409) => Verdict::Unknown,
        Answer::Status(400..=499) => Verdict::Refused,
        Answer::Status(_) => Verdict::Unknown,
    }
}

/// What a hang-up achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HangUp {
    /// The call is over at the carrier (hung up now, ended before, or never created).
    Ended,
    /// The adapter cannot name the call, but the carrier ends it by itself (a time limit
    /// given when it was placed) at the latest this long after its maximum duration.
    EndsWithin(Duration),
}

/// The campaign a call belongs to, as the carrier is told about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CampaignInfo {
    pub name: Arc<str>,
    /// The campaign's calling window, when it has one (checked before placing, not sent).
    pub window: Option<Arc<crate::window::Window>>,
    /// The campaign's pacing (new calls per second), when it sets one.
    pub max_calls_per_second: Option<u32>,
    /// Its share of the carrier account's rate ([`crate::account`]).
    pub carrier_weight: u32,
    /// Why it calls and how long it lets phones ring: adapters ask the carrier for
    /// [`ccm_core::campaign::ring_time::requested_secs`] of these.
    pub purpose: ccm_core::campaign::Purpose,
    pub ring_timeout_secs: Option<u32>,
    /// The revision of the campaign's document this view was made from (audit records).
    pub revision: u64,
    /// The consent a number must hold to be called (checked before placing, not sent).
    pub required_consent: Option<ccm_core::consent::ConsentType>,
    /// The numbers calls are placed from; none: the adapter's own `from`.
    pub caller_id_pool: Option<Arc<ccm_core::caller_id::CallerIdPool>>,
}

/// A carrier adapter.
pub trait Carrier: Send + Sync + std::fmt::Debug + 'static {
    /// Places `call` with the carrier. Adapters send the attempt's id (`<call>/<attempt>`) as
    /// the carrier's idempotency key where the carrier has one, and `time_limit` (the call's
    /// maximum duration) where the carrier can end a call by itself. `caller_id` is the
    /// number the attempt shows, chosen from the campaign's pool; none: the adapter's own.
    fn place<'a>(
        &'a self,
        call: &'a DialRequest,
        campaign: &'a CampaignInfo,
        caller_id: Option<&'a ccm_core::PhoneNumber>,
        time_limit: Duration,
    ) -> BoxFuture<'a, Result<Placement, CarrierError>>;

    /// Ends the attempt's call at the carrier, whatever state it is in; `external_call_id`
    /// is the carrier's id of it, when known. An error means the carrier did not confirm:
    /// the call may still be live, and the hang-up is tried again.
    fn hang_up<'a>(
        &'a self,
        call: &'a DialRequest,
        external_call_id: Option<&'a str>,
    ) -> BoxFuture<'a, Result<HangUp, CarrierError>>;

    /// Whether the carrier reports a call it hung up (its final callback follows the
    /// hang-up), so the dialer waits a moment for that outcome before making one up.
    fn reports_hang_ups(&self) -> bool {
        true
    }

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

/// The adapter the configuration names, for the dialer at `address`.
pub fn build(
    config: &CarrierConfig,
    js: &jetstream::Context,
    address: &ccm_core::outcome_route::Address,
) -> Result<Arc<dyn Carrier>, BuildError> {
    Ok(match config {
        CarrierConfig::Sim(sim) => {
            Arc::new(sim::SimCarrier::new(js.clone(), sim.clone()).with_address(address.clone()))
        }
        CarrierConfig::Http(http) => Arc::new(http::HttpCarrier::new(http.clone())?),
        CarrierConfig::Twilio(twilio) => {
            Arc::new(twilio::TwilioCarrier::new(twilio.clone())?.with_address(address.clone()))
        }
    })
}

/// Sorts a failed HTTP exchange by [`classify`].
pub(crate) fn classify_send_error(e: &reqwest::Error) -> CarrierError {
    let answer = if e.is_connect() || e.is_builder() {
        Answer::NotSent
    } else {
        Answer::NoAnswer
    };
    error(classify(answer), e.to_string())
}

/// Sorts a carrier's non-success answer by [`classify`], with the reason the carrier gave.
pub(crate) async fn classify_status(response: reqwest::Response) -> CarrierError {
    let status = response.status();
    let retry_after = retry_after(response.headers());
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
    match classify(Answer::Status(status.as_u16())) {
        Verdict::Throttled => CarrierError::Throttled {
            reason,
            retry_after,
        },
        verdict => error(verdict, reason),
    }
}

/// `Retry-After` in seconds (the form carriers send; an HTTP date is not read), at most
/// [`MAX_RETRY_AFTER`].
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let secs: u64 = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

/// A carrier asking for a longer pause is not taken at its word: the account's rate
/// decides after this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

fn error(verdict: Verdict, reason: String) -> CarrierError {
    match verdict {
        Verdict::NotPlaced => CarrierError::Unavailable(reason),
        Verdict::Refused => CarrierError::Rejected(reason),
        Verdict::Unknown => CarrierError::Ambiguous(reason),
        Verdict::Throttled => CarrierError::Throttled {
            reason,
            retry_after: None,
        },
    }
}

/// Sorts the answer to a hang-up request: 2xx, and 404 (the carrier knows no such call: it
/// ended long ago, or was never created), confirm that nothing is live.
pub(crate) fn hang_up_confirmed(status: reqwest::StatusCode) -> Result<HangUp, CarrierError> {
    if status.is_success() || status == reqwest::StatusCode::NOT_FOUND {
        Ok(HangUp::Ended)
    } else {
        Err(CarrierError::Unavailable(format!(
            "hang-up answered {status}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::{Answer, Verdict, classify, retry_after};

    #[test]
    fn only_answers_that_prove_nothing_was_created_are_retried() {
        use Verdict::{NotPlaced, Refused, Throttled, Unknown};
        let table = [
            (Answer::NotSent, NotPlaced),
            (Answer::NoAnswer, Unknown),
            (Answer::Status(400), Refused),
            (Answer::Status(401), NotPlaced),
            (Answer::Status(403), NotPlaced),
            (Answer::Status(404), NotPlaced),
            (Answer::Status(405), Refused),
            (Answer::Status(408), NotPlaced),
            (Answer::Status(409), Unknown),
            (Answer::Status(422), Refused),
            (Answer::Status(429), Throttled),
            (Answer::Status(500), Unknown),
            (Answer::Status(501), Unknown),
            (Answer::Status(502), Unknown),
            (Answer::Status(503), NotPlaced),
            (Answer::Status(504), Unknown),
            (Answer::Status(520), Unknown),
            (Answer::Status(599), Unknown),
            // Not a failure a carrier sends, but never taken as proof of anything.
            (Answer::Status(302), Unknown),
            (Answer::Status(100), Unknown),
        ];
        for (answer, verdict) in table {
            assert_eq!(classify(answer), verdict, "{answer:?}");
        }
    }

    #[test]
    fn retry_after_is_read_in_seconds_and_bounded() {
        let mut headers = reqwest::header::HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert("retry-after", "2".parse().expect("value"));
        assert_eq!(
            retry_after(&headers),
            Some(std::time::Duration::from_secs(2))
        );
        headers.insert("retry-after", "86400".parse().expect("value"));
        assert_eq!(
            retry_after(&headers),
            Some(std::time::Duration::from_secs(60))
        );
        headers.insert(
            "retry-after",
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().expect("value"),
        );
        assert_eq!(retry_after(&headers), None);
    }
}
