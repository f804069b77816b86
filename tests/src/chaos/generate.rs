//! Generated fault scenarios: a seeded schedule of client operations mixed with faults.
//!
//! [`schedule`] is a pure function of its seed and [`Knobs`]: the same seed always gives the
//! same operations and faults at the same offsets, so a failing run is replayed by its seed.
//! Operations are timed independently of the faults; faults come one after another (each
//! undone before the next), as a supervisor restarts one thing at a time.

use std::{collections::BTreeMap, time::Duration};

use rand::{Rng, SeedableRng, rngs::StdRng, seq::IndexedRandom};

use super::{faults::Fault, services::Service};

/// The shape of a generated run.
#[derive(Debug, Clone, PartialEq)]
pub struct Knobs {
    /// How long operations and faults are generated for.
    pub duration: Duration,
    pub campaigns: u32,
    /// Distinct phone numbers the calls use (shared by the campaigns: the duplicate rule is
    /// global).
    pub numbers: u32,
    /// The mean time between two operations.
    pub op_every: Duration,
    /// The mean quiet time between two faults.
    pub fault_every: Duration,
    /// Longest downtime of a killed service or a stopped/paused nats-server.
    pub max_down: Duration,
    /// Longest PostgreSQL outage.
    pub max_postgres_down: Duration,
    /// A call longer than this is ended FAILED (timeout) by the dialer; "long" calls exceed it.
    pub max_call_duration_secs: u64,
    /// Processes of each service: a fault kills one of them; the API requests and the
    /// carrier's callbacks are spread over the ingest instances.
    pub instances: usize,
}

impl Knobs {
    /// A run of `duration` with the usual mix.
    pub fn new(duration: Duration) -> Self {
        Self {
            duration,
            campaigns: 3,
            // 60, then 120 more a minute: a number is refused for ingest's 5-minute duplicate
            // window after its call, so a longer run needs more of them to keep placing calls.
            numbers: u32::try_from(60 + duration.as_secs().div_ceil(60).saturating_sub(1) * 120)
                .unwrap_or(u32::MAX),
            op_every: Duration::from_millis(250),
            fault_every: Duration::from_secs(8),
            max_down: Duration::from_secs(5),
            max_postgres_down: Duration::from_secs(10),
            max_call_duration_secs: 8,
            instances: 1,
        }
    }
}

impl Knobs {
    /// How long the calls of a healed run may legitimately take to end, by the design's own
    /// timings rather than a guess. The slowest path is a placement whose result is unknown
    /// (the carrier's answer lost to a fault): the dialer cannot name the call to hang it up,
    /// so it holds the slot for the maximum duration and then for the longest ring a campaign
    /// may set (`ring_time::MAX_SECS` + 1, `dialer/src/carrier/twilio.rs`) and the hang-up
    /// grace, about 130 s (measured: seed 1 settled 130-132 s after its schedule on a quiet
    /// machine, its last calls being exactly these). Twice that covers a call queued behind
    /// one such in a cap-1 campaign, plus a minute for the retries and a loaded machine. A
    /// healthy run ends as soon as every call has, so the bound costs nothing then.
    pub fn settle_bound(&self) -> Duration {
        let unknown_hold = self.max_call_duration_secs
            + u64::from(ccm_core::campaign::ring_time::MAX_SECS)
            + 1
            + 1;
        Duration::from_secs(2 * unknown_hold + 60)
    }
}

/// A campaign as the run creates it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CampaignSpec {
    pub cap: u32,
    /// Created as a draft (calls held until a [`Op::Start`]; it then completes by itself).
    pub draft: bool,
}

/// Who a forged callback names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallbackTarget {
    /// The n-th call accepted so far (modulo their number); none yet: an unknown id.
    Accepted(u32),
    /// A well-formed id no call has.
    Unknown(u128),
    /// Not an id at all.
    Garbage(String),
}

/// carrier-sim's run-time knobs (`PUT /faults`), in force until the next change.
#[derive(Debug, Clone, PartialEq)]
pub struct CarrierKnobs {
    /// Placements answered 503 (nothing placed).
    pub error_rate: f64,
    /// Added to every placement answer; above the dialer's 3 s request timeout it is a
    /// carrier timeout (the call may still be placed).
    pub latency_ms: u64,
    /// Final callbacks never sent (the dialer's max-call-duration timeout ends the attempt).
    pub drop_rate: f64,
    pub duplicate_rate: f64,
    pub reorder_rate: f64,
    /// Added call length: long calls outlast the dialer's max call duration.
    pub extra_call_ms: u64,
}

