//! `cargo xtask ci`: the checks CI runs, in the order that fails fastest.

use std::{path::Path, process::Command};

use anyhow::{Context, bail};
use ccm_tests::nats_server::{self, CURRENT, MINIMUM};

/// The compatibility subset run against the minimum supported nats-server: provisioning,
/// and end to end a call completed, retried as the policy says, and dead-lettered.
const COMPATIBILITY: &str = "(package(ccm-core) & binary(it) & test(/^provisioning::/)) \
    | (package(ccm-tests) & binary(e2e) & (\
        test(=walking_skeleton::a_call_travels_from_http_to_a_completed_row_in_postgres) \
        | test(=retries::an_rnr_call_is_retried_exactly_as_the_policy_says_then_fails_with_the_reason) \
        | test(=retries::an_exhausted_call_is_dead_lettered_and_redrive_completes_it)))";

pub fn run() -> anyhow::Result<()> {
    // Both servers are installed first, so neither test run finds the wrong one.
    let current = crate::deps::install_nats_server(&CURRENT)?;
    let minimum = crate::deps::install_nats_server(&MINIMUM)?;
    cargo(&["fmt", "--all", "--", "--check"])?;
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--locked",
        "--",
        "-D",
        "warnings",
    ])?;
    if Command::new("cargo")
        .args(["nextest", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        cargo_with(
            &[
                "nextest",
                "run",
                "--workspace",
                "--locked",
                "--no-fail-fast",
            ],
            &current,
        )?;
        eprintln!("compatibility subset on nats-server {}", MINIMUM.version);
        cargo_with(
            &[
                "nextest",
                "run",
                "--workspace",
                "--locked",
                "--no-fail-fast",
                "-E",
                COMPATIBILITY,
            ],
            &minimum,
        )?;
        // The same core tests on the docker backend, the images they need, and compose.
        crate::ci_docker::run(&current).context("the docker stage failed")?;
    } else {
        eprintln!("cargo-nextest not installed; using cargo test (no compatibility subset)");
        cargo_with(
            &["test", "--workspace", "--locked", "--no-fail-fast"],
            &current,
        )?;
    }
    eprintln!("$ cargo xtask helm");
    crate::helm::run().context("the Helm chart does not validate")?;
    eprintln!("$ cargo xtask postman");
    crate::postman::run().context("the old system's Postman collection failed against ccm")?;
    eprintln!("$ cargo xtask schemathesis");
    crate::schemathesis::run().context("schemathesis found faults in the API")?;
    Ok(())
}

fn cargo(args: &[&str]) -> anyhow::Result<()> {
    eprintln!("$ cargo {}", args.join(" "));
    let status = crate::cargo_cmd::cargo()
        .args(args)
        .status()
        .context("cannot run cargo")?;
    if !status.success() {
        bail!("cargo {} failed", args.join(" "));
    }
    Ok(())
}

/// `cargo` with the tests' nats-server named explicitly, whatever the caller's environment.
fn cargo_with(args: &[&str], nats: &Path) -> anyhow::Result<()> {
    eprintln!(
        "$ {}={} cargo {}",
        nats_server::ENV,
        nats.display(),
        args.join(" ")
    );
    let status = crate::cargo_cmd::cargo()
        .args(args)
        .env(nats_server::ENV, nats)
        .status()
        .context("cannot run cargo")?;
    if !status.success() {
        bail!("cargo {} failed", args.join(" "));
    }
    Ok(())
}
