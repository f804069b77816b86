//! Runs a generated [`Schedule`] against the real process stack: the operations at their
//! offsets (each in its own task, so a hung request never delays the next), the faults one
//! after another; then heals what the schedule left (carrier knobs cleared, windows opened,
//! campaigns resumed and drafts started), lets the calls end and audits every invariant.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::json;

use super::{
    Audit, Expectation, POLICY_BACKOFF, Stack,
    audit::{self, CarrierStats},
    checks::{self, CapHistory, Check},
    faults::{self, Targets},
    generate::{Action, Schedule},
    load::LoadReport,
    ops::{Client, Record},
    services::{CarrierApi, Service},
};
use crate::{HarnessError, TestEnv};

/// Every campaign's attempt limit.
const MAX_ATTEMPTS: u32 = 3;
/// How long after a cap change a dialer may still place calls it already held.
const CAP_GRACE_MS: u64 = 2_000;

/// A generated run's result.
#[derive(Debug, Clone)]
pub struct Report {
    pub summary: String,
    pub audit: Audit,
    pub checks: Vec<Check>,
    /// Answers per operation kind and status.
    pub answers: BTreeMap<&'static str, BTreeMap<u16, u64>>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(Check::passed)
    }

    /// The schedule's summary, the answers, the audit row and the checks' table.
    pub fn render(&self) -> String {
        let answers: Vec<String> = self
            .answers
            .iter()
            .map(|(kind, statuses)| {
                let s: Vec<String> = statuses.iter().map(|(k, v)| format!("{k}:{v}")).collect();
                format!("{kind} [{}]", s.join(" "))
            })
            .collect();
        // The scripted suite's row only: its pass rule (no 2xx among refusals) does not fit
        // a generated load, whose verdict is the checks' table.
        format!(
            "{}\nanswers: {}\n\n{}\n{}\n\n{}",
            self.summary,
            answers.join(", "),
            Audit::header(),
            self.audit.row(),
            Check::table(&self.checks)
        )
    }
}

/// The command that replays `seed` for `secs` seconds with `instances` of each service.
pub fn replay_command(seed: u64, secs: u64, instances: usize) -> String {
    let instances = match instances {
        0 | 1 => String::new(),
        n => format!(" --instances {n}"),
    };
    format!("cargo xtask chaos --generated --seed {seed} --seconds {secs}{instances}")
}

/// carrier-sim's starting mix: short and medium calls, every outcome.
fn sim_args() -> Vec<String> {
    [
        "--picked",
        "50",
        "--disconnected",
        "15",
        "--rnr",
        "25",
        "--failed",
        "10",
        "--call-ms",
        "200",
        "--call-jitter-ms",
        "1500",
    ]
    .map(String::from)
    .to_vec()
}

