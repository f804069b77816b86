//! Fresh servers and release-built services for one phase of the benchmark.
//!
//! Every phase starts from empty streams and tables, so a backlog left by one phase (the
//! API phase queues hundreds of thousands of calls) never slows the next. The servers are the
//! test harness's: nats-server with JetStream on file storage, PostgreSQL with fsync off.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use ccm_tests::{
    LocalNats, LocalPostgres,
    postgres::DATABASE,
    process::{Guard, free_port},
};
use nix::sys::signal::Signal;

/// The nats-server binary phases start from now on (`None`: the pinned one, as the tests).
static NATS_PROGRAM: std::sync::Mutex<Option<PathBuf>> = std::sync::Mutex::new(None);

/// Makes the following phases run `program` (the side-by-side comparison of releases).
pub fn use_nats_server(program: Option<PathBuf>) {
    *NATS_PROGRAM
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = program;
}

/// Where the services' binaries are (`None`: `<root>/target/release`).
static BIN_DIR: std::sync::Mutex<Option<PathBuf>> = std::sync::Mutex::new(None);

/// Makes the following phases start the services from `dir` (a debug build, to check a phase
/// quickly; its figures are not comparable with a release build's).
pub fn use_bin_dir(dir: Option<PathBuf>) {
    *BIN_DIR
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = dir;
}

fn bin_dir(root: &Path) -> PathBuf {
    BIN_DIR
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
        .unwrap_or_else(|| root.join("target/release"))
}

/// The API token every phase uses.
pub const TOKEN: &str = "bench-token";

/// A nats-server and a PostgreSQL server storing under one directory.
#[derive(Debug)]
pub struct Servers {
    pub nats: LocalNats,
    pub pg: LocalPostgres,
    pub dir: PathBuf,
}

impl Servers {
    /// Starts both servers on empty data under `dir` (removed first).
    pub fn start(dir: PathBuf) -> anyhow::Result<Self> {
        if dir.exists() {
            std::fs::remove_dir_all(&dir).context("cannot remove the previous run's data")?;
        }
        std::fs::create_dir_all(&dir)?;
        let program = NATS_PROGRAM
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let nats = LocalNats::start_program(program, dir.join("nats"), None)
            .context("starting nats-server")?;
        let pg = LocalPostgres::start_persistent(dir.join("pg/data"), None)
            .context("starting PostgreSQL")?;
        Ok(Self { nats, pg, dir })
    }

    pub fn database_url(&self) -> String {
        self.pg.url(DATABASE)
    }
}

/// Where services find the servers, and where they log.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// One server, or several separated by commas (a cluster).
    pub nats_url: String,
    pub database_url: String,
    pub dir: PathBuf,
}

/// Release-built services started as processes, stopped on drop.
#[derive(Debug, Default)]
pub struct Services {
    children: Vec<(&'static str, Guard)>,
    /// Ingest's base URL when ingest runs.
    pub api: Option<String>,
}

/// What one service is started with beyond the servers' addresses.
#[derive(Debug, Clone, Default)]
pub struct Env(pub Vec<(String, String)>);

impl Env {
    pub fn set(mut self, key: &str, value: impl Into<String>) -> Self {
        self.0.push((key.to_owned(), value.into()));
        self
    }
}

impl Services {
    /// Starts `names` (binaries in `target/release` unless [`use_bin_dir`]) against `servers`;
    /// waits for ingest.
    pub async fn start(
        root: &Path,
        servers: &Servers,
        names: &[&'static str],
        env: &Env,
    ) -> anyhow::Result<Self> {
        let at = Endpoints {
            nats_url: servers.nats.url(),
            database_url: servers.database_url(),
            dir: servers.dir.clone(),
        };
        Self::start_on(root, &at, names, env).await
    }

    /// Starts `names` against `at`. A name may repeat (replicas of one service): each process
    /// logs to its own file, and each ingest listens on its own port; the API is the first
    /// ingest's, once every ingest answers `/readyz`.
    pub async fn start_on(
        root: &Path,
        at: &Endpoints,
        names: &[&'static str],
        env: &Env,
    ) -> anyhow::Result<Self> {
        let mut services = Self::default();
        let mut ingests = Vec::new();
        let bin = bin_dir(root);
        for (i, name) in names.iter().enumerate() {
            let port = free_port()?;
            let replica = names[..i].iter().filter(|n| *n == name).count();
            let file = if replica == 0 {
                format!("{name}.log")
            } else {
                format!("{name}-{replica}.log")
            };
            let log = std::fs::File::create(at.dir.join(file))?;
            let mut command = Command::new(bin.join(name));
            command
                .current_dir(root)
                .env("CCM_NATS_URL", &at.nats_url)
                .env("CCM_DATABASE_URL", &at.database_url)
                .env("CCM_INGEST__LISTEN", format!("127.0.0.1:{port}"))
                .env("CCM_INGEST__AUTH_TOKENS", format!("[\"{TOKEN}\"]"))
                // One token sends every bulk back to back: the per-token limit of the
                // expensive routes stays on (its cost is measured) but far above the load.
                .env("CCM_INGEST__RATE_LIMITS__EXPENSIVE_PER_MINUTE", "1000000")
                .env("CCM_INGEST__RATE_LIMITS__BURST", "100000")
                .envs(env.0.iter().map(|(k, v)| (k, v)))
                .stdout(log.try_clone()?)
                .stderr(log)
                .stdin(Stdio::null());
            let child = command
                .spawn()
                .with_context(|| format!("cannot start {name}; was it built with --release?"))?;
            services
                .children
                .push((name, Guard::new(name, child, Signal::SIGTERM)));
            if *name == "ccm-ingest" {
                ingests.push(format!("http://127.0.0.1:{port}"));
            }
        }
        for api in &ingests {
            services.wait_ready(&format!("{api}/readyz")).await?;
        }
        services.api = ingests.into_iter().next();
        Ok(services)
    }

    async fn wait_ready(&mut self, url: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if crate::http::get_ok(url).await {
                return Ok(());
            }
            if let Some(name) = self.exited() {
                bail!("{name} exited while starting; see its log under target/bench");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("{url} did not become ready within 60 s")
    }

    /// The first service that has exited on its own, if any.
    pub fn exited(&mut self) -> Option<&'static str> {
        self.children
            .iter_mut()
            .find_map(|(name, guard)| guard.has_exited().then_some(*name))
    }

    pub fn pid(&self, name: &str) -> Option<u32> {
        self.children
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, g)| g.pid())
    }

