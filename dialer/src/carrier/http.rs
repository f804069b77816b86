//! The old system's carrier contract.
//!
//! `POST {base_url}/api/initiate-call` with `{call_id, phone_number, campaign_id,
//! campaign_name}` (plus `custom_fields`, the contact's extra CSV columns as an object of
//! strings, when it has any) → 200 `{external_call_id, …}`. The outcome comes back to ingest's
//! `PUT /api/v1/callback/`. The attempt id travels as `Idempotency-Key`, which carriers that
//! honour it (carrier-sim does) use to answer a repeated request without dialling again.

use std::time::Duration;

use ccm_core::{DialRequest, config::HttpCarrierConfig};
use futures::future::BoxFuture;
use serde::Deserialize;
use serde_json::json;

use super::{
    BuildError, CampaignInfo, Carrier, CarrierError, Placement, classify_send_error,
    classify_status,
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
        let url = format!(
            "{}/api/initiate-call",
            self.config.base_url.expose().trim_end_matches('/')
        );
        let mut body = json!({
            "call_id": call.call_id,
            "phone_number": call.phone_number,
            "campaign_id": call.campaign_id,
            "campaign_name": &*campaign.name,
        });
        // Left out when empty, so the body stays the old contract's for calls without fields.
        if !call.custom_fields.is_empty() {
            body["custom_fields"] = json!(call.custom_fields);
        }
        let mut request = self
            .client
            .post(url)
            .header("Idempotency-Key", call.msg_id())
            .json(&body);
        if !self.config.api_token.expose().is_empty() {
            request = request.header("X-Auth-Token", self.config.api_token.expose());
        }
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
}

impl Carrier for HttpCarrier {
    fn place<'a>(
        &'a self,
        call: &'a DialRequest,
        campaign: &'a CampaignInfo,
    ) -> BoxFuture<'a, Result<Placement, CarrierError>> {
        Box::pin(self.place_inner(call, campaign))
    }
}
