//! The old system's carrier contract.
//!
//! `POST {base_url}/api/initiate-call` with `{call_id, phone_number, campaign_id,
//! campaign_name}` (plus `custom_fields`, the contact's extra CSV columns as an object of
//! strings, when it has any) → 200 `{external_call_id, …}`. The outcome comes back to ingest's
//! `PUT /api/v1/callback/`. The attempt id travels as `Idempotency-Key`, which carriers that
//! honour it (carrier-sim does) use to answer a repeated request without dialling again.
//!
//! The old contract had no way to end a call. A call that outlives its maximum duration is
//! hung up with `POST {base_url}/api/hangup-call` and `{call_id, external_call_id}`, the
//! attempt again as `Idempotency-Key` (carrier-sim serves it); until the carrier confirms
//! (2xx, or 404: no such call) the dialer holds the call as live and asks again.

use std::time::Duration;

use reqwest::RequestBuilder;

use ccm_core::{DialRequest, campaign::ring_time, config::HttpCarrierConfig};
use futures::future::BoxFuture;
use serde::Deserialize;
use serde_json::json;

use super::{
    BuildError, CampaignInfo, Carrier, CarrierError, HangUp, Placement, classify_send_error,
    classify_status, hang_up_confirmed,
};

/// The adapter.
#[derive(Debug, Clone)]
pub struct HttpCarrier {
    config: HttpCarrierConfig,
    client: reqwest::Client,
}

#[derive(Debug, Deserialize)]
struct Answer {
    #[serde(default)]
    external_call_id: Option<String>,
}

impl HttpCarrier {
    pub fn new(config: HttpCarrierConfig) -> Result<Self, BuildError> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.request_timeout_ms.max(1)))
            .build()
            .map_err(BuildError::Client)?;
        Ok(Self { config, client })
    }

    async fn place_inner(
        &self,
        call: &DialRequest,
        campaign: &CampaignInfo,
    ) -> Result<Placement, CarrierError> {
        let mut body = json!({
            "call_id": call.call_id,
            "phone_number": call.dialled(),
            "campaign_id": call.campaign_id,
            "campaign_name": &*campaign.name,
        });
        // Left out when empty, so the body stays the old contract's for calls without fields.
        if !call.custom_fields.is_empty() {
            body["custom_fields"] = json!(call.custom_fields);
        }
        // Likewise left out unless the campaign, the configuration or the purpose sets one.
        if let Some(secs) = ring_time::requested_secs(
            campaign.purpose,
            campaign.ring_timeout_secs,
            self.config.ring_timeout_secs,
        ) {
            body["ring_timeout_secs"] = json!(secs);
        }
        let request = self.request("initiate-call", call).json(&body);
        let response = request.send().await.map_err(|e| classify_send_error(&e))?;
        if !response.status().is_success() {
            return Err(classify_status(response).await);
        }
        // The call is placed; an unreadable body only loses the carrier's id.
        let answer: Option<Answer> = response.json().await.ok();
        Ok(Placement {
            external_call_id: answer.and_then(|a| a.external_call_id),
        })
    }

    /// A request to `/api/<route>` about `call`'s attempt, authenticated.
    fn request(&self, route: &str, call: &DialRequest) -> RequestBuilder {
        let url = format!(
            "{}/api/{route}",
            self.config.base_url.expose().trim_end_matches('/')
        );
        let mut request = self
            .client
            .post(url)
            .header("Idempotency-Key", call.msg_id());
        if !self.config.api_token.expose().is_empty() {
            request = request.header("X-Auth-Token", self.config.api_token.expose());
        }
        request
    }

    async fn hang_up_inner(
        &self,
        call: &DialRequest,
        external_call_id: Option<&str>,
    ) -> Result<HangUp, CarrierError> {
        let body = json!({"call_id": call.call_id, "external_call_id": external_call_id});
        let response = self
            .request("hangup-call", call)
            .json(&body)
            .send()
            .await
            .map_err(|e| CarrierError::Unavailable(e.to_string()))?;
        hang_up_confirmed(response.status())
    }
}

impl Carrier for HttpCarrier {
    fn place<'a>(
        &'a self,
        call: &'a DialRequest,
        campaign: &'a CampaignInfo,
        _time_limit: Duration,
    ) -> BoxFuture<'a, Result<Placement, CarrierError>> {
        Box::pin(self.place_inner(call, campaign))
    }

    fn hang_up<'a>(
        &'a self,
        call: &'a DialRequest,
        external_call_id: Option<&'a str>,
    ) -> BoxFuture<'a, Result<HangUp, CarrierError>> {
        Box::pin(self.hang_up_inner(call, external_call_id))
    }
}
