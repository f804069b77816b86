//! Carries out a generated schedule's client operations against ingest and carrier-sim, and
//! records what the answers mean for the audit: the accepted calls (with when), refusals,
//! cap changes as the client saw them, and how forged callbacks were answered.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use ccm_core::CallId;
use chrono::{Timelike as _, Utc};
use serde_json::{Value, json};

use super::{
    checks::CapChange,
    generate::{BulkItem, CallbackTarget, Op, number, op_kind},
    load::Accepted,
};
use reqwest::Method;

use crate::ApiClient;

/// What the operations did, for the auditor.
#[derive(Debug, Default)]
pub struct Record {
    pub accepted: Vec<Accepted>,
    /// When each accepted call's 2xx came back (Unix ms).
    pub accepted_ms: BTreeMap<CallId, u64>,
    /// Call requests (single and bulk) not accepted, by status (0: no answer).
    pub refused: BTreeMap<u16, u64>,
    /// Every operation's answers: kind, then status.
    pub answers: BTreeMap<&'static str, BTreeMap<u16, u64>>,
    /// Cap changes per campaign id.
    pub caps: BTreeMap<u64, Vec<CapChange>>,
    /// When the calling windows set by the run open, per campaign id.
    pub window_opens: BTreeMap<u64, Vec<chrono::DateTime<Utc>>>,
    /// Forged callbacks ingest took (2xx) or failed on (500): neither may happen.
    pub callbacks_taken: Vec<String>,
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    u64::try_from(Utc::now().timestamp_millis()).unwrap_or(0)
}

/// Sends the operations.
#[derive(Debug, Clone)]
pub struct Client {
    /// Ingest (instance 0), through the shared client.
    pub api: ApiClient,
    /// Every ingest instance: the operations take turns among them, as behind a load
    /// balancer.
    pub ingests: Vec<ApiClient>,
    /// The next instance's turn.
    pub turn: Arc<std::sync::atomic::AtomicUsize>,
    pub sim: String,
    /// Campaign ids by the schedule's index.
    pub campaigns: Vec<u64>,
    pub record: Arc<Mutex<Record>>,
}

/// How long a request may take before it counts as unanswered (status 0).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A request's status, 0 when nothing came back.
async fn status_of(request: reqwest::RequestBuilder) -> (u16, Value) {
    match request.timeout(REQUEST_TIMEOUT).send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            (status, response.json().await.unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null),
    }
}

impl Client {
    fn record(&self) -> std::sync::MutexGuard<'_, Record> {
        self.record
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A request to ingest; status 0 when nothing came back within 10 s.
    async fn ingest(
        &self,
        method: Method,
        path: &str,
        body: impl Into<Option<Value>>,
    ) -> (u16, Value) {
        let turn = self.turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let api = match self.ingests.len() {
            0 => &self.api,
            n => &self.ingests[turn % n],
        };
        api.attempt(method, path, body, REQUEST_TIMEOUT).await
    }

    fn campaign(&self, index: usize) -> u64 {
        self.campaigns[index % self.campaigns.len()]
    }

    fn accept(&self, campaign: u64, number: String, call_id: CallId) {
        let mut record = self.record();
        record.accepted_ms.insert(call_id, now_ms());
        record.accepted.push(Accepted {
            call_id,
            campaign,
            number,
        });
    }

    /// Carries out `op`.
    pub async fn execute(&self, op: &Op) {
        let sent = now_ms();
        let status = self.send(op).await;
        let mut record = self.record();
        *record
            .answers
            .entry(op_kind(op))
            .or_default()
            .entry(status)
            .or_default() += 1;
        if let Op::CloseWindow { campaign, opens_in } = op
            && !(400..500).contains(&status)
        {
            // The window starts at the whole second (as `send` wrote it).
            let opens_ms = sent + u64::try_from(opens_in.as_millis()).unwrap_or(0);
            let opens =
                chrono::DateTime::from_timestamp(i64::try_from(opens_ms / 1000).unwrap_or(0), 0)
                    .unwrap_or_default();
            let id = self.campaign(*campaign);
            record.window_opens.entry(id).or_default().push(opens);
        }
    }