    /// Every process with its service's name, in start order (replicas repeat the name).
    pub fn processes(&self) -> impl Iterator<Item = (&'static str, Option<u32>)> + '_ {
        self.children
            .iter()
            .map(|(name, guard)| (*name, guard.pid()))
    }

    pub fn api(&self) -> anyhow::Result<&str> {
        self.api
            .as_deref()
            .context("ingest is not running in this phase")
    }
}

/// Resident memory of a process, from `/proc/<pid>/status`: now and at its peak.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    pub rss_mib: f64,
    pub peak_mib: f64,
}

pub fn memory(pid: Option<u32>) -> Memory {
    let Some(pid) = pid else {
        return Memory::default();
    };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    };
    Memory {
        rss_mib: field("VmRSS:"),
        peak_mib: field("VmHWM:"),
    }
}

/// CPU time a process has used so far (user + system), in seconds; with `children`, also its
/// live child processes' and its exited children's (PostgreSQL works in one process per
/// connection). CPU time, unlike wall time, is what a phase costs whatever else shares the
/// cores, so it shows where the time goes.
pub fn cpu_seconds(pid: Option<u32>, children: bool) -> f64 {
    let Some(pid) = pid else {
        return 0.0;
    };
    // The kernel reports these in clock ticks of 1/100 s on Linux (USER_HZ).
    const TICKS: f64 = 100.0;
    let fields = |pid: u32| -> Option<Vec<String>> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name may hold spaces; the fields after its closing parenthesis do not.
        let rest = &stat[stat.rfind(')')? + 2..];
        Some(rest.split_whitespace().map(str::to_owned).collect())
    };
    let ticks = |f: &[String], from: usize, to: usize| -> f64 {
        f[from..=to]
            .iter()
            .filter_map(|v| v.parse::<f64>().ok())
            .sum()
    };
    // After the name: state(0) ppid(1) … utime(11) stime(12) cutime(13) cstime(14).
    let Some(own) = fields(pid) else {
        return 0.0;
    };
    let mut total = ticks(&own, 11, if children { 14 } else { 12 });
    if children && let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(child) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(f) = fields(child)
                && f.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(pid)
            {
                total += ticks(&f, 11, 12);
            }
        }
    }
    total / TICKS
}

/// CPU seconds of every process of a phase at one moment.
#[derive(Debug, Clone)]
pub struct Cpu(Vec<(&'static str, f64)>);

impl Cpu {
    pub fn now(servers: &Servers, services: &Services) -> Self {
        let mut all = vec![
            ("nats-server", cpu_seconds(servers.nats.pid(), false)),
            ("postgres", cpu_seconds(servers.pg.pid(), true)),
        ];
        for (name, guard) in &services.children {
            all.push((name, cpu_seconds(guard.pid(), false)));
        }
        Self(all)
    }

    /// CPU milliseconds each process spent per unit of work since `before`, and their sum.
    pub fn per_unit_ms(&self, before: &Cpu, units: usize) -> Vec<(&'static str, f64)> {
        let mut out: Vec<(&'static str, f64)> = self
            .0
            .iter()
            .map(|(name, after)| {
                let was = before
                    .0
                    .iter()
                    .find(|(n, _)| n == name)
                    .map_or(0.0, |c| c.1);
                (*name, (after - was) * 1e3 / units.max(1) as f64)
            })
            .collect();
        let total = out.iter().map(|c| c.1).sum();
        out.push(("total", total));
        out
    }
}

/// `name 0.123, name 0.456, …` for a figure's conditions.
pub fn cpu_text(per_unit: &[(&'static str, f64)]) -> String {
    per_unit
        .iter()
        .map(|(name, ms)| format!("{name} {ms:.3}"))
        .collect::<Vec<_>>()
        .join(", ")
}
