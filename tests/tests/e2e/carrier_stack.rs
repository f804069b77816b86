//! The stack with carrier-sim over HTTP, and a dialer that can be killed.
//!
//! The dialer runs on a tokio runtime of its own, so a test can kill it the way `kill -9`
//! would: `shutdown_background` drops every task of that runtime mid-flight (calls, pulls,
//! the NATS connection) with no grace and no acks.

use std::net::SocketAddr;

use ccm_carrier_sim::{SimConfig, ledger::Stats};
use ccm_core::{
    Config,
    config::{CarrierConfig, Secret, TwilioCarrierConfig},
};
use ccm_tests::{ApiClient, TestEnv};
use futures::{StreamExt, stream};
use serde_json::{Value, json};
use tokio::{net::TcpListener, task::JoinSet};
use tokio_util::sync::CancellationToken;

pub const ACCOUNT_SID: &str = "ACtest";
pub const AUTH_TOKEN: &str = "twilio-test-token";

/// A carrier-sim that answers every call, each lasting `call_ms`: for tests about what
/// decides whether and when a call is placed, not about its outcome.
pub fn answering(call_ms: u64) -> SimConfig {
    SimConfig {
        picked: 1,
        disconnected: 0,
        rnr: 0,
        failed: 0,
        call_ms,
        ..Default::default()
    }
}

/// Ingest, retrier, projector and carrier-sim in this process; the dialer apart.
pub struct CarrierStack {
    /// Ingest's client (the shared one).
    pub client: ApiClient,
    pub sim: String,
    pub config: Config,
    shutdown: CancellationToken,
    tasks: JoinSet<Result<(), String>>,
}

impl CarrierStack {
    /// Starts everything but the dialer; `sim` is adjusted to call back into this ingest.
    pub async fn start(env: &TestEnv, sim: SimConfig) -> CarrierStack {
        Self::start_with(env, sim, |_| {}).await
    }

    /// As [`CarrierStack::start`], with the configuration changed by `tweak` first.
    pub async fn start_with(
        env: &TestEnv,
        mut sim: SimConfig,
        tweak: impl FnOnce(&mut Config),
    ) -> CarrierStack {
        ccm_core::telemetry::init("test", &env.config().log);
        env.provision().await.expect("provision");
        let shutdown = CancellationToken::new();
        let api_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let api_addr: SocketAddr = api_listener.local_addr().expect("addr");
        let sim_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let sim_addr: SocketAddr = sim_listener.local_addr().expect("addr");
        let api = format!("http://{api_addr}");
        let sim_url = format!("http://{sim_addr}");

        let mut config = env.config();
        config.ingest.twilio.auth_token = Secret::new(AUTH_TOKEN);
        config.dialer.max_call_duration_secs = 10;
        config.dialer.carrier = CarrierConfig::Twilio(TwilioCarrierConfig {
            base_url: sim_url.clone().into(),
            account_sid: ACCOUNT_SID.into(),
            auth_token: Secret::new(AUTH_TOKEN),
            from: "+15550009999".into(),
            status_callback_base: api.clone(),
            ..TwilioCarrierConfig::default()
        });
        tweak(&mut config);
        sim.callback_base = api.clone();
        sim.twilio_account_sid = ACCOUNT_SID.into();
        sim.twilio_auth_token = AUTH_TOKEN.into();

        let mut tasks = JoinSet::new();
        let s = shutdown.clone();
        tasks.spawn(async move {
            ccm_carrier_sim::run(sim, sim_listener, s)
                .await
                .map_err(|e| format!("sim: {e:?}"))
        });
        let (c, s) = (config.clone(), shutdown.clone());
        tasks.spawn(async move {
            ccm_ingest::serve(c, api_listener, s)
                .await
                .map_err(|e| format!("ingest: {e:?}"))
        });
        let (c, s) = (config.clone(), shutdown.clone());
        tasks.spawn(async move {
            ccm_retrier::run(c, s)
                .await
                .map_err(|e| format!("retrier: {e:?}"))
        });
        let (c, s) = (config.clone(), shutdown.clone());
        tasks.spawn(async move {
            ccm_projector::run(c, s)
                .await
                .map_err(|e| format!("projector: {e:?}"))
        });
        let stack = CarrierStack {
            client: ApiClient::new(api),
            sim: sim_url,
            config,
            shutdown,
            tasks,
        };
        stack.client.wait_ready().await;
        stack
    }

    /// Creates a campaign with this cap and one attempt per call (the outcome is final).
    pub async fn campaign(&self, cap: u32) -> u64 {
        let (status, body) = self
            .send(
                "/api/v1/campaigns",
                json!({"name": "carrier", "max_concurrent_calls": cap,
                                               "max_attempts": 1}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body["id"].as_u64().expect("id")
    }

    /// POSTs `body` to ingest.
    pub async fn send(&self, path: &str, body: Value) -> (u16, Value) {
        self.client.post(path, body).await
    }

    /// Accepts `n` calls to distinct numbers, 20 requests at a time.
    pub async fn calls(&self, campaign: u64, n: u32) {
        self.calls_from(campaign, n, 1_000_000).await;
    }

    /// As [`CarrierStack::calls`], numbering from `first` (so two campaigns call different
    /// people).
    pub async fn calls_from(&self, campaign: u64, n: u32, first: u32) {
        let statuses: Vec<(u16, Value)> = stream::iter(0..n)
            .map(|i| {
                let number = format!("+1555{:07}", first + i);
                async move {
                    self.send(
                        "/api/v1/calls",
                        json!({"campaign_id": campaign, "phone_number": number}),
                    )
                    .await
                }
            })
            .buffer_unordered(20)
            .collect()
            .await;
        for (status, body) in statuses {
            assert_eq!(status, 202, "{body}");
        }
    }

    pub async fn stats(&self) -> Stats {
        let response = self
            .client
            .http
            .get(format!("{}/stats", self.sim))
            .send()
            .await
            .expect("stats");
        response.json().await.expect("stats json")
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        while let Some(result) = self.tasks.join_next().await {
            result
                .expect("service task panicked")
                .expect("service failed");
        }
    }
}

impl Drop for CarrierStack {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A dialer on a runtime of its own.
pub struct Dialer {
    runtime: Option<tokio::runtime::Runtime>,
    shutdown: CancellationToken,
    done: Option<tokio::sync::oneshot::Receiver<Result<(), String>>>,
}

impl Dialer {
    pub fn start(config: Config) -> Dialer {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("dialer runtime");
        let shutdown = CancellationToken::new();
        let (tx, done) = tokio::sync::oneshot::channel();
        let s = shutdown.clone();
        runtime.spawn(async move {
            let result = ccm_dialer::run(config, s)
                .await
                .map_err(|e| format!("dialer: {e:?}"));
            let _ = tx.send(result);
        });
        Dialer {
            runtime: Some(runtime),
            shutdown,
            done: Some(done),
        }
    }

    /// Like `kill -9`: every task dropped where it stands.
    pub fn kill(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }

    /// Graceful stop; fails the test if the dialer failed.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(done) = self.done.take() {
            done.await.expect("dialer finished").expect("dialer ran");
        }
        self.kill();
    }
}

impl Drop for Dialer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// How many calls of `campaign` Postgres shows in each status.
pub async fn statuses(pg: &sqlx::PgPool, campaign: u64) -> Vec<(String, i64)> {
    sqlx::query_as(
        "SELECT status, count(*) FROM calls WHERE campaign_id = $1 GROUP BY status ORDER BY status",
    )
    .bind(campaign as i64)
    .fetch_all(pg)
    .await
    .unwrap_or_default()
}
