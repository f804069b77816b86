//! Receivers, and ingest and the deliverer running in the test process.

use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
};
use base64::Engine as _;
use ccm_core::{CallEvent, CallId, CampaignId, Config, EventKind};
use ccm_tests::{TEST_TOKEN, TestEnv};
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// One request a receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub id: String,
    pub timestamp: String,
    pub signature: String,
    pub body: Bytes,
    pub at: Instant,
}

/// How a receiver answers: scripted statuses first (with an optional `Retry-After`), then
/// `then`, each after `delay`.
#[derive(Debug, Clone)]
pub struct Behaviour {
    pub script: VecDeque<(StatusCode, Option<&'static str>)>,
    pub then: StatusCode,
    pub delay: Duration,
}

impl Behaviour {
    pub fn always(status: StatusCode) -> Self {
        Self {
            script: VecDeque::new(),
            then: status,
            delay: Duration::ZERO,
        }
    }
}

#[derive(Clone)]
struct ReceiverState {
    received: Arc<Mutex<Vec<Received>>>,
    behaviour: Arc<Mutex<Behaviour>>,
}

/// A webhook receiver on 127.0.0.1.
pub struct Receiver {
    pub url: String,
    received: Arc<Mutex<Vec<Received>>>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Receiver {
    pub async fn start(behaviour: Behaviour) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Self::start_on(listener, behaviour)
    }

    /// A receiver on a listener the test bound (to come back on the port of one that was down).
    pub fn start_on(listener: TcpListener, behaviour: Behaviour) -> Self {
        let addr: SocketAddr = listener.local_addr().expect("addr");
        let state = ReceiverState {
            received: Arc::default(),
            behaviour: Arc::new(Mutex::new(behaviour)),
        };
        let received = state.received.clone();
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(state);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        Self {
            url: format!("http://{addr}/hook"),
            received,
            _stop: stop,
        }
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().expect("lock").clone()
    }

    /// Waits until `n` requests arrived (at most `timeout`).
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let ok = ccm_tests::eventually(timeout, || async {
            (self.received().len() >= n).then_some(())
        })
        .await;
        let got = self.received();
        assert!(ok.is_some(), "expected {n} requests, got {}", got.len());
        got
    }
}

async fn receive(State(state): State<ReceiverState>, headers: HeaderMap, body: Bytes) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let (status, retry_after, delay) = {
        let mut b = state.behaviour.lock().expect("lock");
        let (status, retry_after) = b.script.pop_front().unwrap_or((b.then, None));
        (status, retry_after, b.delay)
    };
    tokio::time::sleep(delay).await;
    state.received.lock().expect("lock").push(Received {
        id: header("webhook-id"),
        timestamp: header("webhook-timestamp"),
        signature: header("webhook-signature"),
        body,
        at: Instant::now(),
    });
    match retry_after {
        Some(value) => (status, [("retry-after", value)]).into_response(),
        None => status.into_response(),
    }
}

/// The path segment of a `webhook-id` (it contains `/`).
pub fn encode_id(id: &str) -> String {
    id.replace('/', "%2F")
}

/// Verifies a request as a receiver following Standard Webhooks does, written here from the
/// specification rather than with the crate's own signing code.
pub fn verify(secret: &str, r: &Received) -> bool {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").expect("whsec_ prefix"))
        .expect("base64 secret");
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("key");
    mac.update(format!("{}.{}.", r.id, r.timestamp).as_bytes());
    mac.update(&r.body);
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    r.signature
        .split(' ')
        .any(|s| s.strip_prefix("v1,") == Some(expected.as_str()))
}

/// A configuration for these tests: private targets allowed (receivers are on 127.0.0.1)
/// and short backoff.
pub fn config(env: &TestEnv) -> Config {
    let mut config = env.config();
    config.webhooks.allow_private_targets = true;
    config.webhooks.backoff_min_ms = 50;
    config.webhooks.backoff_max_ms = 200;
    config.webhooks.max_retry_after_secs = 2;
    config.webhooks.request_timeout_ms = 5000;
    config
}

/// Ingest on a free port; its base URL and the client to call it with.
pub struct Ingest {
    pub base: String,
    pub http: reqwest::Client,
    _stop: tokio_util::sync::DropGuard,
}

impl Ingest {
    pub async fn start(config: Config) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stop = CancellationToken::new();
        let s = stop.clone();
        tokio::spawn(async move {
            if let Err(e) = ccm_ingest::serve(config, listener, s).await {
                panic!("ingest failed: {e}");
            }
        });
        let ingest = Self {
            base: format!("http://{addr}"),
            http: reqwest::Client::new(),
            _stop: stop.drop_guard(),
        };
        let ready = ccm_tests::eventually(Duration::from_secs(10), || async {
            let r = ingest
                .http
                .get(format!("{}/readyz", ingest.base))
                .send()
                .await
                .ok()?;
            r.status().is_success().then_some(())
        })
        .await;
        assert!(ready.is_some(), "ingest ready");
        ingest
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("X-Auth-Token", TEST_TOKEN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request");
        let status = StatusCode::from_u16(response.status().as_u16()).expect("status");
        let text = response.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Subscribes `url`; answers the subscription as created (with its secret).
    pub async fn subscribe(&self, body: Value) -> Value {
        let (status, created) = self
            .send(reqwest::Method::POST, "/api/v1/webhooks", Some(body))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        created
    }
}

/// The deliverer, stopped when dropped or by [`Webhooks::stop`].
pub struct Webhooks {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Webhooks {
    /// Stops the deliverer and waits until it has finished.
    pub async fn stop(mut self) {
        self.stop.cancel();
        (&mut self.task).await.expect("webhooks task");
    }
}

impl Webhooks {
    /// Cancels it and waits at most `limit`; whether it ended in time.
    pub async fn stop_within(mut self, limit: std::time::Duration) -> bool {
        self.stop.cancel();
        tokio::time::timeout(limit, &mut self.task).await.is_ok()
    }
}

impl Drop for Webhooks {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub fn start_webhooks(config: Config) -> Webhooks {
    let stop = CancellationToken::new();
    let s = stop.clone();
    let task = tokio::spawn(async move {
        if let Err(e) = ccm_webhooks::run(config, s).await {
            panic!("webhooks failed: {e}");
        }
    });
    Webhooks { stop, task }
}

/// Publishes an event of a fresh call.
pub async fn publish(env: &TestEnv, campaign: u64, kind: EventKind) -> CallEvent {
    publish_for(env, CallId::new(), campaign, kind).await
}

/// Publishes an event of call `call_id`.
pub async fn publish_for(
    env: &TestEnv,
    call_id: CallId,
    campaign: u64,
    kind: EventKind,
) -> CallEvent {
    let event = CallEvent {
        call_id,
        campaign_id: CampaignId::new(campaign).expect("campaign id"),
        attempt: 1,
        at: chrono::Utc::now(),
        kind,
    };
    let js = env.jetstream().await.expect("jetstream");
    ccm_core::nats::publish_event(&js, &event)
        .await
        .expect("publish");
    event
}
