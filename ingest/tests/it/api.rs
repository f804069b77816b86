//! Ingest served in-process on port 0, with the projector beside it when a test needs the
//! read model.

use ccm_core::Config;
use ccm_tests::{ApiClient, TestEnv};
use tokio::{net::TcpListener, task::JoinSet};
use tokio_util::sync::CancellationToken;

pub struct Api {
    client: ApiClient,
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
}

/// Requests go through the shared client.
impl std::ops::Deref for Api {
    type Target = ApiClient;

    fn deref(&self) -> &ApiClient {
        &self.client
    }
}

impl Api {
    /// Ingest alone.
    pub async fn start(env: &TestEnv) -> Api {
        Self::start_with(env, env.config(), false).await
    }

    /// Ingest and the projector (for routes that read the read model).
    pub async fn with_projector(env: &TestEnv) -> Api {
        Self::start_with(env, env.config(), true).await
    }

    pub async fn start_with(env: &TestEnv, config: Config, projector: bool) -> Api {
        env.provision().await.expect("provision");
        Self::start_provisioned(config, projector).await
    }

    /// Ingest (and the projector) on servers the test provisioned itself.
    pub async fn start_provisioned(config: Config, projector: bool) -> Api {
        let shutdown = CancellationToken::new();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let mut tasks = JoinSet::new();
        let (c, s) = (config.clone(), shutdown.clone());
        tasks.spawn(async move { ccm_ingest::serve(c, listener, s).await.expect("ingest") });
        if projector {
            let s = shutdown.clone();
            tasks.spawn(async move { ccm_projector::run(config, s).await.expect("projector") });
        }
        Self::ready(base, shutdown, tasks).await
    }

    /// Ingest alone, and its state, to look at what it holds in memory.
    pub async fn with_state(env: &TestEnv) -> (Api, ccm_ingest::AppState) {
        env.provision().await.expect("provision");
        let state = ccm_ingest::AppState::connect(&env.config())
            .await
            .expect("connect");
        let shutdown = CancellationToken::new();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let mut tasks = JoinSet::new();
        let (st, s) = (state.clone(), shutdown.clone());
        tasks.spawn(async move {
            ccm_ingest::serve_state(st, listener, s)
                .await
                .expect("ingest")
        });
        (Self::ready(base, shutdown, tasks).await, state)
    }

    async fn ready(base: String, shutdown: CancellationToken, tasks: JoinSet<()>) -> Api {
        let api = Api {
            client: ApiClient::new(base),
            shutdown,
            tasks,
        };
        api.wait_ready().await;
        api
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        while let Some(result) = self.tasks.join_next().await {
            result.expect("service task");
        }
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Messages stored in a stream.
pub async fn stream_messages(env: &TestEnv, stream: &str) -> u64 {
    let js = env.jetstream().await.expect("jetstream");
    let mut stream = js.get_stream(stream).await.expect("stream");
    stream.info().await.expect("info").state.messages
}
