//! # ccm-tests
//!
//! The test harness every ccm crate uses, and (under `tests/`) the cross-service suite.
//!
//! [`TestEnv::start`] gives a test a real NATS JetStream server and a real PostgreSQL database
//! of its own; there are no mocks of either. Where they come from depends on
//! `CCM_TEST_BACKEND`:
//!
//! - `local` (default): a `nats-server -js` (the pinned release, see [`nats_server`]) and a PostgreSQL cluster started as local processes
//!   on free ports with temporary directories ([`nats::LocalNats`], [`postgres::LocalPostgres`]),
//!   stopped and removed when the `TestEnv` is dropped.
//! - `env`: the servers at `CCM_TEST_NATS_URL` and `CCM_TEST_DATABASE_URL`; each test gets a
//!   fresh database on that server (dropped afterwards). The NATS server is shared, so run
//!   such a suite with one test at a time.
//! - `docker`: the pinned nats-server and PostgreSQL 15 as containers through testcontainers,
//!   from the images `cargo xtask images` builds locally ([`images`]; no registry needed).
//!   Build with `--features docker`; needs a Docker engine.

pub mod api;
pub mod chaos;
pub mod cluster;
#[cfg(feature = "docker")]
mod docker;
pub mod images;
pub mod nats;
pub mod nats_server;
pub mod postgres;
pub mod process;

use std::{future::Future, time::Duration};

use ccm_core::{Config, config::Secret, topology::Topology};
use sqlx::{Connection, PgConnection, PgPool, postgres::PgPoolOptions};

pub use api::ApiClient;
pub use cluster::NatsCluster;
pub use nats::LocalNats;
pub use postgres::LocalPostgres;

