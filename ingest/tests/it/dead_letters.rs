//! The dead-letter list's filters: a `stream` that is not a stream name is bad input (400),
//! never an error of the broker (503).

use ccm_tests::TestEnv;
use serde_json::json;

use crate::api::Api;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_filter_that_is_not_a_stream_name_is_refused() {
    let env = TestEnv::start().await.expect("env");
    let api = Api::start(&env).await;
    // A tab, a control character and non-ASCII text once reached nats-server inside the
    // subject filter, which refused it: the API answered 503 (found by schemathesis).
    for stream in [
        "a%09b", "CALLS%0C", "%C3%A7a", "a.b", "a*", "%3E", "a%20b", "a%2Fb", "",
    ] {
        let (status, body) = api
            .get(&format!("/api/v1/dead-letters?stream={stream}"))
            .await;
        assert_eq!(
            (status, &body["code"]),
            (400, &json!("invalid_stream")),
            "stream={stream}: {body}"
        );
    }
    for stream in ["CALLS", "KV_campaigns", "a-b"] {
        let (status, body) = api
            .get(&format!("/api/v1/dead-letters?stream={stream}"))
            .await;
        assert_eq!((status, &body), (200, &json!([])), "stream={stream}");
    }
}
