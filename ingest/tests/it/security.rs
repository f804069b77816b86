//! Authentication on every route that needs it, and secrets kept out of logs.

use ccm_core::config::Secret;
use ccm_tests::{TEST_TOKEN, TestEnv};
use serde_json::{Value, json};

use crate::{api::Api, logs::Captured};

/// Routes anyone may call: health, the API's description, and Twilio's callbacks (which are
/// verified by their signature instead of a token).
const PUBLIC: &[&str] = &[
    "/healthz",
    "/readyz",
    "/api/v1/openapi.json",
    "/api/v1/docs",
    "/api/v1/callbacks/twilio",
];

/// Routes that were once missing from the OpenAPI document; the walk checks they are there.
const ONCE_UNDOCUMENTED: &[(&str, &str)] = &[
    ("get", "/api/v1/dead-letters"),
    ("get", "/api/v1/dead-letters/{seq}"),
    ("delete", "/api/v1/dead-letters/{seq}"),
    ("post", "/api/v1/dead-letters/{seq}/redrive"),
    ("post", "/api/v1/callbacks/twilio"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_route_refuses_a_missing_or_wrong_token() {
    let env = TestEnv::start().await.expect("env");
    let api = Api::start(&env).await;
    let doc: Value = api
        .http
        .get(format!("{}/api/v1/openapi.json", api.base))
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    let mut operations: Vec<(String, String)> = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            if ["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                operations.push((method.clone(), path.clone()));
            }
        }
    }
    // The document must really list the API, or this walk proves nothing.
    assert!(
        operations.len() >= 20,
        "only {} operations",
        operations.len()
    );
    for (method, path) in ONCE_UNDOCUMENTED {
        assert!(
            operations.contains(&((*method).to_owned(), (*path).to_owned())),
            "{method} {path} is not in the OpenAPI document"
        );
    }

    let mut walked = 0;
    for (method, template) in &operations {
        if PUBLIC.contains(&template.as_str()) {
            continue;
        }
        // Any value fits the path parameters: the token is checked before the handler runs.
        let path = concrete(template);
        let url = format!("{}{path}", api.base);
        let method: reqwest::Method = method.to_uppercase().parse().expect("method");
        let body = json!({"phone_number": "+15550001234", "campaign_id": 1, "name": "x"});
        let requests = [
            ("no token", api.http.request(method.clone(), &url)),
            (
                "wrong X-Auth-Token",
                api.http
                    .request(method.clone(), &url)
                    .header("X-Auth-Token", "wrong-token"),
            ),
            (
                "wrong bearer",
                api.http
                    .request(method.clone(), &url)
                    .bearer_auth("wrong-token"),
            ),
            (
                "a valid token's prefix",
                api.http
                    .request(method.clone(), &url)
                    .header("X-Auth-Token", &TEST_TOKEN[..TEST_TOKEN.len() - 1]),
            ),
        ];
        for (what, request) in requests {
            let response = request.json(&body).send().await.expect("request");
            assert_eq!(response.status(), 401, "{method} {path} with {what}");
        }
        walked += 1;
    }
    assert!(walked >= 20, "walked {walked} operations");

    // Twilio's route is open to Twilio but refuses an unsigned callback.
    let response = api
        .http
        .post(format!("{}/api/v1/callbacks/twilio", api.base))
        .form(&[("CallSid", "CA1"), ("CallStatus", "completed")])
        .send()
        .await
        .expect("request");
    assert!(
        response.status().is_client_error(),
        "unsigned Twilio callback: {}",
        response.status()
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_the_database_password_never_reach_the_logs() {
    const VALID: &str = "tok-valid-5b0e7c1d";
    const WRONG: &str = "tok-wrong-8a3f9e42";
    const PASSWORD: &str = "pw-secret-41c7d2";
    const TWILIO: &str = "twilio-secret-77ab";
    const NATS_PASSWORD: &str = "nats-secret-6d02";

    let logs = Captured::install();

    let env = TestEnv::start().await.expect("env");
    let mut config = env.config();
    config.ingest.auth_tokens = vec![Secret::new(VALID).into()];
    config.ingest.twilio.auth_token = Secret::new(TWILIO);
    // A server without authentication accepts any user and password, so the URL still works.
    config.nats_url = config
        .nats_url
        .expose()
        .replacen("nats://", &format!("nats://ccm:{NATS_PASSWORD}@"), 1)
        .into();
    // A database that refuses connections, so the reads fail and their errors are logged.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    config.database_url = Secret::new(format!("postgres://ccm:{PASSWORD}@127.0.0.1:{port}/ccm"));

    let debug = format!("{config:?}");
    for secret in [VALID, PASSWORD, TWILIO, NATS_PASSWORD] {
        assert!(
            !debug.contains(secret),
            "Debug of the config shows {secret}"
        );
    }
    assert!(debug.contains("***"), "the redaction marker is there");

    let api = Api::start_with(&env, config, false).await;
    let base = api.base.clone();
    let (status, body) = {
        let response = api
            .http
            .post(format!("{base}/api/v1/campaigns/"))
            .header("X-Auth-Token", VALID)
            .json(&json!({"name": "logs"}))
            .send()
            .await
            .expect("request");
        (response.status(), response.text().await.unwrap_or_default())
    };
    assert_eq!(status, 201, "{body}");
    for token in [VALID, WRONG] {
        for request in [
            api.http
                .get(format!("{base}/api/v1/calls"))
                .header("X-Auth-Token", token),
            api.http
                .post(format!("{base}/api/v1/calls"))
                .bearer_auth(token)
                .json(&json!({"phone_number": "not a number", "campaign_id": 1})),
        ] {
            let response = request.send().await.expect("request");
            assert!(response.status().is_client_error() || response.status() == 503);
        }
    }
    // A read that needs the database: the pool's connection error is logged.
    let response = api
        .http
        .get(format!("{base}/api/v1/calls"))
        .header("X-Auth-Token", VALID)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 503, "the database is unreachable");
    // A Twilio callback with a wrong signature is logged with its URL.
    let response = api
        .http
        .post(format!("{base}/api/v1/callbacks/twilio"))
        .header("X-Twilio-Signature", "bm90IGEgc2lnbmF0dXJl")
        .form(&[("CallSid", "CA1"), ("CallStatus", "completed")])
        .send()
        .await
        .expect("request");
    assert!(response.status().is_client_error());
    api.stop().await;

    let text = logs.text();
    // The capture works and saw the failures, or the absence of secrets would mean nothing.
    assert!(
        text.contains("ingest listening"),
        "ingest's logs were captured"
    );
    assert!(
        text.contains("dependency unavailable"),
        "the database failure was logged"
    );
    for secret in [VALID, WRONG, PASSWORD, TWILIO, NATS_PASSWORD] {
        let lines: Vec<&str> = text.lines().filter(|l| l.contains(secret)).collect();
        assert!(
            lines.is_empty(),
            "the logs contain {secret}:\n{}",
            lines.join("\n")
        );
    }
}

/// Every method a client can send, including one no route knows.
fn every_method() -> Vec<reqwest::Method> {
    let mut methods = vec![
        reqwest::Method::GET,
        reqwest::Method::HEAD,
        reqwest::Method::POST,
        reqwest::Method::PUT,
        reqwest::Method::PATCH,
        reqwest::Method::DELETE,
        reqwest::Method::OPTIONS,
        reqwest::Method::TRACE,
    ];
    methods.push(reqwest::Method::from_bytes(b"PROPFIND").expect("method"));
    methods.push(reqwest::Method::from_bytes(b"XYZZY").expect("method"));
    methods
}

/// A concrete path for a template: any value fits, the token is checked before the handler.
pub(crate) fn concrete(template: &str) -> String {
    template
        .split('/')
        .map(|s| if s.starts_with('{') { "1" } else { s })
        .collect::<Vec<_>>()
        .join("/")
}

/// The router's own table, walked with every method: without a valid token, every route
/// but the public ones answers 401 and nothing else (HEAD once answered 200 with the GET
/// handler's length, and `HEAD /api/v1/dnc/<number>` told who is listed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_of_the_table_refuses_every_method_without_a_token() {
    use ccm_ingest::routes::table::{Access, table};

    let env = TestEnv::start().await.expect("env");
    let api = Api::start(&env).await;
    let entries = table(false);
    assert!(entries.len() >= 35, "only {} routes", entries.len());
    let mut failures = Vec::new();
    let mut walked = 0;
    for entry in &entries {
        let url = format!("{}{}", api.base, concrete(&entry.path));
        for method in every_method() {
            let requests = [
                ("no token", api.http.request(method.clone(), &url)),
                (
                    "empty token",
                    api.http
                        .request(method.clone(), &url)
                        .header("X-Auth-Token", ""),
                ),
                (
                    "wrong token",
                    api.http
                        .request(method.clone(), &url)
                        .bearer_auth("wrong-token"),
                ),
            ];
            for (what, request) in requests {
                let response = request
                    .header("Content-Type", "application/json")
                    .body(r#"{"phone_number": "+15550001234", "campaign_id": 1}"#)
                    .send()
                    .await
                    .expect("request");
                let status = response.status().as_u16();
                let ok = match entry.access {
                    Access::Token(_) => status == 401,
                    // Its own credential is missing: refused, never served.
                    Access::OwnCheck(_) => (400..500).contains(&status) && status != 404,
                    Access::Public => true,
                };
                if !ok {
                    failures.push(format!("{method} {} with {what}: {status}", entry.path));
                }
                walked += 1;
            }
        }
    }
    assert!(walked >= 35 * 10 * 3, "walked {walked} requests");
    assert!(
        failures.is_empty(),
        "answered without a token:\n{}",
        failures.join("\n")
    );

    // The table is the whole router: every documented operation is a method of one of its
    // rows (and `routes::table`'s unit tests check the converse).
    let doc: Value = api
        .http
        .get(format!("{}/api/v1/openapi.json", api.base))
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            let method: axum::http::Method = method.to_uppercase().parse().expect("method");
            assert!(
                entries
                    .iter()
                    .any(|e| e.path == *path && e.methods.contains(&method)),
                "{method} {path} is documented but not in the route table"
            );
        }
    }
    api.stop().await;
}

/// An empty token among real ones would match a request that sends an empty header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_token_next_to_real_ones_is_refused_at_start() {
    let env = TestEnv::start().await.expect("env");
    for tokens in [
        vec![TEST_TOKEN, ""],
        vec!["", TEST_TOKEN],
        vec![TEST_TOKEN, "  "],
    ] {
        let mut config = env.config();
        config.ingest.auth_tokens = tokens.iter().map(|t| Secret::new(*t).into()).collect();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let shutdown = tokio_util::sync::CancellationToken::new();
        let result = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            ccm_ingest::serve(config, listener, shutdown.clone()),
        )
        .await;
        shutdown.cancel();
        assert!(
            matches!(
                result,
                Ok(Err(ccm_ingest::IngestError::Tokens(
                    ccm_ingest::auth::TokenConfigError::EmptyToken
                )))
            ),
            "{tokens:?}: {result:?}"
        );
    }
}