/// Why the harness could not provide a test environment.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("{program} not found; install it first (`cargo xtask deps`)")]
    Missing { program: &'static str },
    #[error("cannot start {name}")]
    Spawn {
        name: &'static str,
        source: std::io::Error,
    },
    #[error("{name} exited while starting")]
    Exited { name: &'static str },
    #[error("{name} did not accept connections on port {port} in time")]
    Timeout { name: &'static str, port: u16 },
    #[error("{0}")]
    Setup(String),
    #[error("CCM_TEST_BACKEND={0} is not one of local, env, docker")]
    Backend(String),
    #[error("{0} must be set when CCM_TEST_BACKEND=env")]
    EnvMissing(&'static str),
    #[error("the docker backend needs ccm-tests built with --features docker")]
    DockerDisabled,
    #[error("I/O error in the test harness")]
    Io(#[source] std::io::Error),
    #[error("cannot reach PostgreSQL")]
    Database(#[source] sqlx::Error),
    #[error(transparent)]
    Nats(#[from] ccm_core::nats::NatsError),
    #[error(transparent)]
    Topology(#[from] ccm_core::topology::TopologyError),
}

/// A NATS server and a PostgreSQL database for one test.
#[derive(Debug)]
pub struct TestEnv {
    pub nats_url: String,
    pub database_url: String,
    /// The local servers, for tests that stop, kill or restart them.
    pub local_nats: Option<LocalNats>,
    pub local_postgres: Option<LocalPostgres>,
    env_database: Option<(String, String)>,
    #[cfg(feature = "docker")]
    _containers: Option<docker::Containers>,
}

impl TestEnv {
    /// Starts (or connects to) the servers chosen by `CCM_TEST_BACKEND`.
    pub async fn start() -> Result<Self, HarnessError> {
        let backend = std::env::var("CCM_TEST_BACKEND").unwrap_or_else(|_| "local".into());
        let env = match backend.as_str() {
            "local" => {
                let (nats, pg) = tokio::task::spawn_blocking(|| {
                    Ok::<_, HarnessError>((LocalNats::start()?, LocalPostgres::start()?))
                })
                .await
                .map_err(|e| HarnessError::Setup(format!("harness task failed: {e}")))??;
                Self {
                    nats_url: nats.url(),
                    database_url: pg.url(postgres::DATABASE),
                    local_nats: Some(nats),
                    local_postgres: Some(pg),
                    env_database: None,
                    #[cfg(feature = "docker")]
                    _containers: None,
                }
            }
            "env" => Self::from_env().await?,
            "docker" => Self::docker().await?,
            other => return Err(HarnessError::Backend(other.to_owned())),
        };
        env.wait_for_database().await?;
        Ok(env)
    }

    async fn from_env() -> Result<Self, HarnessError> {
        let nats_url = std::env::var("CCM_TEST_NATS_URL")
            .map_err(|_| HarnessError::EnvMissing("CCM_TEST_NATS_URL"))?;
        let server_url = std::env::var("CCM_TEST_DATABASE_URL")
            .map_err(|_| HarnessError::EnvMissing("CCM_TEST_DATABASE_URL"))?;
        let name = format!("ccm_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = PgConnection::connect(&server_url)
            .await
            .map_err(HarnessError::Database)?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .map_err(HarnessError::Database)?;
        let database_url = replace_database(&server_url, &name);
        Ok(Self {
            nats_url,
            database_url,
            local_nats: None,
            local_postgres: None,
            env_database: Some((server_url, name)),
            #[cfg(feature = "docker")]
            _containers: None,
        })
    }

    #[cfg(feature = "docker")]
    async fn docker() -> Result<Self, HarnessError> {
        let containers = docker::Containers::start().await?;
        Ok(Self {
            nats_url: containers.nats_url.clone(),
            database_url: containers.database_url.clone(),
            local_nats: None,
            local_postgres: None,
            env_database: None,
            _containers: Some(containers),
        })
    }

    #[cfg(not(feature = "docker"))]
    async fn docker() -> Result<Self, HarnessError> {
        Err(HarnessError::DockerDisabled)
    }

    /// A server accepts TCP before it accepts logins; wait for the latter.
    async fn wait_for_database(&self) -> Result<(), HarnessError> {
        let mut last = None;
        for _ in 0..200 {
            match PgConnection::connect(&self.database_url).await {
                Ok(conn) => {
                    let _ = conn.close().await;
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(HarnessError::Database(
            last.unwrap_or(sqlx::Error::PoolTimedOut),
        ))
    }

    /// A configuration pointing at this environment's servers, with settings that keep tests
    /// quick (short call durations); tests adjust it further as they need.
    pub fn config(&self) -> Config {
        let mut config = Config {
            nats_url: ccm_core::config::SecretUrl::new(&self.nats_url),
            database_url: Secret::new(&self.database_url),
            ..Config::default()
        };
        config.ingest.listen = ([127, 0, 0, 1], 0).into();
        config.ingest.auth_tokens = vec![Secret::new(TEST_TOKEN).into()];
        config.dialer.max_call_duration_secs = 30;
        // A call hung up at its maximum duration waits this long for the carrier's report.
        config.dialer.hangup_grace_ms = 1000;
        // Tests poll list routes in loops and send bulks back to back; the per-token limit of
        // the expensive routes stays on (so every test passes through it) but far above them.
        // The tests of the limit set their own.
        config.ingest.rate_limits.expensive_per_minute = 1_000_000;
        config.ingest.rate_limits.burst = 100_000;
        // The shipped policy with its slots open at every hour of every day (see the file):
        // a test's outcome must not depend on the day and hour it runs.
        config.retrier.policy_file =
            concat!(env!("CARGO_MANIFEST_DIR"), "/data/retry-any-time.yaml").into();
        config
    }

    /// A NATS client.
    pub async fn nats(&self) -> Result<async_nats::Client, HarnessError> {
        Ok(ccm_core::nats::connect(&self.nats_url, "test").await?)
    }

    /// A JetStream context.
    pub async fn jetstream(&self) -> Result<async_nats::jetstream::Context, HarnessError> {
        Ok(ccm_core::nats::jetstream(self.nats().await?))
    }

    /// Creates the streams, consumers and buckets.
    pub async fn provision(&self) -> Result<ccm_core::topology::Report, HarnessError> {
        let topology = Topology::load(&self.config().streams)?;
        Ok(topology.provision(&self.jetstream().await?).await?)
    }

    /// A connection pool on this test's database.
    pub async fn pg(&self) -> Result<PgPool, HarnessError> {
        PgPoolOptions::new()
            .max_connections(5)
            .connect(&self.database_url)
            .await
            .map_err(HarnessError::Database)
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        let Some((server_url, name)) = self.env_database.take() else {
            return;
        };
        // Drop runs outside any runtime guarantee; a short-lived thread with its own runtime
        // removes the per-test database.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok(mut conn) = PgConnection::connect(&server_url).await {
                    let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    let _ = sqlx::query(&sql).execute(&mut conn).await;
                }
            });
        })
        .join();
    }
}

/// The API token configured by [`TestEnv::config`].
pub const TEST_TOKEN: &str = "test-token";

fn replace_database(url: &str, database: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let authority_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_end..].find('/') {
        Some(slash) => &base[..authority_end + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{database}?{q}"),
        None => format!("{base}/{database}"),
    }
}

/// Polls `check` until it returns `Some`, or gives up after `timeout` returning `None`.
/// For state that other processes produce (rows the projector writes); never to wait out
/// a fixed delay.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::replace_database;

    /// The tests' policy is the shipped one but for its slots: the same outcome rules and
    /// defaults, so the suite exercises what operators run.
    #[test]
    fn the_test_policy_is_the_shipped_one_open_at_every_hour() {
        let read = |path: &str| -> serde_yaml_ng::Mapping {
            let text = std::fs::read_to_string(path).expect(path);
            serde_yaml_ng::from_str(&text).expect(path)
        };
        let mut shipped = read(concat!(env!("CARGO_MANIFEST_DIR"), "/../config/retry.yaml"));
        let mut tests = read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/data/retry-any-time.yaml"
        ));
        let slots = tests.remove("global_rules").expect("the tests' slots");
        shipped.remove("global_rules").expect("the shipped slots");
        assert_eq!(tests, shipped, "only the slots may differ");
        let days = slots[0]["days"].as_sequence().expect("days").len();
        assert_eq!(days, 7, "every day");
        ccm_core::RetryPolicy::load(std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/data/retry-any-time.yaml"
        )))
        .expect("the tests' policy loads");
    }

    #[test]
    fn replaces_only_the_database_of_a_url() {
        assert_eq!(
            replace_database("postgres://u@h:5/db", "t"),
            "postgres://u@h:5/t"
        );
        assert_eq!(
            replace_database("postgres://u@h:5", "t"),
            "postgres://u@h:5/t"
        );
        assert_eq!(
            replace_database("postgres://u:p@h/db?sslmode=disable", "t"),
            "postgres://u:p@h/t?sslmode=disable"
        );
    }
}
