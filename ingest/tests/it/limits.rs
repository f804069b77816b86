//! Per-token rate limits on the expensive routes: a token over its burst gets 429 with
//! `Retry-After`, while other tokens and the cheap routes go on.

use ccm_core::config::Secret;
use ccm_tests::TestEnv;
use serde_json::Value;

use crate::api::Api;

/// The expensive routes (docs/security.md, Limits), with a body each: any body will do, the
/// limit is checked before the handler reads it.
const EXPENSIVE: &[(&str, &str, &str)] = &[
    (
        "POST",
        "/api/v1/calls/bulk?campaign_id=1",
        r#"["+15550001234"]"#,
    ),
    (
        "POST",
        "/api/v1/bulk-initiate-calls/",
        r#"{"campaign_id": 1, "phone_numbers": ["+15550001234"]}"#,
    ),
    (
        "POST",
        "/api/v1/campaigns/1/contacts/import",
        "phone_number\n+15550001234\n",
    ),
    ("GET", "/api/v1/calls", ""),
    ("GET", "/api/v1/campaigns", ""),
    ("GET", "/api/v1/dead-letters", ""),
    ("GET", "/api/v1/webhooks/1/deliveries", ""),
    ("POST", "/api/v1/dashboard/ticket", "{}"),
    ("GET", "/api/v1/dashboard/events", ""),
];

const BURST: u32 = 3;

async fn send(api: &Api, token: &str, method: &str, path: &str, body: &str) -> reqwest::Response {
    let mut request = api
        .http
        .request(
            method.parse().expect("method"),
            format!("{}{path}", api.base),
        )
        .header("X-Auth-Token", token);
    if !body.is_empty() {
        let kind = if body.starts_with(['{', '[']) {
            "application/json"
        } else {
            "text/csv"
        };
        request = request.header("Content-Type", kind).body(body.to_owned());
    }
    request.send().await.expect("request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_over_its_burst_gets_429_while_other_tokens_and_cheap_routes_go_on() {
    let env = TestEnv::start().await.expect("env");
    let mut config = env.config();
    // Two tokens per route (the bucket is the token's, across routes): one to exhaust, one to
    // show the other is unaffected.
    let tokens: Vec<String> = (0..2 * EXPENSIVE.len())
        .map(|i| format!("limit-token-{i}"))
        .collect();
    config.ingest.auth_tokens = tokens
        .iter()
        .map(|t| Secret::new(t.clone()).into())
        .collect();
    // The burst, then one request a minute: the test never waits for a refill.
    config.ingest.rate_limits.expensive_per_minute = 1;
    config.ingest.rate_limits.burst = BURST;
    let api = Api::start_with(&env, config, false).await;
    for ((method, path, body), pair) in EXPENSIVE.iter().zip(tokens.chunks(2)) {
        let (token, other) = (&pair[0], &pair[1]);
        for i in 0..BURST {
            let response = send(&api, token, method, path, body).await;
            assert_ne!(
                response.status(),
                429,
                "{method} {path}: request {i} of the burst"
            );
        }
        let response = send(&api, token, method, path, body).await;
        assert_eq!(response.status(), 429, "{method} {path} over the burst");
        let retry_after: u64 = response.headers()["retry-after"]
            .to_str()
            .expect("ascii")
            .parse()
            .expect("Retry-After in whole seconds");
        // One request a minute: the next one is at most a minute away.
        assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{method} {path}"
        );
        let problem: Value = response.json().await.expect("json");
        assert_eq!(problem["status"], 429, "{problem}");
        assert_eq!(problem["code"], "rate_limited", "{problem}");

        // Another token is not held back by this one's bucket.
        let response = send(&api, other, method, path, body).await;
        assert_ne!(response.status(), 429, "{method} {path} with another token");
        // A cheap route is not limited for the throttled token.
        for _ in 0..2 * BURST {
            let response = send(&api, token, "GET", "/api/v1/campaigns/1", "").await;
            assert_ne!(
                response.status(),
                429,
                "a cheap route after {method} {path}"
            );
        }
    }
    // The hot path, creating calls, is never limited.
    let campaign = {
        let response = send(
            &api,
            &tokens[1],
            "POST",
            "/api/v1/campaigns/",
            r#"{"name": "cheap"}"#,
        )
        .await;
        assert_eq!(response.status(), 201);
        response.json::<Value>().await.expect("json")["id"]
            .as_u64()
            .expect("id")
    };
    for i in 0..3 * BURST {
        let body = format!(r#"{{"phone_number": "+1555003{i:04}", "campaign_id": {campaign}}}"#);
        let response = send(&api, &tokens[0], "POST", "/api/v1/calls", &body).await;
        assert!(
            response.status().is_success(),
            "call {i}: {}",
            response.status()
        );
    }
    api.stop().await;
}
