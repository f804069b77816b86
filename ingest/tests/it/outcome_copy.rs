//! A carrier's callback copies its outcome to the dialer that placed the attempt
//! ([`ccm_core::outcome_route`]): the one Twilio's callback URL names, else the one the
//! attempt's `Dialing` names (also for the old contract, which names none), else every dialer.

use std::time::Duration;

use async_nats::Subscriber;
use ccm_core::{
    CallEvent, CallId, CampaignId, EventKind,
    outcome_route::Address,
    placements::{PlacedAttempt, record},
    subjects,
    topology::names,
};
use chrono::Utc;
use futures::{FutureExt, StreamExt};
use serde_json::json;

use crate::api::Api;

/// Long enough for a loaded machine; a copy arrives in milliseconds.
const ARRIVE: Duration = Duration::from_secs(10);

/// Stores the `Dialing` of attempt 1 of `call`, naming `by` as a dialer does (or nothing, as
/// an older dialer did).
async fn dialing(
    js: &async_nats::jetstream::Context,
    campaign: CampaignId,
    call: CallId,
    by: Option<&Address>,
) {
    let event = CallEvent {
        call_id: call,
        campaign_id: campaign,
        attempt: 1,
        at: Utc::now(),
        kind: EventKind::Dialing {
            phone_number: "+15550008301".parse().expect("number"),
            max_attempts: 1,
            created_at: Utc::now(),
            custom_fields: Default::default(),
            expires_at: None,
            alternate: None,
        },
    };
    ccm_core::nats::publish_json(
        js,
        event.subject(),
        &event.msg_id(),
        by.map(Address::headers),
        &event,
    )
    .await
    .expect("Dialing stored");
}

/// Sends a signed Twilio final callback for attempt 1 of `call`, with `dialer` in its URL when
/// given.
async fn twilio(api: &Api, campaign: CampaignId, call: CallId, dialer: Option<&Address>) {
    let mut url = format!(
        "{}/api/v1/callbacks/twilio?call_id={call}&attempt=1&campaign_id={campaign}",
        api.base
    );
    if let Some(dialer) = dialer {
        url.push_str(&format!("&dialer={dialer}"));
    }
    let params = vec![
        ("CallStatus".to_owned(), "completed".to_owned()),
        ("CallDuration".to_owned(), "7".to_owned()),
    ];
    let signature = ccm_core::twilio::signature("twilio-token", &url, &params);
    let status = api
        .http
        .post(&url)
        .header(ccm_core::twilio::SIGNATURE_HEADER, signature)
        .form(&params)
        .send()
        .await
        .expect("callback")
        .status();
    assert_eq!(status.as_u16(), 204);
}

/// The next copy on `subscriber` is `call`'s outcome.
async fn copied(subscriber: &mut Subscriber, call: CallId, route: &str) {
    let message = tokio::time::timeout(ARRIVE, subscriber.next())
        .await
        .unwrap_or_else(|_| panic!("no copy {route}"))
        .expect("subscription");
    let event: CallEvent = serde_json::from_slice(&message.payload).expect("event");
    assert_eq!(event.call_id, call, "{route}");
    assert!(matches!(event.kind, EventKind::Outcome { .. }), "{route}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callbacks_outcome_is_copied_to_the_dialer_that_placed_its_attempt() {
    let env = ccm_tests::TestEnv::start().await.expect("env");
    let mut config = env.config();
    config.ingest.twilio.auth_token = ccm_core::config::Secret::new("twilio-token");
    let api = Api::start_with(&env, config, false).await;
    let campaign =
        CampaignId::new(api.campaign_with(json!({"name": "copies"})).await).expect("campaign id");
    let js = env.jetstream().await.expect("js");
    let client = env.nats().await.expect("nats");
    let (named, recorded) = (Address::fresh("named:1"), Address::fresh("recorded:1"));
    let mut to_named = client
        .subscribe(subjects::dialer_outcome(named.as_str()))
        .await
        .expect("subscribe");
    let mut to_recorded = client
        .subscribe(subjects::dialer_outcome(recorded.as_str()))
        .await
        .expect("subscribe");
    let mut to_all = client
        .subscribe(subjects::DIALER_OUTCOME_ANY)
        .await
        .expect("subscribe");
    client.flush().await.expect("flush");

    // Twilio's URL names the dialer: no lookup (and it wins over the Dialing's).
    let call = CallId::new();
    dialing(&js, campaign, call, Some(&recorded)).await;
    twilio(&api, campaign, call, Some(&named)).await;
    copied(&mut to_named, call, "to the dialer the URL names").await;

    // A URL made by an older dialer: the Dialing names it.
    let call = CallId::new();
    dialing(&js, campaign, call, Some(&recorded)).await;
    twilio(&api, campaign, call, None).await;
    copied(&mut to_recorded, call, "to the dialer the Dialing names").await;

    // The old contract names no dialer; the carrier's id leads to the attempt.
    let call = CallId::new();
    dialing(&js, campaign, call, Some(&recorded)).await;
    let placements = ccm_core::nats::bucket(&js, names::KV_PLACEMENTS)
        .await
        .expect("placements");
    let placed = PlacedAttempt {
        call_id: call,
        campaign_id: campaign,
        attempt: 1,
    };
    record(&placements, "ext-copy-1", &placed)
        .await
        .expect("record");
    let (status, body) = api
        .put(
            "/api/v1/callback/",
            json!({"call_id": call, "status": "PICKED", "external_call_id": "ext-copy-1"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    copied(
        &mut to_recorded,
        call,
        "the old contract's, to the Dialing's dialer",
    )
    .await;

    // Placed by a dialer that recorded no address: every dialer hears it.
    let call = CallId::new();
    dialing(&js, campaign, call, None).await;
    twilio(&api, campaign, call, None).await;
    copied(&mut to_all, call, "to every dialer").await;

    // And nothing else went anywhere.
    client.flush().await.expect("flush");
    tokio::time::sleep(Duration::from_millis(300)).await;
    for subscriber in [&mut to_named, &mut to_recorded, &mut to_all] {
        assert!(subscriber.next().now_or_never().is_none(), "an extra copy");
    }
    api.stop().await;
}
