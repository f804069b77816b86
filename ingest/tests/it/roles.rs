//! Token roles (`ccm_core::access`): the route table walked with a token of each role and every
//! method. A viewer reads and changes nothing, a carrier only reports outcomes, an operator
//! does everything a route offers; an expired token and a hashed one behave as configured.

use ccm_core::{
    access::Role,
    config::{Secret, TokenConfig, TokenEntry},
};
use ccm_ingest::routes::table::{Access, table};
use ccm_tests::TestEnv;
use sha2::{Digest, Sha256};

use crate::{api::Api, security::concrete};

const VIEWER: &str = "tok-viewer-2c41";
const OPERATOR: &str = "tok-operator-93aa";
const CARRIER: &str = "tok-carrier-5e10";
const HASHED: &str = "tok-hashed-viewer-77d0";
const EXPIRED: &str = "tok-expired-0b3c";

fn entry(token: &str, role: Role) -> TokenConfig {
    TokenConfig::Entry(TokenEntry {
        token: Some(Secret::new(token)),
        sha256: None,
        role,
        name: Some(format!("{role:?}")),
        expires_at: None,
    })
}

fn methods() -> [reqwest::Method; 6] {
    use reqwest::Method;
    [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
    ]
}

/// The test's configuration with two tokens: the harness's (an admin's) and an operator's.
fn admin_and_operator(env: &TestEnv) -> ccm_core::Config {
    let mut config = env.config();
    config.ingest.auth_tokens = vec![
        Secret::new(ccm_tests::TEST_TOKEN).into(),
        entry(OPERATOR, Role::Operator),
    ];
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_reaches_exactly_the_routes_and_methods_it_may() {
    let env = TestEnv::start().await.expect("env");
    let mut config = env.config();
    config.ingest.auth_tokens = vec![
        entry(VIEWER, Role::Viewer),
        entry(OPERATOR, Role::Operator),
        entry(CARRIER, Role::Carrier),
    ];
    let api = Api::start_with(&env, config, false).await;
    let mut failures = Vec::new();
    let mut walked = 0;
    for row in table(false) {
        let Access::Token(rule) = row.access else {
            continue;
        };
        let url = format!("{}{}", api.base, concrete(&row.path));
        for method in methods() {
            for (token, role) in [
                (VIEWER, Role::Viewer),
                (OPERATOR, Role::Operator),
                (CARRIER, Role::Carrier),
            ] {
                let status = api
                    .http
                    .request(method.clone(), &url)
                    .header("X-Auth-Token", token)
                    .header("Content-Type", "application/json")
                    .body("{}")
                    .send()
                    .await
                    .expect("request")
                    .status()
                    .as_u16();
                let allowed = role.allows(rule.need(&method));
                // Refused by role: 403, before the handler. Allowed: whatever the handler (or
                // axum's 405 for a method the route lacks) says, but never 401 or 403.
                let ok = if allowed {
                    status != 401 && status != 403
                } else {
                    status == 403
                };
                if !ok {
                    failures.push(format!(
                        "{method} {} as {role:?}: {status} (allowed: {allowed})",
                        row.path
                    ));
                }
                walked += 1;
            }
        }
    }
    assert!(walked >= 30 * 6 * 3, "walked {walked}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_given_by_its_hash_works_and_an_expired_one_is_refused() {
    let env = TestEnv::start().await.expect("env");
    let mut config = env.config();
    let hex: String = Sha256::digest(HASHED.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    config.ingest.auth_tokens = vec![
        TokenConfig::Entry(TokenEntry {
            token: None,
            sha256: Some(hex),
            role: Role::Viewer,
            name: None,
            expires_at: None,
        }),
        TokenConfig::Entry(TokenEntry {
            token: Some(Secret::new(EXPIRED)),
            sha256: None,
            role: Role::Admin,
            name: None,
            expires_at: Some(chrono::Utc::now() - chrono::Duration::seconds(1)),
        }),
    ];
    let api = Api::start_with(&env, config, false).await;
    let get = |token: &'static str| {
        api.http
            .get(format!("{}/api/v1/campaigns", api.base))
            .header("X-Auth-Token", token)
            .send()
    };
    assert_eq!(get(HASHED).await.expect("request").status(), 200);
    let expired = get(EXPIRED).await.expect("request");
    assert_eq!(expired.status(), 401);
    let body: serde_json::Value = expired.json().await.expect("json");
    assert_eq!(body["error"]["message"], "Authentication token expired");
    api.stop().await;
}

/// Tokens made through the API (issue 24 item 3): an admin makes one, it works at once on this
/// replica and within the watch's latency on another, the bucket never holds it, and once
/// revoked it is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_made_through_the_api_works_everywhere_until_it_is_revoked() {
    use ccm_tests::{TEST_TOKEN, eventually};
    use std::time::Duration;

    let env = TestEnv::start().await.expect("env");
    let config = admin_and_operator(&env);
    let one = Api::start_with(&env, config.clone(), false).await;
    let two = Api::start_with(&env, config, false).await;
    let send = |api: &Api, method: reqwest::Method, path: &str, token: &str| {
        api.http
            .request(method, format!("{}{path}", api.base))
            .header("X-Auth-Token", token)
            .header("Content-Type", "application/json")
    };

    // Only an admin token manages tokens.
    let refused = send(&one, reqwest::Method::POST, "/api/v1/tokens", OPERATOR)
        .body(r#"{"name": "grafana", "role": "viewer"}"#)
        .send()
        .await
        .expect("request");
    assert_eq!(refused.status(), 403);

    let forged = send(&one, reqwest::Method::POST, "/api/v1/tokens", TEST_TOKEN)
        .body(r#"{"name": "x\nINFO forged line", "role": "viewer"}"#)
        .send()
        .await
        .expect("request");
    assert_eq!(forged.status(), 400, "a control character in the name");

    let created = send(&one, reqwest::Method::POST, "/api/v1/tokens", TEST_TOKEN)
        .body(r#"{"name": "grafana", "role": "viewer"}"#)
        .send()
        .await
        .expect("request");
    assert_eq!(created.status(), 201);
    let created: serde_json::Value = created.json().await.expect("json");
    let token = created["token"]
        .as_str()
        .expect("the token, once")
        .to_owned();
    let id = created["id"].as_str().expect("id").to_owned();

    let status = |api: &Api, method: reqwest::Method, path: &str| {
        let request = send(api, method, path, &token).body("{}");
        async move { request.send().await.expect("request").status().as_u16() }
    };
    assert_eq!(
        status(&one, reqwest::Method::GET, "/api/v1/campaigns").await,
        200
    );
    assert_eq!(
        status(&one, reqwest::Method::POST, "/api/v1/campaigns").await,
        403
    );
    assert_eq!(
        status(&one, reqwest::Method::GET, "/api/v1/tokens").await,
        403
    );
    let seen_by_two = eventually(Duration::from_secs(10), || async {
        (status(&two, reqwest::Method::GET, "/api/v1/campaigns").await == 200).then_some(())
    })
    .await;
    assert!(
        seen_by_two.is_some(),
        "the other replica honours the new token"
    );

    // The bucket holds the token's SHA-256, never the token.
    let js = env.jetstream().await.expect("js");
    let bucket = js
        .get_key_value(ccm_core::topology::names::KV_TOKENS)
        .await
        .expect("bucket");
    let stored = bucket.get(&id).await.expect("get").expect("stored");
    let stored = String::from_utf8_lossy(&stored);
    assert!(!stored.contains(&token), "the token itself is not stored");
    assert!(stored.contains("\"role\":\"viewer\""), "{stored}");

    let list: serde_json::Value = send(&one, reqwest::Method::GET, "/api/v1/tokens", TEST_TOKEN)
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    assert_eq!(list[0]["id"], id.as_str());
    assert!(list[0].get("token").is_none(), "never shown again: {list}");

    let revoked = send(
        &one,
        reqwest::Method::DELETE,
        &format!("/api/v1/tokens/{id}"),
        TEST_TOKEN,
    )
    .send()
    .await
    .expect("request");
    assert_eq!(revoked.status(), 204);
    assert_eq!(
        status(&one, reqwest::Method::GET, "/api/v1/campaigns").await,
        401,
        "refused at once by the replica that revoked it"
    );
    let refused_by_two = eventually(Duration::from_secs(10), || async {
        (status(&two, reqwest::Method::GET, "/api/v1/campaigns").await == 401).then_some(())
    })
    .await;
    assert!(refused_by_two.is_some(), "the other replica refuses it too");
    let again = send(
        &one,
        reqwest::Method::DELETE,
        &format!("/api/v1/tokens/{id}"),
        TEST_TOKEN,
    )
    .send()
    .await
    .expect("request");
    assert_eq!(again.status(), 404);
    one.stop().await;
    two.stop().await;
}

/// The audit log (issue 24 item 3): a change is recorded with who (the token's fingerprint and
/// role), what (method, route, path, status), when and from where; a read is not; only an admin
/// reads the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_are_recorded_in_the_audit_log_and_reads_are_not() {
    use ccm_tests::{TEST_TOKEN, eventually};
    use std::time::Duration;

    let env = TestEnv::start().await.expect("env");
    let config = admin_and_operator(&env);
    let api = Api::start_with(&env, config, false).await;
    let send = |method: reqwest::Method, path: &str, token: &str| {
        api.http
            .request(method, format!("{}{path}", api.base))
            .header("X-Auth-Token", token)
            .header("X-Forwarded-For", "203.0.113.7, 10.0.0.1")
            .header("Content-Type", "application/json")
    };
    let created = send(reqwest::Method::POST, "/api/v1/campaigns", OPERATOR)
        .body(r#"{"name": "audited"}"#)
        .send()
        .await
        .expect("request");
    assert_eq!(created.status(), 201);
    let id = created.json::<serde_json::Value>().await.expect("json")["id"].clone();
    let read = send(reqwest::Method::GET, "/api/v1/campaigns", OPERATOR)
        .send()
        .await
        .expect("request");
    assert_eq!(read.status(), 200);
    let paused = send(
        reqwest::Method::POST,
        &format!("/api/v1/campaigns/{id}/pause"),
        OPERATOR,
    )
    .send()
    .await
    .expect("request");
    let paused = paused.status().as_u16();

    let denied = send(reqwest::Method::GET, "/api/v1/audit", OPERATOR)
        .send()
        .await
        .expect("request");
    assert_eq!(denied.status(), 403, "only an admin reads the audit log");

    let records = eventually(Duration::from_secs(10), || async {
        let records: Vec<serde_json::Value> =
            send(reqwest::Method::GET, "/api/v1/audit", TEST_TOKEN)
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
        (records.len() >= 2).then_some(records)
    })
    .await
    .expect("two records");
    assert_eq!(records.len(), 2, "the reads are not recorded: {records:?}");
    assert_eq!(records[0]["method"], "POST");
    assert_eq!(records[0]["route"], "/api/v1/campaigns");
    assert_eq!(records[0]["status"], 201);
    assert_eq!(records[0]["role"], "operator");
    assert_eq!(records[0]["from"], "203.0.113.7");
    assert_eq!(records[1]["route"], "/api/v1/campaigns/{id}/pause");
    assert_eq!(records[1]["path"], format!("/api/v1/campaigns/{id}/pause"));
    assert_eq!(records[1]["status"], paused);
    assert_eq!(records[0]["token"], records[1]["token"], "the same token");
    assert!(
        !records[0]["token"]
            .as_str()
            .unwrap_or_default()
            .contains("operator"),
        "a fingerprint, not the token"
    );
    let after = records[0]["seq"].as_u64().expect("seq");
    let rest: Vec<serde_json::Value> = send(
        reqwest::Method::GET,
        &format!("/api/v1/audit?after={after}"),
        TEST_TOKEN,
    )
    .send()
    .await
    .expect("request")
    .json()
    .await
    .expect("json");
    assert_eq!(rest.len(), 1, "paged by sequence");
    api.stop().await;
}
