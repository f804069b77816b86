//! CI's container stage: the images built without a registry, the core end-to-end tests on
//! the docker backend (testcontainers), no container left behind, and the compose stack
//! completing a call. Skipped, saying why, where no Docker engine can be started (no root).

use std::{
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use ccm_tests::images::TEST_LABEL;

/// The docker backend's subset: a call completed, retried as the policy says and
/// dead-lettered, one chaos scenario, and the harness's own test that a panicking test
/// leaves no container.
pub(crate) const SUBSET: &str = "package(ccm-tests) & (\
    test(=docker::tests::a_panicking_test_leaves_no_container_behind) \
    | (binary(e2e) & (\
        test(=walking_skeleton::a_call_travels_from_http_to_a_completed_row_in_postgres) \
        | test(=retries::an_rnr_call_is_retried_exactly_as_the_policy_says_then_fails_with_the_reason) \
        | test(=retries::an_exhausted_call_is_dead_lettered_and_redrive_completes_it) \
        | test(=chaos::chaos_dialer_killed_mid_load))))";

pub(crate) fn run(nats: &std::path::Path) -> anyhow::Result<()> {
    let work = crate::up::workspace_root().join("target/images");
    if let Err(e) = crate::images::ensure_engine(&work) {
        eprintln!("SKIPPED the docker stage (images, docker-backend tests, compose): {e:#}");
        return Ok(());
    }
    let mut timings = Vec::new();
    let begun = Instant::now();
    crate::images::run(&crate::images::ImagesArgs { rebuild: false })?;
    timings.push(("cargo xtask images", begun.elapsed()));

    // Leftovers of a run that was killed outright (nothing in the process could clean up).
    let stale = labelled()?;
    if !stale.is_empty() {
        eprintln!(
            "removing {} container(s) left by an earlier run",
            stale.len()
        );
        let mut args = vec!["rm", "--force", "--volumes"];
        args.extend(stale.iter().map(String::as_str));
        crate::images::docker_output(&args)?;
    }
    let begun = Instant::now();
    eprintln!(
        "$ CCM_TEST_BACKEND=docker cargo nextest run -p ccm-tests --features docker -E <subset>"
    );
    let status = crate::cargo_cmd::cargo()
        .args([
            "nextest",
            "run",
            "-p",
            "ccm-tests",
            "--features",
            "ccm-tests/docker",
            "--locked",
            "--no-fail-fast",
            "-E",
            SUBSET,
        ])
        .env("CCM_TEST_BACKEND", "docker")
        .env(ccm_tests::nats_server::ENV, nats)
        .status()
        .context("cannot run cargo")?;
    timings.push(("docker-backend tests", begun.elapsed()));
    let left = labelled()?;
    if !status.success() {
        bail!(
            "the docker-backend tests failed ({} container(s) left)",
            left.len()
        );
    }
    if !left.is_empty() {
        bail!(
            "the docker-backend tests left {} container(s) labelled {TEST_LABEL}: {left:?}",
            left.len()
        );
    }
    eprintln!("no container labelled {TEST_LABEL} is left");

    let begun = Instant::now();
    eprintln!("$ cargo xtask up --docker --check");
    let status = Command::new(std::env::current_exe()?)
        .args(["up", "--docker", "--check"])
        .status()
        .context("cannot run xtask")?;
    timings.push(("compose stack check", begun.elapsed()));
    if !status.success() {
        bail!("the compose stack did not complete a call");
    }
    for (what, took) in &timings {
        eprintln!("{what:<24} {:>7.1} s", took.as_secs_f64());
    }
    let total: Duration = timings.iter().map(|(_, t)| *t).sum();
    eprintln!("{:<24} {:>7.1} s", "docker stage", total.as_secs_f64());
    Ok(())
}

/// The containers, running or not, the docker backend started.
fn labelled() -> anyhow::Result<Vec<String>> {
    let out = crate::images::docker_output(&[
        "ps",
        "--all",
        "--quiet",
        "--filter",
        &format!("label={TEST_LABEL}"),
    ])?;
    Ok(out.split_whitespace().map(str::to_owned).collect())
}
