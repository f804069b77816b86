//! How each image is made, from what, and the inputs that decide whether it is remade.

use std::{
    io::BufRead,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, bail, ensure};
use ccm_tests::{
    images::{BASE, INPUTS_LABEL, Image},
    nats_server::CURRENT,
};

use super::engine::{docker, docker_output};

/// Debian's own mirror: the base comes from Debian's packages, not from a registry.
const MIRROR: &str = "http://deb.debian.org/debian";
const SUITE: &str = "bookworm";
/// minbase is apt, dpkg and the essential packages; the services verify TLS servers
/// (Twilio, NATS or PostgreSQL over TLS) against the system's roots.
const INCLUDE: &str = "ca-certificates";
/// Security and point-release updates for what the images install on top.
const SOURCES: &str = "deb http://deb.debian.org/debian bookworm main\n\
    deb http://deb.debian.org/debian bookworm-updates main\n\
    deb http://deb.debian.org/debian-security bookworm-security main\n";

/// Documentation, manual pages and translations are left out of every image (as Debian's
/// slim images do), in the base and in whatever apt installs later; licences stay.
const DPKG_EXCLUDES: &str = "path-exclude=/usr/share/doc/*\n\
    path-include=/usr/share/doc/*/copyright\n\
    path-exclude=/usr/share/man/*\n\
    path-exclude=/usr/share/info/*\n\
    path-exclude=/usr/share/locale/*\n";

/// The binaries the ccm image carries.
pub(crate) const BINARIES: &[&str] = &[
    "ccm-ingest",
    "ccm-dialer",
    "ccm-retrier",
    "ccm-projector",
    "ccm-webhooks",
    "ccm-carrier-sim",
];

/// The base's inputs: everything debootstrap is told.
pub(crate) fn base_inputs() -> Vec<(String, Vec<u8>)> {
    [
        ("mirror", MIRROR),
        ("suite", SUITE),
        ("variant", "minbase"),
        ("include", INCLUDE),
        ("sources", SOURCES),
        ("dpkg-excludes", DPKG_EXCLUDES),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.as_bytes().to_vec()))
    .collect()
}

