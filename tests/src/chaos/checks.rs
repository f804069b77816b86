//! The invariants of a generated run, each a named check with its own evidence.
//!
//! They read what the run left behind: carrier-sim's ledger (every placed attempt with the
//! moments it was live at the carrier), PostgreSQL's event history, the campaign documents
//! and the `active_calls` claims. Each returns a [`Check`]: its name, how many violations,
//! what was measured, and the first few violations spelled out.

use std::collections::BTreeMap;

use ccm_core::{CallEvent, CallId, EventKind};
use futures::TryStreamExt as _;
use sqlx::PgPool;

use super::{audit::CarrierStats, load::Accepted};
use crate::HarnessError;

/// One invariant's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub violations: u64,
    /// What was looked at (e.g. "812 placements").
    pub measured: String,
    /// The first violations, spelled out.
    pub evidence: Vec<String>,
}

impl Check {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            violations: 0,
            measured: String::new(),
            evidence: Vec::new(),
        }
    }

    fn violation(&mut self, text: String) {
        self.violations += 1;
        if self.evidence.len() < 8 {
            self.evidence.push(text);
        }
    }

    pub fn passed(&self) -> bool {
        self.violations == 0
    }

    /// The checks as a Markdown table, then each failed one's evidence.
    pub fn table(checks: &[Check]) -> String {
        let mut out = String::from("| check | violations | measured |\n|---|---|---|");
        for c in checks {
            out.push_str(&format!(
                "\n| {} | {} | {} |",
                c.name, c.violations, c.measured
            ));
        }
        for c in checks.iter().filter(|c| !c.passed()) {
            out.push_str(&format!("\n\n{} FAILED:", c.name));
            for e in &c.evidence {
                out.push_str(&format!("\n  - {e}"));
            }
        }
        out
    }
}

/// A cap change as the client saw it: asked at `sent_ms`, answered 2xx at `answered_ms`,
/// the document written at `written_ms` (its `updated_at`; `None` when no answer said).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapChange {
    pub sent_ms: u64,
    pub answered_ms: u64,
    pub written_ms: Option<u64>,
    pub cap: u32,
}

/// A campaign's cap over time: the cap it was created with, then its changes in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CapHistory {
    pub initial: u32,
    pub changes: Vec<CapChange>,
}

impl CapHistory {
    /// The highest cap that may be in force at some moment of `[from, to]`: while a change
    /// is being made either value may hold. Answered changes follow each other in the order
    /// they were written (two PATCHes in flight together may land in either order, and the
    /// document keeps the later write); a change with no definite answer may have been
    /// written at any moment, so its cap may hold from when it was sent until `answered_ms`
    /// (a minute later).
    pub fn allowed(&self, from: u64, to: u64) -> u32 {
        let mut written: Vec<&CapChange> = self
            .changes
            .iter()
            .filter(|c| c.written_ms.is_some())
            .collect();
        written.sort_by_key(|c| c.written_ms);
        let mut allowed = 0;
        let mut current = self.initial;
        let mut since = 0;
        for change in written {
            // `current` holds on [since, answered]; the new cap from `sent`.
            if since <= to && change.answered_ms >= from {
                allowed = allowed.max(current);
            }
            current = change.cap;
            since = change.sent_ms;
        }
        if since <= to {
            allowed = allowed.max(current);
        }
        for change in self.changes.iter().filter(|c| c.written_ms.is_none()) {
            if change.sent_ms <= to && change.answered_ms >= from {
                allowed = allowed.max(change.cap);
            }
        }
        allowed
    }
}

