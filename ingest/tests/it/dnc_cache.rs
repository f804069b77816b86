//! The do-not-call lists in ingest's memory: loaded before the cache answers, a listing made
//! through this replica's API refused by its next call, and a listing or removal written
//! straight to the bucket (as another replica or an operator would) applied once the watch
//! delivers it. A refusal the cache answers writes no claim at all: that is how these tests
//! tell it answered, and not the bucket.

use std::time::Duration;

use async_nats::jetstream::kv;
use ccm_core::{CampaignId, PhoneNumber, PhoneRule, dnc::DncEntry, dnc::DncList};
use ccm_ingest::{AppState, dnc_cache::DncCache};
use ccm_tests::{TestEnv, eventually};
use chrono::Utc;
use serde_json::{Value, json};

use crate::api::{Api, stream_messages};

/// Bound on waiting for the watch: it delivers within milliseconds.
const WATCH: Duration = Duration::from_secs(10);

fn phone(input: &str) -> PhoneNumber {
    PhoneNumber::parse(input, PhoneRule::Lenient).expect("phone")
}

async fn call(api: &Api, campaign: u64, number: &str) -> (u16, Value) {
    api.post(
        "/api/v1/calls",
        json!({"campaign_id": campaign, "phone_number": number}),
    )
    .await
}

async fn bucket(env: &TestEnv, name: &str) -> kv::Store {
    let js = env.jetstream().await.expect("js");
    js.get_key_value(name).await.expect("bucket")
}

fn listing() -> bytes::Bytes {
    let entry = DncEntry {
        added_at: Utc::now(),
        reason: None,
        opted_out: None,
    };
    serde_json::to_vec(&entry).expect("json").into()
}

/// Waits until `cache` says it is current, checking without pause so that the first moment
/// it says so is seen (what it holds then is what it answers with).
async fn until_current(cache: &DncCache) {
    let deadline = tokio::time::Instant::now() + WATCH;
    while !cache.is_current() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the do-not-call cache never caught up"
        );
        tokio::task::yield_now().await;
    }
}

/// Waits until the cache answers `expected` for `number` in `campaign`.
async fn until_cached(
    state: &AppState,
    campaign: CampaignId,
    number: &str,
    expected: Option<DncList>,
) {
    let number = phone(number);
    let seen = eventually(WATCH, || async {
        (state.dnc_cache.lookup(campaign, &number) == Some(expected)).then_some(())
    })
    .await;
    assert!(
        seen.is_some(),
        "{number} never became {expected:?} in the cache"
    );
}