/// A client's operation.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// `POST /api/v1/calls` to number `number` of the pool.
    Call {
        campaign: usize,
        number: u32,
    },
    /// `POST /api/v1/calls/bulk`: pool numbers and hostile strings mixed.
    Bulk {
        campaign: usize,
        items: Vec<BulkItem>,
    },
    Pause(usize),
    Resume(usize),
    Cancel(usize),
    /// Starts a draft.
    Start(usize),
    /// `PATCH` of the concurrency cap.
    Cap {
        campaign: usize,
        cap: u32,
    },
    /// A calling window that is closed now and opens `opens_in` later (UTC, the campaigns'
    /// zone).
    CloseWindow {
        campaign: usize,
        opens_in: Duration,
    },
    /// A calling window open all day.
    OpenWindow(usize),
    DncAdd(Vec<u32>),
    DncRemove(Vec<u32>),
    /// `PUT /api/v1/callback/` with arbitrary fields. A real call is only ever named with an
    /// invalid status: a valid one would be a (legitimate) outcome the carrier never sent.
    Callback {
        target: CallbackTarget,
        status: String,
        fields: BTreeMap<String, serde_json::Value>,
    },
    Carrier(CarrierKnobs),
}

/// One item of a bulk request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BulkItem {
    Number(u32),
    Hostile(String),
}

/// What happens at a step.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Op(Op),
    Fault(Fault),
}

/// One timed step.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// From the start of the run.
    pub at: Duration,
    pub action: Action,
}

/// A generated run.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub seed: u64,
    pub knobs: Knobs,
    pub campaigns: Vec<CampaignSpec>,
    /// Sorted by `at`.
    pub steps: Vec<Step>,
}

/// Strings a hostile or careless client sends: control characters PostgreSQL refuses in
/// `jsonb` and `text`, injection attempts, overlong and odd Unicode.
pub const HOSTILE: [&str; 16] = [
    "",
    " ",
    "\u{0}",
    "a\u{0}b",
    "' OR 1=1; --",
    "\"; DROP TABLE calls; --",
    "<script>alert(1)</script>",
    "../../../../etc/passwd",
    "\u{202e}dekcip",
    "💥📞",
    "\\u0000",
    "NaN",
    "-1",
    "+",
    "${jndi:ldap://127.0.0.1/a}",
    "%00%0d%0a",
];

/// The pool's `n`-th phone number.
pub fn number(n: u32) -> String {
    format!("+1555{:03}{:04}", 200 + n / 10_000, n % 10_000)
}

fn millis(rng: &mut StdRng, max: Duration) -> Duration {
    let max = u64::try_from(max.as_millis()).unwrap_or(u64::MAX).max(1);
    Duration::from_millis(rng.random_range(0..=max))
}

fn between(rng: &mut StdRng, min: Duration, max: Duration) -> Duration {
    min + millis(rng, max.saturating_sub(min))
}

fn hostile(rng: &mut StdRng) -> String {
    if rng.random_ratio(1, 8) {
        // Long enough to exceed any sensible column or header.
        return "9".repeat(rng.random_range(100..20_000));
    }
    HOSTILE.choose(rng).copied().unwrap_or_default().to_owned()
}

/// The schedule of `seed` under `knobs`: a pure function.
pub fn schedule(seed: u64, knobs: &Knobs) -> Schedule {
    let mut rng = StdRng::seed_from_u64(seed);
    let campaigns: Vec<CampaignSpec> = (0..knobs.campaigns.max(1))
        .map(|i| CampaignSpec {
            cap: rng.random_range(2..=8),
            // The first campaign always runs from the start, so every run has load.
            draft: i > 0 && rng.random_ratio(1, 3),
        })
        .collect();
    let mut steps = Vec::new();
    for (c, spec) in campaigns.iter().enumerate() {
        if spec.draft {
            let at = millis(&mut rng, knobs.duration / 3);
            steps.push(Step {
                at,
                action: Action::Op(Op::Start(c)),
            });
        }
    }
    let mut at = Duration::ZERO;
    let mut cancelled = false;
    loop {
        at += millis(&mut rng, knobs.op_every * 2);
        if at >= knobs.duration {
            break;
        }
        let op = op(&mut rng, knobs, campaigns.len(), &mut cancelled, at);
        steps.push(Step {
            at,
            action: Action::Op(op),
        });
    }
    let mut at = between(&mut rng, Duration::from_secs(2), knobs.fault_every);
    while at < knobs.duration {
        let fault = fault(&mut rng, knobs);
        let hold = fault_hold(&fault);
        steps.push(Step {
            at,
            action: Action::Fault(fault),
        });
        at += hold + between(&mut rng, Duration::from_secs(1), knobs.fault_every * 2);
    }
    // Stable: operations keep their order within one instant.
    steps.sort_by_key(|s| s.at);
    Schedule {
        seed,
        knobs: knobs.clone(),
        campaigns,
        steps,
    }
}

