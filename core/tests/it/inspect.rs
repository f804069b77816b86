//! `ccm_core::inspect`: the operator's overview read from a real server.

use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use ccm_core::{
    CallId, CampaignId, DialRequest, PhoneNumber, PhoneRule,
    dial_consumer::DialConsumers,
    inspect::{self, StreamSummary},
    topology::{Topology, names},
};
use ccm_tests::TestEnv;
use futures::StreamExt;

fn stream<'a>(overview: &'a inspect::Overview, name: &str) -> &'a StreamSummary {
    overview
        .streams
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("{name} listed"))
}

#[tokio::test]
async fn overview_shows_messages_consumers_and_buckets() {
    let env = TestEnv::start().await.expect("env");
    env.provision().await.expect("provision");
    let js = env.jetstream().await.expect("js");
    let campaign = CampaignId::new(5).expect("id");
    let topology = Topology::load(&env.config().streams).expect("topology");
    DialConsumers::new(&js, &topology)
        .await
        .ensure(&crate::provisioning::campaign(5, 2))
        .await
        .expect("dial consumer");
    for n in 0..3u32 {
        let request = DialRequest {
            call_id: CallId::new(),
            campaign_id: campaign,
            phone_number: PhoneNumber::parse(&format!("+1555000000{n}"), PhoneRule::default())
                .expect("phone"),
            attempt: 1,
            max_attempts: 3,
            created_at: chrono::Utc::now(),
            queued_at: chrono::Utc::now(),
            custom_fields: Default::default(),
            expires_at: None,
            alternate: None,
            callback: None,
        };
        ccm_core::nats::publish_dial(&js, &request)
            .await
            .expect("published");
    }
    // One message taken and left un-acknowledged: a live call.
    let consumer: PullConsumer = js
        .get_consumer_from_stream("dial_5", names::CALLS)
        .await
        .expect("consumer");
    let mut batch = consumer
        .fetch()
        .max_messages(1)
        .expires(Duration::from_secs(2))
        .messages()
        .await
        .expect("fetch");
    let taken = batch.next().await.expect("a message").expect("ok");
    let campaigns = js.get_key_value(names::KV_CAMPAIGNS).await.expect("kv");
    campaigns.put("5", "{}".into()).await.expect("put");
    campaigns.put("5", "{}".into()).await.expect("put again");

    let overview = inspect::overview(&js).await.expect("overview");
    let calls = stream(&overview, names::CALLS);
    assert_eq!(calls.messages, 3);
    assert_eq!(calls.distinct_subjects, 1);
    assert!(calls.bytes > 0);
    assert_eq!(calls.subjects, vec!["calls.dial.>".to_owned()]);
    let dial = calls
        .consumers
        .iter()
        .find(|c| c.name == "dial_5")
        .expect("dial_5 listed");
    assert_eq!((dial.pending, dial.ack_pending), (2, 1), "{dial:?}");
    assert_eq!(dial.max_ack_pending, 2);
    assert_eq!(stream(&overview, names::DLQ).messages, 0);
    assert!(
        overview.streams.iter().all(|s| !s.name.starts_with("KV_")),
        "buckets are listed as buckets"
    );
    let bucket = overview
        .buckets
        .iter()
        .find(|b| b.bucket == names::KV_CAMPAIGNS)
        .expect("campaigns bucket");
    assert_eq!((bucket.keys, bucket.values), (1, 2), "{bucket:?}");

    let text = overview.to_string();
    assert!(text.contains("dial_5"), "{text}");
    assert!(text.contains("campaigns"), "{text}");
    drop(taken);
}
