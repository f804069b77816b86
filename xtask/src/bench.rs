//! `cargo xtask bench`: builds the services and the benchmark with `--release`, then runs it.
//!
//! The measuring itself lives in the `ccm-bench` crate, so that the load generator and the
//! raw-limit clients are optimised like the services they measure (xtask runs as a debug
//! build).

use std::process::Command;

use anyhow::{Context, bail};

/// Options of `cargo xtask bench`, passed on to `ccm-bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// A short run (under 2 minutes) with smaller sizes.
    #[arg(long)]
    pub quick: bool,
    /// Only these phases, comma-separated: raw, api, e2e, live, projection, import, idle,
    /// scale (scale runs only when named here).
    #[arg(long)]
    pub only: Option<String>,
    /// The scale phase's numbers of running campaigns, comma-separated (default 1,100,1000,5000;
    /// quick 1,100,1000).
    #[arg(long)]
    pub scale_campaigns: Option<String>,
    /// The scale phase's numbers of dialer replicas, comma-separated (default 1,3).
    #[arg(long)]
    pub scale_dialers: Option<String>,
    /// nats-server releases side by side, in one run: Debian's 2.9.10 (raw limits only: ccm
    /// refuses it), the minimum supported and the pinned one, the same build of ccm, twice in
    /// alternating order (phases: raw, api, e2e unless `--only`).
    #[arg(long)]
    pub compare: bool,
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let root = crate::up::workspace_root();
    eprintln!("building the services and the benchmark with --release…");
    let status = crate::cargo_cmd::cargo()
        .current_dir(&root)
        .args(["build", "--release", "--locked", "--bins"])
        .args(["-p", "ccm-ingest", "-p", "ccm-dialer", "-p", "ccm-retrier"])
        .args(["-p", "ccm-projector", "-p", "ccm-bench"])
        .status()
        .context("cannot run cargo build")?;
    if !status.success() {
        bail!("the release build failed");
    }
    let status = crate::cargo_cmd::cargo()
        .current_dir(&root)
        .args([
            "build",
            "--release",
            "--locked",
            "-p",
            "ccm-projector",
            "--example",
            "bench",
        ])
        .status()
        .context("cannot run cargo build")?;
    if !status.success() {
        bail!("building the projector's benchmark failed");
    }
    crate::deps::ensure_servers()?;
    let mut bench = Command::new(root.join("target/release/ccm-bench"));
    bench.current_dir(&root).arg("--root").arg(&root);
    if args.compare {
        let servers = [
            crate::deps::install_debian_nats_server()?,
            crate::deps::install_nats_server(&ccm_tests::nats_server::MINIMUM)?,
            crate::deps::install_nats_server(&ccm_tests::nats_server::CURRENT)?,
        ];
        for server in servers {
            bench.arg("--nats-server").arg(server);
        }
    }
    if args.quick {
        bench.arg("--quick");
    }
    if let Some(only) = &args.only {
        bench.args(["--only", only]);
    }
    if let Some(sizes) = &args.scale_campaigns {
        bench.args(["--scale-campaigns", sizes]);
    }
    if let Some(sizes) = &args.scale_dialers {
        bench.args(["--scale-dialers", sizes]);
    }
    let status = bench.status().context("cannot run ccm-bench")?;
    if !status.success() {
        bail!("the benchmark did not complete; see above");
    }
    Ok(())
}
