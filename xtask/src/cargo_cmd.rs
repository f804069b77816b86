//! The `cargo` commands xtask runs.
//!
//! `cargo xtask` is `cargo run`, which hands its child the package variables of xtask itself
//! (`CARGO_MANIFEST_DIR`, `CARGO_PKG_NAME`, …). A nested cargo passes them on to build
//! scripts, and some (ring's) rerun when they change, rebuilding everything above them. A
//! nested cargo therefore starts without them, as a cargo typed in a shell would.

use std::process::Command;

/// Whether `name` is one of the variables `cargo run` sets for the program it runs (as
/// opposed to cargo's own configuration, such as `CARGO_TARGET_DIR` or `CARGO_HOME`).
pub(crate) fn set_by_cargo_run(name: &str) -> bool {
    name.starts_with("CARGO_PKG_")
        || name.starts_with("CARGO_MANIFEST_")
        || matches!(
            name,
            "CARGO_CRATE_NAME"
                | "CARGO_BIN_NAME"
                | "CARGO_PRIMARY_PACKAGE"
                | "CARGO_RUSTC_CURRENT_DIR"
                | "CARGO_TARGET_TMPDIR"
        )
}

/// `cargo`, without the variables `cargo run` gave xtask.
pub(crate) fn cargo() -> Command {
    let mut command = Command::new("cargo");
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(set_by_cargo_run) {
            command.env_remove(name);
        }
    }
    command
}

#[cfg(test)]
mod tests {
    use super::set_by_cargo_run;

    #[test]
    fn package_variables_go_and_cargo_configuration_stays() {
        for gone in [
            "CARGO_MANIFEST_DIR",
            "CARGO_MANIFEST_PATH",
            "CARGO_PKG_NAME",
            "CARGO_PKG_VERSION",
            "CARGO_CRATE_NAME",
            "CARGO_PRIMARY_PACKAGE",
        ] {
            assert!(set_by_cargo_run(gone), "{gone}");
        }
        for kept in [
            "CARGO_TARGET_DIR",
            "CARGO_HOME",
            "CARGO_BUILD_JOBS",
            "CARGO_TERM_COLOR",
            "CARGO",
        ] {
            assert!(!set_by_cargo_run(kept), "{kept}");
        }
    }
}
