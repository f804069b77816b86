//! The live dashboard: its page, its tickets and its event stream.

use std::time::Duration;

use ccm_core::config::Secret;
use ccm_tests::{TEST_TOKEN, TestEnv};
use serde_json::{Value, json};

use crate::{api::Api, logs::Captured};

/// An open `text/event-stream` response, read one event at a time.
struct Events {
    response: reqwest::Response,
    buffer: String,
}

impl Events {
    async fn open(api: &Api, query: &str) -> Events {
        let response = api
            .http
            .get(format!("{}/api/v1/dashboard/events{query}", api.base))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"].to_str().expect("ascii"),
            "text/event-stream"
        );
        Events {
            response,
            buffer: String::new(),
        }
    }

    /// The next event's name and JSON data (keep-alive comments are skipped).
    async fn next(&mut self) -> (String, Value) {
        tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                if let Some(end) = self.buffer.find("\n\n") {
                    let block: String = self.buffer.drain(..end + 2).collect();
                    let mut name = String::new();
                    let mut data = String::new();
                    for line in block.lines() {
                        if let Some(v) = line.strip_prefix("event:") {
                            name = v.trim().to_owned();
                        } else if let Some(v) = line.strip_prefix("data:") {
                            data.push_str(v.strip_prefix(' ').unwrap_or(v));
                        }
                    }
                    if !name.is_empty() {
                        return (name, serde_json::from_str(&data).expect("JSON data"));
                    }
                    continue;
                }
                let chunk = self
                    .response
                    .chunk()
                    .await
                    .expect("chunk")
                    .expect("the stream stays open");
                self.buffer
                    .push_str(std::str::from_utf8(&chunk).expect("utf-8"));
            }
        })
        .await
        .expect("an event within 20 s")
    }

    /// Reads events until one shows `campaign` matching `wanted`; returns that row.
    async fn until(&mut self, campaign: u64, wanted: impl Fn(&Value) -> bool) -> (String, Value) {
        loop {
            let (name, data) = self.next().await;
            let row = data["campaigns"]
                .as_array()
                .and_then(|rows| rows.iter().find(|r| r["id"] == campaign).cloned());
            if let Some(row) = row.filter(|r| wanted(r)) {
                return (name, row);
            }
        }
    }
}

async fn ticket(api: &Api) -> String {
    let (status, body) = api.post("/api/v1/dashboard/ticket", json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["expires_in_secs"], 60);
    body["ticket"].as_str().expect("ticket").to_owned()
}

