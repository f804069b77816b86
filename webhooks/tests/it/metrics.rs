//! The deliverer's `/metrics`, `/healthz` and `/readyz` after real deliveries.

use std::{net::SocketAddr, time::Duration};

use axum::http::StatusCode;
use ccm_core::{
    EventKind,
    metrics::{get, sample},
};
use ccm_tests::{TestEnv, eventually};
use serde_json::json;

use crate::support::{self, Behaviour, Ingest, Receiver};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_and_refusals_are_counted_by_outcome() {
    let env = TestEnv::start().await.expect("env");
    let mut config = support::config(&env);
    let addr: SocketAddr = (
        [127, 0, 0, 1],
        ccm_tests::process::free_port().expect("port"),
    )
        .into();
    config.webhooks.metrics_listen = Some(addr);
    let ingest = Ingest::start(config.clone()).await;
    // One 503 first, so a retried attempt is timed too.
    let mut behaviour = Behaviour::always(StatusCode::NO_CONTENT);
    behaviour
        .script
        .push_back((StatusCode::SERVICE_UNAVAILABLE, None));
    let accepting = Receiver::start(behaviour).await;
    let refusing = Receiver::start(Behaviour::always(StatusCode::GONE)).await;
    for (receiver, campaign) in [(&accepting, 7), (&refusing, 8)] {
        ingest
            .subscribe(
                json!({"url": receiver.url, "campaign_ids": [campaign], "events": ["completed"]}),
            )
            .await;
    }
    let _webhooks = support::start_webhooks(config);
    for _ in 0..2 {
        support::publish(&env, 7, EventKind::Completed).await;
    }
    support::publish(&env, 8, EventKind::Completed).await;
    accepting.wait_for(3, Duration::from_secs(10)).await;
    refusing.wait_for(1, Duration::from_secs(10)).await;

    let text = eventually(Duration::from_secs(10), || async {
        let (_, text) = get(addr, "/metrics").await.ok()?;
        let delivered = sample(
            &text,
            "ccm_webhooks_deliveries_total",
            &[("outcome", "delivered")],
        );
        let refused = sample(
            &text,
            "ccm_webhooks_deliveries_total",
            &[("outcome", "refused")],
        );
        (delivered == Some(2.0) && refused == Some(1.0)).then_some(text)
    })
    .await;
    let Some(text) = text else {
        panic!("{}", get(addr, "/metrics").await.expect("scrape").1)
    };
    assert_eq!(
        sample(
            &text,
            "ccm_webhooks_request_duration_seconds_count",
            &[("result", "success")]
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "ccm_webhooks_request_duration_seconds_count",
            &[("result", "final")]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "ccm_webhooks_request_duration_seconds_count",
            &[("result", "retry")]
        ),
        Some(1.0),
        "{text}"
    );

    // The 410 disabled its endpoint; what comes for it afterwards is kept as skipped.
    let disabled = eventually(Duration::from_secs(10), || async {
        let (_, text) = get(addr, "/metrics").await.ok()?;
        let enabled = sample(&text, "ccm_webhooks_endpoints", &[("state", "enabled")]);
        let disabled = sample(&text, "ccm_webhooks_endpoints", &[("state", "disabled")]);
        (enabled == Some(1.0) && disabled == Some(1.0)).then_some(text)
    })
    .await;
    let Some(text) = disabled else {
        panic!("{}", get(addr, "/metrics").await.expect("scrape").1)
    };
    assert_eq!(
        sample(
            &text,
            "ccm_webhooks_endpoints_disabled_total",
            &[("reason", "gone")]
        ),
        Some(1.0),
        "{text}"
    );
    support::publish(&env, 8, EventKind::Completed).await;
    let skipped = eventually(Duration::from_secs(10), || async {
        let (_, text) = get(addr, "/metrics").await.ok()?;
        let skipped = sample(
            &text,
            "ccm_webhooks_deliveries_total",
            &[("outcome", "endpoint_disabled")],
        );
        (skipped == Some(1.0)).then_some(())
    })
    .await;
    assert!(
        skipped.is_some(),
        "{}",
        get(addr, "/metrics").await.expect("scrape").1
    );
    assert_eq!(
        refusing.received().len(),
        1,
        "a disabled endpoint gets nothing"
    );
    assert_eq!(get(addr, "/readyz").await.expect("readyz").0, 200);
}
