//! The four services running in this test process against a [`TestEnv`].

use std::net::SocketAddr;

use ccm_core::Config;
use ccm_tests::{ApiClient, TestEnv};
use tokio::{net::TcpListener, task::JoinSet};
use tokio_util::sync::CancellationToken;

/// Running services; dropping it (or [`Stack::stop`]) shuts them down. Requests go through
/// the shared [`ApiClient`] (`stack.post(…)`, `stack.campaign(…)`).
pub struct Stack {
    client: ApiClient,
    shutdown: CancellationToken,
    tasks: JoinSet<Result<(), String>>,
}

impl Stack {
    /// Provisions the topology and starts ingest, dialer, retrier and projector.
    pub async fn start(env: &TestEnv, config: Config) -> Stack {
        ccm_core::telemetry::init("test", &config.log);
        env.provision().await.expect("provision");
        let shutdown = CancellationToken::new();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr: SocketAddr = listener.local_addr().expect("addr");
        let mut tasks = JoinSet::new();
        let (c, s) = (config.clone(), shutdown.clone());
        tasks.spawn(report("ingest", async move {
            ccm_ingest::serve(c, listener, s).await
        }));
        let (c, s) = (config.clone(), shutdown.clone());
        tasks.spawn(report("dialer", async move { ccm_dialer::run(c, s).await }));
        let (c, s) = (config.clone(), shutdown.clone());
        tasks.spawn(report(
            "retrier",
            async move { ccm_retrier::run(c, s).await },
        ));
        let (c, s) = (config, shutdown.clone());
        tasks.spawn(report("projector", async move {
            ccm_projector::run(c, s).await
        }));
        let stack = Stack {
            client: ApiClient::new(format!("http://{addr}")),
            shutdown,
            tasks,
        };
        stack.wait_ready().await;
        stack
    }

    /// Stops every service and reports the first that failed.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        while let Some(result) = self.tasks.join_next().await {
            result
                .expect("service task panicked")
                .expect("service failed");
        }
    }
}

/// Runs a service and prints its error the moment it fails, so a test that then times out
/// says why.
async fn report<E: std::fmt::Debug>(
    name: &'static str,
    service: impl std::future::Future<Output = Result<(), E>>,
) -> Result<(), String> {
    service.await.map_err(|e| {
        let message = format!("{name} failed: {e:?}");
        eprintln!("{message}");
        message
    })
}

impl std::ops::Deref for Stack {
    type Target = ApiClient;

    fn deref(&self) -> &ApiClient {
        &self.client
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
