//! Property-based tests of every JSON body the API accepts: arbitrary bytes, random JSON
//! values, known fields with wrong types, huge numbers and unicode, deep nesting, and oversized
//! bodies must all be refused with a 4xx and must change nothing in JetStream (no call
//! published, no number claimed, no campaign or contact written).
//!
//! Each property runs against one `TestEnv` and one in-process ingest. proptest's runner is
//! synchronous, so the test owns a tokio runtime and blocks on it for every case.

use ccm_tests::{TEST_TOKEN, TestEnv};
use futures::TryStreamExt;
use proptest::{
    prelude::*,
    test_runner::{Config as RunnerConfig, TestCaseError, TestRunner},
};
use serde_json::{Map, Value, json};
use tokio::runtime::Runtime;

use crate::api::Api;

/// How many random bodies each property sends (spread over all the routes).
const CASES: u32 = 128;

/// A route that takes a JSON body.
#[derive(Debug, Clone, Copy)]
struct Route {
    method: &'static str,
    /// `{c}` is replaced by the fixture's campaign id.
    path: &'static str,
    /// The fields of a valid body and the kind of value each must hold.
    fields: &'static [(&'static str, Kind)],
    /// Bulk routes answer per item: a well-formed envelope whose items are all bad is a 2xx
    /// with every item rejected (the old `phone-numbers/` says 201 with its `errors` list),
    /// and the state check proves nothing was accepted.
    per_item: bool,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Phone,
    PhoneList,
    CampaignId,
    CallId,
    CallStatus,
    Name,
    Count,
}

const ROUTES: &[Route] = &[
    Route {
        method: "POST",
        path: "/api/v1/initiate-call/",
        fields: &[
            ("phone_number", Kind::Phone),
            ("campaign_id", Kind::CampaignId),
        ],
        per_item: false,
    },
    Route {
        method: "POST",
        path: "/api/v1/bulk-initiate-calls/",
        fields: &[
            ("phone_numbers", Kind::PhoneList),
            ("campaign_id", Kind::CampaignId),
        ],
        per_item: true,
    },
    Route {
        method: "PUT",
        path: "/api/v1/callback/",
        fields: &[("call_id", Kind::CallId), ("status", Kind::CallStatus)],
        per_item: false,
    },
    Route {
        method: "POST",
        path: "/api/v1/campaigns/",
        fields: &[("name", Kind::Name)],
        per_item: false,
    },
    Route {
        method: "POST",
        path: "/api/v1/phone-numbers/",
        fields: &[
            ("phone_numbers", Kind::PhoneList),
            ("campaign_id", Kind::CampaignId),
        ],
        per_item: true,
    },
    Route {
        method: "POST",
        path: "/api/v1/calls",
        fields: &[
            ("phone_number", Kind::Phone),
            ("campaign_id", Kind::CampaignId),
        ],
        per_item: false,
    },
    Route {
        method: "POST",
        path: "/api/v1/campaigns",
        fields: &[("name", Kind::Name), ("max_concurrent_calls", Kind::Count)],
        per_item: false,
    },
    Route {
        method: "PATCH",
        path: "/api/v1/campaigns/{c}",
        fields: &[("max_concurrent_calls", Kind::Count), ("name", Kind::Name)],
        per_item: false,
    },
];

/// `POST /api/v1/calls/bulk` takes a bare array; its campaign is in the query.
const RESOURCE_BULK: Route = Route {
    method: "POST",
    path: "/api/v1/calls/bulk?campaign_id={c}",
    fields: &[],
    per_item: true,
};

/// Ingest with one active campaign, and the JetStream state before any bad request.
struct Fixture {
    runtime: Runtime,
    // Dropped after `api` (fields drop in order), so ingest stops before its servers.
    api: Option<Api>,
    env: Option<TestEnv>,
    campaign: u64,
    baseline: Vec<(String, u64)>,
}

impl Fixture {
    fn start(max_body_bytes: Option<usize>) -> Fixture {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let (env, api, campaign, baseline) = runtime.block_on(async {
            let env = TestEnv::start().await.expect("env");
            let mut config = env.config();
            if let Some(limit) = max_body_bytes {
                config.ingest.max_body_bytes = limit;
            }
            let api = Api::start_with(&env, config, false).await;
            let campaign = api.compat_campaign("bad-input").await;
            let baseline = sequences(&env).await;
            (env, api, campaign, baseline)
        });
        Fixture {
            runtime,
            api: Some(api),
            env: Some(env),
            campaign,
            baseline,
        }
    }