fn op(rng: &mut StdRng, knobs: &Knobs, campaigns: usize, cancelled: &mut bool, at: Duration) -> Op {
    let campaign = rng.random_range(0..campaigns);
    let pool = knobs.numbers.max(1);
    let numbers = |rng: &mut StdRng| -> Vec<u32> {
        let n = rng.random_range(1..=3);
        (0..n).map(|_| rng.random_range(0..pool)).collect()
    };
    match rng.random_range(0..100) {
        0..40 => Op::Call {
            campaign,
            number: rng.random_range(0..pool),
        },
        40..48 => {
            let items = (0..rng.random_range(1..=12))
                .map(|_| {
                    if rng.random_ratio(1, 5) {
                        BulkItem::Hostile(hostile(rng))
                    } else {
                        BulkItem::Number(rng.random_range(0..pool))
                    }
                })
                .collect();
            Op::Bulk { campaign, items }
        }
        48..52 => Op::Pause(campaign),
        52..58 => Op::Resume(campaign),
        // At most one cancel, and only in the second half: a cancelled campaign takes no
        // more load.
        58..59 if !*cancelled && at > knobs.duration / 2 && campaign > 0 => {
            *cancelled = true;
            Op::Cancel(campaign)
        }
        59..65 => Op::Cap {
            campaign,
            cap: rng.random_range(1..=10),
        },
        65..68 => Op::CloseWindow {
            campaign,
            opens_in: between(rng, Duration::from_secs(2), Duration::from_secs(20)),
        },
        68..72 => Op::OpenWindow(campaign),
        72..75 => Op::DncAdd(numbers(rng)),
        75..78 => Op::DncRemove(numbers(rng)),
        78..90 => callback(rng),
        90..96 => Op::Carrier(carrier(rng, knobs)),
        _ => Op::Call {
            campaign,
            number: rng.random_range(0..pool),
        },
    }
}

fn callback(rng: &mut StdRng) -> Op {
    let target = match rng.random_range(0..3) {
        0 => CallbackTarget::Accepted(rng.random()),
        1 => CallbackTarget::Unknown(rng.random()),
        _ => CallbackTarget::Garbage(hostile(rng)),
    };
    let status = match &target {
        // A valid status for an unknown call must still find nothing.
        CallbackTarget::Unknown(_) if rng.random_bool(0.5) => ["PICKED", "RNR", "FAILED"]
            .choose(rng)
            .copied()
            .unwrap_or("PICKED")
            .to_owned(),
        _ => hostile(rng),
    };
    let mut fields = BTreeMap::new();
    for name in [
        "external_call_id",
        "call_duration",
        "phone_number",
        "campaign_id",
    ] {
        if rng.random_bool(0.4) {
            let value = match rng.random_range(0..4) {
                0 => serde_json::json!(rng.random::<i64>()),
                1 => serde_json::json!(-1),
                2 => serde_json::Value::Null,
                _ => serde_json::json!(hostile(rng)),
            };
            fields.insert(name.to_owned(), value);
        }
    }
    if rng.random_bool(0.3) {
        fields.insert(hostile(rng), serde_json::json!(hostile(rng)));
    }
    Op::Callback {
        target,
        status,
        fields,
    }
}

fn carrier(rng: &mut StdRng, knobs: &Knobs) -> CarrierKnobs {
    let some = |rng: &mut StdRng, rate: f64, max: f64| {
        if rng.random_bool(rate) {
            (rng.random_range(0.0..max) * 100.0).round() / 100.0
        } else {
            0.0
        }
    };
    let long_ms = (knobs.max_call_duration_secs * 1000).max(1);
    CarrierKnobs {
        error_rate: some(rng, 0.4, 0.6),
        // Now and then beyond the dialer's 3 s request timeout.
        latency_ms: if rng.random_bool(0.3) {
            rng.random_range(100..5_000)
        } else {
            0
        },
        drop_rate: some(rng, 0.3, 0.3),
        duplicate_rate: some(rng, 0.3, 0.5),
        reorder_rate: some(rng, 0.3, 0.5),
        extra_call_ms: match rng.random_range(0..4) {
            0 => rng.random_range(long_ms..long_ms * 2),
            1 => rng.random_range(0..2_000),
            _ => 0,
        },
    }
}

