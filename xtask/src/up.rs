//! `cargo xtask up`: the whole system on this machine, with one command.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command},
    time::Duration,
};

use anyhow::{Context, bail};
use ccm_tests::{LocalNats, LocalPostgres, postgres::DATABASE, process::Guard};
use nix::sys::signal::Signal;

/// Which carrier adapter the dialer uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Carrier {
    /// The dialer's in-process simulator (every call answered after 50 ms).
    Sim,
    /// The old system's HTTP contract, against carrier-sim.
    Http,
    /// Twilio's REST API and signed status callbacks, against carrier-sim.
    Twilio,
}

/// Options of `cargo xtask up`.
#[derive(Debug, Clone, clap::Args)]
pub struct UpArgs {
    /// Port of the HTTP API; 8000 (the old system's) by default, or a free one if taken.
    #[arg(long)]
    pub port: Option<u16>,
    /// Port of carrier-sim; 8001 (the old collection's mock service) by default, or free.
    #[arg(long)]
    pub carrier_port: Option<u16>,
    /// API token; the default is the old Postman collection's development token.
    #[arg(long, default_value = "dev-token-12345")]
    pub token: String,
    /// The carrier adapter the dialer uses.
    #[arg(long, value_enum, default_value = "sim")]
    pub carrier: Carrier,
    /// Start from empty streams and tables instead of the previous run's data.
    #[arg(long)]
    pub fresh: bool,
    /// Run the stack in Docker from the local images (`deploy/compose.yaml`), building them
    /// first (`cargo xtask images`); returns once it is up.
    #[arg(long)]
    pub docker: bool,
    /// With --docker: place one call, wait for it to be COMPLETED in PostgreSQL, then
    /// remove the stack (what CI checks).
    #[arg(long, requires = "docker")]
    pub check: bool,
}

const SERVICES: &[&str] = &[
    "ccm-projector",
    "ccm-retrier",
    "ccm-dialer",
    "ccm-webhooks",
    "ccm-ingest",
];
const CARRIER_SIM: &str = "ccm-carrier-sim";
/// The Twilio credentials carrier-sim accepts and signs with by default.
const SIM_ACCOUNT_SID: &str = "ACsimulator";
const SIM_AUTH_TOKEN: &str = "sim-auth-token";

/// Runs the stack until Ctrl-C.
pub fn run(args: UpArgs) -> anyhow::Result<()> {
    if args.docker {
        return crate::compose::run(&args);
    }
    let rt = tokio::runtime::Runtime::new()?;
    let stack = Stack::start(&args, "ccm-up")?;
    let result = rt.block_on(async {
        stack.ready().await?;
        let campaign = demo_campaign(&stack.api, &args.token).await?;
        print_banner(&stack, &args, campaign);
        supervise(&stack).await
    });
    stack.stop();
    result
}

