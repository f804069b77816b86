//! Automatic disabling. An endpoint that answers 410 Gone is disabled at once; one whose
//! attempts have all failed for the whole retry horizon is disabled too. Either way the
//! subscription document says why, an `endpoint.disabled` notice is published on
//! `webhooks.endpoint.disabled.<id>` (core NATS) and logged, and the
//! `ccm_webhooks_endpoints_disabled_total` counter goes up.

use std::{sync::Arc, time::Duration};

use async_nats::jetstream::kv;
use ccm_core::webhooks::{ENDPOINT_DISABLED_SUBJECT, EndpointDisabled, Subscription};
use chrono::{DateTime, Utc};

use crate::subscriptions::Subscriptions;

/// An endpoint's current run of failures.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Health {
    failing_since: Option<DateTime<Utc>>,
}

impl Health {
    /// Resumes a run read from the delivery log.
    pub fn failing_since(since: Option<DateTime<Utc>>) -> Self {
        Self {
            failing_since: since,
        }
    }

    /// A delivery succeeded: the run is over.
    pub fn success(&mut self) {
        self.failing_since = None;
    }

    /// An attempt failed at `at`.
    pub fn failure(&mut self, at: DateTime<Utc>) {
        self.failing_since.get_or_insert(at);
    }

    /// Whether every attempt has failed for at least `horizon` by `now`.
    pub fn exhausted(&self, now: DateTime<Utc>, horizon: Duration) -> bool {
        self.failing_since
            .and_then(|since| (now - since).to_std().ok())
            .is_some_and(|failing| failing >= horizon)
    }
}

/// Why an endpoint is disabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Gone,
    Horizon,
}

impl Reason {
    fn label(self) -> &'static str {
        match self {
            Self::Gone => "gone",
            Self::Horizon => "horizon",
        }
    }

    fn describe(self, horizon: Duration) -> String {
        match self {
            Self::Gone => "the endpoint answered 410 Gone".into(),
            Self::Horizon => format!(
                "every delivery attempt failed for {} s (the retry horizon)",
                horizon.as_secs()
            ),
        }
    }
}

/// Disables endpoint `id` (compare-and-set on its document, so an edit made meanwhile is
/// kept) and tells the operator. Does nothing when it is already disabled or gone. The
/// document written is recorded in `subscriptions` at once, so no worker sends to the
/// endpoint again while the bucket's watch catches up.
pub async fn disable(
    store: &kv::Store,
    subscriptions: &Subscriptions,
    nats: &async_nats::Client,
    id: &str,
    reason: Reason,
    horizon: Duration,
) -> Result<(), async_nats::Error> {
    let describe = reason.describe(horizon);
    let mut sub = loop {
        let Some(entry) = store.entry(id).await? else {
            return Ok(());
        };
        if entry.operation != kv::Operation::Put {
            return Ok(());
        }
        let mut sub: Subscription = serde_json::from_slice(&entry.value)?;
        if !sub.enabled {
            return Ok(());
        }
        sub.enabled = false;
        sub.disabled_reason = Some(describe.clone());
        sub.disabled_at = Some(Utc::now());
        let document = serde_json::to_vec(&sub)?;
        match store.update(id, document.into(), entry.revision).await {
            Ok(revision) => {
                subscriptions.set(id, revision, Some(Arc::new(sub.clone())));
                break sub;
            }
            Err(e) if ccm_core::nats::lost_race(&e) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    metrics::counter!("ccm_webhooks_endpoints_disabled_total", "reason" => reason.label())
        .increment(1);
    tracing::warn!(endpoint = %id, url = %sub.url, reason = %describe, "webhook endpoint disabled");
    let notice = EndpointDisabled {
        kind: "endpoint.disabled".into(),
        endpoint_id: sub.id.clone(),
        url: std::mem::take(&mut sub.url),
        reason: describe,
        at: sub.disabled_at.unwrap_or_else(Utc::now),
    };
    nats.publish(
        format!("{ENDPOINT_DISABLED_SUBJECT}.{id}"),
        serde_json::to_vec(&notice)?.into(),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_of_failures_exhausts_the_horizon_and_a_success_ends_it() {
        let horizon = Duration::from_secs(3600);
        let t0 = Utc::now();
        let at = |secs: i64| t0 + chrono::Duration::seconds(secs);
        let mut health = Health::default();
        assert!(!health.exhausted(at(10_000), horizon), "no failure yet");
        health.failure(at(0));
        health.failure(at(1800));
        assert!(!health.exhausted(at(3599), horizon));
        assert!(
            health.exhausted(at(3600), horizon),
            "failing since the first one"
        );
        health.success();
        assert!(
            !health.exhausted(at(7200), horizon),
            "a success resets the run"
        );
        health.failure(at(7200));
        assert!(!health.exhausted(at(7200 + 3599), horizon));
        assert!(health.exhausted(at(7200 + 3600), horizon));
        let resumed = Health::failing_since(Some(at(0)));
        assert!(
            resumed.exhausted(at(3600), horizon),
            "a run read from the log counts"
        );
    }
}
