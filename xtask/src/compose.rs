//! `cargo xtask up --docker`: the stack of `deploy/compose.yaml` on the local images, built
//! first by `cargo xtask images` (reused when unchanged). With `--check` (CI), one call is
//! placed through it, seen COMPLETED in PostgreSQL, and the stack is removed.

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use crate::up::UpArgs;

/// The compose project's name: its containers, network and volumes are `ccm_…`.
const PROJECT: &str = "ccm";

pub fn run(args: &UpArgs) -> anyhow::Result<()> {
    crate::images::run(&crate::images::ImagesArgs { rebuild: false })?;
    let compose = Compose::find()?;
    let port = args.port.unwrap_or(8000);
    let api = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    if args.fresh || args.check {
        compose.run(
            &["down", "--volumes", "--remove-orphans"],
            port,
            &args.token,
        )?;
    }
    compose.run(&["up", "--detach"], port, &args.token)?;
    let rt = tokio::runtime::Runtime::new()?;
    let result = rt.block_on(async {
        wait_ready(&api).await?;
        let campaign = crate::up::demo_campaign(&api, &args.token).await?;
        eprintln!(
            "the compose stack answers at {api} after {:.1} s (campaign {campaign})",
            started.elapsed().as_secs_f64()
        );
        if args.check {
            check_a_call(&compose, &api, &args.token, campaign).await?;
        }
        Ok::<_, anyhow::Error>(campaign)
    });
    if args.check || result.is_err() {
        if result.is_err() {
            let _ = compose.run(&["logs", "--tail", "40"], port, &args.token);
        }
        compose.run(&["down", "--volumes"], port, &args.token)?;
    }
    let campaign = result?;
    if !args.check {
        println!(
            "\nccm runs in Docker (compose project {PROJECT}).\n\
             \n  API       {api}    (token {}, campaign {campaign})\
             \n  logs      {} logs -f\
             \n  stop      {} down    (add --volumes to forget the data)\n",
            args.token,
            compose.describe(),
            compose.describe()
        );
    }
    Ok(())
}

/// `docker compose` (the plugin) where installed, else Debian's `docker-compose`.
struct Compose {
    program: Vec<String>,
    file: PathBuf,
}

impl Compose {
    fn find() -> anyhow::Result<Self> {
        let file = crate::up::workspace_root().join("deploy/compose.yaml");
        let works = |program: &[&str]| {
            Command::new(program[0])
                .args(&program[1..])
                .arg("version")
                .output()
                .is_ok_and(|o| o.status.success())
        };
        let program: &[&str] = if works(&["docker", "compose"]) {
            &["docker", "compose"]
        } else if works(&["docker-compose"]) {
            &["docker-compose"]
        } else {
            if nix::unistd::geteuid().is_root() {
                crate::images::apt_install(&["docker-compose"])?;
            } else {
                bail!("neither `docker compose` nor `docker-compose` is installed");
            }
            &["docker-compose"]
        };
        Ok(Self {
            program: program.iter().map(|s| (*s).to_owned()).collect(),
            file,
        })
    }

    fn describe(&self) -> String {
        format!(
            "{} -f {} -p {PROJECT}",
            self.program.join(" "),
            self.file.display()
        )
    }

    fn command(&self, args: &[&str], port: u16, token: &str) -> Command {
        let mut command = Command::new(&self.program[0]);
        command
            .args(&self.program[1..])
            .arg("-f")
            .arg(&self.file)
            .args(["-p", PROJECT])
            .args(args)
            .env("CCM_API_PORT", port.to_string())
            .env("CCM_TOKEN", token);
        command
    }

    fn run(&self, args: &[&str], port: u16, token: &str) -> anyhow::Result<()> {
        eprintln!("$ {} {}", self.describe(), args.join(" "));
        let status = self
            .command(args, port, token)
            .status()
            .context("cannot run compose")?;
        if !status.success() {
            bail!("{} {} failed", self.describe(), args.join(" "));
        }
        Ok(())
    }

    /// One value from PostgreSQL, through psql in the postgres container.
    fn sql(&self, query: &str) -> anyhow::Result<String> {
        let output = self
            .command(
                &[
                    "exec", "-T", "postgres", "psql", "-U", "ccm", "-d", "ccm", "-tAc", query,
                ],
                0,
                "",
            )
            .output()
            .context("cannot run compose exec")?;
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }
}

async fn wait_ready(api: &str) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let ok = http
            .get(format!("{api}/readyz"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ok {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("ingest did not become ready at {api}/readyz within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Places a call through the API and waits for its row to say COMPLETED.
async fn check_a_call(
    compose: &Compose,
    api: &str,
    token: &str,
    campaign: u64,
) -> anyhow::Result<()> {
    let placed = Instant::now();
    let response = reqwest::Client::new()
        .post(format!("{api}/api/v1/calls"))
        .header("X-Auth-Token", token)
        .json(&serde_json::json!({"campaign_id": campaign, "phone_number": "+15550000001"}))
        .send()
        .await?;
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    if status.as_u16() != 202 {
        bail!("placing a call answered {status}: {body}");
    }
    let call = body["call_id"].as_str().context("no call_id")?.to_owned();
    ensure_uuid(&call)?;
    let query = format!("SELECT status FROM calls WHERE call_id = '{call}'");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let row = compose.sql(&query)?;
        if row == "COMPLETED" {
            eprintln!(
                "call {call} COMPLETED in PostgreSQL {:.1} s after it was placed",
                placed.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("call {call} is {row:?} in PostgreSQL, not COMPLETED, after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The id goes into SQL text: only a UUID's characters may.
fn ensure_uuid(id: &str) -> anyhow::Result<()> {
    if id.len() == 36 && id.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        Ok(())
    } else {
        bail!("{id:?} is not a UUID")
    }
}