/// debootstrap into a scratch directory, `docker import`, then a one-line build that adds
/// the inputs label (`docker import` cannot set labels).
pub(crate) fn build_base(work: &Path, inputs: &str) -> anyhow::Result<()> {
    ensure!(
        nix::unistd::geteuid().is_root(),
        "building the Debian base runs debootstrap, which needs root"
    );
    if Command::new("debootstrap")
        .arg("--version")
        .output()
        .is_err()
    {
        super::apt_install(&["debootstrap"])?;
    }
    let dir = work.join("base");
    let rootfs = dir.join("rootfs");
    if rootfs.exists() {
        std::fs::remove_dir_all(&rootfs)
            .with_context(|| format!("removing {}", rootfs.display()))?;
    }
    std::fs::create_dir_all(&dir)?;
    run(Command::new("debootstrap")
        .args(["--variant=minbase", &format!("--include={INCLUDE}"), SUITE])
        .arg(&rootfs)
        .arg(MIRROR))
    .context("debootstrap failed")?;
    std::fs::write(rootfs.join("etc/apt/sources.list"), SOURCES)?;
    std::fs::write(rootfs.join("etc/dpkg/dpkg.cfg.d/ccm-slim"), DPKG_EXCLUDES)?;
    slim(&rootfs)?;
    // What debootstrap downloaded: apt-get update fetches fresh lists in the images built on top.
    for cache in ["var/cache/apt/archives", "var/lib/apt/lists"] {
        for entry in std::fs::read_dir(rootfs.join(cache))? {
            let path = entry?.path();
            if path.is_file() {
                std::fs::remove_file(path)?;
            }
        }
    }
    let imported = format!("{}:imported", BASE.name);
    let mut tar = Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .args(["--numeric-owner", "-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot run tar")?;
    let tar_out = tar.stdout.take().context("tar's output")?;
    let import = Command::new("docker")
        .args(["import", "--change", r#"CMD ["bash"]"#, "-", &imported])
        .stdin(tar_out)
        .stdout(Stdio::null())
        .status()
        .context("cannot run docker import")?;
    ensure!(tar.wait()?.success(), "tar of the root file system failed");
    ensure!(import.success(), "docker import failed");
    std::fs::remove_dir_all(&rootfs)?;
    let label = dir.join("label");
    std::fs::create_dir_all(&label)?;
    std::fs::write(label.join("Dockerfile"), format!("FROM {imported}\n"))?;
    build(&BASE, &label, None, None, inputs)?;
    docker_output(&["image", "rm", &imported])?;
    Ok(())
}

/// Removes what [`DPKG_EXCLUDES`] keeps out of later installs from what debootstrap installed.
fn slim(rootfs: &Path) -> anyhow::Result<()> {
    for dir in ["usr/share/man", "usr/share/info", "usr/share/locale"] {
        let dir = rootfs.join(dir);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
            std::fs::create_dir(&dir)?;
        }
    }
    for package in std::fs::read_dir(rootfs.join("usr/share/doc"))? {
        let package = package?.path();
        if !package.is_dir() {
            continue;
        }
        for entry in std::fs::read_dir(&package)? {
            let path = entry?.path();
            if path.file_name().is_some_and(|n| n == "copyright") {
                continue;
            }
            if path.is_dir() && !path.is_symlink() {
                std::fs::remove_dir_all(&path)?;
            } else {
                std::fs::remove_file(&path)?;
            }
        }
    }
    Ok(())
}

/// The NATS image's context: its Dockerfile, the pinned binary and an empty store directory.
pub(crate) fn nats_context(root: &Path, work: &Path) -> anyhow::Result<PathBuf> {
    let binary = crate::deps::install_nats_server(&CURRENT)?;
    let context = work.join("nats");
    if context.exists() {
        std::fs::remove_dir_all(&context)?;
    }
    std::fs::create_dir_all(context.join("data"))?;
    std::fs::copy(
        root.join("deploy/images/nats/Dockerfile"),
        context.join("Dockerfile"),
    )?;
    std::fs::copy(&binary, context.join("nats-server"))?;
    Ok(context)
}

/// The release binaries, built on this machine (see the Dockerfile for why not in Docker).
pub(crate) fn release_binaries(root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    eprintln!("building the release binaries (cargo build --release)…");
    let mut cargo = crate::cargo_cmd::cargo();
    cargo.current_dir(root).args([
        "build",
        "--release",
        "--locked",
        "--message-format=json-render-diagnostics",
    ]);
    for binary in BINARIES {
        cargo.args(["--bin", binary]);
    }
    let mut child = cargo
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot run cargo")?;
    let stdout = child.stdout.take().context("cargo's output")?;
    let mut found = Vec::new();
    for line in std::io::BufReader::new(stdout).lines() {
        let message: serde_json::Value = serde_json::from_str(&line?).unwrap_or_default();
        if message["reason"] == "compiler-artifact"
            && let Some(path) = message["executable"].as_str()
        {
            found.push(PathBuf::from(path));
        }
    }
    ensure!(child.wait()?.success(), "the release build failed");
    BINARIES
        .iter()
        .map(|name| {
            found
                .iter()
                .find(|p| p.file_name().is_some_and(|f| f == *name))
                .cloned()
                .with_context(|| format!("cargo reported no executable {name}"))
        })
        .collect()
}

/// How the binaries are staged (part of the ccm image's inputs).
pub(crate) const STAGING: &str = "objcopy --compress-debug-sections=zlib";

/// The ccm image's context: the binaries under bin/ and the default retry policy.
pub(crate) fn ccm_context(
    root: &Path,
    work: &Path,
    binaries: &[PathBuf],
) -> anyhow::Result<PathBuf> {
    let context = work.join("ccm");
    if context.exists() {
        std::fs::remove_dir_all(&context)?;
    }
    std::fs::create_dir_all(context.join("bin"))?;
    std::fs::create_dir_all(context.join("config"))?;
    for binary in binaries {
        let name = binary.file_name().context("a binary has a name")?;
        let staged = context.join("bin").join(name);
        // The release profile keeps line tables for backtraces; compressed they take about
        // 40% of the space (114 MB → 45 MB for ingest) and backtraces still read them.
        let compressed = Command::new("objcopy")
            .args(STAGING.split_whitespace().skip(1))
            .arg(binary)
            .arg(&staged)
            .status()
            .is_ok_and(|s| s.success());
        if !compressed {
            std::fs::copy(binary, &staged)?;
        }
    }
    std::fs::copy(
        root.join("config/retry.yaml"),
        context.join("config/retry.yaml"),
    )?;
    // The shipped calling rule packs (the Dockerfile copies the directory).
    std::fs::create_dir_all(context.join("config/rules"))?;
    for pack in rule_packs(root)? {
        std::fs::copy(root.join(&pack), context.join(&pack))?;
    }
    Ok(context)
}

/// The rule packs under `config/rules/`, as paths relative to `root`, sorted.
pub(crate) fn rule_packs(root: &Path) -> anyhow::Result<Vec<String>> {
    let mut packs = Vec::new();
    for entry in std::fs::read_dir(root.join("config/rules"))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.ends_with(".yaml") {
            packs.push(format!("config/rules/{name}"));
        }
    }
    packs.sort();
    Ok(packs)
}

/// `docker build` of `image` from `context` (with `dockerfile` if it is not in the
/// context), FROM `base` when given, labelled with its inputs.
pub(crate) fn build(
    image: &Image,
    context: &Path,
    dockerfile: Option<&Path>,
    base: Option<&str>,
    inputs: &str,
) -> anyhow::Result<()> {
    let reference = image.reference();
    let label = format!("{INPUTS_LABEL}={inputs}");
    let mut args = vec!["build", "--tag", &reference, "--label", &label];
    let file;
    if let Some(path) = dockerfile {
        file = path.to_str().context("a UTF-8 path")?.to_owned();
        args.extend(["--file", &file]);
    }
    let base_arg;
    if let Some(base) = base {
        base_arg = format!("BASE={base}");
        args.extend(["--build-arg", &base_arg]);
    }
    let context = context.to_str().context("a UTF-8 path")?;
    args.push(context);
    docker(&args)
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("cannot run {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed");
    }
    Ok(())
}
