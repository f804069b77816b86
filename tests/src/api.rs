//! The one HTTP client the test fixtures use against ingest: authenticated JSON requests
//! answering `(status, body)`, and the few steps every suite repeats (wait for readiness,
//! create a campaign).

use std::time::Duration;

use serde_json::{Value, json};

use crate::TEST_TOKEN;

/// A client of one ingest, sending the test token.
#[derive(Debug, Clone)]
pub struct ApiClient {
    /// `http://host:port`, no trailing slash.
    pub base: String,
    pub http: reqwest::Client,
}

impl ApiClient {
    pub fn new(base: impl Into<String>) -> Self {
        Self {
            base: base.into(),
            http: reqwest::Client::new(),
        }
    }

    /// Waits until `/readyz` answers 2xx; panics after about ten seconds.
    pub async fn wait_ready(&self) {
        for _ in 0..500 {
            if let Ok(r) = self.http.get(format!("{}/readyz", self.base)).send().await
                && r.status().is_success()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("ingest at {} never became ready", self.base);
    }

    /// An authenticated request with an optional JSON body; the status and the parsed body
    /// (`Null` when it is not JSON). Panics when nothing comes back: a fixture's server is up.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: impl Into<Option<Value>>,
    ) -> (u16, Value) {
        let response = self
            .request(method, path, body)
            .send()
            .await
            .expect("request");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// The same request for a fault driver, which expects servers to be down: never panics,
    /// and answers status 0 (and `Null`) when nothing came back within `timeout`.
    pub async fn attempt(
        &self,
        method: reqwest::Method,
        path: &str,
        body: impl Into<Option<Value>>,
        timeout: Duration,
    ) -> (u16, Value) {
        match self
            .request(method, path, body)
            .timeout(timeout)
            .send()
            .await
        {
            Ok(response) => {
                let status = response.status().as_u16();
                (status, response.json().await.unwrap_or(Value::Null))
            }
            Err(_) => (0, Value::Null),
        }
    }

    fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: impl Into<Option<Value>>,
    ) -> reqwest::RequestBuilder {
        let request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("X-Auth-Token", TEST_TOKEN);
        match body.into() {
            Some(body) => request.json(&body),
            None => request,
        }
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(reqwest::Method::POST, path, body).await
    }

    pub async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(reqwest::Method::PUT, path, body).await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.send(reqwest::Method::GET, path, None).await
    }

    /// A GET whose answer is not JSON: the status, the content type and the body as text.
    pub async fn text(&self, path: &str) -> (u16, String, String) {
        let response = self
            .request(reqwest::Method::GET, path, None)
            .send()
            .await
            .expect("request");
        let status = response.status().as_u16();
        let kind = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        (status, kind, response.text().await.expect("body"))
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

    /// Creates a running campaign through the resource API and returns its id.
    pub async fn campaign(&self, name: &str) -> u64 {
        self.campaign_with(json!({"name": name})).await
    }

    /// Creates a campaign with settings through the resource API and returns its id.
    pub async fn campaign_with(&self, body: Value) -> u64 {
        let (status, body) = self.post("/api/v1/campaigns", body).await;
        assert_eq!(status, 201, "{body}");
        body["id"].as_u64().expect("integer id")
    }

    /// Creates a campaign through the old system's API (`/api/v1/campaigns/`) and returns its id.
    pub async fn compat_campaign(&self, name: &str) -> u64 {
        let (status, body) = self.post("/api/v1/campaigns/", json!({"name": name})).await;
        assert_eq!(status, 201, "{body}");
        body["id"].as_u64().expect("integer id")
    }
}
