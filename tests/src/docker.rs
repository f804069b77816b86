//! The `docker` backend: the pinned nats-server and PostgreSQL 15 as containers, from the
//! images `cargo xtask images` builds locally (see [`crate::images`]).
//!
//! Every container carries [`TEST_LABEL`] and is removed when its handle drops, which a
//! panicking test does while unwinding; CI counts the labelled containers after the run.

use std::time::Duration;

use testcontainers::{
    ContainerAsync, GenericImage, ImageExt,
    core::{IntoContainerPort, WaitFor},
    runners::AsyncRunner,
};

use crate::{
    HarnessError,
    images::{Image, NATS, POSTGRES, TEST_LABEL},
};

/// A fresh container takes a second or two; a loaded CI machine, longer.
const STARTUP: Duration = Duration::from_secs(60);

/// The two containers of one test; removed on drop.
#[derive(Debug)]
pub(crate) struct Containers {
    pub nats_url: String,
    pub database_url: String,
    _nats: ContainerAsync<GenericImage>,
    _postgres: ContainerAsync<GenericImage>,
}

fn generic(image: Image) -> GenericImage {
    GenericImage::new(image.name, image.tag)
}

impl Containers {
    pub(crate) async fn start() -> Result<Self, HarnessError> {
        Self::start_labelled("1").await
    }

    /// `label` is [`TEST_LABEL`]'s value, so a test of the clean-up can count its own.
    pub(crate) async fn start_labelled(label: &str) -> Result<Self, HarnessError> {
        let fail = |what: &str, e: testcontainers::TestcontainersError| {
            HarnessError::Setup(format!(
                "{what} container: {e} (are the local images built? `cargo xtask images`)"
            ))
        };
        let nats = generic(NATS)
            .with_exposed_port(4222.tcp())
            .with_wait_for(WaitFor::message_on_stderr("Server is ready"))
            .with_cmd(["-js", "-sd", "/data"])
            .with_label(TEST_LABEL, label)
            .with_startup_timeout(STARTUP)
            .start()
            .await
            .map_err(|e| fail("nats", e))?;
        let postgres = generic(POSTGRES)
            .with_exposed_port(5432.tcp())
            .with_wait_for(WaitFor::message_on_stderr(
                "database system is ready to accept connections",
            ))
            .with_env_var("POSTGRES_USER", crate::postgres::USER)
            .with_env_var("POSTGRES_DB", crate::postgres::DATABASE)
            .with_env_var("POSTGRES_HOST_AUTH_METHOD", "trust")
            // As the local backend's throw-away clusters: durability buys nothing here.
            .with_cmd([
                "postgres",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=200",
            ])
            .with_label(TEST_LABEL, label)
            .with_startup_timeout(STARTUP)
            .start()
            .await
            .map_err(|e| fail("postgres", e))?;
        let nats_port = nats
            .get_host_port_ipv4(4222)
            .await
            .map_err(|e| fail("nats", e))?;
        let pg_port = postgres
            .get_host_port_ipv4(5432)
            .await
            .map_err(|e| fail("postgres", e))?;
        Ok(Self {
            nats_url: format!("nats://127.0.0.1:{nats_port}"),
            database_url: format!(
                "postgres://{}@127.0.0.1:{pg_port}/{}",
                crate::postgres::USER,
                crate::postgres::DATABASE
            ),
            _nats: nats,
            _postgres: postgres,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Containers;
    use crate::images::TEST_LABEL;

    /// The ids of the containers, running or not, whose [`TEST_LABEL`] is `value`.
    fn labelled(value: &str) -> Result<Vec<String>, crate::HarnessError> {
        let output = std::process::Command::new("docker")
            .args(["ps", "--all", "--quiet", "--filter"])
            .arg(format!("label={TEST_LABEL}={value}"))
            .output()
            .map_err(|source| crate::HarnessError::Spawn {
                name: "docker",
                source,
            })?;
        if !output.status.success() {
            return Err(crate::HarnessError::Setup(format!(
                "docker ps failed: {}",
                String::from_utf8_lossy(&output.stderr)
            )));
        }
        Ok(String::from_utf8_lossy(&output.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect())
    }

    async fn connects(containers: &Containers) {
        ccm_core::nats::connect(&containers.nats_url, "test")
            .await
            .expect("nats accepts connections");
        sqlx::PgPool::connect(&containers.database_url)
            .await
            .expect("postgres accepts the test user");
    }

    // A test that fails (here: panics) while holding its containers must leave none behind,
    // running or stopped: the handles remove them while the panic unwinds.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_test_leaves_no_container_behind() {
        let label = format!("panic-{}", uuid::Uuid::new_v4().simple());
        let task_label = label.clone();
        let outcome = tokio::spawn(async move {
            let containers = Containers::start_labelled(&task_label)
                .await
                .expect("containers start");
            connects(&containers).await;
            assert_eq!(
                labelled(&task_label).expect("docker ps").len(),
                2,
                "both containers run while the test holds them"
            );
            panic!("the test fails while its containers run");
        })
        .await;
        assert!(outcome.is_err_and(|e| e.is_panic()), "the task panicked");
        let left = labelled(&label).expect("docker ps");
        assert!(left.is_empty(), "containers left behind: {left:?}");
    }
}