/// No accepted call may be lost: each has a terminal event once the run has settled.
///
/// A violation spells out the call's whole history (kind@attempt and time) and what the
/// carrier saw of each attempt, so a call left open can be told apart from one still on
/// its way (an attempt live at the carrier, a retry due) without replaying the seed.
pub fn lost(
    accepted: &[Accepted],
    histories: &BTreeMap<CallId, Vec<CallEvent>>,
    states: &BTreeMap<u64, String>,
    carrier: &CarrierStats,
) -> Check {
    let mut check = Check::new("lost");
    for call in accepted {
        let events = histories.get(&call.call_id).map_or(&[][..], Vec::as_slice);
        if events.iter().any(|e| e.kind.is_terminal()) {
            continue;
        }
        let last = events.last().map_or("no event".into(), |e| {
            format!("{}@{}", e.kind.name(), e.attempt)
        });
        let state = states.get(&call.campaign).map_or("?", String::as_str);
        check.violation(format!(
            "call {} ({} in campaign {} [{state}]): last {last}; history {}; carrier {}",
            call.call_id,
            call.number,
            call.campaign,
            history_line(events),
            carrier_line(carrier, call.call_id),
        ));
    }
    check.measured = format!("{} accepted calls", accepted.len());
    check
}

/// The `n` calls that ended last, each with its history: what a run's settle time went to.
pub fn last_to_end(histories: &BTreeMap<CallId, Vec<CallEvent>>, n: usize) -> Vec<String> {
    let mut ended: Vec<(chrono::DateTime<chrono::Utc>, CallId)> = histories
        .iter()
        .filter_map(|(id, events)| {
            let end = events
                .iter()
                .filter(|e| e.kind.is_terminal())
                .map(|e| e.at)
                .min()?;
            Some((end, *id))
        })
        .collect();
    ended.sort_unstable_by(|a, b| b.cmp(a));
    ended
        .into_iter()
        .take(n)
        .map(|(_, id)| format!("call {id}: {}", history_line(&histories[&id])))
        .collect()
}

/// `Accepted@0 12:00:01.250, Dialing@1 12:00:02.003, …`
fn history_line(events: &[CallEvent]) -> String {
    let steps: Vec<String> = events
        .iter()
        .map(|e| {
            let detail = match &e.kind {
                EventKind::Outcome {
                    status,
                    source,
                    reason,
                    ..
                } => format!(
                    " ({status:?} from {source:?}{})",
                    reason
                        .as_deref()
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default()
                ),
                EventKind::Failed { reason }
                | EventKind::Cancelled { reason }
                | EventKind::DeadLettered { reason }
                | EventKind::Expired { reason } => format!(" ({reason})"),
                _ => String::new(),
            };
            format!(
                "{}@{} {}{detail}",
                e.kind.name(),
                e.attempt,
                e.at.format("%H:%M:%S%.3f")
            )
        })
        .collect();
    if steps.is_empty() {
        "none".into()
    } else {
        steps.join(", ")
    }
}

/// Each attempt of `call` in carrier-sim's ledger: requests, and when it was live.
fn carrier_line(carrier: &CarrierStats, call: CallId) -> String {
    let prefix = format!("{call}/");
    let attempts: Vec<String> = carrier
        .attempts
        .iter()
        .filter(|(key, _)| key.starts_with(&prefix))
        .map(|(key, a)| {
            let ended = a
                .ended_ms
                .map_or("still live".into(), |end| format!("ended {end}"));
            format!(
                "{} x{} placed {} {ended}",
                &key[prefix.len()..],
                a.requests,
                a.placed_ms
            )
        })
        .collect();
    if attempts.is_empty() {
        "never placed".into()
    } else {
        attempts.join(", ")
    }
}

/// No attempt is placed twice: carrier-sim saw each attempt's key once.
pub fn placed_twice(carrier: &CarrierStats) -> Check {
    let mut check = Check::new("placed twice");
    for (key, attempt) in &carrier.attempts {
        if attempt.requests > 1 {
            check.violation(format!(
                "attempt {key} ({}): {} placement requests",
                attempt.to, attempt.requests
            ));
        }
    }
    check.measured = format!("{} placements", carrier.attempts.len());
    check
}

/// Whether two ledger intervals overlap: `b` was still live when `a` was placed.
fn live_at(b: &super::audit::CarrierAttempt, t: u64) -> bool {
    b.placed_ms <= t && b.ended_ms.is_none_or(|end| end > t)
}

