//! The auditor: after a run, checks the invariants against what PostgreSQL, the `DLQ` stream
//! and carrier-sim's ledger recorded, and prints the result as a table row.
//!
//! - lost: accepted (2xx) calls with no terminal event (completed, failed, cancelled, dead
//!   lettered) in PostgreSQL.
//! - double-dials: placement requests carrier-sim saw for an attempt it had already placed
//!   (the dialer asked twice; a carrier without idempotency keys would have rung twice).
//! - cap: the most live calls carrier-sim saw in one campaign against the campaign's cap.
//! - number overlaps: numbers rung twice at once within a campaign.
//! - retries: every call's history against the policy: attempts numbered 1..n with n at most
//!   the campaign's limit; a retry after each retryable outcome of a non-final attempt, none
//!   after PICKED, due exactly the policy's backoff after the outcome and not dialled early;
//!   FAILED at the limit.
//! - DLQ: the letters in `DLQ` are exactly the dead-lettered calls, each payload the call's
//!   original dial request; a run whose faults exhaust technical retries must have letters.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    time::Duration,
};

use ccm_core::{CallEvent, CallId, DialRequest, EventKind, status::OutcomeStatus};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use sqlx::PgPool;

use super::load::{Accepted, LoadReport};
use crate::HarnessError;

/// What the policy and the campaigns promise, for the auditor to hold the run to.
#[derive(Debug, Clone)]
pub struct Expectation {
    pub max_attempts: u32,
    /// The backoff of every retryable outcome (RNR, DISCONNECTED, FAILED).
    pub backoff: Duration,
    /// Concurrency cap per campaign.
    pub caps: BTreeMap<u64, u32>,
    /// The faults exhaust technical retries, so the DLQ check must see letters: a run with
    /// none would pass it without checking anything.
    pub expect_dead_letters: bool,
    /// Moments a calling window of the campaign opened: the retrier moves a retry due while
    /// the window is closed to its opening, later than the backoff.
    pub window_opens: BTreeMap<u64, Vec<DateTime<Utc>>>,
}

/// The subset of carrier-sim's `GET /stats` the auditor reads.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CarrierStats {
    pub placed: u64,
    pub repeated_requests: u64,
    pub injected_errors: u64,
    #[serde(default)]
    pub campaigns: BTreeMap<String, CarrierCampaign>,
    #[serde(default)]
    pub number_peak: u64,
    #[serde(default)]
    pub number_overlaps: Vec<String>,
    #[serde(default)]
    pub attempts: BTreeMap<String, CarrierAttempt>,
}

/// One placed attempt in carrier-sim's ledger.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CarrierAttempt {
    /// Placement requests with this attempt's key; more than one is a double-dial request.
    pub requests: u32,
    #[serde(default)]
    pub campaign: String,
    #[serde(default)]
    pub to: String,
    /// When the call was live at the carrier (Unix ms); `ended_ms` none: still live.
    #[serde(default)]
    pub placed_ms: u64,
    #[serde(default)]
    pub ended_ms: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct CarrierCampaign {
    pub placed: u64,
    pub peak: u64,
}

/// One run's audit.
#[derive(Debug, Clone, Default)]
pub struct Audit {
    pub scenario: String,
    pub sent: u64,
    pub accepted: u64,
    pub refused: BTreeMap<u16, u64>,
    pub terminal: u64,
    pub lost: u64,
    pub placed: u64,
    pub double_dials: u64,
    pub injected_errors: u64,
    /// The highest live/cap ratio of any campaign, as (peak, cap).
    pub worst_cap: (u64, u32),
    pub cap_violations: u64,
    pub number_overlaps: u64,
    pub retries: u64,
    pub retry_violations: u64,
    /// The latest a retry was dialled after it was due.
    pub max_retry_late: Duration,
    pub dead_lettered: u64,
    pub dlq_letters: u64,
    pub dlq_mismatches: u64,
    /// Whether the run was meant to dead-letter calls (see [`Expectation`]).
    pub dlq_expected: bool,
    /// Terminal calls by final state.
    pub finals: BTreeMap<String, u64>,
    /// The first few violations, spelled out.
    pub problems: Vec<String>,
    /// The first few retry-policy violations (also in `problems`).
    pub retry_problems: Vec<String>,
    /// From the first request to the last call's terminal state.
    pub elapsed: Duration,
}