/// A running local system: servers, carrier-sim and the five services.
pub struct Stack {
    pub api: String,
    pub carrier_url: String,
    pub database_url: String,
    children: std::sync::Mutex<Vec<(&'static str, Guard)>>,
    nats: Option<LocalNats>,
    postgres: Option<LocalPostgres>,
}

impl Stack {
    /// Starts everything, with data under `target/<name>`.
    pub fn start(args: &UpArgs, name: &str) -> anyhow::Result<Self> {
        let root = workspace_root();
        let state = root.join("target").join(name);
        if args.fresh && state.exists() {
            std::fs::remove_dir_all(&state).context("cannot remove the previous run's data")?;
        }
        std::fs::create_dir_all(&state)?;

        // Servers: the ones named by the environment, or our own on free ports.
        let (nats_url, nats) = match std::env::var("CCM_NATS_URL") {
            Ok(url) => (url, None),
            Err(_) => {
                crate::deps::ensure_nats_server()?;
                let nats = LocalNats::start_in(state.join("nats"), None)
                    .context("starting nats-server")?;
                (nats.url(), Some(nats))
            }
        };
        let (database_url, postgres) = match std::env::var("CCM_DATABASE_URL") {
            Ok(url) => (url, None),
            Err(_) => {
                crate::deps::ensure_postgres()?;
                let pg = LocalPostgres::start_persistent(state.join("pg/data"), None)
                    .context("starting PostgreSQL")?;
                (pg.url(DATABASE), Some(pg))
            }
        };
        eprintln!("NATS       {nats_url}\nPostgreSQL {database_url}");

        // Not quiet: on a fresh machine this compiles for minutes, and cargo's progress shows it.
        eprintln!("building the services…");
        let mut build = crate::cargo_cmd::cargo();
        build.current_dir(&root).arg("build");
        for package in SERVICES.iter().chain([&CARRIER_SIM]) {
            build.args(["-p", package]);
        }
        if !build.status().context("cannot run cargo build")?.success() {
            bail!("building the services failed");
        }

        let port = pick_port(args.port, 8000)?;
        let carrier_port = pick_port(args.carrier_port, 8001)?;
        let api = format!("http://127.0.0.1:{port}");
        let carrier_url = format!("http://127.0.0.1:{carrier_port}");
        let mut stack = Self {
            api: api.clone(),
            carrier_url: carrier_url.clone(),
            database_url: database_url.clone(),
            children: std::sync::Mutex::new(Vec::new()),
            nats,
            postgres,
        };

        let mut sim = command(&root, CARRIER_SIM);
        sim.args(["--listen", &format!("127.0.0.1:{carrier_port}")])
            .args(["--callback-base", &api, "--callback-token", &args.token]);
        stack.spawn(CARRIER_SIM, &mut sim)?;

        for service in SERVICES {
            let mut cmd = command(&root, service);
            cmd.env("CCM_NATS_URL", &nats_url)
                .env("CCM_DATABASE_URL", &database_url)
                .env("CCM_INGEST__LISTEN", format!("127.0.0.1:{port}"))
                .env("CCM_INGEST__AUTH_TOKENS", format!("[\"{}\"]", args.token));
            // One development token drives the Postman collection and schemathesis, which
            // send the expensive routes far faster than a client should: the per-token limit
            // stays on but well above them, unless the caller's environment sets it.
            for (var, value) in [
                ("CCM_INGEST__RATE_LIMITS__EXPENSIVE_PER_MINUTE", "1000000"),
                ("CCM_INGEST__RATE_LIMITS__BURST", "100000"),
            ] {
                if std::env::var_os(var).is_none() {
                    cmd.env(var, value);
                }
            }
            match args.carrier {
                Carrier::Sim => {}
                Carrier::Http => {
                    cmd.env(
                        "CCM_DIALER__CARRIER",
                        format!("{{kind: http, base_url: '{carrier_url}'}}"),
                    );
                }
                Carrier::Twilio => {
                    cmd.env(
                        "CCM_DIALER__CARRIER",
                        format!(
                            "{{kind: twilio, base_url: '{carrier_url}', account_sid: {SIM_ACCOUNT_SID}, \
                             auth_token: {SIM_AUTH_TOKEN}, from: '+15550009999', \
                             status_callback_base: '{api}'}}"
                        ),
                    )
                    .env("CCM_INGEST__TWILIO__AUTH_TOKEN", SIM_AUTH_TOKEN);
                }
            }
            stack.spawn(service, &mut cmd)?;
        }
        Ok(stack)
    }

    fn spawn(&mut self, name: &'static str, command: &mut Command) -> anyhow::Result<()> {
        let child: Child = command
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        self.children
            .get_mut()
            .map_err(|_| anyhow::anyhow!("child list poisoned"))?
            .push((name, Guard::new("service", child, Signal::SIGTERM)));
        Ok(())
    }