    /// Sends `body` (with no `Content-Type` when `content_type` is empty) and checks the answer is a 4xx (or, on a per-item route, a 2xx) and that
    /// nothing was written.
    fn check(&self, route: Route, content_type: &str, body: Vec<u8>) -> Result<(), TestCaseError> {
        let api = self.api.as_ref().expect("api");
        let env = self.env.as_ref().expect("env");
        let path = route.path.replace("{c}", &self.campaign.to_string());
        let (status, text, after) = self.runtime.block_on(async {
            let mut request = api
                .http
                .request(
                    route.method.parse().expect("method"),
                    format!("{}{path}", api.base),
                )
                .header("X-Auth-Token", TEST_TOKEN);
            if !content_type.is_empty() {
                request = request.header("Content-Type", content_type);
            }
            let response = request.body(body.clone()).send().await.expect("request");
            let status = response.status().as_u16();
            let text = response.text().await.unwrap_or_default();
            (status, text, sequences(env).await)
        });
        let shown = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
        let allowed =
            (400..500).contains(&status) || (route.per_item && (200..300).contains(&status));
        prop_assert!(
            allowed,
            "{} {path} answered {status} {text} to {shown}",
            route.method
        );
        if (400..500).contains(&status) {
            prop_assert!(
                !text.trim().is_empty(),
                "{} {path}: a {status} without a reason",
                route.method
            );
        }
        prop_assert_eq!(
            &after,
            &self.baseline,
            "{} {} changed JetStream ({}) for {}",
            route.method,
            path,
            text,
            shown
        );
        Ok(())
    }

