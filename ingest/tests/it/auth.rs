//! The token check and its old 401 bodies.

use ccm_tests::{TEST_TOKEN, TestEnv};
use serde_json::{Value, json};

use crate::api::Api;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_and_wrong_tokens_get_the_old_401_bodies_and_open_routes_need_none() {
    let env = TestEnv::start().await.expect("env");
    let api = Api::start(&env).await;
    let url = format!("{}/api/v1/campaigns/", api.base);

    let response = api.http.get(&url).send().await.expect("request");
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.expect("json");
    assert_eq!(
        body,
        json!({"error": {"code": "unauthorized", "message": "Authentication token not provided"}})
    );

    let response = api
        .http
        .get(&url)
        .header("X-Auth-Token", "wrong")
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.expect("json");
    assert_eq!(
        body,
        json!({"error": {"code": "unauthorized", "message": "Invalid authentication token"}})
    );

    let response = api
        .http
        .get(&url)
        .bearer_auth(TEST_TOKEN)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200, "Bearer is accepted too");

    for path in ["/healthz", "/readyz"] {
        let response = api
            .http
            .get(format!("{}{path}", api.base))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 200, "{path} needs no token");
    }
    let response = api
        .http
        .request(reqwest::Method::OPTIONS, &url)
        .send()
        .await
        .expect("request");
    // The API serves no browser from another origin: a pre-flight is an unauthenticated
    // request like any other.
    assert_eq!(response.status(), 401, "OPTIONS needs the token too");
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_refuses_to_start_without_a_token() {
    let env = TestEnv::start().await.expect("env");
    let mut config = env.config();
    config.ingest.auth_tokens = vec![ccm_core::config::Secret::new("").into()];
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let result = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        ccm_ingest::serve(config, listener, shutdown),
    )
    .await
    .expect("returns at once");
    assert!(
        matches!(
            result,
            Err(ccm_ingest::IngestError::Tokens(
                ccm_ingest::auth::TokenConfigError::NoToken
            ))
        ),
        "{result:?}"
    );
}
