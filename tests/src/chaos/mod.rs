//! A bounded fault-injection runner and its auditor.
//!
//! A [`Scenario`] starts ccm's four services and carrier-sim as real processes
//! ([`services`]) against the test's nats-server (or a 3-node cluster) and PostgreSQL, creates
//! campaigns, drives calls at them ([`load`]) and, while the load runs, injects its
//! [`faults`] one after another, each undone before the next. When every accepted call has
//! ended (or the scenario's time is up) the [`audit`] checks the invariants of the design and
//! returns a table row. The e2e suite runs short scenarios; `cargo xtask chaos` long ones.

pub mod audit;
pub mod checks;
pub mod faults;
pub mod generate;
pub mod generated;
pub mod load;
pub mod ops;
pub mod services;

use std::{collections::BTreeMap, io::Write as _, path::PathBuf, time::Duration};

use ccm_core::{config::StreamSettings, topology::Topology};

use crate::{HarnessError, TestEnv, cluster::NatsCluster};
pub use audit::{Audit, Expectation};
pub use faults::Fault;
pub use load::LoadPlan;
pub use services::{CarrierApi, Service, ServiceSettings, Services};

/// The retry policy of every scenario: each retryable outcome waits one second, so a call's
/// retries fit in a short run; the campaign's `max_attempts` bounds the attempts.
pub const POLICY: &str = "\
status_retry_rules:
  PICKED: {should_retry: false, increment_attempt: false}
  RNR: {should_retry: true, increment_attempt: true, backoff: [1s]}
  DISCONNECTED: {should_retry: true, increment_attempt: true, backoff: [1s]}
  FAILED: {should_retry: true, increment_attempt: true, backoff: [1s]}
timezone: UTC
";

/// The backoff [`POLICY`] sets.
pub const POLICY_BACKOFF: Duration = Duration::from_secs(1);

/// One run: the load, the faults and the time it may take.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub campaigns: u32,
    /// Every campaign's concurrency cap.
    pub cap: u32,
    /// Every campaign's attempt limit.
    pub max_attempts: u32,
    pub load: LoadPlan,
    /// Injected one after another while the load runs, `gap` apart, after `warmup`.
    pub faults: Vec<Fault>,
    pub warmup: Duration,
    pub gap: Duration,
    /// How long the calls may take to end once the load and the faults are over.
    pub settle: Duration,
    /// carrier-sim's outcome mix and call length (flags).
    pub sim_args: Vec<String>,
    /// A call with no outcome after this long is FAILED (timeout) by the dialer.
    pub max_call_duration_secs: u64,
    /// The faults exhaust technical retries: the auditor requires letters in the DLQ.
    pub expect_dead_letters: bool,
    /// The carrier API the dialer speaks to carrier-sim.
    pub carrier: CarrierApi,
    /// Print progress to stderr.
    pub verbose: bool,
}

impl Scenario {
    /// A scenario with the usual mix: 3 campaigns, cap 10, 3 attempts, short calls.
    pub fn new(name: impl Into<String>, calls_per_campaign: u32, faults: Vec<Fault>) -> Self {
        Self {
            name: name.into(),
            campaigns: 3,
            cap: 10,
            max_attempts: 3,
            load: LoadPlan {
                calls_per_campaign,
                numbers_per_campaign: calls_per_campaign * 9 / 10,
                concurrency: 4,
                pace: Duration::from_millis(100),
            },
            faults,
            warmup: Duration::from_secs(1),
            gap: Duration::from_secs(2),
            settle: Duration::from_secs(90),
            sim_args: [
                "--picked",
                "55",
                "--disconnected",
                "15",
                "--rnr",
                "20",
                "--failed",
                "10",
                "--call-ms",
                "200",
                "--call-jitter-ms",
                "400",
            ]
            .map(String::from)
            .to_vec(),
            max_call_duration_secs: 8,
            expect_dead_letters: false,
            carrier: CarrierApi::Twilio,
            verbose: false,
        }
    }

