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

pub fn run(args: &UpArgs) -> anyhow::Result<()> {
    crate::images::run(&crate::images::ImagesArgs { rebuild: false })?;
    // The check runs beside whatever else this machine runs (a developer's stack, other
    // checks): its own project name and free ports.
    let (project, port, carrier_port) = if args.check {
        let free = ccm_tests::process::free_port;
        ("ccm-check", free()?, free()?)
    } else {
        (
            "ccm",
            crate::up::pick_port(args.port, 8000)?,
            crate::up::pick_port(args.carrier_port, 8001)?,
        )
    };
    let compose = Compose::find(project, port, carrier_port, &args.token)?;
    let api = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    if args.fresh || args.check {
        compose.run(&["down", "--volumes", "--remove-orphans"])?;
    }
    let rt = tokio::runtime::Runtime::new()?;
    let result = compose.run(&["up", "--detach"]).and_then(|()| {
        rt.block_on(async {
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
        })
    });
    if args.check || result.is_err() {
        if result.is_err() {
            let _ = compose.run(&["logs", "--tail", "40"]);
        }
        compose.run(&["down", "--volumes"])?;
    }
    let campaign = result?;
    if !args.check {
        println!(
            "\nccm runs in Docker (compose project {project}).\n\
             \n  API          {api}    (token {}, campaign {campaign})\
             \n  carrier-sim  http://127.0.0.1:{carrier_port}\
             \n  logs         {} logs -f\
             \n  stop         {} down    (add --volumes to forget the data)\n",
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
    /// Its containers, network and volumes are `<project>_…`.
    project: &'static str,
    port: u16,
    carrier_port: u16,
    token: String,
}

impl Compose {
    fn find(
        project: &'static str,
        port: u16,
        carrier_port: u16,
        token: &str,
    ) -> anyhow::Result<Self> {
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
            project,
            port,
            carrier_port,
            token: token.to_owned(),
        })
    }

    fn describe(&self) -> String {
        format!(
            "{} -f {} -p {}",
            self.program.join(" "),
            self.file.display(),
            self.project
        )
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.program[0]);
        command
            .args(&self.program[1..])
            .arg("-f")
            .arg(&self.file)
            .args(["-p", self.project])
            .args(args)
            .env("CCM_API_PORT", self.port.to_string())
            .env("CCM_CARRIER_PORT", self.carrier_port.to_string())
            .env("CCM_TOKEN", &self.token);
        command
    }

    fn run(&self, args: &[&str]) -> anyhow::Result<()> {
        eprintln!("$ {} {}", self.describe(), args.join(" "));
        let status = self.command(args).status().context("cannot run compose")?;
        if !status.success() {
            bail!("{} {} failed", self.describe(), args.join(" "));
        }
        Ok(())
    }

    /// One value from PostgreSQL, through psql in the postgres container.
    fn sql(&self, query: &str) -> anyhow::Result<String> {
        let output = self
            .command(&[
                "exec", "-T", "postgres", "psql", "-U", "ccm", "-d", "ccm", "-tAc", query,
            ])
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
