//! Making sure nats-server and PostgreSQL are installed.

use std::process::Command;

use anyhow::{Context, bail};
use ccm_tests::process::find_program;

/// Installs the missing servers with apt-get when running as root; otherwise says exactly
/// what to run and fails.
pub fn ensure_servers() -> anyhow::Result<()> {
    let missing: Vec<&str> = [("nats-server", "nats-server"), ("initdb", "postgresql")]
        .into_iter()
        .filter(|(program, _)| find_program(program).is_err())
        .map(|(_, package)| package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let command = format!("apt-get update && apt-get install -y {}", missing.join(" "));
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "missing {}; install them with:\n  sudo sh -c '{command}'",
            missing.join(", ")
        );
    }
    eprintln!("installing {}: {command}", missing.join(", "));
    let status = Command::new("sh")
        .args(["-c", &command])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("cannot run apt-get")?;
    if !status.success() {
        bail!("`{command}` failed");
    }
    Ok(())
}
