//! ccm's services and carrier-sim as real processes (`target/debug/ccm-*`), so a fault run can
//! `kill -9` one and start it again exactly as an operator's supervisor would.

use std::{
    collections::BTreeMap,
    fs::File,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use nix::sys::signal::Signal;

use crate::{
    HarnessError, TEST_TOKEN,
    process::{Guard, free_port, wait_for_port},
};

/// One of ccm's four services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Service {
    Ingest,
    Dialer,
    Retrier,
    Projector,
}

impl Service {
    pub const ALL: [Service; 4] = [
        Service::Projector,
        Service::Retrier,
        Service::Dialer,
        Service::Ingest,
    ];

    /// The binary's name.
    pub fn binary(self) -> &'static str {
        match self {
            Service::Ingest => "ccm-ingest",
            Service::Dialer => "ccm-dialer",
            Service::Retrier => "ccm-retrier",
            Service::Projector => "ccm-projector",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Service::Ingest => "ingest",
            Service::Dialer => "dialer",
            Service::Retrier => "retrier",
            Service::Projector => "projector",
        }
    }
}

const CARRIER_SIM: &str = "ccm-carrier-sim";
/// The Twilio credentials carrier-sim accepts and signs callbacks with by default.
const SIM_ACCOUNT_SID: &str = "ACsimulator";
const SIM_AUTH_TOKEN: &str = "sim-auth-token";

/// The workspace's root directory (where `target/` is).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Where the binaries are: `CARGO_TARGET_DIR` (or `target/`) `/debug`.
pub fn bin_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
        .join("debug")
}

/// Builds the five binaries (a no-op when they are up to date), so a fault run never starts
/// stale ones. `CCM_CHAOS_NO_BUILD=1` skips it when the caller has just built them.
pub fn ensure_built() -> Result<(), HarnessError> {
    if std::env::var_os("CCM_CHAOS_NO_BUILD").is_some() {
        return Ok(());
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    // A test runs with its own package's CARGO_* variables, which build scripts would see as
    // changes: the nested build would then rebuild dependencies the outer one just built.
    command.env_clear();
    for (key, value) in std::env::vars_os() {
        let keep = key.to_str().is_some_and(|k| {
            [
                "PATH",
                "HOME",
                "CARGO_HOME",
                "RUSTUP_HOME",
                "RUSTUP_TOOLCHAIN",
                "CARGO_TARGET_DIR",
                "TMPDIR",
            ]
            .contains(&k)
        });
        if keep {
            command.env(key, value);
        }
    }
    command
        .current_dir(workspace_root())
        .args(["build", "--quiet", "--bins"]);
    for binary in Service::ALL.iter().map(|s| s.binary()).chain([CARRIER_SIM]) {
        command.args(["-p", binary]);
    }
    let status = command.status().map_err(|source| HarnessError::Spawn {
        name: "cargo",
        source,
    })?;
    if !status.success() {
        return Err(HarnessError::Setup(
            "cargo build of the service binaries failed".into(),
        ));
    }
    Ok(())
}

/// How the services are configured, beyond the servers' addresses.
#[derive(Debug, Clone)]
pub struct ServiceSettings {
    /// `CCM_NATS_URL`: one server, or several separated by commas.
    pub nats_url: String,
    pub database_url: String,
    /// The retry policy file the retrier reads.
    pub policy_file: PathBuf,
    /// A call with no outcome after this long gets a FAILED (timeout) outcome.
    pub max_call_duration_secs: u64,
    /// Replicas of every stream (3 on a 3-node cluster).
    pub replicas: usize,
    /// carrier-sim's flags (outcome mix, call length); its faults change at run time.
    pub sim_args: Vec<String>,
    /// The API the dialer speaks to carrier-sim.
    pub carrier: CarrierApi,
    /// Processes of each service (at least 1). Ingest instance `i` listens on its own port;
    /// dialer instance `j` has its carrier call back ingest instance `j % instances`.
    pub instances: usize,
}

/// The carrier API of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CarrierApi {
    /// Twilio's: status callbacks name their attempt in the URL.
    #[default]
    Twilio,
    /// The old contract (`http` adapter): callbacks to `PUT /api/v1/callback/` name only the
    /// call, and ingest finds the attempt.
    OldContract,
}