async fn place_call(api: &Api, campaign: u64, phone: &str) -> String {
    let (status, body) = api
        .post(
            "/api/v1/calls",
            json!({"phone_number": phone, "campaign_id": campaign}),
        )
        .await;
    assert!(status == 201 || status == 202, "{status} {body}");
    body["call_id"]
        .as_str()
        .or_else(|| body["id"].as_str())
        .expect("call id")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_refuses_requests_without_a_valid_ticket_or_token() {
    let env = TestEnv::start().await.expect("env");
    let api = Api::start(&env).await;
    let url = format!("{}/api/v1/dashboard/events", api.base);
    let good = ticket(&api).await;
    // A ticket whose expiry was pushed out no longer matches its signature.
    let (_, rest) = good.split_once('.').expect("ticket shape");
    let stretched = format!("99999999999.{rest}");
    let requests = [
        ("nothing", api.http.get(&url)),
        ("an empty ticket", api.http.get(format!("{url}?ticket="))),
        (
            "a made-up ticket",
            api.http.get(format!("{url}?ticket=1.2.3")),
        ),
        (
            "a stretched ticket",
            api.http.get(format!("{url}?ticket={stretched}")),
        ),
        (
            "the token in the query",
            api.http.get(format!("{url}?ticket={TEST_TOKEN}")),
        ),
        (
            "a wrong token in the header",
            api.http.get(&url).header("X-Auth-Token", "wrong"),
        ),
        (
            "a wrong token beside a good ticket",
            api.http
                .get(format!("{url}?ticket={good}"))
                .header("X-Auth-Token", "wrong"),
        ),
    ];
    for (what, request) in requests {
        let response = request.send().await.expect("request");
        assert_eq!(response.status(), 401, "with {what}");
    }
    // Tickets are only issued for the token.
    let response = api
        .http
        .post(format!("{}/api/v1/dashboard/ticket", api.base))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 401);

    // The page itself is public and embeds everything it needs.
    let page = api.http.get(&api.base).send().await.expect("request");
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-security-policy"]
            .to_str()
            .expect("ascii")
            .contains("default-src 'none'")
    );
    let html = page.text().await.expect("html");
    assert!(html.contains("EventSource") && html.contains("sessionStorage"));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "loads nothing from elsewhere"
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_sends_a_snapshot_then_an_update_when_a_call_is_accepted() {
    let env = TestEnv::start().await.expect("env");
    let api = Api::with_projector(&env).await;
    let campaign = api.compat_campaign("dashboard").await;
    let first = place_call(&api, campaign, "+15550100001").await;
    // The read model has the first call before the stream opens.
    ccm_tests::eventually(Duration::from_secs(20), || async {
        let (status, body) = api.get(&format!("/api/v1/calls/{first}")).await;
        (status == 200 && body["status"] == "QUEUED").then_some(())
    })
    .await
    .expect("the first call is projected");

    let ticket = ticket(&api).await;
    let mut events = Events::open(&api, &format!("?ticket={ticket}")).await;
    let (name, snapshot) = events.next().await;
    assert_eq!(name, "snapshot");
    assert_eq!(snapshot["ready"], true, "{snapshot}");
    let row = snapshot["campaigns"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["id"] == campaign))
        .unwrap_or_else(|| panic!("campaign {campaign} in {snapshot}"));
    assert_eq!(row["name"], "dashboard");
    assert_eq!(
        (row["queued"].as_i64(), row["total"].as_i64()),
        (Some(1), Some(1)),
        "{row}"
    );

    // No dialer runs: an accepted call stays queued, and the stream says so.
    place_call(&api, campaign, "+15550100002").await;
    let (name, row) = events.until(campaign, |r| r["queued"] == 2).await;
    assert_eq!(name, "update");
    assert_eq!(row["total"], 2, "{row}");
    assert_eq!(row["completed"], 0);

    // The queue depth comes from the campaign's dial consumer: both calls wait there.
    let (_, row) = events.until(campaign, |r| r["queue_depth"] == 2).await;
    assert_eq!(row["in_flight"], 0, "{row}");
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_calls_reaches_the_browser_as_a_few_coalesced_updates() {
    const CALLS: usize = 2_000;
    let env = TestEnv::start().await.expect("env");
    let api = Api::with_projector(&env).await;
    let campaign = api.compat_campaign("burst").await;
    let mut events = Events::open(&api, &format!("?ticket={}", ticket(&api).await)).await;
    let (name, _) = events.next().await;
    assert_eq!(name, "snapshot");

    let numbers: Vec<String> = (0..CALLS).map(|i| format!("+1555020{i:04}")).collect();
    let started = std::time::Instant::now();
    let (status, body) = api
        .post(
            &format!("/api/v1/calls/bulk?campaign_id={campaign}"),
            json!(numbers),
        )
        .await;
    assert!(
        status == 200 || status == 202 || status == 207,
        "{status} {body}"
    );
    // Thousands of dial messages; the stream carries one row per campaign per tick.
    let mut updates: u32 = 0;
    loop {
        let (name, data) = events.next().await;
        if name == "update" {
            updates += 1;
        }
        let queued = data["campaigns"]
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["id"] == campaign))
            .and_then(|r| r["queued"].as_u64());
        if queued == Some(CALLS as u64) {
            break;
        }
    }
    let elapsed = started.elapsed();
    // One update per 500 ms tick at most, plus the one in progress when the burst began.
    let bound = elapsed.as_millis() / 500 + 2;
    eprintln!("{CALLS} calls reached the stream in {elapsed:?} as {updates} updates");
    assert!(
        u128::from(updates) <= bound,
        "{updates} updates in {elapsed:?} (at most {bound})"
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neither_the_token_nor_a_ticket_reaches_the_logs() {
    const VALID: &str = "tok-dashboard-3c9d41";
    let logs = Captured::install();
    let env = TestEnv::start().await.expect("env");
    let mut config = env.config();
    config.ingest.auth_tokens = vec![Secret::new(VALID).into()];
    // With the projector, whose migrations give the feed its tables to read.
    let api = Api::start_with(&env, config, true).await;
    let response = api
        .http
        .post(format!("{}/api/v1/dashboard/ticket", api.base))
        .header("X-Auth-Token", VALID)
        .send()
        .await
        .expect("request");
    let ticket = response.json::<Value>().await.expect("json")["ticket"]
        .as_str()
        .expect("ticket")
        .to_owned();
    let mut events = Events::open(&api, &format!("?ticket={ticket}")).await;
    let (name, snapshot) = events.next().await;
    assert_eq!(name, "snapshot");
    assert_eq!(snapshot["ready"], true, "{snapshot}");
    // Refused attempts are logged at most as refusals, never with what was sent.
    for query in [format!("?ticket={VALID}"), "?ticket=forged.ticket.x".into()] {
        let response = api
            .http
            .get(format!("{}/api/v1/dashboard/events{query}", api.base))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 401);
    }
    drop(events);
    api.stop().await;
    let text = logs.text();
    assert!(
        text.contains("ingest listening"),
        "ingest's logs were captured"
    );
    for secret in [VALID, ticket.as_str()] {
        assert!(!text.contains(secret), "the logs contain {secret}");
    }
}

