//! `cargo xtask up`: the whole system on this machine, with one command.

use std::{
    path::PathBuf,
    process::{Child, Command},
    time::Duration,
};

use anyhow::{Context, bail};
use ccm_tests::{LocalNats, LocalPostgres, postgres::DATABASE, process::Guard};
use nix::sys::signal::Signal;

/// Options of `cargo xtask up`.
#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Port of the HTTP API; 8000 (the old system's) by default, or a free one if taken.
    #[arg(long)]
    port: Option<u16>,
    /// API token; the default is the old Postman collection's development token.
    #[arg(long, default_value = "dev-token-12345")]
    token: String,
    /// Start from empty streams and tables instead of the previous run's data.
    #[arg(long)]
    fresh: bool,
}

const SERVICES: &[&str] = &["ccm-projector", "ccm-retrier", "ccm-dialer", "ccm-ingest"];

pub fn run(args: UpArgs) -> anyhow::Result<()> {
    let root = workspace_root();
    let state = root.join("target/ccm-up");
    if args.fresh && state.exists() {
        std::fs::remove_dir_all(&state).context("cannot remove the previous run's data")?;
    }
    std::fs::create_dir_all(&state)?;

    // Servers: the ones named by the environment, or our own on free ports.
    let mut own_nats = None;
    let nats_url = match std::env::var("CCM_NATS_URL") {
        Ok(url) => url,
        Err(_) => {
            crate::deps::ensure_servers()?;
            let nats =
                LocalNats::start_in(state.join("nats"), None).context("starting nats-server")?;
            let url = nats.url();
            own_nats = Some(nats);
            url
        }
    };
    let mut own_pg = None;
    let database_url = match std::env::var("CCM_DATABASE_URL") {
        Ok(url) => url,
        Err(_) => {
            crate::deps::ensure_servers()?;
            let pg = LocalPostgres::start_persistent(state.join("pg/data"), None)
                .context("starting PostgreSQL")?;
            let url = pg.url(DATABASE);
            own_pg = Some(pg);
            url
        }
    };
    eprintln!("NATS       {nats_url}\nPostgreSQL {database_url}");

    eprintln!("building the services…");
    let mut build = Command::new("cargo");
    build.current_dir(&root).args(["build", "--quiet"]);
    for service in SERVICES {
        build.args(["-p", service]);
    }
    if !build.status().context("cannot run cargo build")?.success() {
        bail!("building the services failed");
    }

    let port = match args.port {
        Some(port) => port,
        None if std::net::TcpListener::bind("127.0.0.1:8000").is_ok() => 8000,
        None => ccm_tests::process::free_port()?,
    };
    let api = format!("http://127.0.0.1:{port}");
    let mut children: Vec<(&str, Guard)> = Vec::new();
    for service in SERVICES {
        let child = spawn_service(&root, service, &nats_url, &database_url, port, &args.token)?;
        children.push((service, Guard::new("service", child, Signal::SIGTERM)));
    }

    let rt = tokio::runtime::Runtime::new()?;
    let result = rt.block_on(async {
        wait_ready(&api).await?;
        let campaign = demo_campaign(&api, &args.token).await?;
        print_banner(&api, &args.token, campaign, &database_url);
        supervise(&mut children).await
    });

    // Services first (they drain into NATS and PostgreSQL), then the servers.
    for (_, mut guard) in children.into_iter().rev() {
        guard.stop(Duration::from_secs(15));
    }
    drop(own_pg.take());
    drop(own_nats.take());
    result
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

fn spawn_service(
    root: &std::path::Path,
    service: &str,
    nats_url: &str,
    database_url: &str,
    port: u16,
    token: &str,
) -> anyhow::Result<Child> {
    let program = root.join("target/debug").join(service);
    Command::new(&program)
        .current_dir(root)
        .env("CCM_NATS_URL", nats_url)
        .env("CCM_DATABASE_URL", database_url)
        .env("CCM_INGEST__LISTEN", format!("127.0.0.1:{port}"))
        .env("CCM_INGEST__AUTH_TOKENS", format!("[\"{token}\"]"))
        .spawn()
        .with_context(|| format!("cannot start {}", program.display()))
}

async fn wait_ready(api: &str) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    for _ in 0..300 {
        if let Ok(r) = http.get(format!("{api}/readyz")).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("ingest did not become ready at {api}")
}

/// Campaign 1, created on the first run so a call can be placed straight away.
async fn demo_campaign(api: &str, token: &str) -> anyhow::Result<u64> {
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

fn print_banner(api: &str, token: &str, campaign: u64, database_url: &str) {
    println!(
        "\nccm is running.\n\
         \n  API       {api}\
         \n  token     {token}\
         \n  campaign  {campaign}\
         \n\nPlace a call:\n\
         \n  curl -s -X POST {api}/api/v1/calls -H 'X-Auth-Token: {token}' \\\
         \n       -H 'Content-Type: application/json' \\\
         \n       -d '{{\"campaign_id\": {campaign}, \"phone_number\": \"+15550000001\"}}'\
         \n\nThen see it in PostgreSQL:\n\
         \n  psql '{database_url}' -c 'SELECT call_id, status, attempt_count FROM calls'\
         \n\nCtrl-C stops everything.\n"
    );
}

/// Waits for Ctrl-C, or fails when a service exits on its own.
async fn supervise(children: &mut [(&str, Guard)]) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {
                eprintln!("stopping…");
                return Ok(());
            }
            _ = tick.tick() => {
                for (name, guard) in children.iter_mut() {
                    if guard.has_exited() {
                        bail!("{name} exited; stopping everything");
                    }
                }
            }
        }
    }
}