/// carrier-sim and the four services, each one or more child processes.
#[derive(Debug)]
pub struct Services {
    /// Ingest instance 0's base URL.
    pub api: String,
    /// Every ingest instance's base URL, by instance.
    pub apis: Vec<String>,
    pub sim: String,
    api_ports: Vec<u16>,
    settings: ServiceSettings,
    logs: tempfile::TempDir,
    children: BTreeMap<(Service, usize), Guard>,
    _sim: Guard,
}

impl Services {
    /// Starts carrier-sim, then the services; returns once ingest answers `/readyz`.
    pub async fn start(settings: ServiceSettings) -> Result<Self, HarnessError> {
        let logs = tempfile::Builder::new()
            .prefix("ccm-chaos-logs-")
            .tempdir()
            .map_err(HarnessError::Io)?;
        // The run's own copy of the binaries: a build by someone else sharing the target
        // directory cannot swap a binary between a kill -9 and its restart.
        let bin = logs.path().join("bin");
        std::fs::create_dir_all(&bin).map_err(HarnessError::Io)?;
        for binary in Service::ALL.iter().map(|s| s.binary()).chain([CARRIER_SIM]) {
            // A hard link keeps this build's file even when cargo links a new one in its
            // place; a copy where the temporary directory is on another file system.
            let (from, to) = (bin_dir().join(binary), bin.join(binary));
            if std::fs::hard_link(&from, &to).is_err() {
                std::fs::copy(&from, &to).map_err(HarnessError::Io)?;
            }
        }
        let instances = settings.instances.max(1);
        let api_ports = (0..instances)
            .map(|_| free_port())
            .collect::<Result<Vec<_>, _>>()?;
        let apis: Vec<String> = api_ports
            .iter()
            .map(|port| format!("http://127.0.0.1:{port}"))
            .collect();
        let api = apis[0].clone();
        let sim_port = free_port()?;
        let sim = format!("http://127.0.0.1:{sim_port}");
        let mut command = Command::new(bin.join(CARRIER_SIM));
        command
            .args(["--listen", &format!("127.0.0.1:{sim_port}")])
            .args(["--callback-base", &api, "--callback-token", TEST_TOKEN])
            .args(&settings.sim_args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file(logs.path(), CARRIER_SIM)?);
        let child = command.spawn().map_err(|source| HarnessError::Spawn {
            name: "ccm-carrier-sim",
            source,
        })?;
        let mut sim_guard = Guard::new("ccm-carrier-sim", child, Signal::SIGTERM);
        let wait = tokio::task::block_in_place(|| {
            wait_for_port(
                "ccm-carrier-sim",
                sim_port,
                &mut sim_guard,
                Duration::from_secs(30),
            )
        });
        wait?;
        let mut services = Self {
            api,
            apis,
            sim,
            api_ports,
            settings,
            logs,
            children: BTreeMap::new(),
            _sim: sim_guard,
        };
        for service in Service::ALL {
            for instance in 0..instances {
                services.spawn(service, instance)?;
            }
        }
        services.ready(Duration::from_secs(60)).await?;
        Ok(services)
    }

