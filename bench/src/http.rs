//! A bare HTTP/1.1 client over one kept-alive connection.
//!
//! The load generator shares the machine's two cores with the system it measures, so it
//! should cost as little as it can: no connection pool, no redirects, no TLS, one request in
//! flight per connection (what 64 ordinary clients do).

use std::net::SocketAddr;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode, client::conn::http1::SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::stack::TOKEN;

/// One connection to ingest.
#[derive(Debug)]
pub struct Conn {
    sender: SendRequest<Full<Bytes>>,
    host: String,
}

impl Conn {
    pub async fn open(base: &str) -> anyhow::Result<Self> {
        let host = base
            .strip_prefix("http://")
            .context("only http:// URLs")?
            .trim_end_matches('/')
            .to_owned();
        let addr: SocketAddr = host
            .parse()
            .context("the benchmark only targets 127.0.0.1")?;
        anyhow::ensure!(addr.ip().is_loopback(), "load only ever goes to 127.0.0.1");
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP handshake")?;
        tokio::spawn(connection);
        Ok(Self { sender, host })
    }

    /// Sends one request with the API token and returns the status and body.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.host)
            .header("x-auth-token", TOKEN)
            .header("content-type", "application/json")
            .body(Full::new(body))?;
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }

    /// POSTs a JSON value and parses the JSON answer.
    pub async fn post_json(
        &mut self,
        path: &str,
        value: &serde_json::Value,
    ) -> anyhow::Result<(StatusCode, serde_json::Value)> {
        let (status, body) = self
            .send(Method::POST, path, serde_json::to_vec(value)?.into())
            .await?;
        let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        Ok((status, json))
    }
}

/// Whether `url` answers 2xx.
pub async fn get_ok(url: &str) -> bool {
    let Some((base, path)) = url
        .strip_prefix("http://")
        .and_then(|rest| rest.find('/').map(|i| (&url[..7 + i], &rest[i..])))
    else {
        return false;
    };
    match Conn::open(base).await {
        Ok(mut conn) => conn
            .send(Method::GET, path, Bytes::new())
            .await
            .is_ok_and(|(status, _)| status.is_success()),
        Err(_) => false,
    }
}

/// Creates a campaign and returns its id.
pub async fn campaign(api: &str, name: &str, cap: u64) -> anyhow::Result<u64> {
    let mut conn = Conn::open(api).await?;
    let (status, body) = conn
        .post_json(
            "/api/v1/campaigns",
            &serde_json::json!({"name": name, "max_concurrent_calls": cap}),
        )
        .await?;
    anyhow::ensure!(status.is_success(), "creating a campaign: {status} {body}");
    body["id"].as_u64().context("the campaign has no id")
}
