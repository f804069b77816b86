//! The caller-id pools' answer rates: gauges per campaign and number, and
//! `caller_id.flagged` for a number answering far less than the rest of its pool.
//!
//! Checked every `webhooks.caller_id_check_ms` by the replica that holds the dispatch lease,
//! over the attempts placed in the last `webhooks.caller_id_window_secs`: each `Dialing` event
//! that names a caller id, with its attempt's outcome (answered: `PICKED`). Which numbers are
//! flagged is [`ccm_core::caller_id::health::flagged`]'s decision. The message's `webhook-id`
//! is `caller_id.flagged/<campaign>/<number>/<UTC date>`, so each replica and each check
//! queues it at most once a day for a number that stays flagged.

use std::collections::BTreeMap;

use ccm_core::{
    CampaignId,
    caller_id::health::{Flag, FlagRule, NumberStats, flagged},
    config::WebhooksConfig,
    metrics::gauge,
    webhooks::{CALLER_ID_FLAGGED, Subscription},
};
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use crate::{payload::VERSION, queue::NewMessage};

#[derive(Debug, Serialize)]
struct Payload<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    version: u32,
    timestamp: DateTime<Utc>,
    data: Data<'a>,
}

#[derive(Debug, Serialize)]
struct Data<'a> {
    campaign_id: i64,
    #[serde(flatten)]
    flag: &'a Flag,
    window_secs: u64,
}

/// Attempts and answers per campaign and caller id over the window.
async fn rates(
    pg: &PgPool,
    window_secs: u64,
) -> Result<BTreeMap<i64, Vec<NumberStats>>, sqlx::Error> {
    let rows: Vec<(i64, String, i64, i64)> = sqlx::query_as(
        "SELECT d.campaign_id, d.payload->>'caller_id', count(*),
                count(*) FILTER (WHERE o.payload->>'status' = 'PICKED')
         FROM call_events d
         JOIN call_events o ON o.call_id = d.call_id AND o.attempt = d.attempt
                           AND o.kind = 'outcome'
         WHERE d.kind = 'dialing' AND d.payload ? 'caller_id'
           AND d.occurred_at > now() - make_interval(secs => $1)
         GROUP BY 1, 2",
    )
    .bind(window_secs as f64)
    .fetch_all(pg)
    .await?;
    let mut by_campaign: BTreeMap<i64, Vec<NumberStats>> = BTreeMap::new();
    for (campaign, caller_id, attempts, answered) in rows {
        by_campaign.entry(campaign).or_default().push(NumberStats {
            caller_id,
            attempts: u64::try_from(attempts).unwrap_or(0),
            answered: u64::try_from(answered).unwrap_or(0),
        });
    }
    Ok(by_campaign)
}

/// Computes the rates, sets the gauges, and answers the `caller_id.flagged` messages to
/// queue.
pub(crate) async fn check(
    pg: &PgPool,
    config: &WebhooksConfig,
    subscriptions: &[std::sync::Arc<Subscription>],
) -> Result<Vec<NewMessage>, sqlx::Error> {
    let rule = FlagRule {
        min_attempts: config.caller_id_flag_min_attempts,
        ratio: config.caller_id_flag_ratio,
    };
    let now = Utc::now();
    let mut messages = Vec::new();
    for (campaign, pool) in rates(pg, config.caller_id_window_secs).await? {
        let flags = flagged(&pool, rule);
        for number in &pool {
            let labels = [
                ("campaign", campaign.to_string()),
                ("caller_id", number.caller_id.clone()),
            ];
            gauge!("ccm_caller_id_answer_rate", &labels).set(number.rate());
            let is_flagged = flags.iter().any(|f| f.caller_id == number.caller_id);
            gauge!("ccm_caller_id_flagged", &labels).set(if is_flagged { 1.0 } else { 0.0 });
        }
        let Some(id) = u64::try_from(campaign)
            .ok()
            .and_then(|id| CampaignId::new(id).ok())
        else {
            continue;
        };
        for flag in &flags {
            tracing::warn!(campaign, caller_id = %flag.caller_id, rate = flag.answer_rate,
                pool_rate = flag.pool_answer_rate, "caller id answers far below its pool");
            let payload = Payload {
                kind: CALLER_ID_FLAGGED,
                version: VERSION,
                timestamp: now,
                data: Data {
                    campaign_id: campaign,
                    flag,
                    window_secs: config.caller_id_window_secs,
                },
            };
            let Ok(body) = serde_json::to_vec(&payload) else {
                continue;
            };
            let msg_id = format!(
                "{CALLER_ID_FLAGGED}/{campaign}/{}/{}",
                flag.caller_id,
                now.format("%Y-%m-%d")
            );
            for sub in subscriptions.iter().filter(|s| wants(s, id)) {
                messages.push(NewMessage {
                    endpoint_id: sub.id.clone(),
                    msg_id: msg_id.clone(),
                    event_type: CALLER_ID_FLAGGED.into(),
                    call_id: None,
                    campaign_id: campaign,
                    body: body.clone(),
                    skipped: !sub.enabled,
                });
            }
        }
    }
    Ok(messages)
}

/// Whether `sub` asked for `caller_id.flagged` of `campaign` (enabled or not).
fn wants(sub: &Subscription, campaign: CampaignId) -> bool {
    sub.events.iter().any(|e| e == CALLER_ID_FLAGGED)
        && (sub.campaign_ids.is_empty() || sub.campaign_ids.contains(&campaign))
}
