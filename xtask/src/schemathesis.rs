//! `cargo xtask schemathesis`: schemathesis (from PyPI) fuzzes every operation of ingest's
//! OpenAPI document against a fresh local stack, with a valid token. It fails on any 5xx and
//! on any response that does not match the document. schemathesis lives in a virtualenv under
//! `target/`; when it cannot be installed (no Python venv module, no network) the task says so
//! and skips rather than failing the build.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};

use crate::up::{Carrier, Stack, UpArgs};

/// Test cases generated per operation: bounded so CI stays within minutes.
const MAX_EXAMPLES: &str = "40";
const TOKEN: &str = "dev-token-12345";

fn venv(root: &Path) -> PathBuf {
    root.join("target/schemathesis-venv")
}

/// The `st` program, installing it into the virtualenv first if needed; `None` if that fails.
fn install(root: &Path) -> Option<PathBuf> {
    let venv = venv(root);
    let st = venv.join("bin/st");
    if st.exists() {
        return Some(st);
    }
    eprintln!("installing schemathesis into {}", venv.display());
    let created = Command::new("python3")
        .arg("-m")
        .arg("venv")
        .arg(&venv)
        .status()
        .is_ok_and(|s| s.success());
    let installed = created
        && Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "schemathesis>=4,<5"])
            .status()
            .is_ok_and(|s| s.success());
    (installed && st.exists()).then_some(st)
}

pub fn run() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let Some(st) = install(&root) else {
        eprintln!(
            "SKIPPED: schemathesis could not be installed (python3 -m venv and pip install \
             schemathesis into target/schemathesis-venv failed); the OpenAPI fuzzing did not run"
        );
        return Ok(());
    };
    let args = UpArgs {
        port: None,
        carrier_port: None,
        token: TOKEN.into(),
        carrier: Carrier::Sim,
        fresh: true,
        docker: false,
        check: false,
    };
    let stack = Stack::start(&args, "ccm-schemathesis")?;
    let rt = tokio::runtime::Runtime::new()?;
    let result = rt
        .block_on(async {
            stack.ready().await?;
            // Operations that take a campaign have a real one to find.
            crate::up::demo_campaign(&stack.api, TOKEN).await
        })
        .and_then(|_| {
            let report = root.join("target/schemathesis-report");
            let status = Command::new(&st)
                .arg("run")
                .arg(format!("{}/api/v1/openapi.json", stack.api))
                .args(["--checks", "not_a_server_error,response_schema_conformance"])
                .args(["--max-examples", MAX_EXAMPLES])
                .args(["--workers", "2", "--request-timeout", "10"])
                .args(["--seed", "7", "--no-color"])
                .args(["--header", &format!("X-Auth-Token: {TOKEN}")])
                .arg("--report-dir")
                .arg(&report)
                .env("SCHEMATHESIS_HOOKS", "")
                .status()
                .context("cannot run schemathesis")?;
            if !status.success() {
                bail!("schemathesis found 5xx answers or responses that break the document");
            }
            Ok(())
        });
    stack.stop();
    result
}
