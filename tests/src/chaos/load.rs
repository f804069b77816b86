//! The load driver: campaigns, then calls sent at a steady pace whatever the faults do.
//!
//! A call counts as accepted only when ingest answered 2xx: those are the calls the auditor
//! holds the system to. Refusals (429 for a number already in a live call, 503 while NATS is
//! away) and connection errors (ingest killed) are counted, not retried: a client that got no
//! 2xx knows its call was not taken.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use ccm_core::CallId;
use futures::{StreamExt, stream};
use serde_json::{Value, json};

use reqwest::Method;

use crate::{ApiClient, HarnessError};

/// How long setting a campaign up may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one accepted call may take (an ambiguous publish is re-sent for up to 15 s).
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// A call ingest accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub call_id: CallId,
    pub campaign: u64,
    pub number: String,
}

/// What the load did.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    pub accepted: Vec<Accepted>,
    /// Answers other than 2xx, by status code (0: no answer at all).
    pub refused: BTreeMap<u16, u64>,
}

impl LoadReport {
    pub fn sent(&self) -> u64 {
        self.accepted.len() as u64 + self.refused.values().sum::<u64>()
    }
}

/// The shape of the load.
#[derive(Debug, Clone)]
pub struct LoadPlan {
    /// Calls per campaign.
    pub calls_per_campaign: u32,
    /// Distinct numbers per campaign; fewer than the calls, so some numbers are called again
    /// (and refused while their previous call is live).
    pub numbers_per_campaign: u32,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Pause between two requests of one sender, spreading the load over the faults.
    pub pace: Duration,
}

/// Creates `count` campaigns with this concurrency cap and attempt limit; returns their ids.
pub async fn create_campaigns(
    api: &ApiClient,
    count: u32,
    cap: u32,
    max_attempts: u32,
) -> Result<Vec<u64>, HarnessError> {
    let mut ids = Vec::new();
    for i in 0..count {
        let body = json!({
            "name": format!("chaos-{i}"),
            "max_concurrent_calls": cap,
            "max_attempts": max_attempts,
        });
        ids.push(create_campaign(api, body).await?);
    }
    Ok(ids)
}

/// Creates one campaign from `body`; its id.
pub async fn create_campaign(api: &ApiClient, body: Value) -> Result<u64, HarnessError> {
    let (status, body) = api
        .attempt(Method::POST, "/api/v1/campaigns", body, REQUEST_TIMEOUT)
        .await;
    body["id"]
        .as_u64()
        .filter(|_| (200..300).contains(&status))
        .ok_or_else(|| HarnessError::Setup(format!("creating a campaign: {status} {body}")))
}

/// Reports progress: calls sent so far, calls in the plan.
pub type Progress = std::sync::Arc<dyn Fn(u64, u64) + Send + Sync>;

/// Sends the planned calls, interleaving the campaigns; returns what ingest answered.
pub async fn drive(
    api: ApiClient,
    campaigns: Vec<u64>,
    plan: LoadPlan,
    progress: Option<Progress>,
) -> LoadReport {
    let total = u64::from(plan.calls_per_campaign) * campaigns.len() as u64;
    let mut requests = Vec::new();
    for i in 0..plan.calls_per_campaign {
        for (c, campaign) in campaigns.iter().enumerate() {
            // Each campaign has its own block of numbers, so the per-campaign and the
            // all-campaigns duplicate scopes behave alike.
            let n = i % plan.numbers_per_campaign.max(1);
            requests.push((*campaign, format!("+1555{:03}{:04}", 100 + c, n)));
        }
    }
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let answers: Vec<(u64, String, Result<CallId, u16>)> = stream::iter(requests)
        .map(|(campaign, number)| {
            let (api, done, progress) = (api.clone(), done.clone(), progress.clone());
            async move {
                let answer = send(&api, campaign, &number).await;
                let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                if let Some(progress) = progress {
                    progress(n, total);
                }
                tokio::time::sleep(plan.pace).await;
                (campaign, number, answer)
            }
        })
        .buffer_unordered(plan.concurrency.max(1))
        .collect()
        .await;
    let mut report = LoadReport::default();
    for (campaign, number, answer) in answers {
        match answer {
            Ok(call_id) => report.accepted.push(Accepted {
                call_id,
                campaign,
                number,
            }),
            Err(status) => *report.refused.entry(status).or_default() += 1,
        }
    }
    report
}

/// One `POST /api/v1/calls`: the call id when accepted, else the status (0: no answer).
async fn send(api: &ApiClient, campaign: u64, number: &str) -> Result<CallId, u16> {
    let body = json!({"campaign_id": campaign, "phone_number": number});
    let (status, body) = api
        .attempt(Method::POST, "/api/v1/calls", body, CALL_TIMEOUT)
        .await;
    if !(200..300).contains(&status) {
        return Err(status);
    }
    body["call_id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .ok_or(status)
}
