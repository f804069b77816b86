//! The in-memory copy of the `webhooks` bucket keeps following it whatever happens to its watch:
//! a frozen copy would go on sending to endpoints that were disabled or deleted since, and
//! never send to new ones.

use std::time::Duration;

use ccm_core::{topology::names, webhooks::Subscription};
use ccm_tests::{TestEnv, eventually};
use ccm_webhooks::subscriptions::Subscriptions;
use tokio_util::sync::CancellationToken;

fn subscription(id: &str) -> Subscription {
    serde_json::from_value(serde_json::json!({
        "id": id,
        "url": "http://127.0.0.1:9/hook",
        "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "events": ["call.completed"],
        "enabled": true,
        "created_at": "2026-12-05T00:00:00Z",
    }))
    .expect("subscription")
}

/// Puts the subscription, waiting for the client to reconnect if the server was restarted.
async fn put(store: &async_nats::jetstream::kv::Store, id: &str) {
    let value = serde_json::to_vec(&subscription(id)).expect("json");
    eventually(Duration::from_secs(20), || async {
        store.put(id, value.clone().into()).await.ok()
    })
    .await
    .expect("put");
}

async fn seen(subs: &Subscriptions, id: &str) -> bool {
    eventually(Duration::from_secs(20), || async {
        subs.get(id).is_some().then_some(())
    })
    .await
    .is_some()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_subscription_mirror_follows_the_bucket_across_a_nats_restart() {
    let mut env = TestEnv::start().await.expect("env");
    env.provision().await.expect("provision");
    let js = env.jetstream().await.expect("js");
    let store = js.get_key_value(names::KV_WEBHOOKS).await.expect("bucket");
    let shutdown = CancellationToken::new();
    let subs = Subscriptions::follow(js.clone(), shutdown.child_token())
        .await
        .expect("follow");
    put(&store, "before").await;
    assert!(
        seen(&subs, "before").await,
        "a subscription made while following"
    );

    let nats = env.local_nats.as_mut().expect("local nats");
    tokio::task::block_in_place(|| {
        nats.stop();
        nats.restart()
    })
    .expect("restart");
    put(&store, "after-restart").await;
    assert!(
        seen(&subs, "after-restart").await,
        "a subscription made after nats-server restarted reaches the mirror"
    );
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_subscription_mirror_follows_a_bucket_provisioned_again() {
    let env = TestEnv::start().await.expect("env");
    env.provision().await.expect("provision");
    let js = env.jetstream().await.expect("js");
    let store = js.get_key_value(names::KV_WEBHOOKS).await.expect("bucket");
    let shutdown = CancellationToken::new();
    let subs = Subscriptions::follow(js.clone(), shutdown.child_token())
        .await
        .expect("follow");
    put(&store, "first").await;
    assert!(seen(&subs, "first").await);

    // An operator deletes the bucket and provisions again (a restore, a botched upgrade): the
    // watch's consumer is gone with its stream.
    js.delete_stream(format!("KV_{}", names::KV_WEBHOOKS))
        .await
        .expect("delete");
    env.provision().await.expect("provision again");
    let store = js.get_key_value(names::KV_WEBHOOKS).await.expect("bucket");
    put(&store, "second").await;
    assert!(
        seen(&subs, "second").await,
        "a subscription written to the new bucket reaches the mirror"
    );
    assert!(
        subs.get("first").is_none(),
        "a subscription the new bucket does not hold is gone from the mirror"
    );
    shutdown.cancel();
}
