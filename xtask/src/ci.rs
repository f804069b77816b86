//! `cargo xtask ci`: the checks CI runs, in the order that fails fastest.

use std::process::Command;

use anyhow::{Context, bail};

pub fn run() -> anyhow::Result<()> {
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
        cargo(&[
            "nextest",
            "run",
            "--workspace",
            "--locked",
            "--no-fail-fast",
        ])?;
    } else {
        eprintln!("cargo-nextest not installed; using cargo test");
        cargo(&["test", "--workspace", "--locked", "--no-fail-fast"])?;
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
    let status = Command::new("cargo")
        .args(args)
        .status()
        .context("cannot run cargo")?;
    if !status.success() {
        bail!("cargo {} failed", args.join(" "));
    }
    Ok(())
}