    fn say(&self, text: &str) {
        if self.verbose {
            eprintln!("[{}] {text}", self.name);
        }
    }
}

/// Runs `scenario` against `env` (and `cluster`, whose nodes then carry the streams with 3
/// replicas) and audits it.
pub async fn run(
    scenario: &Scenario,
    env: &mut TestEnv,
    cluster: Option<&mut NatsCluster>,
) -> Result<Audit, HarnessError> {
    let stack = Stack::start(
        env,
        cluster.as_deref(),
        scenario.sim_args.clone(),
        scenario.carrier,
        scenario.max_call_duration_secs,
        1,
    )
    .await?;
    // The policy file lives as long as the run: a restarted retrier reads it again.
    let Stack {
        mut services,
        js,
        _policy,
    } = stack;
    let result = drive(scenario, env, cluster, &mut services, &js).await;
    if result.as_ref().map_or(true, |a| !a.passed()) {
        for service in Service::ALL {
            scenario.say(&format!(
                "{} log tail:\n{}",
                service.name(),
                services.log_tail(service, 15)
            ));
        }
    }
    tokio::task::block_in_place(|| services.stop());
    result
}

/// The services started against the test's servers, with the streams provisioned.
pub(crate) struct Stack {
    pub services: Services,
    pub js: async_nats::jetstream::Context,
    /// The retry policy file the retrier reads; removed when the run ends.
    pub _policy: tempfile::NamedTempFile,
}

impl Stack {
    /// Builds the binaries (when stale), provisions the streams and starts carrier-sim and
    /// the services.
    pub(crate) async fn start(
        env: &TestEnv,
        cluster: Option<&NatsCluster>,
        sim_args: Vec<String>,
        carrier: CarrierApi,
        max_call_duration_secs: u64,
        instances: usize,
    ) -> Result<Self, HarnessError> {
        tokio::task::block_in_place(services::ensure_built)?;
        let mut policy = tempfile::NamedTempFile::new().map_err(HarnessError::Io)?;
        policy
            .write_all(POLICY.as_bytes())
            .map_err(HarnessError::Io)?;
        let (nats_url, replicas) = match cluster {
            Some(cluster) => (cluster.url(), 3),
            None => (env.nats_url.clone(), 1),
        };
        let settings = StreamSettings {
            replicas,
            ..StreamSettings::default()
        };
        let client = ccm_core::nats::connect(&nats_url, "chaos").await?;
        let js = ccm_core::nats::jetstream(client);
        Topology::load(&settings)?.provision(&js).await?;
        let services = Services::start(ServiceSettings {
            nats_url,
            database_url: env.database_url.clone(),
            policy_file: PathBuf::from(policy.path()),
            max_call_duration_secs,
            replicas,
            sim_args,
            carrier,
            instances,
        })
        .await?;
        Ok(Self {
            services,
            js,
            _policy: policy,
        })
    }
}