/// Runs `schedule` against `env`, allowing `settle` for the calls to end afterwards.
pub async fn run(
    schedule: &Schedule,
    env: &mut TestEnv,
    settle: Duration,
    verbose: bool,
) -> Result<Report, HarnessError> {
    let say = |text: &str| {
        if verbose {
            eprintln!("[seed {}] {text}", schedule.seed);
        }
    };
    say(&schedule.summary());
    let stack = Stack::start(
        env,
        None,
        sim_args(),
        CarrierApi::Twilio,
        schedule.knobs.max_call_duration_secs,
        schedule.knobs.instances,
    )
    .await?;
    let Stack {
        mut services,
        js,
        _policy,
    } = stack;
    let api = crate::ApiClient::new(services.api.clone());
    let mut campaigns = Vec::new();
    for (i, spec) in schedule.campaigns.iter().enumerate() {
        let body = json!({
            "name": format!("generated-{i}"),
            "max_concurrent_calls": spec.cap,
            "max_attempts": MAX_ATTEMPTS,
            "time_zone": "UTC",
            "draft": spec.draft,
        });
        campaigns.push(super::load::create_campaign(&api, body).await?);
    }
    let client = Client {
        ingests: services
            .apis
            .iter()
            .map(|base| crate::ApiClient {
                base: base.clone(),
                http: api.http.clone(),
            })
            .collect(),
        turn: Arc::default(),
        api,
        sim: services.sim.clone(),
        campaigns: campaigns.clone(),
        record: Arc::new(Mutex::new(Record::default())),
    };

    let started = tokio::time::Instant::now();
    let ops = {
        let (client, steps) = (client.clone(), schedule.steps.clone());
        tokio::spawn(async move {
            let mut tasks = tokio::task::JoinSet::new();
            for step in steps {
                if let Action::Op(op) = step.action {
                    tokio::time::sleep_until(started + step.at).await;
                    let client = client.clone();
                    tasks.spawn(async move { client.execute(&op).await });
                }
            }
            while tasks.join_next().await.is_some() {}
        })
    };
    let mut targets = Targets {
        env,
        cluster: None,
        services: &mut services,
        http: &client.api.http,
    };
    for step in &schedule.steps {
        if let Action::Fault(fault) = &step.action {
            tokio::time::sleep_until(started + step.at).await;
            say(&format!(
                "{:.1} s fault: {}",
                step.at.as_secs_f64(),
                fault.label()
            ));
            faults::inject(fault, &mut targets).await?;
        }
    }
    ops.await
        .map_err(|e| HarnessError::Setup(format!("the operations task failed: {e}")))?;
    say(&format!(
        "schedule done at {}; healing",
        chrono::Utc::now().format("%H:%M:%S%.3f")
    ));
    heal(&client, schedule).await;
    let crashed = targets.services.exited();

    let pg = targets.env.pg().await?;
    let accepted = client
        .record
        .lock()
        .map_or_else(|e| e.into_inner().accepted.clone(), |r| r.accepted.clone());
    let deadline = tokio::time::Instant::now() + settle;
    loop {
        let done = audit::terminal_count(&pg, &accepted).await.unwrap_or(0);
        if done >= accepted.len() as u64 && super::settled(&js).await {
            say(&format!(
                "settled {:.0} s after the schedule ({} s allowed)",
                (tokio::time::Instant::now() + settle - deadline).as_secs_f64(),
                settle.as_secs()
            ));
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            say(&format!(
                "time is up: {done}/{} calls ended",
                accepted.len()
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let elapsed = started.elapsed();
    let report = audit_run(schedule, &client, &campaigns, &pg, &js, crashed, elapsed).await;
    if report.as_ref().map_or(true, |r| !r.passed()) {
        for service in Service::ALL {
            say(&format!(
                "{} log tail:\n{}",
                service.name(),
                targets.services.log_tail(service, 15)
            ));
        }
    }
    tokio::task::block_in_place(|| services.stop());
    report
}

/// Undoes what the schedule left in force, so every accepted call can end: each request is
/// tried until it gets an answer (a restarted ingest or nats-server may need a moment).
async fn heal(client: &Client, schedule: &Schedule) {
    let clear = client
        .api
        .http
        .put(format!("{}/faults", client.sim))
        .json(&json!({}));
    let _ = clear.send().await;
    for (c, spec) in schedule.campaigns.iter().enumerate() {
        let id = client.campaigns[c];
        let mut steps: Vec<&str> = vec!["window", "resume"];
        if spec.draft {
            steps.push("start");
        }
        for step in steps {
            for _ in 0..30 {
                let status = match step {
                    "window" => client.open_window(c).await,
                    verb => {
                        let path = format!("/api/v1/campaigns/{id}/{verb}");
                        let timeout = Duration::from_secs(10);
                        let (status, _) = client
                            .api
                            .attempt(reqwest::Method::POST, &path, None, timeout)
                            .await;
                        status
                    }
                };
                // 409: already running, started, or cancelled.
                if (200..500).contains(&status) {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

async fn audit_run(
    schedule: &Schedule,
    client: &Client,
    campaigns: &[u64],
    pg: &sqlx::PgPool,
    js: &async_nats::jetstream::Context,
    crashed: Vec<Service>,
    elapsed: Duration,
) -> Result<Report, HarnessError> {
    let record = {
        let r = client
            .record
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (
            r.accepted.clone(),
            r.accepted_ms.clone(),
            r.refused.clone(),
            r.answers.clone(),
            r.caps.clone(),
            r.callbacks_taken.clone(),
            r.window_opens.clone(),
        )
    };
    let (accepted, accepted_ms, refused, answers, cap_changes, callbacks_taken, window_opens) =
        record;
    let carrier: CarrierStats = client
        .api
        .http
        .get(format!("{}/stats", client.sim))
        .send()
        .await
        .map_err(|e| HarnessError::Setup(format!("carrier-sim stats: {e}")))?
        .json()
        .await
        .map_err(|e| HarnessError::Setup(format!("carrier-sim stats: {e}")))?;
    let mut caps = BTreeMap::new();
    for (i, id) in campaigns.iter().enumerate() {
        let mut changes = cap_changes.get(id).cloned().unwrap_or_default();
        changes.sort_by_key(|c| c.sent_ms);
        caps.insert(
            *id,
            CapHistory {
                initial: schedule.campaigns[i].cap,
                changes,
            },
        );
    }
    let most: BTreeMap<u64, u32> = caps
        .iter()
        .map(|(id, h)| {
            (
                *id,
                h.changes.iter().map(|c| c.cap).fold(h.initial, u32::max),
            )
        })
        .collect();
    let load = LoadReport {
        accepted: accepted.clone(),
        refused,
    };
    let expect = Expectation {
        max_attempts: MAX_ATTEMPTS,
        backoff: POLICY_BACKOFF,
        caps: most,
        expect_dead_letters: false,
        window_opens,
    };
    let name = format!("generated seed {}", schedule.seed);
    let mut audit = audit::audit(&name, &load, &expect, &carrier, pg, js).await?;
    audit.elapsed = elapsed;
    let histories = audit::histories(pg, &accepted).await?;
    let timed_out = checks::timed_out(&histories);
    for line in checks::last_to_end(&histories, 3) {
        eprintln!("[seed {}] ended last: {line}", schedule.seed);
    }
    let mut docs = BTreeMap::new();
    for id in campaigns {
        let path = format!("/api/v1/campaigns/{id}");
        let (status, doc) = client
            .api
            .attempt(reqwest::Method::GET, &path, None, Duration::from_secs(10))
            .await;
        if status == 0 {
            return Err(HarnessError::Setup(format!("campaign {id}: no answer")));
        }
        docs.insert(*id, doc);
    }
    let states: BTreeMap<u64, String> = docs
        .iter()
        .map(|(id, d)| (*id, d["state"].as_str().unwrap_or("?").to_owned()))
        .collect();

    let mut edge = Check {
        name: "forged callbacks refused",
        violations: callbacks_taken.len() as u64,
        measured: format!(
            "{} callbacks",
            answers
                .get("callback")
                .map_or(0, |a| a.values().sum::<u64>())
        ),
        evidence: callbacks_taken.into_iter().take(8).collect(),
    };
    edge.evidence.truncate(8);
    let mut dlq = Check {
        name: "DLQ matches dead-lettered calls",
        violations: audit.dlq_mismatches,
        measured: format!(
            "{} letters, {} dead-lettered",
            audit.dlq_letters, audit.dead_lettered
        ),
        evidence: audit
            .problems
            .iter()
            .filter(|p| p.contains("DLQ"))
            .cloned()
            .collect(),
    };
    dlq.evidence.truncate(8);
    let names: Vec<&str> = crashed.iter().map(|s| s.name()).collect();
    let mut lost = checks::lost(&accepted, &histories, &states, &carrier);
    lost_evidence(js, &accepted, &histories, &mut lost).await;
    let checks = vec![
        lost,
        checks::placed_twice(&carrier),
        checks::number_overlap(&carrier, &timed_out),
        checks::cap_over_time(&carrier, &caps, CAP_GRACE_MS, &timed_out, &histories),
        checks::retries_per_policy(audit.retries, audit.retry_violations, &audit.retry_problems),
        checks::campaign_completion(&docs, &accepted, &accepted_ms, &histories),
        checks::claims_without_live_call(js, pg).await?,
        dlq,
        edge,
        Check {
            name: "no service exited on its own",
            violations: crashed.len() as u64,
            measured: "4 services".into(),
            evidence: if names.is_empty() {
                vec![]
            } else {
                vec![format!("{names:?}")]
            },
        },
    ];
    Ok(Report {
        summary: schedule.summary(),
        audit,
        checks,
        answers,
    })
}

/// What the servers still hold of each lost call, beside its history: its last admission
/// record (the dialer's decision: placed, put off and why, ended) and its campaign's dial
/// consumer (queued, held, paused, cap), so a call that never reached `Dialing` can be told
/// apart as waiting in `CALLS`, held by a dialer or put off through `RETRIES`.
async fn lost_evidence(
    js: &async_nats::jetstream::Context,
    accepted: &[super::load::Accepted],
    histories: &BTreeMap<ccm_core::CallId, Vec<ccm_core::CallEvent>>,
    check: &mut Check,
) {
    let Ok(events) = js.get_stream(ccm_core::topology::names::CALL_EVENTS).await else {
        return;
    };
    let calls = js.get_stream(ccm_core::topology::names::CALLS).await.ok();
    for call in accepted {
        let ended = histories
            .get(&call.call_id)
            .is_some_and(|h| h.iter().any(|e| e.kind.is_terminal()));
        if ended {
            continue;
        }
        let Ok(campaign) = ccm_core::CampaignId::new(call.campaign) else {
            continue;
        };
        let record = events
            .direct_get_last_for_subject(ccm_core::subjects::audit(campaign, call.call_id))
            .await
            .map_or_else(
                |e| format!("none ({e})"),
                |m| {
                    String::from_utf8_lossy(&m.payload)
                        .chars()
                        .take(600)
                        .collect()
                },
            );
        let consumer = match &calls {
            Some(stream) => match stream
                .get_consumer::<async_nats::jetstream::consumer::pull::Config>(
                    &ccm_core::subjects::dial_consumer(campaign),
                )
                .await
            {
                Ok(mut c) => c.info().await.map_or_else(
                    |e| format!("unreadable ({e})"),
                    |i| {
                        format!(
                            "{} queued, {} held, {} redelivered, max_ack_pending {}, paused {}",
                            i.num_pending,
                            i.num_ack_pending,
                            i.num_redelivered,
                            i.config.max_ack_pending,
                            i.paused
                        )
                    },
                ),
                Err(e) => format!("none ({e})"),
            },
            None => "CALLS unreadable".into(),
        };
        check.evidence.push(format!(
            "    call {}: last admission record {record}; campaign {}'s dial consumer: {consumer}",
            call.call_id, call.campaign
        ));
    }
}
