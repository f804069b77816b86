//! The four services running in this test process against a [`TestEnv`].

use std::net::SocketAddr;

use ccm_core::Config;
use ccm_tests::{TEST_TOKEN, TestEnv};
use serde_json::{Value, json};
use tokio::{net::TcpListener, task::JoinSet};
use tokio_util::sync::CancellationToken;

/// Running services; dropping it (or [`Stack::stop`]) shuts them down.
pub struct Stack {
    pub api: String,
    pub http: reqwest::Client,
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
            api: format!("http://{addr}"),
            http: reqwest::Client::new(),
            shutdown,
            tasks,
        };
        stack.wait_ready().await;
        stack
    }

    async fn wait_ready(&self) {
        for _ in 0..500 {
            if let Ok(r) = self.http.get(format!("{}/readyz", self.api)).send().await
                && r.status().is_success()
            {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("ingest never became ready");
    }

    /// Sends an authenticated JSON request; returns the status and the parsed body.
    pub async fn send(&self, method: reqwest::Method, path: &str, body: Value) -> (u16, Value) {
        let response = self
            .http
            .request(method, format!("{}{path}", self.api))
            .header("X-Auth-Token", TEST_TOKEN)
            .json(&body)
            .send()
            .await
            .expect("request");
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    /// Creates a campaign and returns its id.
    pub async fn campaign(&self, name: &str) -> u64 {
        let (status, body) = self
            .send(
                reqwest::Method::POST,
                "/api/v1/campaigns",
                json!({"name": name}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body["id"].as_u64().expect("id")
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

impl Drop for Stack {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