/// Attempts (`<call>/<attempt>`) the dialer ended with a synthetic timeout outcome, and when
/// (Unix ms): still live at the carrier after it, they are issue 16 item 2's signature.
pub type TimedOut = BTreeMap<String, u64>;

/// The attempts of `histories` ended by the dialer's timeout.
pub fn timed_out(histories: &BTreeMap<CallId, Vec<CallEvent>>) -> TimedOut {
    histories
        .iter()
        .flat_map(|(id, events)| {
            events.iter().filter_map(move |e| match &e.kind {
                EventKind::Outcome {
                    source: ccm_core::OutcomeSource::Timeout,
                    ..
                } => Some((
                    format!("{id}/{}", e.attempt),
                    u64::try_from(e.at.timestamp_millis()).unwrap_or(0),
                )),
                _ => None,
            })
        })
        .collect()
}

fn ended_by_timeout(timed_out: &TimedOut, key: &str, t: u64) -> bool {
    timed_out.get(key).is_some_and(|at| *at <= t)
}

/// No number is in two live calls at once (the duplicate rule is global), per the ledger.
pub fn number_overlap(carrier: &CarrierStats, timed_out: &TimedOut) -> Check {
    let mut check = Check::new("number overlap");
    let mut by_number: BTreeMap<&str, Vec<(&String, &super::audit::CarrierAttempt)>> =
        BTreeMap::new();
    for (key, attempt) in &carrier.attempts {
        by_number
            .entry(&attempt.to)
            .or_default()
            .push((key, attempt));
    }
    for (number, mut attempts) in by_number {
        attempts.sort_by_key(|(_, a)| a.placed_ms);
        for (i, (key, a)) in attempts.iter().enumerate() {
            for (other, b) in &attempts[..i] {
                if live_at(b, a.placed_ms) {
                    let why = if ended_by_timeout(timed_out, other, a.placed_ms) {
                        "; the dialer had ended it by its timeout (issue 16 item 2)"
                    } else {
                        ""
                    };
                    check.violation(format!(
                        "{number}: {key} placed at {} while {other} was live ({}..{:?}){why}",
                        a.placed_ms, b.placed_ms, b.ended_ms
                    ));
                }
            }
        }
    }
    check.measured = format!("{} placements", carrier.attempts.len());
    check
}

/// No campaign ever has more live calls than its cap: at each placement, the campaign's
/// live calls (the ledger's timeline) against the highest cap in force during the `grace`
/// before it (a lowered cap cannot recall a message a dialer already holds).
pub fn cap_over_time(
    carrier: &CarrierStats,
    caps: &BTreeMap<u64, CapHistory>,
    grace_ms: u64,
    timed_out: &TimedOut,
    histories: &BTreeMap<CallId, Vec<CallEvent>>,
) -> Check {
    let mut check = Check::new("cap exceeded");
    let mut worst = (0usize, 0u32);
    for (campaign, history) in caps {
        let attempts: Vec<(&String, &super::audit::CarrierAttempt)> = carrier
            .attempts
            .iter()
            .filter(|(_, a)| a.campaign == campaign.to_string())
            .collect();
        for (key, a) in &attempts {
            let t = a.placed_ms;
            let live = attempts.iter().filter(|(_, b)| live_at(b, t)).count();
            let stale = attempts
                .iter()
                .filter(|(k, b)| live_at(b, t) && ended_by_timeout(timed_out, k, t))
                .count();
            let allowed = history.allowed(t.saturating_sub(grace_ms), t);
            if live * (worst.1.max(1) as usize) > worst.0 * allowed.max(1) as usize {
                worst = (live, allowed);
            }
            if live > allowed as usize {
                // The changes around it, to tell a cap applied late from one counted wrong.
                let near: Vec<String> = history
                    .changes
                    .iter()
                    .filter(|c| c.sent_ms + 10_000 >= t && c.sent_ms <= t + 2_000)
                    .map(|c| {
                        format!(
                            "{} sent {} written {:?} answered {}",
                            c.cap, c.sent_ms, c.written_ms, c.answered_ms
                        )
                    })
                    .collect();
                // Each live attempt: when the carrier had it, and when ccm saw its outcome.
                let others: Vec<String> = attempts
                    .iter()
                    .filter(|(_, b)| live_at(b, t))
                    .map(|(k, b)| {
                        let seen = outcome_of(histories, k)
                            .map_or("no outcome".into(), |(at, source)| {
                                format!("outcome {source} at {at}")
                            });
                        format!("{k} placed {} ended {:?} ({seen})", b.placed_ms, b.ended_ms)
                    })
                    .collect();
                check.violation(format!(
                    "campaign {campaign}: {live} live calls at {t} when {key} was placed, cap \
                     {allowed}; {stale} of them already ended by the dialer's timeout (issue 16 \
                     item 2); cap changes near: {near:?}; live: {others:?}"
                ));
            }
        }
    }
    check.measured = format!("worst {} live / cap {}", worst.0, worst.1);
    check
}

