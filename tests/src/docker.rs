//! The `docker` backend: the official images through testcontainers.

use testcontainers::{
    ContainerAsync, GenericImage, ImageExt,
    core::{IntoContainerPort, WaitFor},
    runners::AsyncRunner,
};

use crate::HarnessError;

/// The two containers of one test; removed on drop.
#[derive(Debug)]
pub(crate) struct Containers {
    pub nats_url: String,
    pub database_url: String,
    _nats: ContainerAsync<GenericImage>,
    _postgres: ContainerAsync<GenericImage>,
}

impl Containers {
    pub(crate) async fn start() -> Result<Self, HarnessError> {
        let fail = |e: testcontainers::TestcontainersError| HarnessError::Setup(e.to_string());
        let nats = GenericImage::new("nats", crate::nats_server::CURRENT.version)
            .with_exposed_port(4222.tcp())
            .with_wait_for(WaitFor::message_on_stderr("Server is ready"))
            .with_cmd(["-js"])
            .start()
            .await
            .map_err(fail)?;
        let postgres = GenericImage::new("postgres", "15")
            .with_exposed_port(5432.tcp())
            .with_wait_for(WaitFor::message_on_stderr(
                "database system is ready to accept connections",
            ))
            .with_env_var("POSTGRES_USER", crate::postgres::USER)
            .with_env_var("POSTGRES_DB", crate::postgres::DATABASE)
            .with_env_var("POSTGRES_HOST_AUTH_METHOD", "trust")
            .start()
            .await
            .map_err(fail)?;
        let nats_port = nats.get_host_port_ipv4(4222).await.map_err(fail)?;
        let pg_port = postgres.get_host_port_ipv4(5432).await.map_err(fail)?;
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
