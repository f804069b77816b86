//! The in-process simulated carrier: draws an outcome from a weighted mix and publishes it
//! after the configured call length, as a real carrier's callback would arrive.

use std::time::Duration;

use async_nats::jetstream;
use ccm_core::{
    CallEvent, DialRequest, EventKind, OutcomeSource, OutcomeStatus, config::SimCarrierConfig,
    outcome_route::Address,
};
use chrono::Utc;
use futures::future::BoxFuture;
use rand::Rng;
use tracing::Instrument;

use super::{CampaignInfo, Carrier, CarrierError, HangUp, Placement};

/// The simulator.
#[derive(Debug, Clone)]
pub struct SimCarrier {
    js: jetstream::Context,
    config: SimCarrierConfig,
    /// Where its outcomes' copies go: the dialer it runs in ([`ccm_core::outcome_route`]).
    address: Option<Address>,
}

impl SimCarrier {
    pub fn new(js: jetstream::Context, config: SimCarrierConfig) -> Self {
        Self {
            js,
            config,
            address: None,
        }
    }

    /// Copies its outcomes to `address`, as a callback through ingest would be.
    pub fn with_address(mut self, address: Address) -> Self {
        self.address = Some(address);
        self
    }

    fn draw(&self) -> OutcomeStatus {
        let c = &self.config;
        let weights = [
            (OutcomeStatus::Picked, c.picked),
            (OutcomeStatus::Disconnected, c.disconnected),
            (OutcomeStatus::Rnr, c.rnr),
            (OutcomeStatus::Failed, c.failed),
        ];
        let total: u32 = weights.iter().map(|(_, w)| w).sum();
        if total == 0 {
            return OutcomeStatus::Picked;
        }
        let mut pick = rand::rng().random_range(0..total);
        for (status, weight) in weights {
            if pick < weight {
                return status;
            }
            pick -= weight;
        }
        OutcomeStatus::Picked
    }
}

impl Carrier for SimCarrier {
    fn place<'a>(
        &'a self,
        call: &'a DialRequest,
        _campaign: &'a CampaignInfo,
        _time_limit: Duration,
    ) -> BoxFuture<'a, Result<Placement, CarrierError>> {
        let status = self.draw();
        let external_call_id = format!("sim-{}-{}", call.call_id, call.attempt);
        let outcome = CallEvent::now(
            call.call_id,
            call.campaign_id,
            call.attempt,
            EventKind::Outcome {
                status,
                source: OutcomeSource::Carrier,
                raw_status: None,
                duration_secs: Some(if status == OutcomeStatus::Picked {
                    30
                } else {
                    0
                }),
                external_call_id: Some(external_call_id.clone()),
                reason: None,
                callback: None,
            },
        );
        let js = self.js.clone();
        let address = self.address.clone();
        let delay = Duration::from_millis(self.config.call_ms);
        tokio::spawn(
            async move {
                tokio::time::sleep(delay).await;
                let mut outcome = outcome;
                outcome.at = Utc::now();
                if let Err(e) = ccm_core::outcome_route::publish(&js, &outcome, address.as_ref()).await {
                    tracing::warn!(error = %ccm_core::telemetry::chain(&e), call = %outcome.call_id, "simulated outcome lost");
                }
            }
            .in_current_span(),
        );
        Box::pin(async move {
            Ok(Placement {
                external_call_id: Some(external_call_id),
            })
        })
    }

    /// The simulator publishes its outcomes itself, each with its attempt.
    fn outcomes_name_the_attempt(&self) -> bool {
        true
    }

    /// No line is held: there is nothing to end. A simulated outcome still due is published
    /// later under the attempt's outcome id, which the synthetic one has taken.
    fn hang_up<'a>(
        &'a self,
        _call: &'a DialRequest,
        _external_call_id: Option<&'a str>,
    ) -> BoxFuture<'a, Result<HangUp, CarrierError>> {
        Box::pin(async { Ok(HangUp::Ended) })
    }

    /// A simulated call reports nothing when it is hung up.
    fn reports_hang_ups(&self) -> bool {
        false
    }
}