async fn drive(
    scenario: &Scenario,
    env: &mut TestEnv,
    cluster: Option<&mut NatsCluster>,
    services: &mut Services,
    js: &async_nats::jetstream::Context,
) -> Result<Audit, HarnessError> {
    let http = reqwest::Client::new();
    let api = crate::ApiClient::new(services.api.clone());
    let started = tokio::time::Instant::now();
    let campaigns = load::create_campaigns(
        &api,
        scenario.campaigns,
        scenario.cap,
        scenario.max_attempts,
    )
    .await?;
    let caps: BTreeMap<u64, u32> = campaigns.iter().map(|c| (*c, scenario.cap)).collect();
    scenario.say(&format!(
        "campaigns {campaigns:?}, {} calls each",
        scenario.load.calls_per_campaign
    ));

    let load = {
        let (api, plan) = (api.clone(), scenario.load.clone());
        let (campaigns, verbose, name) =
            (campaigns.clone(), scenario.verbose, scenario.name.clone());
        tokio::spawn(async move {
            let every = (u64::from(plan.calls_per_campaign) * campaigns.len() as u64 / 5).max(1);
            let progress: load::Progress = std::sync::Arc::new(move |done: u64, total: u64| {
                if verbose && done.is_multiple_of(every) {
                    eprintln!("[{name}] sent {done}/{total}");
                }
            });
            load::drive(api, campaigns, plan, Some(progress)).await
        })
    };

    tokio::time::sleep(scenario.warmup).await;
    let mut targets = faults::Targets {
        env,
        cluster,
        services,
        http: &http,
    };
    for fault in &scenario.faults {
        scenario.say(&format!("fault: {}", fault.label()));
        faults::inject(fault, &mut targets).await?;
        tokio::time::sleep(scenario.gap).await;
    }
    let load = load
        .await
        .map_err(|e| HarnessError::Setup(format!("the load task failed: {e}")))?;
    scenario.say(&format!(
        "load done: {} accepted of {}; refused {:?}",
        load.accepted.len(),
        load.sent(),
        load.refused
    ));
    let crashed = targets.services.exited();

    let pg = env_pool(targets.env).await?;
    let accepted = load.accepted.len() as u64;
    let deadline = tokio::time::Instant::now() + scenario.settle;
    let mut last_report = tokio::time::Instant::now();
    loop {
        let done = audit::terminal_count(&pg, &load.accepted)
            .await
            .unwrap_or(0);
        // A killed projector's un-acked batch comes back only after AckWait, later than
        // newer events: the history is complete once nothing is pending any more.
        if done >= accepted && settled(js).await {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            scenario.say(&format!("time is up: {done}/{accepted} calls ended"));
            break;
        }
        if last_report.elapsed() >= Duration::from_secs(5) {
            scenario.say(&format!("{done}/{accepted} calls ended"));
            last_report = tokio::time::Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let elapsed = started.elapsed();

    let carrier: audit::CarrierStats = http
        .get(format!("{}/stats", targets.services.sim))
        .send()
        .await
        .map_err(|e| HarnessError::Setup(format!("carrier-sim stats: {e}")))?
        .json()
        .await
        .map_err(|e| HarnessError::Setup(format!("carrier-sim stats: {e}")))?;
    let expect = Expectation {
        max_attempts: scenario.max_attempts,
        backoff: POLICY_BACKOFF,
        caps,
        expect_dead_letters: scenario.expect_dead_letters,
        window_opens: BTreeMap::new(),
    };
    let mut audit = audit::audit(&scenario.name, &load, &expect, &carrier, &pg, js).await?;
    audit.elapsed = elapsed;
    if !crashed.is_empty() {
        let names: Vec<&str> = crashed.iter().map(|s| s.name()).collect();
        audit
            .problems
            .push(format!("services exited on their own: {names:?}"));
        audit.lost = audit.lost.max(1);
    }
    Ok(audit)
}

/// The consumers whose backlog must be empty before the read model is complete.
const SETTLING: [(&str, &str); 4] = [
    ("CALLS", "projector_calls"),
    ("CALL_EVENTS", "projector_events"),
    ("CALL_EVENTS", "retrier_outcomes"),
    ("RETRIES", "retrier_retries"),
];

/// Whether the projector and the retrier have nothing left to do.
pub(crate) async fn settled(js: &async_nats::jetstream::Context) -> bool {
    for (stream, consumer) in SETTLING {
        let Ok(stream) = js.get_stream(stream).await else {
            return false;
        };
        let Ok(mut consumer) = stream
            .get_consumer::<async_nats::jetstream::consumer::pull::Config>(consumer)
            .await
        else {
            return false;
        };
        match consumer.info().await {
            Ok(info) if info.num_pending == 0 && info.num_ack_pending == 0 => {}
            _ => return false,
        }
    }
    true
}

async fn env_pool(env: &TestEnv) -> Result<sqlx::PgPool, HarnessError> {
    env.pg().await
}
