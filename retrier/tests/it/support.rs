//! What the retrier tests share: a running retrier and call fixtures.

use std::{io::Write, path::PathBuf, time::Duration};

use async_nats::jetstream;
use ccm_core::{CallEvent, CallId, CampaignId, DialRequest, PhoneNumber, PhoneRule};
use ccm_tests::TestEnv;
use chrono::Utc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A retrier running in this process.
pub struct Retrier {
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), ccm_retrier::RetrierError>>,
    _policy: tempfile::NamedTempFile,
}

impl Retrier {
    /// Starts a retrier with `policy` as its policy file.
    pub fn start(env: &TestEnv, policy: &str) -> Retrier {
        Self::start_with(env, policy, env.config())
    }

    /// As [`Retrier::start`], with `config` (its policy file is replaced).
    pub fn start_with(env: &TestEnv, policy: &str, mut config: ccm_core::Config) -> Retrier {
        let _ = env;
        let file = policy_file(policy);
        config.retrier.policy_file = file.path().to_owned();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(ccm_retrier::run(config, shutdown.clone()));
        Retrier {
            shutdown,
            task,
            _policy: file,
        }
    }

    /// Cancels it and waits at most `limit`; whether it ended in time.
    pub async fn stop_within(self, limit: Duration) -> bool {
        self.shutdown.cancel();
        tokio::time::timeout(limit, self.task).await.is_ok()
    }

    /// Stops it and checks it ended cleanly.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("retrier stops in time")
            .expect("retrier task")
            .expect("retrier ran without error");
    }
}

pub fn policy_file(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(text.as_bytes()).expect("write policy");
    file
}

/// The shipped policy file.
pub fn shipped_policy() -> PathBuf {
    concat!(env!("CARGO_MANIFEST_DIR"), "/../config/retry.yaml").into()
}

/// A dial request of a fresh call.
pub fn request(campaign: u64, number: &str, attempt: u32) -> DialRequest {
    let now = Utc::now();
    DialRequest {
        call_id: CallId::new(),
        campaign_id: CampaignId::new(campaign).expect("campaign id"),
        phone_number: PhoneNumber::parse(number, PhoneRule::Lenient).expect("phone"),
        attempt,
        max_attempts: 3,
        created_at: now,
        queued_at: now,
        custom_fields: Default::default(),
        expires_at: None,
        alternate: None,
        callback: None,
    }
}

/// Every event of a call's lifecycle subject, oldest first.
pub async fn events(js: &jetstream::Context, request: &DialRequest) -> Vec<CallEvent> {
    let stream = js.get_stream("CALL_EVENTS").await.expect("CALL_EVENTS");
    let subject = ccm_core::subjects::event(request.campaign_id, request.call_id);
    let mut found = Vec::new();
    let mut from = None;
    while let Ok(message) = stream
        .direct_get_next_for_subject(subject.clone(), from)
        .await
    {
        from = Some(message.sequence + 1);
        found.push(serde_json::from_slice(&message.payload).expect("event"));
    }
    found
}

/// How many messages `stream` holds.
pub async fn messages(js: &jetstream::Context, stream: &str) -> u64 {
    js.get_stream(stream)
        .await
        .expect("stream")
        .cached_info()
        .state
        .messages
}

/// The `RETRIES` entry stored at `seq`.
pub async fn retry_entry(js: &jetstream::Context, seq: u64) -> ccm_core::RetryEntry {
    let message = js
        .get_stream("RETRIES")
        .await
        .expect("RETRIES")
        .get_raw_message(seq)
        .await
        .expect("entry");
    serde_json::from_slice(&message.payload).expect("entry")
}