/// A ticket opens one stream, once: seen in a proxy log after use, it opens nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_opens_one_stream_once() {
    let env = TestEnv::start().await.expect("env");
    let api = Api::start(&env).await;
    let ticket = ticket(&api).await;
    let url = format!("{}/api/v1/dashboard/events?ticket={ticket}", api.base);
    let first = api.http.get(&url).send().await.expect("request");
    assert_eq!(first.status(), 200);
    let again = api.http.get(&url).send().await.expect("request");
    assert_eq!(again.status(), 401, "the same ticket again, stream open");
    drop(first);
    let again = api.http.get(&url).send().await.expect("request");
    assert_eq!(again.status(), 401, "the same ticket again, stream closed");
    api.stop().await;
}

async fn open_with_token(api: &Api, token: &str) -> reqwest::Response {
    api.http
        .get(format!("{}/api/v1/dashboard/events", api.base))
        .header("X-Auth-Token", token)
        .send()
        .await
        .expect("request")
}

async fn ticket_for(api: &Api, token: &str) -> String {
    let response = api
        .http
        .post(format!("{}/api/v1/dashboard/ticket", api.base))
        .header("X-Auth-Token", token)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    response.json::<Value>().await.expect("json")["ticket"]
        .as_str()
        .expect("ticket")
        .to_owned()
}

/// A client could hold any number of streams; each token may hold
/// `ingest.dashboard.max_streams_per_token`, and a stream opened with a ticket counts
/// against the token that obtained the ticket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_over_the_cap_of_their_token_get_429_until_one_ends() {
    const A: &str = "tok-streams-a";
    const B: &str = "tok-streams-b";
    let env = TestEnv::start().await.expect("env");
    let mut config = env.config();
    config.ingest.auth_tokens = vec![Secret::new(A).into(), Secret::new(B).into()];
    config.ingest.dashboard.max_streams_per_token = 2;
    let api = Api::start_with(&env, config, false).await;

    let first = open_with_token(&api, A).await;
    assert_eq!(first.status(), 200);
    let by_ticket = api
        .http
        .get(format!(
            "{}/api/v1/dashboard/events?ticket={}",
            api.base,
            ticket_for(&api, A).await
        ))
        .send()
        .await
        .expect("request");
    assert_eq!(by_ticket.status(), 200, "a ticket of A counts against A");
    for over in [
        open_with_token(&api, A).await,
        api.http
            .get(format!(
                "{}/api/v1/dashboard/events?ticket={}",
                api.base,
                ticket_for(&api, A).await
            ))
            .send()
            .await
            .expect("request"),
    ] {
        assert_eq!(over.status(), 429, "a third stream of A");
        let retry_after = over.headers()["retry-after"].to_str().expect("ascii");
        assert!(retry_after.parse::<u64>().is_ok(), "{retry_after}");
        let problem: Value = over.json().await.expect("json");
        assert_eq!(problem["code"], "too_many_streams", "{problem}");
    }
    let other = open_with_token(&api, B).await;
    assert_eq!(other.status(), 200, "B has its own cap");

    // When a stream ends, its place is free again.
    drop(by_ticket);
    let mut reopened = None;
    for _ in 0..100 {
        let response = open_with_token(&api, A).await;
        if response.status() == 200 {
            reopened = Some(response);
            break;
        }
        assert_eq!(response.status(), 429);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(reopened.is_some(), "A's place was not freed");
    drop((first, other, reopened));
    api.stop().await;
}

/// Replicas sharing `ingest.dashboard.ticket_key` accept each other's tickets; a ticket of a
/// token that is no longer configured opens nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_ticket_key_crosses_replicas_and_a_removed_token_voids_its_tickets() {
    const KEPT: &str = "tok-kept-0001";
    const REMOVED: &str = "tok-removed-02";
    let env = TestEnv::start().await.expect("env");
    let mut config = env.config();
    config.ingest.dashboard.ticket_key = Secret::new("k".repeat(40));
    config.ingest.auth_tokens = vec![Secret::new(KEPT).into(), Secret::new(REMOVED).into()];
    let old = Api::start_with(&env, config.clone(), false).await;
    config.ingest.auth_tokens = vec![Secret::new(KEPT).into()];
    let new = Api::start_with(&env, config, false).await;
    let open = |api: &Api, ticket: String| {
        api.http
            .get(format!(
                "{}/api/v1/dashboard/events?ticket={ticket}",
                api.base
            ))
            .send()
    };
    let kept = open(&new, ticket_for(&old, KEPT).await)
        .await
        .expect("request");
    assert_eq!(kept.status(), 200, "the other replica's ticket");
    let removed = open(&new, ticket_for(&old, REMOVED).await)
        .await
        .expect("request");
    assert_eq!(removed.status(), 401, "a ticket of a removed token");

    // Without a shared key, a replica's tickets open streams only there.
    let mut config = env.config();
    config.ingest.auth_tokens = vec![Secret::new(KEPT).into()];
    let unshared = Api::start_with(&env, config, false).await;
    let refused = open(&unshared, ticket_for(&new, KEPT).await)
        .await
        .expect("request");
    assert_eq!(refused.status(), 401, "another key's ticket");
    drop(kept);
    for api in [old, new, unshared] {
        api.stop().await;
    }
}
