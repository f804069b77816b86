//! `campaign.completed` is decided by `ccm_core::call_lifecycle::campaign_finished`, the
//! decision ingest completes campaigns with: a call anywhere in the pipeline holds it back.

use std::{sync::Arc, time::Duration};

use async_nats::jetstream::consumer::{self, pull};
use ccm_core::{
    CallId, CampaignId, DialRequest, RetryEntry, nats::publish_dial, subjects,
    topology::names::CALLS, webhooks::Subscription,
};
use ccm_tests::TestEnv;
use ccm_webhooks::campaigns::{CAMPAIGN_COMPLETED, Candidates};
use chrono::Utc;
use futures::StreamExt;
use sqlx::PgPool;

fn subscription() -> Arc<Subscription> {
    Arc::new(Subscription {
        id: "completion".into(),
        url: "http://127.0.0.1:9/hook".into(),
        secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
        events: vec![CAMPAIGN_COMPLETED.into()],
        campaign_ids: Vec::new(),
        enabled: true,
        description: None,
        created_at: Utc::now(),
        previous_secret: None,
        previous_secret_until: None,
        disabled_reason: None,
        disabled_at: None,
    })
}

fn request(campaign: CampaignId) -> DialRequest {
    DialRequest {
        call_id: CallId::new(),
        campaign_id: campaign,
        phone_number: "+15550001234".parse().expect("phone"),
        attempt: 1,
        max_attempts: 3,
        created_at: Utc::now(),
        queued_at: Utc::now(),
        custom_fields: Default::default(),
        expires_at: None,
        alternate: None,
        callback: None,
    }
}

/// The read model's row of a call that ended `COMPLETED`.
async fn ended(pg: &PgPool, request: &DialRequest) {
    sqlx::query(
        "INSERT INTO calls (call_id, campaign_id, status, attempt_count, phase_rank, updated_at)
         VALUES ($1, $2, 'COMPLETED', 1, 5, now())",
    )
    .bind(request.call_id.as_uuid())
    .bind(request.campaign_id.as_i64())
    .execute(pg)
    .await
    .expect("ended call");
}

/// Takes and acks every message `durable` has on `CALLS`: what a dialer (or the projector)
/// does with the messages it has handled.
async fn ack_all(js: &async_nats::jetstream::Context, durable: &str) {
    let consumer: consumer::PullConsumer = js
        .get_consumer_from_stream(durable, CALLS)
        .await
        .expect("consumer");
    let mut batch = consumer
        .fetch()
        .max_messages(100)
        .expires(Duration::from_millis(500))
        .messages()
        .await
        .expect("fetch");
    while let Some(message) = batch.next().await {
        message.expect("message").double_ack().await.expect("ack");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_put_off_before_the_read_model_saw_it_holds_campaign_completed_back() {
    let env = TestEnv::start().await.expect("env");
    env.provision().await.expect("topology");
    let js = env.jetstream().await.expect("js");
    let pg = env.pg().await.expect("pg");
    ccm_core::schema::migrate_all(&pg)
        .await
        .expect("migrations");
    let campaign = CampaignId::new(7).expect("campaign");
    js.get_stream(CALLS)
        .await
        .expect("CALLS")
        .create_consumer(pull::Config {
            durable_name: Some(subjects::dial_consumer(campaign)),
            filter_subject: subjects::dial(campaign),
            ..Default::default()
        })
        .await
        .expect("dial consumer");

    // One call ended and the read model shows it.
    let first = request(campaign);
    publish_dial(&js, &first).await.expect("first call");
    ack_all(&js, &subjects::dial_consumer(campaign)).await;
    ack_all(&js, "projector_calls").await;
    ended(&pg, &first).await;
    // A second call: a dialer took it and put it off to its calling window (an entry in
    // RETRIES, its dial message acked) before the projector read its dial message.
    let second = request(campaign);
    publish_dial(&js, &second).await.expect("second call");
    ack_all(&js, &subjects::dial_consumer(campaign)).await;
    let put_off = RetryEntry {
        due_at: Utc::now() + chrono::Duration::hours(8),
        request: second.clone(),
        window_deferral: Some(1),
    };
    ccm_core::retries::schedule(&js, &put_off)
        .await
        .expect("put off");

    let subscriptions = [subscription()];
    let mut candidates = Candidates::default();
    candidates.add(campaign, first.call_id.as_uuid());
    let queued = candidates.check(&pg, &js, &subscriptions).await;
    assert!(
        queued.is_empty(),
        "campaign.completed with a call still waiting: {:?}",
        queued.iter().map(|m| &m.msg_id).collect::<Vec<_>>()
    );

    // The second call ends: the campaign completes, once.
    js.get_stream("RETRIES")
        .await
        .expect("RETRIES")
        .purge()
        .await
        .expect("purge");
    ack_all(&js, "projector_calls").await;
    ended(&pg, &second).await;
    candidates.add(campaign, second.call_id.as_uuid());
    let queued = candidates.check(&pg, &js, &subscriptions).await;
    assert_eq!(queued.len(), 1, "{queued:?}");
    assert_eq!(queued[0].msg_id, format!("campaign/{campaign}/completed/2"));
}
