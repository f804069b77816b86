//! The live dashboard in a real browser: headless Chromium, driven over the DevTools
//! protocol, signs in with the token and watches calls placed through the API move through
//! the progress numbers without reloading the page, then redrives a dead letter from it.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use ccm_core::{
    CallEvent, CallId, CampaignId, DialRequest, EventKind,
    config::{CarrierConfig, SimCarrierConfig},
    dlq,
};
use ccm_tests::{TEST_TOKEN, TestEnv, eventually};
use chromiumoxide::{
    Browser, BrowserConfig, Page, handler::viewport::Viewport, page::ScreenshotParams,
};
use chrono::Utc;
use futures::StreamExt;
use reqwest::Method;
use serde_json::{Value, json};

use crate::stack::Stack;

/// Calls the test places; the campaign dials one at a time, so they queue, go live one by
/// one and complete.
const CALLS: usize = 4;

/// The Chromium binary: `CCM_CHROMIUM` or the Debian package's.
fn chromium() -> Option<PathBuf> {
    std::env::var_os("CCM_CHROMIUM")
        .map(PathBuf::from)
        .into_iter()
        .chain(["/usr/bin/chromium", "/usr/bin/chromium-browser"].map(PathBuf::from))
        .find(|p| p.is_file())
}

/// Where artifacts of test runs are kept: `<target>/test-artifacts`.
fn artifacts() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("test-artifacts")
}

/// Evaluates `expression` in the page and returns its JSON value.
async fn eval(page: &Page, expression: &str) -> Value {
    page.evaluate(expression)
        .await
        .unwrap_or_else(|e| panic!("evaluating {expression}: {e}"))
        .into_value()
        .unwrap_or(Value::Null)
}

/// The numbers the page shows for a campaign, read from its row.
async fn shown(page: &Page, campaign: u64) -> Value {
    eval(
        page,
        &format!(
            "(() => {{ const row = document.querySelector('[data-campaign=\"{campaign}\"]'); \
             if (!row) return null; const n = {{}}; \
             for (const td of row.querySelectorAll('[data-field]')) n[td.dataset.field] = td.textContent; \
             return n; }})()"
        ),
    )
    .await
}

/// A number the page shows in a campaign's row.
fn number(row: &Value, field: &str) -> Option<usize> {
    row[field].as_str()?.parse().ok()
}

