//! A person's consent records in the export and the erase (`docs/privacy.md`).

use ccm_tests::TestEnv;
use serde_json::json;

use crate::{api::Api, consents::grant};

/// A person's export holds their consent records; an erase keeps the records as evidence,
/// under the number's pseudonym and revoked, and leaves nothing naming the number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_holds_consents_and_erase_keeps_them_revoked_under_the_pseudonym() {
    let env = TestEnv::start().await.expect("env");
    let api = Api::with_projector(&env).await;
    let number = "+15550009001";
    let kept = grant(
        &api,
        json!({"phone_number": number, "type": "ai_voice", "source": "web_form", "evidence_ref": "form 7"}),
    )
    .await;
    let revoked = grant(
        &api,
        json!({"phone_number": number, "type": "informational", "source": "ivr"}),
    )
    .await;
    let id = revoked["id"].as_str().expect("id");
    api.post(
        &format!("/api/v1/consents/{id}/revoke"),
        json!({"reason": "asked"}),
    )
    .await;
    let path = |action: &str| format!("/api/v1/subjects/%2B{}/{action}", &number[1..]);
    let (status, export) = api.get(&path("export")).await;
    assert_eq!(status, 200, "{export}");
    let consent = export["consent"].as_array().expect("consent");
    assert_eq!(consent.len(), 2, "{export}");
    assert_eq!(consent[0]["id"], kept["id"]);
    assert_eq!(consent[0]["evidence_ref"], "form 7");
    assert_eq!(consent[1]["revoked_how"], "api");
    assert!(
        export["held_in"]["KV_consents"]
            .as_u64()
            .is_some_and(|n| n >= 2),
        "the checks' bucket names the number too: {}",
        export["held_in"]
    );

    let (status, report) = api.post(&path("erase"), json!({})).await;
    assert_eq!(status, 200, "{report}");
    let subject = report["subject"].as_str().expect("subject");
    assert!(
        report["erased"].as_array().expect("erased").iter().any(|c| c
            == &json!({"store": "table", "name": "consents", "action": "anonymised", "count": 2})),
        "{report}"
    );
    let (status, export) = api.get(&path("export")).await;
    assert_eq!(status, 200);
    assert_eq!(
        export["consent"],
        json!([]),
        "nothing names the number: {export}"
    );
    assert!(
        export["held_in"].get("KV_consents").is_none(),
        "{}",
        export["held_in"]
    );
    let (status, records) = api.get(&format!("/api/v1/consents/erased:{subject}")).await;
    // The pseudonym is not a number: the route refuses it; the rows are read directly.
    assert_eq!(status, 400, "{records}");
    let pg = env.pg().await.expect("pg");
    let rows: Vec<(String, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT phone_number, revoked_how, evidence_ref FROM consents ORDER BY given_at, id",
    )
    .fetch_all(&pg)
    .await
    .expect("rows");
    let pseudonym = format!("erased:{subject}");
    assert_eq!(
        rows,
        [
            (
                pseudonym.clone(),
                Some("erasure".into()),
                Some("form 7".into())
            ),
            (pseudonym, Some("api".into()), None),
        ],
        "kept as evidence, revoked, without the number"
    );
    api.stop().await;
}