/// The number was never claimed, not even for a moment: no claim key, no purge marker.
async fn never_claimed(env: &TestEnv, number: &str) {
    let claims = bucket(env, "active_calls").await;
    let digits = phone(number).digits().to_owned();
    assert!(
        claims.entry(digits).await.expect("kv").is_none(),
        "{number} was claimed: the refusal came from the bucket, not the cache"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_listed_before_start_are_refused_from_the_first_call_and_bad_keys_ignored() {
    let env = TestEnv::start().await.expect("env");
    env.provision().await.expect("provision");
    let dnc = bucket(&env, "dnc").await;
    // Enough listings that a cache claiming to be current before it loaded them would show.
    let numbers: Vec<String> = (0..5000).map(|n| format!("+1555001{n:04}")).collect();
    futures::future::try_join_all(numbers.iter().map(|number| {
        let dnc = &dnc;
        async move {
            dnc.put(DncList::Global.key(&phone(number)), listing())
                .await
        }
    }))
    .await
    .expect("list");
    for junk in [
        "global.not-a-number",
        "campaign.15550019999",
        "7.12a3",
        "0.15550019998",
    ] {
        dnc.put(junk, listing()).await.expect("junk key");
    }

    let (api, state) = Api::with_state(&env).await;
    let campaign = api.campaign_with(json!({"name": "preloaded"})).await;
    let (status, problem) = call(&api, campaign, &numbers[0]).await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (403, Some("do_not_call")),
        "{problem}"
    );

    // A cache following the bucket from scratch holds every listing from the moment it says
    // it is current (ingest's own was probably current before this test could look).
    let cache = DncCache::default();
    let stop = tokio_util::sync::CancellationToken::new();
    let follow = tokio::spawn(cache.clone().follow(dnc.clone(), stop.clone()));
    until_current(&cache).await;
    let id = CampaignId::new(campaign).expect("id");
    let missing = numbers
        .iter()
        .filter(|n| cache.lookup(id, &phone(n)) != Some(Some(DncList::Global)))
        .count();
    assert_eq!(missing, 0, "current but without {missing} listings");
    stop.cancel();
    follow.await.expect("follow");

    until_current(&state.dnc_cache).await;
    let (status, _) = call(&api, campaign, &numbers[4999]).await;
    assert_eq!(status, 403);
    never_claimed(&env, &numbers[4999]).await;
    // The junk keys list nothing, and the watch carried on past them.
    assert_eq!(call(&api, campaign, "+15550019999").await.0, 202);
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_through_the_api_is_refused_by_the_next_call_on_this_replica() {
    let env = TestEnv::start().await.expect("env");
    let (api, state) = Api::with_state(&env).await;
    let campaign = api.campaign_with(json!({"name": "own writes"})).await;
    until_current(&state.dnc_cache).await;

    let (status, body) = api
        .post(
            "/api/v1/dnc",
            json!({"phone_numbers": ["+15550020001", "+15550020002"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = api
        .post(
            "/api/v1/dnc",
            json!({"phone_numbers": ["+15550020003"], "campaign_id": campaign}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let before = stream_messages(&env, "CALLS").await;
    let (status, problem) = call(&api, campaign, "+15550020001").await;
    assert_eq!(
        (status, problem["detail"].as_str()),
        (403, Some("+15550020001 is on the global do-not-call list"))
    );
    let (status, problem) = call(&api, campaign, "+15550020003").await;
    assert_eq!(
        (status, problem["detail"].as_str()),
        (
            403,
            Some(format!("+15550020003 is on campaign {campaign}'s do-not-call list").as_str())
        )
    );
    let (status, body) = api
        .post(
            &format!("/api/v1/calls/bulk?campaign_id={campaign}"),
            json!(["+15550020002", "+15550020004"]),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][0]["code"], "do_not_call", "{body}");
    assert_eq!(
        stream_messages(&env, "CALLS").await,
        before + 1,
        "only +15550020004"
    );
    for number in ["+15550020001", "+15550020002", "+15550020003"] {
        never_claimed(&env, number).await;
    }

    // A removal is seen by the next call here too.
    let (status, _) = api
        .send(reqwest::Method::DELETE, "/api/v1/dnc/+15550020001", None)
        .await;
    assert_eq!(status, 204);
    assert_eq!(call(&api, campaign, "+15550020001").await.0, 202);
    let path = format!("/api/v1/dnc/+15550020003?campaign_id={campaign}");
    let (status, _) = api.send(reqwest::Method::DELETE, &path, None).await;
    assert_eq!(status, 204);
    assert_eq!(call(&api, campaign, "+15550020003").await.0, 202);
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_written_to_the_bucket_apply_once_the_watch_delivers_them() {
    let env = TestEnv::start().await.expect("env");
    let (api, state) = Api::with_state(&env).await;
    let campaign = api.campaign_with(json!({"name": "watched"})).await;
    let id = CampaignId::new(campaign).expect("id");
    until_current(&state.dnc_cache).await;
    let dnc = bucket(&env, "dnc").await;
    let number = "+15550030001";

    // Another replica lists the number globally, an operator on the campaign's list too.
    dnc.put(DncList::Global.key(&phone(number)), listing())
        .await
        .expect("put");
    dnc.put(DncList::Campaign(id).key(&phone(number)), listing())
        .await
        .expect("put");
    until_cached(&state, id, number, Some(DncList::Global)).await;
    let (status, problem) = call(&api, campaign, number).await;
    assert_eq!(
        (status, problem["detail"].as_str()),
        (403, Some("+15550030001 is on the global do-not-call list"))
    );
    never_claimed(&env, number).await;

    // Removed from the global list (a purge, as the API does): the campaign's list remains.
    dnc.purge(DncList::Global.key(&phone(number)))
        .await
        .expect("purge");
    until_cached(&state, id, number, Some(DncList::Campaign(id))).await;
    let (status, problem) = call(&api, campaign, number).await;
    assert_eq!(
        (status, problem["detail"].as_str()),
        (
            403,
            Some(format!("{number} is on campaign {campaign}'s do-not-call list").as_str())
        )
    );
    never_claimed(&env, number).await;

    // Removed from the campaign's list too (a delete this time): callable again.
    dnc.delete(DncList::Campaign(id).key(&phone(number)))
        .await
        .expect("delete");
    until_cached(&state, id, number, None).await;
    assert_eq!(call(&api, campaign, number).await.0, 202);
    api.stop().await;
}
