//! Campaigns created at once through ingest on a 3-node cluster with R3 buckets all get an
//! id: the id counter's lost compare-and-sets (which a replicated stream may answer with
//! code 10164, not 10071) read the counter again instead of answering 503.

use std::{collections::BTreeSet, time::Duration};

use ccm_core::topology::Topology;
use ccm_tests::{TestEnv, cluster::NatsCluster};
use serde_json::json;

use crate::api::Api;

const CAMPAIGNS: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn campaigns_created_at_once_on_a_replicated_cluster_all_get_an_id() {
    let env = TestEnv::start().await.expect("env");
    let cluster = tokio::task::spawn_blocking(NatsCluster::start)
        .await
        .expect("join")
        .expect("cluster");
    cluster.ready(Duration::from_secs(30)).await.expect("ready");
    let mut config = env.config();
    config.nats_url = ccm_core::config::SecretUrl::new(cluster.urls());
    config.streams.replicas = 3;
    let js = ccm_core::nats::jetstream(
        ccm_core::nats::connect(&cluster.urls(), "test")
            .await
            .expect("connect"),
    );
    Topology::load(&config.streams)
        .expect("topology")
        .provision(&js)
        .await
        .expect("provision");
    let api = Api::start_provisioned(config, false).await;

    let answers = futures::future::join_all((0..CAMPAIGNS).map(|i| {
        let api = &api;
        async move {
            api.post("/api/v1/campaigns/", json!({"name": format!("c{i}")}))
                .await
        }
    }))
    .await;
    let failed: Vec<_> = answers
        .iter()
        .filter(|(status, _)| *status != 201)
        .collect();
    println!(
        "{} of {CAMPAIGNS} created; failures: {:?}",
        CAMPAIGNS - failed.len(),
        failed.iter().take(3).collect::<Vec<_>>()
    );
    assert!(failed.is_empty(), "{} of {CAMPAIGNS} failed", failed.len());
    let ids: BTreeSet<u64> = answers
        .iter()
        .filter_map(|(_, body)| body["id"].as_u64())
        .collect();
    assert_eq!(ids.len(), CAMPAIGNS, "every campaign has its own id");
    api.stop().await;
}
