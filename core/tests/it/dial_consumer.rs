//! Two writers of a dial consumer racing: a document applied after a newer one was.

use ccm_core::{
    config::StreamSettings,
    dial_consumer::DialConsumers,
    topology::{Topology, names},
};
use ccm_tests::TestEnv;

use crate::provisioning::campaign;

/// Ingest (after a PATCH) and every dialer replica (on each change and each rescan) read
/// the campaign's document and then write its consumer; a slow one can write what it read
/// after a faster one wrote a newer revision. The older cap must not come back: a higher
/// `max_ack_pending`, even for a round trip, lets the server hand out calls that then stay
/// live over the campaign's cap for their whole length.
#[tokio::test]
async fn an_older_revision_applied_after_a_newer_one_never_restores_its_cap_or_pause() {
    let env = TestEnv::start().await.expect("env");
    let js = env.jetstream().await.expect("js");
    let topology = Topology::load(&StreamSettings::default()).expect("topology");
    topology.provision(&js).await.expect("provision");
    let consumers = DialConsumers::new(&js, &topology).await;
    let stream = js.get_stream(names::CALLS).await.expect("CALLS");

    let old = campaign(6, 8);
    consumers.ensure_revision(&old, 3).await.expect("rev 3");
    let mut new = old.clone();
    new.max_concurrent_calls = 5;
    consumers.ensure_revision(&new, 4).await.expect("rev 4");
    let stale = consumers
        .ensure_revision(&old, 3)
        .await
        .expect("rev 3 late");
    let info = stream.consumer_info("dial_6").await.expect("consumer");
    assert_eq!(
        info.config.max_ack_pending, 5,
        "revision 3 (cap 8) applied after revision 4 (cap 5) restored the older cap: {stale:?}"
    );
    assert!(stale.plan.is_empty(), "{stale:?}");

    // A pause is a revision too: an older running document must not resume it.
    let mut paused = new.clone();
    paused.state = ccm_core::CampaignState::Paused;
    consumers.ensure_revision(&paused, 5).await.expect("rev 5");
    consumers
        .ensure_revision(&new, 4)
        .await
        .expect("rev 4 late");
    let info = stream.consumer_info("dial_6").await.expect("consumer");
    assert!(
        info.paused,
        "revision 4 (running) applied after 5 (paused) resumed it"
    );

    // Newer revisions still apply, and a creation's document (no revision yet) too.
    let mut resumed = new.clone();
    resumed.max_concurrent_calls = 2;
    consumers.ensure_revision(&resumed, 6).await.expect("rev 6");
    let info = stream.consumer_info("dial_6").await.expect("consumer");
    assert_eq!(info.config.max_ack_pending, 2);
    assert!(!info.paused);
    let fresh = campaign(7, 3);
    consumers.ensure(&fresh).await.expect("create");
    consumers.ensure_revision(&fresh, 1).await.expect("rev 1");
    let info = stream.consumer_info("dial_7").await.expect("consumer");
    assert_eq!(info.config.max_ack_pending, 3);
}

/// One dial consumer per campaign lives on `CALLS`, so the stream must hold more consumers
/// than a large operator runs campaigns. nats-server 2.15 gives every stream a default limit
/// of 1,000 consumers and substitutes it for `-1`: `CALLS` provisioned with `-1` refused the
/// 1,000th campaign (`maximum consumers limit reached`, found by the benchmark's idle phase).
#[tokio::test]
async fn calls_holds_more_dial_consumers_than_the_servers_default_limit() {
    let env = TestEnv::start().await.expect("env");
    let js = env.jetstream().await.expect("js");
    let topology = Topology::load(&StreamSettings::default()).expect("topology");
    topology.provision(&js).await.expect("provision");
    let consumers = DialConsumers::new(&js, &topology).await;
    for id in 1..=1_050 {
        consumers
            .ensure(&campaign(id, 1))
            .await
            .unwrap_or_else(|e| panic!("campaign {id}'s dial consumer: {e:?}"));
    }
    let mut stream = js.get_stream(names::CALLS).await.expect("CALLS");
    let info = stream.info().await.expect("info");
    assert!(info.state.consumer_count >= 1_050, "{:?}", info.state);
}
