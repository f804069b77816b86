//! Text PostgreSQL cannot store (the NUL character, refused by `text` and `jsonb`) is refused
//! at the edge, naming the field, and nothing is written: issue 16, where a contact's value
//! with a NUL made the projector give up on its call's messages. Generated: any unicode text
//! with a NUL somewhere, in a JSON string field, a key, or a CSV column.

use proptest::{
    prelude::*,
    test_runner::{Config as RunnerConfig, TestCaseError, TestRunner},
};
use serde_json::{Value, json};

use crate::api::{Api, stream_messages};

fn with_nul(text: &str, at: usize) -> String {
    let chars: Vec<char> = text.chars().collect();
    let at = at % (chars.len() + 1);
    chars[..at]
        .iter()
        .chain(std::iter::once(&'\0'))
        .chain(&chars[at..])
        .collect()
}

#[test]
fn a_nul_in_any_client_text_is_refused_naming_the_field_and_nothing_is_written() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (env, api, campaign) = runtime.block_on(async {
        let env = ccm_tests::TestEnv::start().await.expect("env");
        let api = Api::start(&env).await;
        let campaign = api.campaign_with(json!({"name": "nul"})).await;
        (env, api, campaign)
    });
    let import = format!("/api/v1/campaigns/{campaign}/contacts/import");
    let mut runner = TestRunner::new(RunnerConfig {
        cases: 64,
        failure_persistence: None,
        ..RunnerConfig::default()
    });
    // Text without CSV's separators, so a CSV row keeps its shape.
    let csv_text = "[^,\"\r\n\0]{0,20}";
    let strategy = (
        any::<String>(),
        any::<usize>(),
        0..4usize,
        csv_text,
        any::<usize>(),
    );
    let result = runner.run(&strategy, |(text, at, field, column_text, column_at)| {
        runtime.block_on(async {
            let bad = with_nul(&text, at);
            let before = stream_messages(&env, "KV_campaigns").await;
            // Resource and compatible JSON routes: a field, then a key.
            let (path, body, named): (&str, Value, &str) = match field {
                0 => ("/api/v1/campaigns", json!({"name": bad}), "name"),
                1 => (
                    "/api/v1/campaigns",
                    json!({"name": "x", "description": bad}),
                    "description",
                ),
                2 => ("/api/v1/campaigns/", json!({"name": bad}), "name"),
                _ => (
                    "/api/v1/campaigns",
                    json!({"name": "x", bad.clone(): 1}),
                    "",
                ),
            };
            let (status, answer) = api.post(path, body).await;
            prop_assert_eq!(status, 422, "{}", answer);
            let detail = answer["detail"]
                .as_str()
                .or(answer["error"].as_str())
                .unwrap_or_default()
                .to_owned();
            // (A key is no campaign field: refused as unknown before its NUL is looked at.)
            if field != 3 {
                prop_assert!(detail.contains("NUL"), "{}", answer);
                prop_assert!(detail.starts_with(named), "{}", answer);
            }
            if path == "/api/v1/campaigns" && field != 3 {
                prop_assert_eq!(&answer["code"], "invalid_text");
            }
            prop_assert_eq!(stream_messages(&env, "KV_campaigns").await, before);

            // A CSV row: refused by line, naming its column; the good row is imported.
            let contacts = stream_messages(&env, "KV_contacts").await;
            let bad_value = with_nul(&column_text, column_at);
            let csv = format!(
                "phone_number,note\n+1555000{:04},{bad_value}\n+1555001{:04},{column_text}\n",
                at % 10_000,
                at % 10_000
            );
            let (status, answer) = api
                .raw(reqwest::Method::POST, &import, "text/csv", csv)
                .await;
            prop_assert_eq!(status, 200, "{}", answer);
            prop_assert_eq!(&answer["rejected"], 1, "{}", answer);
            let reason = answer["errors"][0]["reason"].as_str().unwrap_or_default();
            prop_assert!(
                reason.contains("note") && reason.contains("NUL"),
                "{}",
                answer
            );
            prop_assert_eq!(&answer["errors"][0]["line"], 2, "{}", answer);
            prop_assert!(stream_messages(&env, "KV_contacts").await <= contacts + 1);
            Ok::<(), TestCaseError>(())
        })
    });
    runtime.block_on(api.stop());
    drop(env);
    if let Err(e) = result {
        panic!("{e}");
    }
}
