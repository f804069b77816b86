//! `GET /api/v1/openapi.json` and the docs page.

use ccm_tests::TestEnv;
use serde_json::Value;

use crate::api::Api;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_describes_every_route_and_needs_no_token() {
    let env = TestEnv::start().await.expect("env");
    let api = Api::start(&env).await;
    let response = api
        .http
        .get(format!("{}/api/v1/openapi.json", api.base))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    let doc: Value = response.json().await.expect("json");
    assert!(
        doc["openapi"]
            .as_str()
            .unwrap_or_default()
            .starts_with("3."),
        "{}",
        doc["openapi"]
    );
    let expected = [
        ("/api/v1/initiate-call/", "post"),
        ("/api/v1/bulk-initiate-calls/", "post"),
        ("/api/v1/callback/", "put"),
        ("/api/v1/campaigns/", "get"),
        ("/api/v1/campaigns/", "post"),
        ("/api/v1/campaigns/{id}/", "get"),
        ("/api/v1/phone-numbers/", "post"),
        ("/api/v1/metrics/", "get"),
        ("/api/v1/calls", "post"),
        ("/api/v1/calls", "get"),
        ("/api/v1/calls/bulk", "post"),
        ("/api/v1/calls/{id}", "get"),
        ("/api/v1/campaigns", "post"),
        ("/api/v1/campaigns", "get"),
        ("/api/v1/campaigns/{id}", "get"),
        ("/api/v1/campaigns/{id}", "patch"),
        ("/api/v1/campaigns/{id}/pause", "post"),
        ("/api/v1/campaigns/{id}/resume", "post"),
        ("/api/v1/campaigns/{id}/cancel", "post"),
        ("/api/v1/campaigns/{id}/stats", "get"),
        ("/api/v1/campaigns/{id}/start", "post"),
        ("/api/v1/campaigns/{id}/contacts", "post"),
        ("/api/v1/dnc", "post"),
        ("/api/v1/dnc/{phone}", "get"),
        ("/api/v1/dnc/{phone}", "delete"),
        ("/api/v1/webhooks", "post"),
        ("/api/v1/webhooks", "get"),
        ("/api/v1/webhooks/{id}", "get"),
        ("/api/v1/webhooks/{id}", "patch"),
        ("/api/v1/webhooks/{id}", "delete"),
        ("/api/v1/webhooks/{id}/rotate-secret", "post"),
        ("/api/v1/webhooks/{id}/deliveries", "get"),
        (
            "/api/v1/webhooks/{id}/deliveries/{msg_id}/redeliver",
            "post",
        ),
        ("/api/v1/webhooks/{id}/replay", "post"),
    ];
    for (path, method) in expected {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} is documented"
        );
    }
    let problem = &doc["components"]["schemas"]["Problem"]["properties"];
    assert!(problem["code"].is_object(), "the problem schema has a code");
    assert!(doc["components"]["securitySchemes"]["token"].is_object());

    let page = api
        .http
        .get(format!("{}/api/v1/docs", api.base))
        .send()
        .await
        .expect("request");
    assert_eq!(page.status(), 200);
    let html = page.text().await.expect("text");
    assert!(
        html.contains("openapi.json"),
        "the page renders the document"
    );
    api.stop().await;
}