impl Audit {
    /// Whether every invariant held.
    pub fn passed(&self) -> bool {
        self.lost == 0
            && self.double_dials == 0
            && self.cap_violations == 0
            && self.number_overlaps == 0
            && self.retry_violations == 0
            && self.dlq_mismatches == 0
            && (!self.dlq_expected || self.dlq_letters > 0)
            && !self.refused.keys().any(|s| (200..300).contains(s))
    }

    fn retry_problem(&mut self, text: String) {
        if self.retry_problems.len() < 10 {
            self.retry_problems.push(text.clone());
        }
        self.problem(text);
    }

    fn problem(&mut self, text: String) {
        if self.problems.len() < 10 {
            self.problems.push(text);
        }
    }

    /// The table's header (Markdown).
    pub fn header() -> String {
        "| scenario | accepted / sent | terminal | lost | double-dials | peak / cap | \
         number overlaps | retries (violations, latest) | DLQ (letters / dead-lettered, \
         mismatches) | final states | time |\n\
         |---|---|---|---|---|---|---|---|---|---|---|"
            .into()
    }

    /// This audit as a table row (Markdown).
    pub fn row(&self) -> String {
        let finals: Vec<String> = self
            .finals
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        format!(
            "| {} | {} / {} | {} | {} | {} | {} / {} | {} | {} ({}, {:.1} s) | {} / {} ({}) | {} | {:.0} s |",
            self.scenario,
            self.accepted,
            self.sent,
            self.terminal,
            self.lost,
            self.double_dials,
            self.worst_cap.0,
            self.worst_cap.1,
            self.number_overlaps,
            self.retries,
            self.retry_violations,
            self.max_retry_late.as_secs_f64(),
            self.dlq_letters,
            self.dead_lettered,
            self.dlq_mismatches,
            finals.join(", "),
            self.elapsed.as_secs_f64(),
        )
    }

    /// The table of several audits, then each failed audit's problems.
    pub fn table(audits: &[Audit]) -> String {
        let mut out = Self::header();
        for audit in audits {
            out.push('\n');
            out.push_str(&audit.row());
        }
        for audit in audits.iter().filter(|a| !a.passed()) {
            let _ = write!(out, "\n\n{} FAILED:", audit.scenario);
            for problem in &audit.problems {
                let _ = write!(out, "\n  - {problem}");
            }
        }
        out
    }
}

/// The terminal kinds of `call_events.kind`.
pub(crate) const TERMINAL: [&str; 4] = ["completed", "failed", "cancelled", "dead_lettered"];

