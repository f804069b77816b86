//! Ingest served in-process on port 0, with the projector beside it when a test needs the
//! read model.

use std::time::Duration;

use ccm_core::Config;
use ccm_tests::{TEST_TOKEN, TestEnv};
use serde_json::{Value, json};
use tokio::{net::TcpListener, task::JoinSet};
use tokio_util::sync::CancellationToken;

pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
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
            base,
            http: reqwest::Client::new(),
            shutdown,
            tasks,
        };
        for _ in 0..500 {
            if let Ok(r) = api.http.get(format!("{}/readyz", api.base)).send().await
                && r.status().is_success()
            {
                return api;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("ingest never became ready");
    }

    /// An authenticated JSON request; the status and the parsed body (Null if not JSON).
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("X-Auth-Token", TEST_TOKEN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(reqwest::Method::PUT, path, Some(body)).await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.send(reqwest::Method::GET, path, None).await
    }

    /// Sends a raw body with a content type.
    pub async fn raw(
        &self,
        method: reqwest::Method,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> (u16, Value) {
        let response = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("X-Auth-Token", TEST_TOKEN)
            .header("Content-Type", content_type)
            .body(body)
            .send()
            .await
            .expect("request");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Creates a campaign through the compatible API and returns its id.
    pub async fn campaign(&self, name: &str) -> u64 {
        let (status, body) = self.post("/api/v1/campaigns/", json!({"name": name})).await;
        assert_eq!(status, 201, "{body}");
        body["id"].as_u64().expect("integer id")
    }

    /// Creates a campaign with settings through the resource API.
    pub async fn campaign_with(&self, body: Value) -> u64 {
        let (status, body) = self.post("/api/v1/campaigns", body).await;
        assert_eq!(status, 201, "{body}");
        body["id"].as_u64().expect("integer id")
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
