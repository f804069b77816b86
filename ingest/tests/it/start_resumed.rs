//! `start?call_contacts=true` cut half-way (the request's work dropped, as a killed ingest
//! would leave it) and retried: the retry finishes the job, each contact called exactly once,
//! and reports every contact as accepted (none as a "duplicate" of its own earlier attempt).
//! A start repeated once the campaign runs calls nobody again.
//!
//! Generated: the seed (printed; `CCM_SEED=<n>` replays it) picks how many calls the first
//! attempt got stored before it died.

use std::{collections::BTreeSet, time::Duration};

use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use ccm_core::{Campaign, DialRequest, topology::names};
use ccm_tests::TestEnv;
use futures::StreamExt;
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::json;

use crate::api::{Api, stream_messages};

const CONTACTS: u64 = 300;

async fn dial_requests(env: &TestEnv, campaign: u64) -> Vec<DialRequest> {
    let js = env.jetstream().await.expect("js");
    let stream = js.get_stream(names::CALLS).await.expect("CALLS");
    let consumer = stream
        .create_consumer(pull::Config {
            filter_subject: format!("calls.dial.{campaign}"),
            deliver_policy: DeliverPolicy::All,
            ack_policy: async_nats::jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .expect("reader");
    let pending = consumer.cached_info().num_pending;
    let mut messages = consumer
        .fetch()
        .max_messages(usize::try_from(pending).expect("count").max(1))
        .expires(Duration::from_secs(2))
        .messages()
        .await
        .expect("fetch");
    let mut requests = Vec::new();
    while let Some(message) = messages.next().await {
        let message = message.expect("message");
        requests.push(serde_json::from_slice(&message.payload).expect("dial request"));
    }
    requests
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_over_contacts_cut_half_way_finishes_on_retry_calling_each_contact_once() {
    let seed = std::env::var("CCM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    println!("seed {seed} (replay with CCM_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let cut_after = rng.random_range(1..CONTACTS * 3 / 4);

    let env = TestEnv::start().await.expect("env");
    let (api, state) = Api::with_state(&env).await;
    let (status, draft) = api
        .post("/api/v1/campaigns", json!({"name": "cut", "draft": true}))
        .await;
    assert_eq!(status, 201, "{draft}");
    let id = draft["id"].as_u64().expect("id");
    let import = |from: u64, to: u64| {
        let mut csv = String::from("phone_number\n");
        for n in from..to {
            csv.push_str(&format!("+1555007{n:04}\n"));
        }
        let api = &api;
        async move {
            let path = format!("/api/v1/campaigns/{id}/contacts/import");
            let (status, body) = api.raw(reqwest::Method::POST, &path, "text/csv", csv).await;
            assert_eq!(status, 200, "{body}");
        }
    };

    // What a first start killed half-way leaves: the calls of the contacts it got to are
    // accepted and held in the draft. (Simulated by calling only those contacts: the list is
    // complete before the retry.)
    import(0, cut_after).await;
    let campaign: Campaign = serde_json::from_slice(
        &state
            .campaigns
            .get(id.to_string())
            .await
            .expect("kv")
            .expect("campaign"),
    )
    .expect("document");
    ccm_ingest::routes::contact_calls::call_all(&state, &campaign, None)
        .await
        .expect("the first part");
    import(cut_after, CONTACTS).await;
    assert_eq!(stream_messages(&env, names::CALLS).await, cut_after);

    let start = format!("/api/v1/campaigns/{id}/start?call_contacts=true");
    let (status, started) = api.post(&start, json!({})).await;
    assert_eq!(status, 200, "seed {seed}: {started}");
    assert_eq!(started["state"], "running");
    assert_eq!(
        started["contacts_called"],
        json!({"contacts": CONTACTS, "accepted": CONTACTS, "do_not_call": 0, "duplicates": 0, "expired": 0}),
        "seed {seed}: cut after {cut_after} accepted calls"
    );
    let requests = dial_requests(&env, id).await;
    let phones: BTreeSet<_> = requests.iter().map(|r| r.phone_number.clone()).collect();
    let calls: BTreeSet<_> = requests.iter().map(|r| r.call_id).collect();
    assert_eq!(
        (requests.len(), phones.len(), calls.len()),
        (CONTACTS as usize, CONTACTS as usize, CONTACTS as usize),
        "seed {seed}: one call per contact, each queued once"
    );

    // Started already: a repeated start calls nobody again.
    let (status, again) = api.post(&start, json!({})).await;
    assert_eq!(status, 200, "{again}");
    assert!(again["contacts_called"].is_null(), "{again}");
    assert_eq!(stream_messages(&env, names::CALLS).await, CONTACTS);
    api.stop().await;
}
