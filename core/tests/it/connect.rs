//! `ccm_core::nats::connect` with the forms `CCM_NATS_URL` takes.

use ccm_tests::TestEnv;

/// A cluster's servers, comma-separated, as the configuration documents them: the client
/// connects to one of them and fails over to the others.
#[tokio::test]
async fn a_comma_separated_server_list_connects() {
    let env = TestEnv::start().await.expect("env");
    let url = &env.nats_url;
    // Every entry reaches the same test server: what is tested is that the list parses.
    let list = format!("{url}, {url},{url}");
    let client = ccm_core::nats::connect(&list, "test")
        .await
        .unwrap_or_else(|e| panic!("{list}: {e:?}"));
    client.flush().await.expect("a round trip");
}
