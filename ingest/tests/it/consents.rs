//! Consent records through the API: recorded, listed and revoked (never deleted); a campaign
//! requiring a consent refuses numbers without a valid one on every call route (per item in
//! bulk) and publishes nothing for them; bad input changes nothing.

use std::time::Duration;

use ccm_tests::{TestEnv, eventually};
use rand::{Rng, SeedableRng, rngs::StdRng};
use reqwest::Method;
use serde_json::{Value, json};

use crate::api::{Api, stream_messages};

/// Records a consent, waiting for ingest to have applied its migrations (it does so in the
/// background when it starts).
pub(crate) async fn grant(api: &Api, body: Value) -> Value {
    let answer = eventually(Duration::from_secs(20), || async {
        let (status, body) = api.post("/api/v1/consents", body.clone()).await;
        (status != 503).then_some((status, body))
    })
    .await
    .expect("the consent routes answer");
    assert_eq!(answer.0, 201, "{}", answer.1);
    answer.1
}

/// Generated: whatever mix of consents numbers hold (none, the required type, another type,
/// the required type revoked, revoked then granted again), a bulk request to a campaign
/// requiring consent accepts exactly the numbers with a valid consent of that type and refuses
/// each other one with `consent_required`, publishing one dial message per accepted number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_calls_are_refused_per_item_without_a_valid_consent() {
    let env = TestEnv::start().await.expect("env");
    let api = Api::start(&env).await;
    let seed: u64 = rand::random();
    println!("seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let campaign = api
        .campaign_with(json!({"name": "consent", "required_consent": "prior_express_written"}))
        .await;
    let mut numbers = Vec::new();
    let mut expected = Vec::new();
    for i in 0..40 {
        let number = format!("+1555100{i:04}");
        let valid = match rng.random_range(0..5) {
            0 => false,
            1 => {
                grant(
                    &api,
                    json!({"phone_number": number, "type": "prior_express_written",
                    "source": "web_form", "evidence_ref": format!("form-{i}")}),
                )
                .await;
                true
            }
            2 => {
                grant(
                    &api,
                    json!({"phone_number": number, "type": "informational", "source": "ivr"}),
                )
                .await;
                false
            }
            3 => {
                let record = grant(
                    &api,
                    json!({"phone_number": number,
                    "type": "prior_express_written", "source": "web_form"}),
                )
                .await;
                let id = record["id"].as_str().expect("id");
                let (status, body) = api
                    .post(
                        &format!("/api/v1/consents/{id}/revoke"),
                        json!({"reason": "asked"}),
                    )
                    .await;
                assert_eq!(status, 200, "{body}");
                false
            }
            _ => {
                let record = grant(
                    &api,
                    json!({"phone_number": number,
                    "type": "prior_express_written", "source": "web_form"}),
                )
                .await;
                let id = record["id"].as_str().expect("id");
                api.post(&format!("/api/v1/consents/{id}/revoke"), json!({}))
                    .await;
                grant(
                    &api,
                    json!({"phone_number": number, "type": "prior_express_written",
                    "source": "paper"}),
                )
                .await;
                true
            }
        };
        numbers.push(number);
        expected.push(valid);
    }
    let before = stream_messages(&env, "CALLS").await;
    let (status, body) = api
        .post(
            &format!("/api/v1/calls/bulk?campaign_id={campaign}"),
            json!(numbers),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let results = body["results"].as_array().expect("results");
    for ((number, valid), result) in numbers.iter().zip(&expected).zip(results) {
        if *valid {
            assert_eq!(
                result["status"], "accepted",
                "seed {seed}: {number}: {result}"
            );
        } else {
            assert_eq!(
                result["code"], "consent_required",
                "seed {seed}: {number}: {result}"
            );
        }
    }
    let accepted = expected.iter().filter(|v| **v).count() as u64;
    assert_eq!(
        stream_messages(&env, "CALLS").await - before,
        accepted,
        "seed {seed}: one dial message per accepted number, none for the refused"
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consents_are_recorded_listed_and_revoked_and_every_call_route_checks_them() {
    let env = TestEnv::start().await.expect("env");
    let api = Api::start(&env).await;
    let campaign = api
        .campaign_with(json!({"name": "consent", "required_consent": "ai_voice"}))
        .await;
    let (status, body) = api.get(&format!("/api/v1/campaigns/{campaign}")).await;
    assert_eq!(
        (status, &body["required_consent"]),
        (200, &json!("ai_voice"))
    );
    let number = "+15550006001";
    let before = stream_messages(&env, "CALLS").await;
    let (status, problem) = api
        .post(
            "/api/v1/calls",
            json!({"campaign_id": campaign, "phone_number": number}),
        )
        .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (403, Some("consent_required")),
        "{problem}"
    );
    let (status, problem) = api
        .post(
            "/api/v1/initiate-call/",
            json!({"campaign_id": campaign, "phone_number": number}),
        )
        .await;
    assert_eq!(status, 403, "the old API refuses too: {problem}");
    assert!(problem["error"].as_str().is_some(), "{problem}");
    let (status, body) = api
        .post(
            "/api/v1/bulk-initiate-calls/",
            json!({"campaign_id": campaign, "phone_numbers": [number]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        body["failed_numbers"][0]["code"], "consent_required",
        "{body}"
    );
    assert_eq!(
        stream_messages(&env, "CALLS").await,
        before,
        "nothing published"
    );

    let record = grant(
        &api,
        json!({"phone_number": "+1 555 000 6001", "type": "ai_voice", "purpose": "appointment reminders",
               "source": "web_form", "given_at": "2026-11-30T10:00:00Z", "evidence_ref": "submission 81",
               "campaign_id": campaign}),
    )
    .await;
    assert_eq!(record["phone_number"], number);
    assert_eq!(record["type"], "ai_voice");
    assert_eq!(record["given_at"], "2026-11-30T10:00:00Z");
    assert!(
        record["recorded_by"]
            .as_str()
            .is_some_and(|s| s.starts_with("token:")),
        "{record}"
    );
    let id = record["id"].as_str().expect("id").to_owned();
    let (status, body) = api
        .post(
            "/api/v1/calls",
            json!({"campaign_id": campaign, "phone_number": number}),
        )
        .await;
    assert_eq!(status, 202, "{body}");

    let (status, revoked) = api
        .post(
            &format!("/api/v1/consents/{id}/revoke"),
            json!({"reason": "asked by email"}),
        )
        .await;
    assert_eq!(status, 200, "{revoked}");
    assert_eq!(revoked["revoked_how"], "api");
    assert_eq!(revoked["revoke_reason"], "asked by email");
    assert!(revoked["revoked_at"].is_string(), "{revoked}");
    // Revoking again keeps the first revocation.
    let (status, again) = api
        .send(Method::POST, &format!("/api/v1/consents/{id}/revoke"), None)
        .await;
    assert_eq!(
        (status, &again["revoked_at"]),
        (200, &revoked["revoked_at"])
    );
    let (status, problem) = api
        .post(
            "/api/v1/calls",
            json!({"campaign_id": campaign, "phone_number": number}),
        )
        .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (403, Some("consent_required")),
        "revoked: refused before the duplicate check: {problem}"
    );
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("revoked")),
        "{problem}"
    );
    let (status, list) = api.get("/api/v1/consents/%2B15550006001").await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(
        list.as_array().map(Vec::len),
        Some(1),
        "kept, not deleted: {list}"
    );
    assert_eq!(list[0]["id"], id.as_str());

    // A campaign without the requirement calls anyone; removing it works.
    let other = "+15550006002";
    let (status, body) = api
        .send(
            Method::PATCH,
            &format!("/api/v1/campaigns/{campaign}"),
            Some(json!({"required_consent": null})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = api
        .post(
            "/api/v1/calls",
            json!({"campaign_id": campaign, "phone_number": other}),
        )
        .await;
    assert_eq!(status, 202, "{body}");

    // A draft started over its contacts counts the numbers without consent.
    let draft = api
        .campaign_with(json!({"name": "draft", "draft": true, "required_consent": "ai_voice"}))
        .await;
    grant(
        &api,
        json!({"phone_number": "+15550006003", "type": "ai_voice", "source": "ivr"}),
    )
    .await;
    let (status, body) = api
        .post(
            &format!("/api/v1/campaigns/{draft}/contacts"),
            json!({"contacts": [{"phone_number": "+15550006003"}, {"phone_number": "+15550006004"}]}),
        )
        .await;
    assert!(status < 300, "{body}");
    let (status, body) = api
        .post(
            &format!("/api/v1/campaigns/{draft}/start?call_contacts=true"),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["contacts_called"]["accepted"], 1, "{body}");
    assert_eq!(body["contacts_called"]["consent_required"], 1, "{body}");
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_consents_are_refused_and_record_nothing() {
    let env = TestEnv::start().await.expect("env");
    let api = Api::start(&env).await;
    grant(
        &api,
        json!({"phone_number": "+15550007000", "type": "recording", "source": "ivr"}),
    )
    .await;
    let cases = [
        (
            json!({"phone_number": "12", "type": "ai_voice", "source": "x"}),
            400,
        ),
        (
            json!({"phone_number": "+15550007001", "type": "telepathy", "source": "x"}),
            422,
        ),
        (
            json!({"phone_number": "+15550007001", "type": "ai_voice", "source": "  "}),
            400,
        ),
        (
            json!({"phone_number": "+15550007001", "type": "ai_voice"}),
            422,
        ),
        (
            json!({"phone_number": "+15550007001", "type": "ai_voice", "source": "x",
                "given_at": "2999-01-01T00:00:00Z"}),
            400,
        ),
        (
            json!({"phone_number": "+15550007001", "type": "ai_voice", "source": "x",
                "purpose": "p".repeat(501)}),
            400,
        ),
        (
            json!({"phone_number": "+15550007001", "type": "ai_voice", "source": "x",
                "campaign_id": 987_654}),
            404,
        ),
        (
            json!({"phone_number": "+15550007001", "type": "ai_voice", "source": "x", "extra": 1}),
            422,
        ),
    ];
    for (body, want) in cases {
        let (status, answer) = api.post("/api/v1/consents", body.clone()).await;
        assert_eq!(status, want, "{body} → {answer}");
    }
    let (status, list) = api.get("/api/v1/consents/%2B15550007001").await;
    assert_eq!((status, list), (200, json!([])), "nothing recorded");
    let (status, _) = api
        .post("/api/v1/consents/not-a-uuid/revoke", json!({}))
        .await;
    assert_eq!(status, 400);
    let (status, _) = api
        .post(
            &format!("/api/v1/consents/{}/revoke", uuid::Uuid::now_v7()),
            json!({}),
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = api
        .post(
            "/api/v1/campaigns",
            json!({"name": "x", "required_consent": "telepathy"}),
        )
        .await;
    assert_eq!(
        status, 422,
        "an unknown consent type is refused on campaigns too"
    );
    api.stop().await;
}
