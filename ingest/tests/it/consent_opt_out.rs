//! The old contract's callback (`PUT /api/v1/callback/`, also the http adapter's) saying
//! `opt_out: true`: the number is put on the do-not-call list, its consents are revoked, a
//! `contact.opted_out` webhook is queued once, and the outcome is still published.

use std::time::Duration;

use ccm_tests::{TestEnv, eventually};
use serde_json::json;

use crate::api::Api;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opt_out_in_the_old_callback_lists_the_number_revokes_consents_and_queues_the_webhook() {
    let env = TestEnv::start().await.expect("env");
    let pg = env.pg().await.expect("pg");
    // The webhook queue is ccm-webhooks' table; provisioning applies every set.
    ccm_core::schema::migrate_all(&pg)
        .await
        .expect("migrations");
    let mut config = env.config();
    config.webhooks.allow_private_targets = true;
    let api = Api::start_with(&env, config, true).await;
    let campaign = api.compat_campaign("opt-out").await;
    let number = "+15550008001";
    let consent = crate::consents::grant(
        &api,
        json!({"phone_number": number, "type": "informational", "source": "web_form"}),
    )
    .await;
    let (status, hook) = api
        .post(
            "/api/v1/webhooks",
            json!({"url": "http://127.0.0.1:9/hook", "events": ["contact.opted_out"]}),
        )
        .await;
    assert_eq!(status, 201, "{hook}");
    let hook_id = hook["id"].as_str().expect("id").to_owned();
    let (status, body) = api
        .post(
            "/api/v1/initiate-call/",
            json!({"phone_number": number, "campaign_id": campaign}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let call = body["call_id"].as_str().expect("call_id").to_owned();
    let id: uuid::Uuid = call.parse().expect("uuid");
    eventually(Duration::from_secs(10), || async {
        sqlx::query_scalar::<_, i32>("SELECT attempt_count FROM calls WHERE call_id = $1")
            .bind(id)
            .fetch_optional(&pg)
            .await
            .ok()
            .flatten()
    })
    .await
    .expect("the call is projected");

    let (status, body) = api
        .put(
            "/api/v1/callback/",
            json!({"call_id": call, "status": "PICKED", "opt_out": "yes"}),
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("opt_out must be true or false"))
    );
    let (status, _) = api.get(&format!("/api/v1/dnc/%2B{}", &number[1..])).await;
    assert_eq!(status, 404, "a refused callback lists nothing");

    for _ in 0..2 {
        let (status, body) = api
            .put(
                "/api/v1/callback/",
                json!({"call_id": call, "status": "PICKED", "call_duration": 12, "opt_out": true}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, listing) = api.get(&format!("/api/v1/dnc/%2B{}", &number[1..])).await;
    assert_eq!(status, 200, "listed globally: {listing}");
    assert_eq!(listing["entry"]["opted_out"]["call_id"], call.as_str());
    assert_eq!(listing["entry"]["opted_out"]["via"], "callback");
    let (status, list) = api
        .get(&format!("/api/v1/consents/%2B{}", &number[1..]))
        .await;
    assert_eq!(status, 200);
    assert_eq!(list[0]["id"], consent["id"]);
    assert_eq!(list[0]["revoked_how"], "opt_out");
    assert_eq!(list[0]["revoked_by"], "callee");
    let (status, problem) = api
        .post(
            "/api/v1/calls",
            json!({"campaign_id": campaign, "phone_number": number}),
        )
        .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (403, Some("do_not_call"))
    );

    let queued: Vec<(String, Vec<u8>)> =
        sqlx::query_as("SELECT event_type, body FROM webhook_messages WHERE endpoint_id = $1")
            .bind(&hook_id)
            .fetch_all(&pg)
            .await
            .expect("queue");
    assert_eq!(queued.len(), 1, "queued once for a repeated callback");
    assert_eq!(queued[0].0, "contact.opted_out");
    let body: serde_json::Value = serde_json::from_slice(&queued[0].1).expect("json");
    assert_eq!(body["type"], "contact.opted_out");
    assert_eq!(body["data"]["phone_number"], number);
    assert_eq!(body["data"]["call_id"], call.as_str());
    assert_eq!(body["data"]["consents_revoked"], json!([consent["id"]]));

    // The outcome was published as usual.
    let js = env.jetstream().await.expect("js");
    let events = js.get_stream("CALL_EVENTS").await.expect("stream");
    let outcome = events
        .direct_get_last_for_subject(format!("calls.outcome.{campaign}.{call}"))
        .await
        .expect("outcome stored");
    let outcome: serde_json::Value = serde_json::from_slice(&outcome.payload).expect("json");
    assert_eq!(outcome["status"], "PICKED", "{outcome}");
    api.stop().await;
}

/// A campaign with `opt_out_list: campaign` lists an opted-out callee on its own list only:
/// the campaign stops calling them, other campaigns may still.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_may_keep_its_opt_outs_on_its_own_list() {
    let env = TestEnv::start().await.expect("env");
    let pg = env.pg().await.expect("pg");
    let mut config = env.config();
    // Without a retrier the first call's claim stays; per-campaign claims let the other
    // campaign call the number meanwhile.
    config.ingest.duplicate_scope = ccm_core::config::DuplicateScope::Campaign;
    let api = Api::start_with(&env, config, true).await;
    let own = api
        .campaign_with(json!({"name": "own list", "opt_out_list": "campaign"}))
        .await;
    let (status, body) = api.get(&format!("/api/v1/campaigns/{own}")).await;
    assert_eq!((status, &body["opt_out_list"]), (200, &json!("campaign")));
    let other = api.campaign_with(json!({"name": "other"})).await;
    let number = "+15550008101";
    let (status, body) = api
        .post(
            "/api/v1/calls",
            json!({"campaign_id": own, "phone_number": number}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let call = body["call_id"].as_str().expect("call_id").to_owned();
    let id: uuid::Uuid = call.parse().expect("uuid");
    eventually(Duration::from_secs(10), || async {
        sqlx::query_scalar::<_, i32>("SELECT attempt_count FROM calls WHERE call_id = $1")
            .bind(id)
            .fetch_optional(&pg)
            .await
            .ok()
            .flatten()
    })
    .await
    .expect("the call is projected");
    let (status, body) = api
        .put(
            "/api/v1/callback/",
            json!({"call_id": call, "status": "PICKED", "opt_out": true}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let digits = &number[1..];
    let (status, listing) = api
        .get(&format!("/api/v1/dnc/%2B{digits}?campaign_id={own}"))
        .await;
    assert_eq!(status, 200, "{listing}");
    assert_eq!(listing["entry"]["opted_out"]["campaign_id"], own);
    let (status, _) = api.get(&format!("/api/v1/dnc/%2B{digits}")).await;
    assert_eq!(status, 404, "not on the global list");
    let (status, body) = api
        .post(
            "/api/v1/calls",
            json!({"campaign_id": other, "phone_number": number}),
        )
        .await;
    assert_eq!(status, 202, "another campaign still calls: {body}");
    api.stop().await;
}

/// Sends a signed Twilio callback with `params`; answers its status.
async fn twilio(api: &Api, campaign: u64, call: uuid::Uuid, params: &[(&str, &str)]) -> u16 {
    let url = format!(
        "{}/api/v1/callbacks/twilio?call_id={call}&attempt=1&campaign_id={campaign}",
        api.base
    );
    let params: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let signature = ccm_core::twilio::signature("twilio-token", &url, &params);
    api.http
        .post(&url)
        .header(ccm_core::twilio::SIGNATURE_HEADER, signature)
        .form(&params)
        .send()
        .await
        .expect("callback")
        .status()
        .as_u16()
}

/// Twilio: only `Digits` equal to `ingest.twilio.opt_out_digits` opt the callee out, in a
/// final status callback or a `<Gather>`'s while the call is in progress (which publishes no
/// outcome).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilio_digits_opt_out_only_when_they_are_the_configured_ones() {
    let env = TestEnv::start().await.expect("env");
    let mut config = env.config();
    config.ingest.twilio.auth_token = ccm_core::config::Secret::new("twilio-token");
    config.ingest.twilio.opt_out_digits = "9".into();
    let api = Api::start_with(&env, config, false).await;
    let campaign = api.campaign_with(json!({"name": "twilio"})).await;
    let listed = |number: &'static str| {
        let api = &api;
        async move { api.get(&format!("/api/v1/dnc/%2B{}", &number[1..])).await.0 == 200 }
    };
    let (other, pressed, gathered) = ("+15550008201", "+15550008202", "+15550008203");
    let status = twilio(
        &api,
        campaign,
        uuid::Uuid::now_v7(),
        &[
            ("CallStatus", "completed"),
            ("To", other),
            ("Digits", "1"),
            ("CallDuration", "9"),
        ],
    )
    .await;
    assert_eq!(status, 204);
    assert!(!listed(other).await, "another key is no opt-out");
    let status = twilio(
        &api,
        campaign,
        uuid::Uuid::now_v7(),
        &[
            ("CallStatus", "completed"),
            ("To", pressed),
            ("Digits", "9"),
            ("CallDuration", "9"),
        ],
    )
    .await;
    assert_eq!(status, 204);
    assert!(listed(pressed).await);
    let call = uuid::Uuid::now_v7();
    let status = twilio(
        &api,
        campaign,
        call,
        &[
            ("CallStatus", "in-progress"),
            ("To", gathered),
            ("Digits", "9"),
        ],
    )
    .await;
    assert_eq!(status, 204);
    assert!(
        listed(gathered).await,
        "a <Gather>'s callback during the call"
    );
    let js = env.jetstream().await.expect("js");
    let events = js.get_stream("CALL_EVENTS").await.expect("stream");
    assert!(
        events
            .direct_get_last_for_subject(format!("calls.outcome.{campaign}.{call}"))
            .await
            .is_err(),
        "no outcome for a call still in progress"
    );
    api.stop().await;
}