/// When ccm recorded the outcome of attempt `key` (`<call>/<attempt>`, Unix ms), and from
/// where (the carrier, or the dialer's timeout).
fn outcome_of(histories: &BTreeMap<CallId, Vec<CallEvent>>, key: &str) -> Option<(i64, String)> {
    let (call, attempt) = key.split_once('/')?;
    let (call, attempt): (CallId, u32) = (call.parse().ok()?, attempt.parse().ok()?);
    histories.get(&call)?.iter().find_map(|e| match &e.kind {
        EventKind::Outcome { source, .. } if e.attempt == attempt => {
            Some((e.at.timestamp_millis(), format!("{source:?}")))
        }
        _ => None,
    })
}

/// The retry policy held (attempt numbering, limit, backoff, no retry after PICKED), from
/// the history check of [`super::audit`].
pub fn retries_per_policy(retries: u64, violations: u64, problems: &[String]) -> Check {
    let mut check = Check::new("retries per policy");
    for p in problems {
        check.violation(p.clone());
    }
    check.violations = violations.max(check.violations);
    check.measured = format!("{retries} retries");
    check
}

/// A campaign is completed only when every call of it is terminal: each call accepted
/// before `ended_at` ended no later than it, and none was cancelled by the completion.
pub fn campaign_completion(
    campaigns: &BTreeMap<u64, serde_json::Value>,
    accepted: &[Accepted],
    accepted_ms: &BTreeMap<CallId, u64>,
    histories: &BTreeMap<CallId, Vec<CallEvent>>,
) -> Check {
    let mut check = Check::new("completed only when all terminal");
    let mut completed = 0;
    for (id, doc) in campaigns {
        if doc["state"].as_str() != Some("completed") {
            continue;
        }
        completed += 1;
        let Some(ended) = doc["ended_at"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&chrono::Utc))
        else {
            check.violation(format!("campaign {id}: completed without ended_at"));
            continue;
        };
        let ended_ms = u64::try_from(ended.timestamp_millis()).unwrap_or(0);
        for call in accepted.iter().filter(|a| a.campaign == *id) {
            // Accepted after the completion (by the client's clock, same host): not held to it.
            if accepted_ms
                .get(&call.call_id)
                .is_none_or(|at| *at >= ended_ms)
            {
                continue;
            }
            let events = histories.get(&call.call_id).map_or(&[][..], Vec::as_slice);
            match events.iter().find(|e| e.kind.is_terminal()) {
                None => check.violation(format!(
                    "campaign {id} completed at {ended} but call {} is not terminal",
                    call.call_id
                )),
                Some(end) if end.at > ended + chrono::Duration::seconds(1) => {
                    check.violation(format!(
                        "campaign {id} completed at {ended}; call {} ended {} at {}",
                        call.call_id,
                        end.kind.name(),
                        end.at
                    ));
                }
                Some(CallEvent {
                    kind: EventKind::Cancelled { reason },
                    ..
                }) if reason.contains("complet") => check.violation(format!(
                    "campaign {id}: call {} cancelled by the completion ({reason})",
                    call.call_id
                )),
                Some(_) => {}
            }
        }
    }
    check.measured = format!("{completed} completed campaigns");
    check
}

