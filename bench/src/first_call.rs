//! The first-call latency of idle campaigns, measured the same way by the `idle` and `scale`
//! phases: one call at a time, each in another campaign, from the API's 202 to the call's
//! `Dialing` event on the events' own subject (so the projector's lag is not in it).

use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use indicatif::ProgressBar;
use serde_json::json;
use tokio::time::Instant;

use crate::http;

/// Every call's lifecycle events (`ccm_core::subjects::event` is `calls.event.<campaign>.<call>`).
const EVENTS: &str = "calls.event.>";

/// Pause between two first calls, so each finds its campaign idle and the previous call's
/// work does not overlap it.
const GAP: Duration = Duration::from_millis(200);

/// Accepts one call in each of `campaigns` in turn, waits for its `Dialing`; the times from
/// each 202 to its `Dialing`, sorted (ms).
pub(crate) async fn first_calls(
    nats_url: &str,
    api: &str,
    campaigns: &[u64],
    bar: &ProgressBar,
    label: &str,
) -> anyhow::Result<Vec<f64>> {
    let client = ccm_core::nats::connect(nats_url, "bench").await?;
    let mut events = client.subscribe(EVENTS).await?;
    client.flush().await?;
    let mut conn = http::Conn::open(api).await?;
    let mut out = Vec::with_capacity(campaigns.len());
    for (i, &campaign) in campaigns.iter().enumerate() {
        bar.set_message(format!("{label}: first call {}/{}", i + 1, campaigns.len()));
        let phone = format!("+1555{:07}", 4_000_000 + i);
        let (status, body) = conn
            .post_json(
                "/api/v1/calls",
                &json!({"campaign_id": campaign, "phone_number": phone}),
            )
            .await?;
        let accepted = Instant::now();
        anyhow::ensure!(status.is_success(), "a call: {status} {body}");
        let call = body["call_id"].as_str().context("no call id")?.to_owned();
        let deadline = accepted + Duration::from_secs(30);
        loop {
            let next = tokio::time::timeout_at(deadline, events.next())
                .await
                .with_context(|| format!("no Dialing within 30 s in campaign {campaign}"))?
                .context("the subscription ended")?;
            let event: serde_json::Value = serde_json::from_slice(&next.payload)?;
            if event["call_id"] == call.as_str() && event["type"] == "dialing" {
                out.push(accepted.elapsed().as_secs_f64() * 1e3);
                break;
            }
        }
        tokio::time::sleep(GAP).await;
    }
    out.sort_by(f64::total_cmp);
    Ok(out)
}