    fn run<S: Strategy>(&self, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
    where
        S::Value: std::fmt::Debug,
    {
        let mut runner = TestRunner::new(RunnerConfig {
            cases: CASES,
            // Failures are kept as explicit regression tests below instead of files.
            failure_persistence: None,
            ..RunnerConfig::default()
        });
        if let Err(e) = runner.run(&strategy, test) {
            panic!("{e}");
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(api) = self.api.take() {
            self.runtime.block_on(api.stop());
        }
        self.env.take();
    }
}

/// The last sequence of every stream except the server's advisories and the audit log (which
/// records every attempted change, refused ones included): any publish, KV put or delete
/// moves one of them.
async fn sequences(env: &TestEnv) -> Vec<(String, u64)> {
    let js = env.jetstream().await.expect("jetstream");
    let mut all: Vec<(String, u64)> = js
        .streams()
        .try_collect::<Vec<_>>()
        .await
        .expect("streams")
        .into_iter()
        .filter(|info| {
            ![
                ccm_core::topology::names::ADVISORIES,
                ccm_core::topology::names::AUDIT,
            ]
            .contains(&info.config.name.as_str())
        })
        .map(|info| (info.config.name, info.state.last_sequence))
        .collect();
    all.sort();
    all
}

/// Any route of the list, the resource bulk route included.
fn any_route() -> impl Strategy<Value = Route> {
    (0..=ROUTES.len()).prop_map(|i| ROUTES.get(i).copied().unwrap_or(RESOURCE_BULK))
}

/// Random JSON: every type, unicode strings, numbers from tiny to huge, nested.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "\\PC{0,40}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            // Keys start with `~` so that no random object names a real field by chance.
            prop::collection::btree_map("~\\PC{0,10}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A value that is never valid for `kind`.
fn bad_value(kind: Kind) -> BoxedStrategy<Value> {
    let not_number = prop_oneof![
        any::<bool>().prop_map(Value::Bool),
        "\\PC{0,20}".prop_map(Value::String),
        Just(json!([])),
        Just(json!({})),
    ];
    let not_string = prop_oneof![
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        Just(json!([1])),
        Just(json!({"a": 1})),
    ];
    // Letters only: no digits, so never a phone number, an id or a count.
    let letters = "\\p{L}{1,30}".prop_map(Value::String);
    let not_u32 = prop_oneof![
        not_number.clone(),
        (i64::MIN..0).prop_map(Value::from),
        (u64::from(u32::MAX) + 1..=u64::MAX).prop_map(Value::from),
        Just(json!(1.5)),
        Just(json!(1e300)),
        Just(json!(-0.0001)),
    ];
    match kind {
        Kind::Phone | Kind::CallId => prop_oneof![not_string, letters].boxed(),
        Kind::PhoneList => prop_oneof![
            not_string,
            letters.clone(),
            prop::collection::vec(letters, 1..5).prop_map(Value::Array),
        ]
        .boxed(),
        Kind::CallStatus => prop_oneof![not_string, "[0-9]{1,8}".prop_map(Value::String)].boxed(),
        Kind::Name => prop_oneof![not_string, Just(json!("")), Just(json!("  \t "))].boxed(),
        Kind::CampaignId | Kind::Count => not_u32.boxed(),
    }
}

/// A valid value for `kind` (the fixture's campaign for ids).
fn good_value(kind: Kind, campaign: u64) -> Value {
    match kind {
        Kind::Phone => json!("+15550001234"),
        Kind::PhoneList => json!(["+15550001235"]),
        Kind::CampaignId => json!(campaign),
        Kind::CallId => json!(uuid::Uuid::now_v7().to_string()),
        Kind::CallStatus => json!("PICKED"),
        Kind::Name => json!("renamed"),
        Kind::Count => json!(3),
    }
}

/// Found by the property below: serde's derived structs also accept an array of their fields
/// in order, so `["name"]` created a campaign. Every object body now refuses arrays.
#[test]
fn a_json_array_where_an_object_belongs_is_refused_and_changes_nothing() {
    let fixture = Fixture::start(None);
    for route in ROUTES.iter().filter(|r| r.path.starts_with("/api/v1/ca")) {
        for body in [
            json!(["a name"]),
            json!(["a name", "a description", true, 5, 2]),
        ] {
            fixture
                .check(*route, "application/json", body.to_string().into_bytes())
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }
}

#[test]
fn arbitrary_bytes_and_random_json_are_refused_everywhere_and_change_nothing() {
    let fixture = Fixture::start(None);
    // Arbitrary bytes, under the JSON content type or a wrong one or none. (text/csv is left
    // out: the resource bulk route reads it, and random lines may hold a valid number.)
    let content_type = prop::sample::select(vec![
        "application/json",
        "application/json; charset=utf-16",
        "text/plain",
        "application/x-www-form-urlencoded",
        "",
    ]);
    fixture.run(
        (
            any_route(),
            content_type,
            prop::collection::vec(any::<u8>(), 0..512),
        ),
        |(route, content_type, bytes)| fixture.check(route, content_type, bytes),
    );
    // Random JSON values; an empty object is skipped because it is a valid PATCH (no change).
    fixture.run(
        (
            any_route(),
            any_json().prop_filter("{} is a valid PATCH", |v| *v != json!({})),
        ),
        |(route, value)| {
            fixture.check(
                route,
                "application/json",
                serde_json::to_vec(&value).expect("json"),
            )
        },
    );
}

#[test]
fn a_field_of_the_wrong_type_or_out_of_range_is_refused_and_changes_nothing() {
    let fixture = Fixture::start(None);
    let campaign = fixture.campaign;
    let cases = (0..ROUTES.len()).prop_flat_map(move |r| {
        let route = ROUTES[r];
        (0..route.fields.len()).prop_flat_map(move |f| {
            bad_value(route.fields[f].1).prop_map(move |bad| {
                let mut body = Map::new();
                for (i, (name, kind)) in route.fields.iter().enumerate() {
                    let value = if i == f {
                        bad.clone()
                    } else {
                        good_value(*kind, campaign)
                    };
                    body.insert((*name).to_owned(), value);
                }
                (route, Value::Object(body))
            })
        })
    });
    fixture.run(cases, |(route, body)| {
        fixture.check(
            route,
            "application/json",
            serde_json::to_vec(&body).expect("json"),
        )
    });
    // The resource bulk route's items: letters, wrong types, objects with extra fields.
    let items = prop::collection::vec(
        prop_oneof![
            bad_value(Kind::Phone),
            bad_value(Kind::Phone).prop_map(|v| json!({"phone_number": v})),
            Just(json!({"phone_number": "+15550001236", "extra": 1})),
        ],
        1..6,
    );
    fixture.run(items, |items| {
        fixture.check(
            RESOURCE_BULK,
            "application/json",
            serde_json::to_vec(&items).expect("json"),
        )
    });
}

#[test]
fn huge_numbers_deep_nesting_and_oversized_bodies_are_refused_and_change_nothing() {
    const LIMIT: usize = 64 * 1024;
    let fixture = Fixture::start(Some(LIMIT));
    let campaign = fixture.campaign;
    // Numbers JSON allows but no integer type holds, written as text.
    let huge = prop_oneof![
        "[1-9][0-9]{20,60}",
        "-[1-9][0-9]{20,60}",
        "[1-9]e[3-9][0-9]{2}",
        Just("18446744073709551616".to_owned()),
        Just("4294967296".to_owned()),
    ];
    fixture.run((any_route(), huge, 0..2usize), |(route, number, field)| {
        let body = match route.fields.get(field).or(route.fields.first()) {
            Some((name, _)) => {
                let others: Vec<String> = route
                    .fields
                    .iter()
                    .filter(|(other, _)| other != name)
                    .map(|(other, kind)| format!("{other:?}: {}", good_value(*kind, campaign)))
                    .collect();
                let mut all = vec![format!("{name:?}: {number}")];
                all.extend(others);
                format!("{{{}}}", all.join(", "))
            }
            None => format!("[{number}]"),
        };
        fixture.check(route, "application/json", body.into_bytes())
    });
    // Nesting deeper than any parser should follow, as arrays or objects.
    fixture.run(
        (any_route(), 100..3000usize, any::<bool>()),
        |(route, depth, objects)| {
            let (open, close) = if objects {
                ("{\"a\":", "}")
            } else {
                ("[", "]")
            };
            let body = format!("{}1{}", open.repeat(depth), close.repeat(depth));
            fixture.check(route, "application/json", body.into_bytes())
        },
    );
    // Bodies over the limit, valid JSON apart from their size.
    fixture.run((any_route(), LIMIT + 1..LIMIT * 4), |(route, size)| {
        let body = format!("{{\"name\": \"{}\"}}", "x".repeat(size));
        fixture.check(route, "application/json", body.into_bytes())
    });
}
