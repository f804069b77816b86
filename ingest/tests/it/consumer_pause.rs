//! A held campaign's dial consumer is paused on the server, so no puller gets its calls,
//! whatever that puller believes about the campaign: here the "dialer" is a bare pull on
//! `dial_<campaign>`, the view of a replica whose cache still says "running".

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::PullConsumer};
use ccm_core::{CampaignId, topology::names};
use ccm_tests::TestEnv;
use chrono::Utc;
use futures::StreamExt;
use serde_json::json;

use crate::api::Api;

async fn consumer(js: &jetstream::Context, id: u64) -> PullConsumer {
    js.get_consumer_from_stream(
        ccm_core::subjects::dial_consumer(CampaignId::new(id).expect("id")),
        names::CALLS,
    )
    .await
    .expect("dial consumer")
}

/// Messages a pull of up to `wanted` gets within `wait` (acked, so a later pull does not see
/// them again only because they are pending).
async fn pull(consumer: &PullConsumer, wanted: usize, wait: Duration) -> usize {
    let deadline = Instant::now() + wait;
    let mut got = 0;
    while got < wanted {
        let left = deadline.saturating_duration_since(Instant::now());
        if left < Duration::from_millis(100) {
            break;
        }
        let mut batch = consumer
            .batch()
            .max_messages(wanted - got)
            .expires(left)
            .messages()
            .await
            .expect("pull");
        while let Some(message) = batch.next().await {
            let message = message.expect("message");
            message.ack().await.expect("ack");
            got += 1;
        }
    }
    got
}

async fn queue_calls(api: &Api, id: u64, first: u32, n: u32) {
    for k in first..first + n {
        let (status, body) = api
            .post(
                "/api/v1/calls",
                json!({"campaign_id": id, "phone_number": format!("+1555000{:04}", k)}),
            )
            .await;
        assert_eq!(status, 202, "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_campaigns_calls_reach_no_puller_until_it_resumes() {
    let env = TestEnv::start().await.expect("env");
    let api = Api::start(&env).await;
    let js = env.jetstream().await.expect("js");
    let id = api.campaign_with(json!({"name": "paused"})).await;
    let (status, body) = api
        .post(&format!("/api/v1/campaigns/{id}/pause"), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    queue_calls(&api, id, 1, 3).await;

    let dial = consumer(&js, id).await;
    let got = pull(&dial, 3, Duration::from_secs(2)).await;
    assert_eq!(got, 0, "a puller got {got} calls of a paused campaign");

    let (status, body) = api
        .post(&format!("/api/v1/campaigns/{id}/resume"), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    let got = pull(&dial, 3, Duration::from_secs(10)).await;
    assert_eq!(got, 3, "every queued call is delivered after the resume");
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_starting_in_seconds_delivers_nothing_before_and_everything_after() {
    let env = TestEnv::start().await.expect("env");
    let api = Api::start(&env).await;
    let js = env.jetstream().await.expect("js");
    let starts_at = Utc::now() + chrono::Duration::seconds(3);
    let id = api
        .campaign_with(json!({"name": "later", "starts_at": starts_at}))
        .await;
    queue_calls(&api, id, 10, 4).await;

    let dial = consumer(&js, id).await;
    let before = (starts_at - Utc::now() - chrono::Duration::milliseconds(300))
        .to_std()
        .expect("still before the start");
    let got = pull(&dial, 4, before).await;
    assert_eq!(got, 0, "{got} calls delivered before starts_at");

    // Nobody touches the campaign: the server ends the pause by itself.
    let got = pull(&dial, 4, Duration::from_secs(10)).await;
    assert_eq!(got, 4, "every call is delivered once the campaign starts");
    assert!(Utc::now() >= starts_at);
    api.stop().await;
}