    async fn send(&self, op: &Op) -> u16 {
        match op {
            Op::Call {
                campaign,
                number: n,
            } => {
                let (campaign, phone) = (self.campaign(*campaign), number(*n));
                let body = json!({"campaign_id": campaign, "phone_number": phone});
                let (status, body) = self.ingest(Method::POST, "/api/v1/calls", body).await;
                match body["call_id"].as_str().and_then(|id| id.parse().ok()) {
                    Some(id) if (200..300).contains(&status) => self.accept(campaign, phone, id),
                    _ => *self.record().refused.entry(status).or_default() += 1,
                }
                status
            }
            Op::Bulk { campaign, items } => {
                let campaign = self.campaign(*campaign);
                let items: Vec<String> = items
                    .iter()
                    .map(|i| match i {
                        BulkItem::Number(n) => number(*n),
                        BulkItem::Hostile(s) => s.clone(),
                    })
                    .collect();
                let path = format!("/api/v1/calls/bulk?campaign_id={campaign}");
                let (status, body) = self.ingest(Method::POST, &path, json!(items)).await;
                let results = body["results"].as_array().cloned().unwrap_or_default();
                let mut accepted = 0;
                for r in &results {
                    let id = r["call_id"].as_str().and_then(|id| id.parse().ok());
                    let input = r["input"].as_str().unwrap_or_default().to_owned();
                    match id {
                        Some(id) if r["status"] == "accepted" => {
                            accepted += 1;
                            self.accept(campaign, input, id);
                        }
                        _ => {}
                    }
                }
                let refused = (items.len() - accepted.min(items.len())) as u64;
                *self.record().refused.entry(status).or_default() += refused;
                status
            }
            Op::Pause(c) | Op::Resume(c) | Op::Cancel(c) | Op::Start(c) => {
                let verb = match op {
                    Op::Pause(_) => "pause",
                    Op::Resume(_) => "resume",
                    Op::Cancel(_) => "cancel",
                    _ => "start",
                };
                let path = format!("/api/v1/campaigns/{}/{verb}", self.campaign(*c));
                self.ingest(Method::POST, &path, None).await.0
            }
            Op::Cap { campaign, cap } => {
                let sent = now_ms();
                let path = format!("/api/v1/campaigns/{}", self.campaign(*campaign));
                let (status, body) = self
                    .ingest(Method::PATCH, &path, json!({"max_concurrent_calls": cap}))
                    .await;
                // When the document was written, from the answer: two changes in flight
                // together may be written in either order, and the later write holds.
                let written_ms = body["updated_at"]
                    .as_str()
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                    .and_then(|t| u64::try_from(t.timestamp_millis()).ok());
                // A definite refusal changed nothing; an unanswered change may have been made
                // (either cap may hold for a minute).
                let (answered_ms, written_ms) = match (status, written_ms) {
                    (200..=299, Some(written)) => (now_ms(), Some(written)),
                    (400..=499, _) => return status,
                    _ => (sent + 60_000, None),
                };
                let id = self.campaign(*campaign);
                self.record().caps.entry(id).or_default().push(CapChange {
                    sent_ms: sent,
                    answered_ms,
                    written_ms,
                    cap: *cap,
                });
                status
            }
            Op::CloseWindow { campaign, opens_in } => {
                let opens = Utc::now() + chrono::Duration::from_std(*opens_in).unwrap_or_default();
                let start = opens.time().with_nanosecond(0).unwrap_or_default();
                let end = (start + chrono::Duration::minutes(10)).max(start);
                let end = if end <= start {
                    chrono::NaiveTime::from_hms_opt(23, 59, 59).unwrap_or(start)
                } else {
                    end
                };
                let window = json!({
                    "start": start.format("%H:%M:%S").to_string(),
                    "end": end.format("%H:%M:%S").to_string(),
                });
                self.patch(*campaign, json!({"calling_window": window}))
                    .await
            }
            Op::OpenWindow(c) => self.open_window(*c).await,
            Op::DncAdd(numbers) => {
                let numbers: Vec<String> = numbers.iter().map(|n| number(*n)).collect();
                let body = json!({"phone_numbers": numbers, "reason": "chaos"});
                self.ingest(Method::POST, "/api/v1/dnc", body).await.0
            }
            Op::DncRemove(numbers) => {
                let mut last = 0;
                for n in numbers {
                    let phone = number(*n).replace('+', "%2B");
                    let path = format!("/api/v1/dnc/{phone}");
                    last = self.ingest(Method::DELETE, &path, None).await.0;
                }
                last
            }
            Op::Callback {
                target,
                status,
                fields,
            } => self.callback(target, status, fields).await,
            Op::Carrier(k) => {
                let body = json!({
                    "error_rate": k.error_rate,
                    "latency_ms": k.latency_ms,
                    "drop_rate": k.drop_rate,
                    "duplicate_rate": k.duplicate_rate,
                    "reorder_rate": k.reorder_rate,
                    "extra_call_ms": k.extra_call_ms,
                });
                let url = format!("{}/faults", self.sim);
                status_of(self.api.http.put(url).json(&body)).await.0
            }
        }
    }

    async fn patch(&self, campaign: usize, body: Value) -> u16 {
        let path = format!("/api/v1/campaigns/{}", self.campaign(campaign));
        self.ingest(Method::PATCH, &path, body).await.0
    }

    /// A calling window open all day (but the day's last second).
    pub async fn open_window(&self, campaign: usize) -> u16 {
        let window = json!({"start": "00:00", "end": "23:59:59"});
        self.patch(campaign, json!({"calling_window": window}))
            .await
    }

    async fn callback(
        &self,
        target: &CallbackTarget,
        status: &str,
        fields: &BTreeMap<String, Value>,
    ) -> u16 {
        let call_id = match target {
            CallbackTarget::Accepted(n) => {
                let record = self.record();
                let len = record.accepted.len();
                if len == 0 {
                    uuid::Uuid::from_u128(u128::from(*n)).to_string()
                } else {
                    record.accepted[*n as usize % len].call_id.to_string()
                }
            }
            CallbackTarget::Unknown(id) => uuid::Uuid::from_u128(*id).to_string(),
            CallbackTarget::Garbage(text) => text.clone(),
        };
        let mut body: serde_json::Map<String, Value> =
            fields.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        body.insert("call_id".into(), json!(call_id));
        body.insert("status".into(), json!(status));
        let (answer, reply) = self
            .ingest(
                Method::PUT,
                "/api/v1/callback/",
                Value::Object(body.clone()),
            )
            .await;
        if (200..300).contains(&answer) || answer == 500 {
            let mut shown = format!("{body:?}");
            shown.truncate(300);
            self.record()
                .callbacks_taken
                .push(format!("answered {answer} ({reply}) to {shown}"));
        }
        answer
    }
}