    fn spawn(&mut self, service: Service, instance: usize) -> Result<(), HarnessError> {
        let s = &self.settings;
        let callbacks_to = &self.apis[instance % self.apis.len()];
        let listen = self.api_ports[instance % self.api_ports.len()];
        let carrier = match s.carrier {
            CarrierApi::Twilio => format!(
                "{{kind: twilio, base_url: '{}', account_sid: {SIM_ACCOUNT_SID}, \
                 auth_token: {SIM_AUTH_TOKEN}, from: '+15550009999', \
                 status_callback_base: '{}', request_timeout_ms: 3000}}",
                self.sim, callbacks_to
            ),
            CarrierApi::OldContract => format!(
                "{{kind: http, base_url: '{}', request_timeout_ms: 3000}}",
                self.sim
            ),
        };
        let mut command = Command::new(self.logs.path().join("bin").join(service.binary()));
        command
            .env("CCM_NATS_URL", &s.nats_url)
            .env("CCM_DATABASE_URL", &s.database_url)
            .env("CCM_INGEST__LISTEN", format!("127.0.0.1:{listen}"))
            .env("CCM_INGEST__AUTH_TOKENS", format!("[{TEST_TOKEN}]"))
            .env("CCM_DIALER__CARRIER", carrier)
            .env("CCM_INGEST__TWILIO__AUTH_TOKEN", SIM_AUTH_TOKEN)
            .env(
                "CCM_DIALER__MAX_CALL_DURATION_SECS",
                s.max_call_duration_secs.to_string(),
            )
            // A call hung up at its maximum duration waits this long for the carrier's report.
            .env("CCM_DIALER__HANGUP_GRACE_MS", "1000")
            .env("CCM_RETRIER__POLICY_FILE", &s.policy_file)
            .env("CCM_STREAMS__REPLICAS", s.replicas.to_string())
            .env("CCM_LOG__FILTER", "warn")
            .stdin(Stdio::null())
            // The services log to stderr; both go to the log file.
            .stdout(log_file(self.logs.path(), &log_name(service, instance))?)
            .stderr(log_file(self.logs.path(), &log_name(service, instance))?);
        let child = command.spawn().map_err(|source| HarnessError::Spawn {
            name: service.binary(),
            source,
        })?;
        self.children.insert(
            (service, instance),
            Guard::new(service.binary(), child, Signal::SIGTERM),
        );
        Ok(())
    }

    /// `kill -9` of one instance of a service: no shutdown, no acks, no drain.
    pub fn kill(&mut self, service: Service, instance: usize) {
        if let Some(mut guard) = self.children.remove(&(service, instance)) {
            guard.kill();
        }
    }

    /// Starts a killed (or exited) instance again with the same settings.
    pub fn restart(&mut self, service: Service, instance: usize) -> Result<(), HarnessError> {
        self.kill(service, instance);
        self.spawn(service, instance)
    }

    /// The services with an instance that exited on their own (a crash the fault run did not
    /// cause), once per instance.
    pub fn exited(&mut self) -> Vec<Service> {
        self.children
            .iter_mut()
            .filter_map(|((service, _), guard)| guard.has_exited().then_some(*service))
            .collect()
    }

    /// Waits until every ingest instance answers `/readyz`.
    pub async fn ready(&self, timeout: Duration) -> Result<(), HarnessError> {
        let http = reqwest::Client::new();
        for api in &self.apis {
            let url = format!("{api}/readyz");
            let ready = crate::eventually(timeout, || async {
                let response = http.get(&url).send().await.ok()?;
                response.status().is_success().then_some(())
            })
            .await;
            ready.ok_or_else(|| {
                HarnessError::Setup(format!("{url} did not answer in {timeout:?}"))
            })?;
        }
        Ok(())
    }

    /// The last lines each instance of a service wrote to its log, for a failure message.
    pub fn log_tail(&self, service: Service, lines: usize) -> String {
        (0..self.settings.instances.max(1))
            .map(|instance| {
                let name = log_name(service, instance);
                let text = std::fs::read_to_string(self.logs.path().join(format!("{name}.log")))
                    .unwrap_or_default();
                let all: Vec<&str> = text.lines().collect();
                format!(
                    "-- {name}\n{}",
                    all[all.len().saturating_sub(lines)..].join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Stops every service gracefully (they drain into NATS and PostgreSQL).
    pub fn stop(&mut self) {
        for (_, mut guard) in std::mem::take(&mut self.children) {
            guard.stop(Duration::from_secs(15));
        }
    }
}

/// An instance's log name: the binary's, with the instance after it but for the first.
fn log_name(service: Service, instance: usize) -> String {
    match instance {
        0 => service.binary().to_owned(),
        i => format!("{}-{i}", service.binary()),
    }
}

/// The service's log, appended to across restarts.
fn log_file(dir: &Path, binary: &str) -> Result<File, HarnessError> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{binary}.log")))
        .map_err(HarnessError::Io)
}
