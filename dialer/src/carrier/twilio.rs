//! Twilio's Programmable Voice REST API.
//!
//! `POST {base_url}/2010-04-01/Accounts/{AccountSid}/Calls.json` with basic auth and the form
//! fields `To`, `From`, `Url`, `StatusCallback`, `StatusCallbackEvent` (initiated, ringing,
//! answered, completed), `Timeout` and optionally `MachineDetection`. The `StatusCallback`
//! is ingest's `POST /api/v1/callbacks/twilio` with the call, attempt and campaign in its
//! query, so the signed callback says which attempt it ends without any lookup, and the
//! placing dialer's address (`dialer`), so ingest copies the outcome to it without any lookup
//! either ([`ccm_core::outcome_route`]). Twilio has no
//! idempotency key for call creation; the attempt id is still sent as `Idempotency-Key` for
//! carriers (and carrier-sim) that honour one, and a timeout is never retried.
//!
//! `TimeLimit` is the call's maximum duration, so Twilio ends a call the dialer could not
//! hang up; at that duration the dialer hangs it up itself with `POST …/Calls/{CallSid}.json`
//! and `Status=completed` (which also cancels a call still ringing). Without the call's sid
//! (a placement whose answer was lost) only the time limit ends it: a call rings for at most
//! `Timeout` and then talks for at most `TimeLimit`.

use std::time::Duration;

use ccm_core::{
    DialRequest, campaign::ring_time, config::TwilioCarrierConfig, outcome_route::Address,
};
use futures::future::BoxFuture;
use serde::Deserialize;

use super::{
    BuildError, CampaignInfo, Carrier, CarrierError, HangUp, Placement, classify_send_error,
    classify_status, hang_up_confirmed,
};

/// The path of ingest's Twilio callback route.
pub const CALLBACK_PATH: &str = "/api/v1/callbacks/twilio";

/// The adapter.
#[derive(Debug, Clone)]
pub struct TwilioCarrier {
    config: TwilioCarrierConfig,
    client: reqwest::Client,
    /// The dialer's address, named in each callback URL.
    address: Option<Address>,
}

#[derive(Debug, Deserialize)]
struct Created {
    sid: String,
}

impl TwilioCarrier {
    pub fn new(config: TwilioCarrierConfig) -> Result<Self, BuildError> {
        if config.account_sid.is_empty() || config.from.is_empty() {
            return Err(BuildError::Config(
                "dialer.carrier.account_sid and dialer.carrier.from are required".into(),
            ));
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.request_timeout_ms.max(1)))
            .build()
            .map_err(BuildError::Client)?;
        Ok(Self {
            config,
            client,
            address: None,
        })
    }

    /// Names `address` (the dialer's) in each callback URL.
    pub fn with_address(mut self, address: Address) -> Self {
        self.address = Some(address);
        self
    }

    /// Where Twilio reports the attempt's status. An address is one subject token
    /// (`[A-Za-z0-9_-]`), safe in a query unescaped.
    pub fn status_callback(&self, call: &DialRequest) -> String {
        let mut url = format!(
            "{}{CALLBACK_PATH}?call_id={}&attempt={}&campaign_id={}",
            self.config.status_callback_base.trim_end_matches('/'),
            call.call_id,
            call.attempt,
            call.campaign_id
        );
        if let Some(address) = &self.address {
            url.push_str("&dialer=");
            url.push_str(address.as_str());
        }
        url
    }

    async fn place_inner(
        &self,
        call: &DialRequest,
        campaign: &CampaignInfo,
        time_limit: Duration,
    ) -> Result<Placement, CarrierError> {
        let c = &self.config;
        let ring = ring_time::requested_secs(
            campaign.purpose,
            campaign.ring_timeout_secs,
            Some(c.ring_timeout_secs),
        )
        .unwrap_or(c.ring_timeout_secs);
        let url = format!(
            "{}/2010-04-01/Accounts/{}/Calls.json",
            c.base_url.expose().trim_end_matches('/'),
            c.account_sid
        );
        let mut form: Vec<(&str, String)> = vec![
            ("To", call.dialled().to_string()),
            ("From", c.from.clone()),
            ("Url", c.answer_url.clone()),
            ("StatusCallback", self.status_callback(call)),
            ("StatusCallbackMethod", "POST".into()),
            ("Timeout", ring.to_string()),
            ("TimeLimit", time_limit.as_secs().max(1).to_string()),
        ];
        for event in ["initiated", "ringing", "answered", "completed"] {
            form.push(("StatusCallbackEvent", event.into()));
        }
        if !c.machine_detection.is_empty() {
            form.push(("MachineDetection", c.machine_detection.clone()));
        }
        let response = self
            .client
            .post(url)
            .basic_auth(&c.account_sid, Some(c.auth_token.expose()))
            .header("Idempotency-Key", call.msg_id())
            .form(&form)
            .send()
            .await
            .map_err(|e| classify_send_error(&e))?;
        if !response.status().is_success() {
            return Err(classify_status(response).await);
        }
        let created: Option<Created> = response.json().await.ok();
        Ok(Placement {
            external_call_id: created.map(|c| c.sid),
        })
    }

    async fn hang_up_inner(&self, sid: Option<&str>) -> Result<HangUp, CarrierError> {
        let c = &self.config;
        let Some(sid) = sid else {
            // Ringing is bounded by `Timeout` (the campaign's may be longer than the
            // configured one, never longer than a campaign may set) and talk by `TimeLimit`,
            // which ends at the deadline or earlier.
            let ring = c.ring_timeout_secs.max(ring_time::MAX_SECS);
            return Ok(HangUp::EndsWithin(Duration::from_secs(u64::from(ring) + 1)));
        };
        let url = format!(
            "{}/2010-04-01/Accounts/{}/Calls/{sid}.json",
            c.base_url.expose().trim_end_matches('/'),
            c.account_sid
        );
        let response = self
            .client
            .post(url)
            .basic_auth(&c.account_sid, Some(c.auth_token.expose()))
            .form(&[("Status", "completed")])
            .send()
            .await
            .map_err(|e| CarrierError::Unavailable(e.to_string()))?;
        hang_up_confirmed(response.status())
    }
}

impl Carrier for TwilioCarrier {
    fn place<'a>(
        &'a self,
        call: &'a DialRequest,
        campaign: &'a CampaignInfo,
        time_limit: Duration,
    ) -> BoxFuture<'a, Result<Placement, CarrierError>> {
        Box::pin(self.place_inner(call, campaign, time_limit))
    }

    fn hang_up<'a>(
        &'a self,
        _call: &'a DialRequest,
        external_call_id: Option<&'a str>,
    ) -> BoxFuture<'a, Result<HangUp, CarrierError>> {
        Box::pin(self.hang_up_inner(external_call_id))
    }

    /// The status callback's URL carries the attempt ([`TwilioCarrier::status_callback`]).
    fn outcomes_name_the_attempt(&self) -> bool {
        true
    }
}