/// No claim outlives its call: every `active_calls` key holding a call id names a call that
/// is still live (known to the read model and not terminal).
pub async fn claims_without_live_call(
    js: &async_nats::jetstream::Context,
    pg: &PgPool,
) -> Result<Check, HarnessError> {
    let mut check = Check::new("claims with no live call");
    let kv = js
        .get_key_value(ccm_core::topology::names::KV_ACTIVE_CALLS)
        .await
        .map_err(|e| HarnessError::Setup(format!("active_calls bucket: {e}")))?;
    let keys: Vec<String> = kv
        .keys()
        .await
        .map_err(|e| HarnessError::Setup(format!("active_calls keys: {e}")))?
        .try_collect()
        .await
        .map_err(|e| HarnessError::Setup(format!("active_calls keys: {e}")))?;
    let mut claims = Vec::new();
    for key in keys {
        let value = kv
            .get(&key)
            .await
            .map_err(|e| HarnessError::Setup(format!("active_calls {key}: {e}")))?;
        if let Some(value) = value {
            claims.push((key, String::from_utf8_lossy(&value).into_owned()));
        }
    }
    let ids: Vec<uuid::Uuid> = claims.iter().filter_map(|(_, v)| v.parse().ok()).collect();
    let rows: Vec<(uuid::Uuid, bool)> = sqlx::query_as(
        "SELECT c.call_id, EXISTS (SELECT 1 FROM call_events e WHERE e.call_id = c.call_id \
         AND e.kind = ANY($2)) FROM calls c WHERE c.call_id = ANY($1)",
    )
    .bind(&ids)
    .bind(&super::audit::TERMINAL[..])
    .fetch_all(pg)
    .await
    .map_err(HarnessError::Database)?;
    let known: BTreeMap<uuid::Uuid, bool> = rows.into_iter().collect();
    for (key, value) in &claims {
        match value
            .parse::<uuid::Uuid>()
            .ok()
            .and_then(|id| known.get(&id))
        {
            Some(false) => {}
            Some(true) => {
                check.violation(format!("{key} claimed by call {value}, which is terminal"))
            }
            None => check.violation(format!(
                "{key} claimed by {value:?}, a call the read model does not know (never published?)"
            )),
        }
    }
    check.measured = format!("{} claims", claims.len());
    Ok(check)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chaos::audit::CarrierAttempt;

    /// Key, campaign, number, placed, ended, requests.
    type Row<'a> = (&'a str, &'a str, &'a str, u64, Option<u64>, u32);

    fn ledger(attempts: &[Row<'_>]) -> CarrierStats {
        CarrierStats {
            attempts: attempts
                .iter()
                .map(|(key, campaign, to, placed, ended, requests)| {
                    let attempt = CarrierAttempt {
                        requests: *requests,
                        campaign: (*campaign).into(),
                        to: (*to).into(),
                        placed_ms: *placed,
                        ended_ms: *ended,
                    };
                    ((*key).to_owned(), attempt)
                })
                .collect(),
            ..CarrierStats::default()
        }
    }

    #[test]
    fn the_ledger_checks_find_overlaps_repeats_and_a_cap_exceeded() {
        let clean = ledger(&[
            ("a/1", "7", "+1", 100, Some(200), 1),
            ("b/1", "7", "+1", 200, Some(300), 1),
            ("c/1", "7", "+2", 150, None, 1),
        ]);
        let caps = BTreeMap::from([(
            7,
            CapHistory {
                initial: 2,
                changes: vec![],
            },
        )]);
        let none = TimedOut::new();
        assert!(number_overlap(&clean, &none).passed());
        assert!(placed_twice(&clean).passed());
        assert!(cap_over_time(&clean, &caps, 0, &none, &BTreeMap::new()).passed());

        let broken = ledger(&[
            ("a/1", "7", "+1", 100, Some(200), 2),
            ("b/1", "7", "+1", 150, Some(300), 1),
            ("c/1", "7", "+2", 160, None, 1),
        ]);
        let overlap = number_overlap(&broken, &none);
        assert_eq!(overlap.violations, 1, "{overlap:?}");
        assert!(overlap.evidence[0].contains("b/1"), "{overlap:?}");
        assert_eq!(placed_twice(&broken).violations, 1);
        let cap = cap_over_time(&broken, &caps, 0, &none, &BTreeMap::new());
        assert_eq!(cap.violations, 1, "{cap:?}");
        // Lowered from 3 to 2 just before: within the grace the old cap still counts.
        let lowered = BTreeMap::from([(
            7,
            CapHistory {
                initial: 3,
                changes: vec![CapChange {
                    sent_ms: 155,
                    answered_ms: 158,
                    written_ms: Some(158),
                    cap: 2,
                }],
            },
        )]);
        assert!(cap_over_time(&broken, &lowered, 10, &none, &BTreeMap::new()).passed());
        assert!(!cap_over_time(&broken, &lowered, 0, &none, &BTreeMap::new()).passed());
        // Still a violation when the dialer had timed the first call out, but named as such.
        let timed = TimedOut::from([("a/1".to_owned(), 120)]);
        let overlap = number_overlap(&broken, &timed);
        assert!(
            overlap.evidence[0].contains("issue 16 item 2"),
            "{overlap:?}"
        );
    }

    #[test]
    fn the_allowed_cap_covers_a_change_in_flight_and_the_grace() {
        let h = CapHistory {
            initial: 5,
            changes: vec![
                CapChange {
                    sent_ms: 100,
                    answered_ms: 110,
                    written_ms: Some(110),
                    cap: 2,
                },
                CapChange {
                    sent_ms: 200,
                    answered_ms: 205,
                    written_ms: Some(205),
                    cap: 8,
                },
            ],
        };
        assert_eq!(h.allowed(50, 60), 5);
        assert_eq!(h.allowed(105, 105), 5);
        assert_eq!(h.allowed(150, 160), 2);
        assert_eq!(h.allowed(120, 201), 8);
        assert_eq!(h.allowed(300, 300), 8);
        assert_eq!(
            CapHistory {
                initial: 3,
                changes: vec![]
            }
            .allowed(0, 10),
            3
        );
    }

    /// Two changes in flight together are written in either order, and the document keeps
    /// the one written last: here the cap sent first (8) was written after the one sent
    /// second (5), so 8 holds after both answers.
    #[test]
    fn the_allowed_cap_follows_the_order_the_changes_were_written_in() {
        let h = CapHistory {
            initial: 3,
            changes: vec![
                CapChange {
                    sent_ms: 100,
                    answered_ms: 400,
                    written_ms: Some(300),
                    cap: 8,
                },
                CapChange {
                    sent_ms: 200,
                    answered_ms: 260,
                    written_ms: Some(250),
                    cap: 5,
                },
            ],
        };
        assert_eq!(h.allowed(1_000, 1_000), 8);
        assert_eq!(h.allowed(50, 60), 3);
        // A change nobody answered may have been written: its cap may hold for a minute.
        let unanswered = CapHistory {
            initial: 3,
            changes: vec![
                CapChange {
                    sent_ms: 100,
                    answered_ms: 60_100,
                    written_ms: None,
                    cap: 9,
                },
                CapChange {
                    sent_ms: 200,
                    answered_ms: 210,
                    written_ms: Some(205),
                    cap: 4,
                },
            ],
        };
        assert_eq!(unanswered.allowed(30_000, 30_000), 9);
        assert_eq!(unanswered.allowed(70_000, 70_000), 4);
    }
}