fn fault(rng: &mut StdRng, knobs: &Knobs) -> Fault {
    let down = between(rng, Duration::from_millis(500), knobs.max_down);
    match rng.random_range(0..100) {
        0..50 => Fault::Kill {
            service: *Service::ALL.choose(rng).unwrap_or(&Service::Dialer),
            // Taken from the draws already made, not a new one: a seed's schedule with one
            // instance of each service stays what it was before instances existed.
            instance: usize::try_from(down.as_millis()).unwrap_or(0) % knobs.instances.max(1),
            down,
        },
        50..65 => Fault::NatsRestart { down },
        65..80 => Fault::NatsPause { hold: down },
        _ => Fault::PostgresOutage {
            down: between(rng, Duration::from_secs(1), knobs.max_postgres_down),
        },
    }
}

/// How long a fault keeps its target away (its start to its undoing).
pub fn fault_hold(fault: &Fault) -> Duration {
    match fault {
        Fault::Kill { down, .. }
        | Fault::NatsRestart { down }
        | Fault::NatsNodeKill { down, .. }
        | Fault::PostgresOutage { down } => *down,
        Fault::NatsPause { hold }
        | Fault::CarrierErrors { hold, .. }
        | Fault::CarrierLatency { hold, .. }
        | Fault::Callbacks { hold, .. } => *hold,
        Fault::Together(faults) => faults.iter().map(fault_hold).sum(),
    }
}

impl Schedule {
    /// Operations and faults by kind, one line each, for the report.
    pub fn summary(&self) -> String {
        let mut kinds: BTreeMap<&str, u32> = BTreeMap::new();
        let mut faults = Vec::new();
        for step in &self.steps {
            match &step.action {
                Action::Op(op) => *kinds.entry(op_kind(op)).or_default() += 1,
                Action::Fault(fault) => {
                    faults.push(format!("{:.1} s {}", step.at.as_secs_f64(), fault.label()));
                }
            }
        }
        let campaigns: Vec<String> = self
            .campaigns
            .iter()
            .map(|c| format!("cap {}{}", c.cap, if c.draft { " (draft)" } else { "" }))
            .collect();
        let ops: Vec<String> = kinds.iter().map(|(k, n)| format!("{k} {n}")).collect();
        format!(
            "seed {} over {} s: campaigns [{}]\noperations: {}\nfaults: {}",
            self.seed,
            self.knobs.duration.as_secs(),
            campaigns.join(", "),
            ops.join(", "),
            if faults.is_empty() {
                "none".into()
            } else {
                faults.join("; ")
            }
        )
    }
}

