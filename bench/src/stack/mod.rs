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

mod usage;
pub use usage::{Cpu, cpu_seconds, cpu_text, memory};

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
