//! The Docker engine: finding one that answers, starting `dockerd` when this user may, and
//! the few `docker` commands the image builds need.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

/// Makes sure a Docker engine answers, starting `dockerd` (installing Debian's `docker.io`
/// first if needed) when running as root. Returns the engine's version.
pub(crate) fn ensure(log_dir: &Path) -> anyhow::Result<String> {
    if Command::new("docker").arg("--version").output().is_err() {
        bail!(
            "the docker command is not installed; on Debian/Ubuntu: \
             `sudo apt-get install docker.io`, then rerun"
        );
    }
    if let Ok(version) = server_version() {
        return Ok(version);
    }
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "no Docker engine answers (`docker version` fails) and only root can start one: \
             run `sudo dockerd &` (or point DOCKER_HOST at an engine), then rerun"
        );
    }
    if Command::new("dockerd").arg("--version").output().is_err() {
        crate::images::apt_install(&["docker.io"])?;
    }
    std::fs::create_dir_all(log_dir)?;
    let log_path = log_dir.join("dockerd.log");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    eprintln!(
        "no Docker engine answers; starting dockerd (log: {})",
        log_path.display()
    );
    // Its own process group: the engine outlives this command and its Ctrl-C.
    use std::os::unix::process::CommandExt;
    Command::new("dockerd")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("cannot start dockerd")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match server_version() {
            Ok(version) => return Ok(version),
            Err(e) if Instant::now() >= deadline => {
                let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
                let tail: Vec<&str> = tail.lines().rev().take(10).collect();
                bail!(
                    "dockerd did not answer within 60 s ({e}); the end of its log:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

fn server_version() -> anyhow::Result<String> {
    let out = docker_output(&["version", "--format", "{{.Server.Version}}"])?;
    Ok(out.trim().to_owned())
}

/// `docker <args>`, its standard output; fails with its standard error.
pub(crate) fn docker_output(args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("cannot run docker")?;
    if !output.status.success() {
        bail!(
            "docker {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// `docker <args>` with its output shown (builds are long: the user sees them progress).
pub(crate) fn docker(args: &[&str]) -> anyhow::Result<()> {
    // The classic builder: it needs no buildx plugin (Debian's docker.io has none) and the
    // Dockerfiles here need no BuildKit feature.
    let status = Command::new("docker")
        .args(args)
        .env("DOCKER_BUILDKIT", "0")
        .stdin(Stdio::null())
        .status()
        .context("cannot run docker")?;
    if !status.success() {
        bail!("docker {} failed", args.join(" "));
    }
    Ok(())
}

/// The id and inputs label of the image tagged `reference`, if there is one.
pub(crate) fn inspect(reference: &str, label: &str) -> Option<(String, Option<String>)> {
    let format = format!("{{{{.Id}}}} {{{{index .Config.Labels \"{label}\"}}}}");
    let out = docker_output(&["image", "inspect", "--format", &format, reference]).ok()?;
    let mut fields = out.split_whitespace();
    let id = fields.next()?.to_owned();
    let value = fields.next().filter(|v| *v != "<no" && !v.is_empty());
    Some((id, value.map(str::to_owned)))
}

/// The image's size in bytes, as `docker images` reports it.
pub(crate) fn size(reference: &str) -> anyhow::Result<u64> {
    let out = docker_output(&["image", "inspect", "--format", "{{.Size}}", reference])?;
    out.trim()
        .parse()
        .with_context(|| format!("docker reported size {out:?}"))
}