/// An operation's kind, for summaries.
pub fn op_kind(op: &Op) -> &'static str {
    match op {
        Op::Call { .. } => "call",
        Op::Bulk { .. } => "bulk",
        Op::Pause(_) => "pause",
        Op::Resume(_) => "resume",
        Op::Cancel(_) => "cancel",
        Op::Start(_) => "start",
        Op::Cap { .. } => "cap",
        Op::CloseWindow { .. } => "window closed",
        Op::OpenWindow(_) => "window open",
        Op::DncAdd(_) => "dnc add",
        Op::DncRemove(_) => "dnc remove",
        Op::Callback { .. } => "callback",
        Op::Carrier(_) => "carrier knobs",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn knobs() -> Knobs {
        Knobs::new(Duration::from_secs(90))
    }

    /// A number called once is refused (`duplicate_within_window`) for ingest's duplicate
    /// window, 5 minutes by default, after its call ends: with the pool of a one-minute run,
    /// a 5-minute run had only its first ~60 calls accepted (60 of 1,167 requests), and the
    /// rest of it exercised refusals instead of calls.
    #[test]
    fn a_long_runs_calls_are_not_mostly_refused_as_duplicates() {
        const DUPLICATE_WINDOW: Duration = Duration::from_secs(300);
        for seed in 0..10 {
            let s = schedule(seed, &Knobs::new(Duration::from_secs(300)));
            let mut last: BTreeMap<u32, Duration> = BTreeMap::new();
            let (mut calls, mut fresh) = (0, 0);
            for step in &s.steps {
                let drawn: Vec<u32> = match &step.action {
                    Action::Op(Op::Call { number, .. }) => {
                        calls += 1;
                        if last
                            .get(number)
                            .is_none_or(|at| step.at - *at >= DUPLICATE_WINDOW)
                        {
                            fresh += 1;
                        }
                        vec![*number]
                    }
                    Action::Op(Op::Bulk { items, .. }) => items
                        .iter()
                        .filter_map(|i| match i {
                            BulkItem::Number(n) => Some(*n),
                            BulkItem::Hostile(_) => None,
                        })
                        .collect(),
                    _ => Vec::new(),
                };
                for n in drawn {
                    last.insert(n, step.at);
                }
            }
            assert!(
                fresh * 3 >= calls,
                "seed {seed}: {fresh} of {calls} calls to a number not called in the window"
            );
        }
        // A one-minute run keeps its pool (CI's seeds keep their schedules).
        assert_eq!(Knobs::new(Duration::from_secs(60)).numbers, 60);
    }

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        for seed in [0, 1, 42, u64::MAX] {
            assert_eq!(
                schedule(seed, &knobs()),
                schedule(seed, &knobs()),
                "seed {seed}"
            );
        }
        assert_ne!(schedule(1, &knobs()).steps, schedule(2, &knobs()).steps);
    }

    #[test]
    fn a_schedule_is_sorted_bounded_and_mixes_operations_with_faults() {
        for seed in 0..50 {
            let s = schedule(seed, &knobs());
            assert!(
                s.steps.windows(2).all(|w| w[0].at <= w[1].at),
                "seed {seed}"
            );
            assert!(
                s.steps.iter().all(|st| st.at < knobs().duration),
                "seed {seed}"
            );
            let faults: Vec<(Duration, Duration)> = s
                .steps
                .iter()
                .filter_map(|st| match &st.action {
                    Action::Fault(f) => Some((st.at, st.at + fault_hold(f))),
                    Action::Op(_) => None,
                })
                .collect();
            assert!(!faults.is_empty(), "seed {seed}: no fault");
            // One fault at a time: each is undone before the next starts.
            assert!(faults.windows(2).all(|w| w[0].1 <= w[1].0), "seed {seed}");
            let calls = s
                .steps
                .iter()
                .filter(|st| matches!(st.action, Action::Op(Op::Call { .. })))
                .count();
            assert!(calls > 50, "seed {seed}: {calls} calls");
            assert!(!s.campaigns[0].draft);
            let cancels = s
                .steps
                .iter()
                .filter(|st| matches!(st.action, Action::Op(Op::Cancel(_))))
                .count();
            assert!(cancels <= 1, "seed {seed}");
        }
    }

    /// The kills of every service's instances, over a schedule's faults (also inside
    /// `Together`).
    pub(crate) fn killed_instances(s: &Schedule) -> Vec<(Service, usize)> {
        fn walk(f: &Fault, out: &mut Vec<(Service, usize)>) {
            match f {
                Fault::Kill {
                    service, instance, ..
                } => out.push((*service, *instance)),
                Fault::Together(all) => all.iter().for_each(|f| walk(f, out)),
                _ => {}
            }
        }
        let mut out = Vec::new();
        for step in &s.steps {
            if let Action::Fault(f) = &step.action {
                walk(f, &mut out);
            }
        }
        out
    }

    #[test]
    fn kills_take_every_instance_and_one_instance_schedules_are_unchanged() {
        let mut two = knobs();
        two.instances = 2;
        let mut seen = [0usize; 2];
        for seed in 0..50 {
            let (one, both) = (schedule(seed, &knobs()), schedule(seed, &two));
            assert!(
                killed_instances(&one).iter().all(|(_, i)| *i == 0),
                "seed {seed}"
            );
            // The same steps at the same times: only which instance is killed differs.
            assert_eq!(one.steps.len(), both.steps.len(), "seed {seed}");
            for (_, i) in killed_instances(&both) {
                seen[i] += 1;
            }
        }
        assert!(seen[0] > 10 && seen[1] > 10, "kills per instance: {seen:?}");
    }

    #[test]
    fn a_real_call_is_never_sent_a_valid_status() {
        for seed in 0..200 {
            for step in schedule(seed, &knobs()).steps {
                if let Action::Op(Op::Callback {
                    target: CallbackTarget::Accepted(_),
                    status,
                    ..
                }) = &step.action
                {
                    let upper = status.trim().to_uppercase();
                    assert!(
                        !["PICKED", "RNR", "FAILED", "DISCONNECTED"].contains(&upper.as_str()),
                        "seed {seed}: {status:?}"
                    );
                }
            }
        }
    }
}