/// Calls of `accepted` that have a terminal event in PostgreSQL.
pub async fn terminal_count(pg: &PgPool, accepted: &[Accepted]) -> Result<u64, HarnessError> {
    let ids: Vec<uuid::Uuid> = accepted.iter().map(|a| a.call_id.as_uuid()).collect();
    let (n,): (i64,) = sqlx::query_as(
        "SELECT count(DISTINCT call_id) FROM call_events WHERE call_id = ANY($1) AND kind = ANY($2)",
    )
    .bind(&ids)
    .bind(&TERMINAL[..])
    .fetch_one(pg)
    .await
    .map_err(HarnessError::Database)?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Audits a finished run.
pub async fn audit(
    scenario: &str,
    load: &LoadReport,
    expect: &Expectation,
    carrier: &CarrierStats,
    pg: &PgPool,
    js: &async_nats::jetstream::Context,
) -> Result<Audit, HarnessError> {
    let mut audit = Audit {
        scenario: scenario.to_owned(),
        sent: load.sent(),
        accepted: load.accepted.len() as u64,
        refused: load.refused.clone(),
        placed: carrier.placed,
        double_dials: carrier.repeated_requests,
        injected_errors: carrier.injected_errors,
        number_overlaps: carrier.number_overlaps.len() as u64,
        dlq_expected: expect.expect_dead_letters,
        ..Audit::default()
    };
    if audit.double_dials > 0 {
        audit.problem(format!(
            "{} repeated placement requests",
            audit.double_dials
        ));
    }
    for pair in &carrier.number_overlaps {
        audit.problem(format!("number rung twice at once: {pair}"));
    }
    for (campaign, stats) in &carrier.campaigns {
        let cap = campaign
            .parse::<u64>()
            .ok()
            .and_then(|id| expect.caps.get(&id).copied())
            .unwrap_or(0);
        let worst = audit.worst_cap;
        if worst.1 == 0 || stats.peak * u64::from(worst.1) > worst.0 * u64::from(cap) {
            audit.worst_cap = (stats.peak, cap);
        }
        if stats.peak > u64::from(cap) {
            audit.cap_violations += 1;
            audit.problem(format!(
                "campaign {campaign}: {} live calls, cap {cap}",
                stats.peak
            ));
        }
    }

    let histories = histories(pg, &load.accepted).await?;
    let mut dead = BTreeSet::new();
    for accepted in &load.accepted {
        let events = histories
            .get(&accepted.call_id)
            .map_or(&[][..], Vec::as_slice);
        let last = events.iter().rev().find(|e| e.kind.is_terminal());
        match last {
            None => {
                audit.lost += 1;
                let kinds: Vec<String> = events
                    .iter()
                    .map(|e| format!("{}@{}", e.kind.name(), e.attempt))
                    .collect();
                audit.problem(format!("lost: call {} ({kinds:?})", accepted.call_id));
                continue;
            }
            Some(event) => {
                audit.terminal += 1;
                *audit
                    .finals
                    .entry(event.kind.name().to_owned())
                    .or_default() += 1;
                if matches!(event.kind, EventKind::DeadLettered { .. }) {
                    dead.insert(accepted.call_id);
                }
            }
        }
        check_retries(&mut audit, accepted.call_id, events, expect);
    }
    audit.dead_lettered = dead.len() as u64;
    check_dlq(&mut audit, &load.accepted, &dead, js).await?;
    if audit.dlq_expected && audit.dlq_letters == 0 {
        audit.problem("the faults were to dead-letter calls, but the DLQ is empty".into());
    }
    Ok(audit)
}

/// Every event of the accepted calls, per call, in event-time order.
pub(crate) async fn histories(
    pg: &PgPool,
    accepted: &[Accepted],
) -> Result<BTreeMap<CallId, Vec<CallEvent>>, HarnessError> {
    let ids: Vec<uuid::Uuid> = accepted.iter().map(|a| a.call_id.as_uuid()).collect();
    let rows: Vec<(serde_json::Value,)> = sqlx::query_as(
        "SELECT payload FROM call_events WHERE call_id = ANY($1) ORDER BY occurred_at, seq",
    )
    .bind(&ids)
    .fetch_all(pg)
    .await
    .map_err(HarnessError::Database)?;
    let mut out: BTreeMap<CallId, Vec<CallEvent>> = BTreeMap::new();
    for (payload,) in rows {
        // Dial requests (the `CALLS` rows) are not events; they do not parse as one.
        if let Ok(event) = serde_json::from_value::<CallEvent>(payload) {
            out.entry(event.call_id).or_default().push(event);
        }
    }
    Ok(out)
}

/// Holds one call's history to the policy.
fn check_retries(audit: &mut Audit, call: CallId, events: &[CallEvent], expect: &Expectation) {
    let dialled: BTreeSet<u32> = events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::Dialing { .. }))
        .map(|e| e.attempt)
        .collect();
    let last_attempt = dialled.iter().next_back().copied().unwrap_or(0);
    let history = || -> Vec<String> {
        events
            .iter()
            .map(|e| format!("{}@{} {}", e.kind.name(), e.attempt, e.at.format("%T%.3f")))
            .collect()
    };
    if dialled.len() as u32 != last_attempt || last_attempt > expect.max_attempts {
        audit.retry_violations += 1;
        audit.retry_problem(format!(
            "call {call}: attempts {dialled:?}, limit {}; history {:?}",
            expect.max_attempts,
            history()
        ));
        return;
    }
    let outcome = |attempt: u32| {
        events.iter().find_map(|e| match &e.kind {
            EventKind::Outcome { status, .. } if e.attempt == attempt => Some((*status, e.at)),
            _ => None,
        })
    };
    let retry = |attempt: u32| {
        events.iter().find_map(|e| match &e.kind {
            EventKind::Retrying { next_retry_at, .. } if e.attempt == attempt => {
                Some(*next_retry_at)
            }
            _ => None,
        })
    };
    let dialled_at = |attempt: u32| -> Option<DateTime<Utc>> {
        events
            .iter()
            .filter(|e| e.attempt == attempt && matches!(e.kind, EventKind::Dialing { .. }))
            .map(|e| e.at)
            .min()
    };
    for attempt in 1..last_attempt {
        audit.retries += 1;
        let (Some((status, at)), Some(due)) = (outcome(attempt), retry(attempt)) else {
            audit.retry_violations += 1;
            audit.retry_problem(format!(
                "call {call}: attempt {} dialled without an outcome and a retry of {attempt}",
                attempt + 1
            ));
            continue;
        };
        if status == OutcomeStatus::Picked {
            audit.retry_violations += 1;
            audit.retry_problem(format!("call {call}: retried after PICKED"));
        }
        let scheduled = (due - at).to_std().unwrap_or_default();
        let at_window_opening = scheduled > expect.backoff
            && expect
                .window_opens
                .get(&events[0].campaign_id.get())
                .is_some_and(|opens| {
                    opens
                        .iter()
                        .any(|o| (due - *o).num_milliseconds().abs() <= 1_000)
                });
        // The retrier computes the due time from the outcome's own time: exactly the
        // backoff, give or take clock rounding; or the opening of a window closed then.
        if !at_window_opening
            && (scheduled + Duration::from_millis(5) < expect.backoff
                || scheduled > expect.backoff + Duration::from_millis(5))
        {
            audit.retry_violations += 1;
            audit.retry_problem(format!(
                "call {call}: retry of attempt {attempt} due {scheduled:?} after its outcome, policy {:?}",
                expect.backoff
            ));
        }
        if let Some(next) = dialled_at(attempt + 1) {
            // Dialled before it was due: the scheduler's tolerance is a few milliseconds.
            if next + chrono::Duration::milliseconds(50) < due {
                audit.retry_violations += 1;
                audit.retry_problem(format!(
                    "call {call}: attempt {} dialled {} ms before due",
                    attempt + 1,
                    (due - next).num_milliseconds()
                ));
            }
            let late = (next - due).to_std().unwrap_or_default();
            audit.max_retry_late = audit.max_retry_late.max(late);
        }
    }
    // How the last attempt ended must match the policy too.
    let Some(end) = events.iter().rev().find(|e| e.kind.is_terminal()) else {
        return;
    };
    let final_outcome = outcome(last_attempt).map(|(s, _)| s);
    let consistent = match (&end.kind, final_outcome) {
        (EventKind::Completed, Some(OutcomeStatus::Picked)) => true,
        (EventKind::Failed { .. }, Some(s)) => {
            s != OutcomeStatus::Picked && last_attempt == expect.max_attempts
        }
        (EventKind::DeadLettered { .. } | EventKind::Cancelled { .. }, _) => true,
        _ => false,
    };
    if !consistent {
        audit.retry_violations += 1;
        audit.retry_problem(format!(
            "call {call}: ended {} after attempt {last_attempt} with outcome {final_outcome:?}; history {:?}",
            end.kind.name(),
            history()
        ));
    }
}