    /// Waits until ingest and carrier-sim answer.
    pub async fn ready(&self) -> anyhow::Result<()> {
        let http = reqwest::Client::new();
        for url in [
            format!("{}/readyz", self.api),
            format!("{}/health", self.carrier_url),
        ] {
            let mut up = false;
            for _ in 0..300 {
                if let Ok(r) = http.get(&url).send().await
                    && r.status().is_success()
                {
                    up = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if !up {
                bail!("{url} did not answer");
            }
        }
        Ok(())
    }

    /// The first child that has exited, if any.
    fn exited(&self) -> Option<&'static str> {
        let mut children = self.children.lock().ok()?;
        children
            .iter_mut()
            .find_map(|(name, guard)| guard.has_exited().then_some(*name))
    }

    /// Stops the services first (they drain into NATS and PostgreSQL), then the servers.
    pub fn stop(mut self) {
        if let Ok(children) = self.children.get_mut() {
            for (_, mut guard) in children.drain(..).rev() {
                guard.stop(Duration::from_secs(15));
            }
        }
        drop(self.postgres.take());
        drop(self.nats.take());
    }
}

pub(crate) fn pick_port(wanted: Option<u16>, preferred: u16) -> anyhow::Result<u16> {
    Ok(match wanted {
        Some(port) => port,
        None if std::net::TcpListener::bind(("127.0.0.1", preferred)).is_ok() => preferred,
        None => ccm_tests::process::free_port()?,
    })
}

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

fn command(root: &Path, binary: &str) -> Command {
    let mut command = Command::new(root.join("target/debug").join(binary));
    command.current_dir(root);
    command
}

/// Campaign 1, created on the first run so a call can be placed straight away.
pub async fn demo_campaign(api: &str, token: &str) -> anyhow::Result<u64> {
    let http = reqwest::Client::new();
    let existing = http
        .get(format!("{api}/api/v1/campaigns/1"))
        .header("X-Auth-Token", token)
        .send()
        .await?;
    if existing.status().is_success() {
        return Ok(1);
    }
    let created = http
        .post(format!("{api}/api/v1/campaigns"))
        .header("X-Auth-Token", token)
        .json(&serde_json::json!({"name": "demo", "description": "created by cargo xtask up"}))
        .send()
        .await?;
    let status = created.status();
    let body: serde_json::Value = created.json().await.unwrap_or_default();
    if !status.is_success() {
        bail!("creating the demo campaign failed: {status} {body}");
    }
    body["id"].as_u64().context("the campaign has no id")
}

fn print_banner(stack: &Stack, args: &UpArgs, campaign: u64) {
    let (api, token, db) = (&stack.api, &args.token, &stack.database_url);
    println!(
        "\nccm is running (carrier: {:?}).\n\
         \n  API          {api}    (OpenAPI docs: {api}/api/v1/docs)\
         \n  dashboard    {api}/    (sign in with the token)\
         \n  token        {token}\
         \n  campaign     {campaign}\
         \n  carrier-sim  {}    (placed calls: {}/stats)\
         \n\nPlace a call:\n\
         \n  curl -s -X POST {api}/api/v1/calls -H 'X-Auth-Token: {token}' \\\
         \n       -H 'Content-Type: application/json' \\\
         \n       -d '{{\"campaign_id\": {campaign}, \"phone_number\": \"+15550000001\"}}'\
         \n\nThen see it in PostgreSQL:\n\
         \n  psql '{db}' -c 'SELECT call_id, status, attempt_count FROM calls'\
         \n\nWebhooks: POST {api}/api/v1/webhooks {{\"url\": …}}; a receiver on this machine\
         \nneeds CCM_WEBHOOKS__ALLOW_PRIVATE_TARGETS=true exported before `cargo xtask up`.\
         \n\nCtrl-C stops everything.\n",
        args.carrier, stack.carrier_url, stack.carrier_url,
    );
}

/// Waits for Ctrl-C, or fails when a process exits on its own.
async fn supervise(stack: &Stack) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {
                eprintln!("stopping…");
                return Ok(());
            }
            _ = tick.tick() => {
                if let Some(name) = stack.exited() {
                    bail!("{name} exited; stopping everything");
                }
            }
        }
    }
}