/// Saves a screenshot of the whole page under the artifacts directory.
async fn screenshot(page: &Page, name: &str) {
    std::fs::create_dir_all(artifacts()).expect("artifacts dir");
    let path = artifacts().join(name);
    page.save_screenshot(ScreenshotParams::builder().full_page(true).build(), &path)
        .await
        .expect("screenshot");
    eprintln!("dashboard screenshot: {}", path.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_calls_progress_live_in_a_browser() {
    let Some(executable) = chromium() else {
        eprintln!(
            "SKIPPED the_dashboard_shows_calls_progress_live_in_a_browser: no Chromium \
             (install the Debian package `chromium`, or set CCM_CHROMIUM)"
        );
        return;
    };
    let env = TestEnv::start().await.expect("test environment");
    let mut config = env.config();
    // Calls last long enough on the line to be seen live.
    config.dialer.carrier = CarrierConfig::Sim(SimCarrierConfig {
        picked: 1,
        disconnected: 0,
        rnr: 0,
        failed: 0,
        call_ms: 700,
    });
    let stack = Stack::start(&env, config).await;
    let (status, body) = stack
        .send(
            Method::POST,
            "/api/v1/campaigns",
            json!({"name": "browser", "max_concurrent_calls": 1}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let campaign = body["id"].as_u64().expect("id");
    // No wait for a dialer to pull: an idle campaign's worker is dormant (no pull) and the
    // calls placed below wake it, or its first read of the consumer finds them.
    let js = env.jetstream().await.expect("jetstream");

    let profile = tempfile::tempdir().expect("profile dir");
    let (mut browser, mut handler) = Browser::launch(
        BrowserConfig::builder()
            .chrome_executable(executable)
            .no_sandbox()
            .user_data_dir(profile.path())
            .window_size(1600, 900)
            .viewport(Viewport {
                width: 1600,
                height: 900,
                ..Viewport::default()
            })
            .arg("--disable-gpu")
            .arg("--disable-dev-shm-usage")
            .launch_timeout(Duration::from_secs(30))
            .request_timeout(Duration::from_secs(30))
            .build()
            .expect("browser config"),
    )
    .await
    .expect("Chromium starts");
    let events = tokio::spawn(async move { while handler.next().await.is_some() {} });

    let page = browser.new_page(stack.base.as_str()).await.expect("page");
    page.find_element("#token")
        .await
        .expect("token field")
        .click()
        .await
        .expect("focus")
        .type_str(TEST_TOKEN)
        .await
        .expect("type the token");
    page.find_element("#login")
        .await
        .expect("sign-in button")
        .click()
        .await
        .expect("sign in");

    // Signed in: the stream is live and the campaign is listed, empty.
    let first = eventually(Duration::from_secs(20), || async {
        let status = eval(&page, "document.getElementById('status').dataset.state").await;
        let row = shown(&page, campaign).await;
        (status == "live" && row["total"] == "0").then_some(row)
    })
    .await
    .expect("the page shows the campaign, live");
    assert_eq!(first["name"], "browser");
    assert_eq!(
        eval(&page, "sessionStorage.getItem('ccm.dashboard.token')").await,
        TEST_TOKEN,
        "the token is kept in the tab's session storage"
    );
    // Marks this document, and records every number the page shows from now on, so the
    // test can tell live updates from a reload and see the intermediate states.
    eval(
        &page,
        &format!(
            "window.__sameDocument = true; window.__seen = {{ live: 0, queued: 0 }}; \
             new MutationObserver(() => {{ \
               const row = document.querySelector('[data-campaign=\"{campaign}\"]'); if (!row) return; \
               for (const f of ['live', 'queued']) {{ \
                 const v = Number(row.querySelector('[data-field=\"' + f + '\"]').textContent); \
                 window.__seen[f] = Math.max(window.__seen[f], v); }} \
             }}).observe(document.getElementById('campaigns'), {{ childList: true, subtree: true }}); true"
        ),
    )
    .await;

    for i in 0..CALLS {
        let (status, body) = stack
            .send(
                Method::POST,
                "/api/v1/calls",
                json!({"campaign_id": campaign, "phone_number": format!("+1555010{i:04}")}),
            )
            .await;
        assert_eq!(status, 202, "{body}");
    }

    // Every call completed, and the queue gauges (read from the dial consumer) drained.
    let done = eventually(Duration::from_secs(40), || async {
        let row = shown(&page, campaign).await;
        (number(&row, "completed") == Some(CALLS)
            && row["queue_depth"] == "0"
            && row["in_flight"] == "0 / 1")
            .then_some(row)
    })
    .await;
    screenshot(&page, "dashboard.png").await;
    let Some(row) = done else {
        panic!(
            "the page never showed {CALLS} completed calls; it shows {}",
            shown(&page, campaign).await
        );
    };
    assert_eq!(number(&row, "total"), Some(CALLS), "{row}");
    assert_eq!(row["queued"], "0", "{row}");
    assert_eq!(row["live"], "0", "{row}");
    assert_eq!(
        eval(&page, "window.__sameDocument === true").await,
        true,
        "no reload"
    );
    let seen = eval(&page, "window.__seen").await;
    assert!(
        seen["live"].as_i64().unwrap_or(0) >= 1,
        "the page showed calls on the line while they were: {seen}"
    );

    // A dead letter, written the way the retrier writes one when a dial message exhausted its
    // deliveries: the message copied into DLQ, and a `DeadLettered` event for its call (the
    // retrier's own path there is tested in `retries`; this test is about the page).
    let request = DialRequest {
        call_id: CallId::new(),
        campaign_id: CampaignId::new(campaign).expect("campaign id"),
        phone_number: "+15550109999".parse().expect("phone"),
        attempt: 1,
        max_attempts: 3,
        created_at: Utc::now(),
        queued_at: Utc::now(),
        custom_fields: Default::default(),
        expires_at: None,
        alternate: None,
        callback: None,
    };
    let reason = format!("Delivered 5 times to consumer dial_{campaign} without success");
    dlq::store(
        &js,
        dlq::Source {
            stream: "CALLS",
            subject: &request.subject(),
            seq: 1_000_000,
            consumer: &format!("dial_{campaign}"),
            deliveries: 5,
            reason: &reason,
            published: Utc::now().to_rfc3339(),
            headers: None,
            payload: serde_json::to_vec(&request).expect("json").into(),
            parked: false,
        },
    )
    .await
    .expect("store the letter");
    let event = CallEvent {
        call_id: request.call_id,
        campaign_id: request.campaign_id,
        attempt: 1,
        at: Utc::now(),
        kind: EventKind::DeadLettered { reason },
    };
    ccm_core::nats::publish_event(&js, &event)
        .await
        .expect("publish the event");
    let letter = eventually(Duration::from_secs(20), || async {
        let row = shown(&page, campaign).await;
        let size = eval(&page, "document.getElementById('dlq-size').textContent").await;
        let button = eval(
            &page,
            "document.querySelectorAll('#dlq button.redrive').length",
        )
        .await;
        (row["dead_lettered"] == "1" && size == "1" && button == 1).then_some(())
    })
    .await;
    screenshot(&page, "dashboard-dlq.png").await;
    assert!(
        letter.is_some(),
        "the page never showed the dead letter: {} / DLQ {}",
        shown(&page, campaign).await,
        eval(&page, "document.getElementById('dlq').textContent").await
    );

    // The operator redrives it from the page: the call's next attempt is dialled.
    page.find_element("#dlq button.redrive")
        .await
        .expect("redrive button")
        .click()
        .await
        .expect("redrive");
    let redriven = eventually(Duration::from_secs(30), || async {
        let row = shown(&page, campaign).await;
        let size = eval(&page, "document.getElementById('dlq-size').textContent").await;
        (row["dead_lettered"] == "0" && number(&row, "completed") == Some(CALLS + 1) && size == "0")
            .then_some(())
    })
    .await;
    screenshot(&page, "dashboard.png").await;
    assert!(
        redriven.is_some(),
        "the redriven call never completed on the page: {} / {}",
        shown(&page, campaign).await,
        eval(&page, "document.getElementById('dlq-action').textContent").await
    );
    let message = eval(&page, "document.getElementById('dlq-action').textContent").await;
    assert!(
        message
            .as_str()
            .is_some_and(|m| m.contains("redriven as attempt 2")),
        "{message}"
    );
    assert_eq!(
        eval(&page, "window.__sameDocument === true").await,
        true,
        "no reload"
    );

    // Chromium may drop the DevTools connection while it exits; then it is killed instead.
    if browser.close().await.is_err() {
        let _ = browser.kill().await;
    }
    let _ = browser.wait().await;
    events.abort();
    stack.stop().await;
}