/// The `DLQ` stream against the dead-lettered calls.
async fn check_dlq(
    audit: &mut Audit,
    accepted: &[Accepted],
    dead: &BTreeSet<CallId>,
    js: &async_nats::jetstream::Context,
) -> Result<(), HarnessError> {
    let by_id: BTreeMap<CallId, &Accepted> = accepted.iter().map(|a| (a.call_id, a)).collect();
    let mut stream = js
        .get_stream("DLQ")
        .await
        .map_err(|e| HarnessError::Setup(format!("DLQ stream: {e}")))?;
    let info = stream
        .info()
        .await
        .map_err(|e| HarnessError::Setup(format!("DLQ stream info: {e}")))?;
    let (first, last) = (info.state.first_sequence, info.state.last_sequence);
    let mut lettered = BTreeSet::new();
    if info.state.messages > 0 {
        for seq in first..=last {
            let Ok(message) = stream.get_raw_message(seq).await else {
                continue;
            };
            // A parked record (a non-dial reader gave up; the message and its call go on) is
            // not a dead letter: the calls' own checks cover its call.
            if message
                .headers
                .get(ccm_core::dlq::header::PARKED)
                .is_some_and(|v| v.as_str() == "true")
            {
                continue;
            }
            audit.dlq_letters += 1;
            let request: Option<DialRequest> = serde_json::from_slice(&message.payload).ok();
            let intact = request.as_ref().is_some_and(|r| {
                by_id.get(&r.call_id).is_some_and(|a| {
                    a.campaign == r.campaign_id.get() && a.number == r.phone_number.as_str()
                })
            });
            match request {
                Some(r) if intact => {
                    lettered.insert(r.call_id);
                }
                _ => {
                    audit.dlq_mismatches += 1;
                    audit.problem(format!(
                        "DLQ letter {seq} is not an accepted call's request"
                    ));
                }
            }
        }
    }
    for call in dead.symmetric_difference(&lettered) {
        audit.dlq_mismatches += 1;
        audit.problem(format!(
            "call {call}: {} but {}",
            if dead.contains(call) {
                "dead-lettered"
            } else {
                "not dead-lettered"
            },
            if lettered.contains(call) {
                "in the DLQ"
            } else {
                "not in the DLQ"
            },
        ));
    }
    Ok(())
}
