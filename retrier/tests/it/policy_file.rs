//! The policy file: the shipped one loads, a bad one stops the retrier at start.

use std::path::Path;

use ccm_core::{RetryPolicy, policy::PolicyError};
use ccm_tests::TestEnv;
use tokio_util::sync::CancellationToken;

use crate::support::{policy_file, shipped_policy};

#[test]
fn the_old_systems_file_loads_unchanged() {
    let old = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../core/src/policy/testdata/old_retry_config.yaml"
    ));
    let policy = RetryPolicy::load(old).expect("the old file loads");
    assert_eq!(policy.global_rules.len(), 2);
    assert_eq!(
        RetryPolicy::load(&shipped_policy()).expect("shipped file loads"),
        policy
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_policy_file_stops_the_retrier_naming_file_and_line() {
    let env = TestEnv::start().await.expect("test environment");
    let file = policy_file("timezone: UTC\nstatus_retry_rules:\n  RNR: {should_retry: maybe}\n");
    let mut config = env.config();
    config.retrier.policy_file = file.path().to_owned();
    let err = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        ccm_retrier::run(config, CancellationToken::new()),
    )
    .await
    .expect("fails at once")
    .expect_err("a bad policy is refused");
    let ccm_retrier::RetrierError::Policy(PolicyError::Invalid {
        path,
        line,
        message,
        ..
    }) = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!(path, file.path());
    assert_eq!(*line, 3, "{message}");
    assert!(
        err.to_string().contains(&file.path().display().to_string()),
        "{err}"
    );
}
