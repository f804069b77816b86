//! One lane of one endpoint: a worker takes the lane's pending messages from PostgreSQL in
//! queue order and delivers each before the next, so the events of a call reach the endpoint
//! in the order they were consumed, and a slow or dead endpoint only delays itself.
//!
//! A message is retried with jittered exponential backoff (honouring a clamped
//! `Retry-After`) until it is delivered, refused for good (a 4xx other than 408/429, or a
//! target that is not public, see [`crate::target`]), or has been failing for the retry
//! horizon. Every attempt goes to the delivery log.
//!
//! A worker runs only while its replica holds the lane's lease ([`crate::lease`]): it makes
//! an attempt only when the lease certainly outlasts it (the request timeout plus a margin),
//! and ends as soon as the lease is lost, so two replicas never work one lane at once.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use async_nats::jetstream::kv;
use ccm_core::{
    config::WebhooksConfig,
    metrics::{counter, histogram},
};
use chrono::Utc;
use rand::Rng as _;
use reqwest::{StatusCode, header};
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{
    health::{self, Health, Reason},
    lease::Lease,
    queue::{self, AttemptRecord, Lane, LogWriter, Queued, State, pause},
    sign,
    subscriptions::Subscriptions,
    target,
};

/// What every worker shares.
#[derive(Debug)]
pub struct Shared {
    pub pg: PgPool,
    pub http: reqwest::Client,
    pub subscriptions: Subscriptions,
    pub store: kv::Store,
    pub nats: async_nats::Client,
    pub config: WebhooksConfig,
    pub log: LogWriter,
}

/// One lane's worker.
#[derive(Debug)]
pub struct Worker {
    pub endpoint: String,
    pub lane: Lane,
    pub shared: Arc<Shared>,
    /// Shared by the endpoint's two lanes: either one's success ends the run of failures.
    pub health: Arc<Mutex<Health>>,
    /// Woken when messages are queued on this lane.
    pub wake: Arc<Notify>,
    /// This lane's lease; the worker ends when it is lost.
    pub lease: Lease,
}

/// How much longer than a request the lease must certainly last for an attempt to start:
/// time to record the attempt's outcome.
const LEASE_MARGIN: Duration = Duration::from_secs(1);

/// What one attempt came to.
#[derive(Debug, PartialEq, Eq)]
enum Attempt {
    Delivered(StatusCode),
    /// Retrying cannot help (a 4xx other than 408/429, or a redirect).
    Final(StatusCode),
    /// 408, 429 or 5xx; the receiver's `Retry-After`, if any.
    Retry(StatusCode, Option<Duration>),
    /// No answer (refused, reset, timed out).
    NoAnswer(String),
    /// Not sent: the target is not a public address (why, for the log). Final for the
    /// message, like a 4xx: the same URL resolving the same way would be refused again.
    TargetRefused(String),
}

impl Worker {
    /// Runs until `shutdown`, until the subscription is deleted or until the lease is lost.
    pub async fn run(self, shutdown: CancellationToken) {
        // Losing the lease stops the worker like a shutdown does: an attempt in flight is
        // abandoned unrecorded, and the replica that took the lease over sends it again.
        let shutdown = {
            let stop = shutdown.child_token();
            let (lost, s) = (self.lease.lost().clone(), stop.clone());
            tokio::spawn(async move {
                tokio::select! {
                    _ = lost.cancelled() => s.cancel(),
                    _ = s.cancelled() => {}
                }
            });
            stop
        };
        let _stop_watch = shutdown.clone().drop_guard();
        let poll = Duration::from_millis(self.shared.config.poll_interval_ms.max(10));
        let needed = Duration::from_millis(self.shared.config.request_timeout_ms) + LEASE_MARGIN;
        let mut queue = std::collections::VecDeque::new();
        let mut was_enabled = true;
        while !shutdown.is_cancelled() {
            let Some(sub) = self.shared.subscriptions.get(&self.endpoint) else {
                tracing::debug!(endpoint = %self.endpoint, "subscription deleted; worker ends");
                return;
            };
            if !sub.enabled {
                // Pending messages wait for the endpoint to be enabled again.
                was_enabled = false;
                queue.clear();
                if !pause(poll, &shutdown).await {
                    return;
                }
                continue;
            }
            if !was_enabled {
                // Enabled again by an operator: a fresh horizon.
                was_enabled = true;
                self.health().success();
            }
            if queue.is_empty() {
                match queue::pending(
                    &self.shared.pg,
                    &self.endpoint,
                    self.lane,
                    self.shared.config.queue_per_endpoint.max(1),
                )
                .await
                {
                    Ok(rows) if rows.is_empty() => {
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = self.wake.notified() => {}
                            _ = tokio::time::sleep(poll) => {}
                        }
                    }
                    Ok(rows) => queue.extend(rows),
                    Err(e) => {
                        tracing::warn!(endpoint = %self.endpoint, error = %ccm_core::telemetry::chain(&e), "cannot read the webhook queue");
                        if !pause(poll, &shutdown).await {
                            return;
                        }
                    }
                }
                continue;
            }
            let Some(message) = queue.front_mut() else {
                continue;
            };
            let wait = (message.next_attempt_at - Utc::now())
                .to_std()
                .unwrap_or_default();
            if !wait.is_zero() {
                // At most a poll interval at a time, so a disabling or deletion is noticed.
                if !pause(wait.min(poll), &shutdown).await {
                    return;
                }
                continue;
            }
            if self.lease.remaining() < needed {
                // The renewals are late (PostgreSQL slow or unreachable): an attempt started
                // now might still run when another replica takes the lane over.
                if !pause(poll, &shutdown).await {
                    return;
                }
                continue;
            }
            match self.attempt(&sub, message, &shutdown).await {
                Ok(true) => {
                    queue.pop_front();
                }
                Ok(false) => {}
                Err(e) => {
                    // The state could not be recorded: read the queue again after a pause
                    // rather than risk skipping or repeating out of order.
                    tracing::warn!(endpoint = %self.endpoint, error = %ccm_core::telemetry::chain(&e), "cannot record a webhook attempt");
                    queue.clear();
                    if !pause(poll, &shutdown).await {
                        return;
                    }
                }
            }
        }
    }

    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One attempt at the head message; true when the message is settled. An attempt cut
    /// short by the shutdown is not recorded: the message stays pending and is sent again
    /// after the restart.
    async fn attempt(
        &self,
        sub: &ccm_core::webhooks::Subscription,
        message: &mut Queued,
        shutdown: &CancellationToken,
    ) -> Result<bool, sqlx::Error> {
        let config = &self.shared.config;
        let horizon = Duration::from_secs(config.retry_horizon_secs);
        let now = Utc::now();
        let Some(keys) = sub.signing_keys(now) else {
            tracing::error!(endpoint = %self.endpoint, "subscription secret is not whsec_<base64>; message failed");
            queue::settle(
                &self.shared.pg,
                message,
                State::Failed,
                None,
                Some("unreadable secret"),
            )
            .await?;
            return Ok(true);
        };
        let started = Instant::now();
        let result = tokio::select! {
            result = send(&self.shared.http, config, &sub.url, &keys, message) => result,
            _ = shutdown.cancelled() => return Ok(false),
        };
        let latency = started.elapsed();
        // A missing answer is labelled `retry`: it is retried just like a 5xx.
        let label = match result {
            Attempt::Delivered(_) => "success",
            Attempt::Final(_) | Attempt::TargetRefused(_) => "final",
            Attempt::Retry(..) | Attempt::NoAnswer(_) => "retry",
        };
        histogram!("ccm_webhooks_request_duration_seconds", "result" => label)
            .record(latency.as_secs_f64());
        message.attempts += 1;
        let first = *message.first_attempt_at.get_or_insert(now);
        let (status, error) = match &result {
            Attempt::Delivered(s) | Attempt::Final(s) | Attempt::Retry(s, _) => {
                (Some(s.as_u16()), None)
            }
            Attempt::NoAnswer(e) | Attempt::TargetRefused(e) => (None, Some(e.clone())),
        };
        let succeeded = matches!(result, Attempt::Delivered(_));
        self.shared.log.record(AttemptRecord {
            endpoint_id: self.endpoint.clone(),
            message_id: message.id,
            msg_id: message.msg_id.clone(),
            event_type: message.event_type.clone(),
            call_id: message.call_id,
            lane: self.lane,
            attempt: message.attempts,
            status_code: status,
            succeeded,
            latency,
            error: error.clone(),
            at: now,
        });
        let mut disable = None;
        // Counted once the state is recorded, so an attempt whose state could not be written
        // (and is made again) is not counted twice.
        let mut outcome = None;
        let (state, last_error) = match result {
            Attempt::Delivered(_) => {
                self.health().success();
                outcome = Some("delivered");
                (State::Delivered, None)
            }
            Attempt::Final(code) => {
                self.health().failure(now);
                if code == StatusCode::GONE {
                    disable = Some(Reason::Gone);
                }
                tracing::warn!(endpoint = %self.endpoint, id = %message.msg_id, %code, "webhook refused; not retried");
                outcome = Some("refused");
                (State::Failed, Some(format!("refused with {code}")))
            }
            Attempt::TargetRefused(reason) => {
                // Counts towards the endpoint's run of failures, so a URL that keeps
                // resolving inside is disabled after the horizon; not at once, since a
                // name's answers can change.
                self.health().failure(now);
                tracing::warn!(endpoint = %self.endpoint, id = %message.msg_id, %reason, "webhook target refused; not retried");
                outcome = Some("refused");
                (State::Failed, Some(reason))
            }
            Attempt::Retry(..) | Attempt::NoAnswer(_)
                if (now - first).to_std().unwrap_or_default() >= horizon =>
            {
                self.health().failure(now);
                tracing::warn!(endpoint = %self.endpoint, id = %message.msg_id, attempts = message.attempts, "webhook retry horizon reached; message failed");
                outcome = Some("exhausted");
                (
                    State::Failed,
                    Some(error.unwrap_or_else(|| "retry horizon reached".into())),
                )
            }
            Attempt::Retry(_, retry_after) => {
                self.health().failure(now);
                let delay = next_delay(config, message.attempts, retry_after);
                message.next_attempt_at =
                    now + chrono::Duration::from_std(delay).unwrap_or_default();
                (State::Pending, None)
            }
            Attempt::NoAnswer(e) => {
                self.health().failure(now);
                let delay = next_delay(config, message.attempts, None);
                message.next_attempt_at =
                    now + chrono::Duration::from_std(delay).unwrap_or_default();
                (State::Pending, Some(e))
            }
        };
        if disable.is_none() && self.health().exhausted(now, horizon) {
            disable = Some(Reason::Horizon);
        }
        queue::settle(
            &self.shared.pg,
            message,
            state,
            status,
            last_error.as_deref(),
        )
        .await?;
        if let Some(outcome) = outcome {
            counter!("ccm_webhooks_deliveries_total", "outcome" => outcome).increment(1);
        }
        if let Some(reason) = disable
            && let Err(e) = health::disable(
                &self.shared.store,
                &self.shared.subscriptions,
                &self.shared.nats,
                &self.endpoint,
                reason,
                horizon,
            )
            .await
        {
            tracing::error!(endpoint = %self.endpoint, error = %ccm_core::telemetry::chain(e.as_ref()), "cannot disable the webhook endpoint");
        }
        Ok(state != State::Pending)
    }
}

/// The delay before attempt `attempts + 1`: exponential from `backoff_min_ms`, capped at
/// `backoff_max_ms`, with "equal jitter" (half fixed, half random) so endpoints that failed
/// together do not all retry at the same instant. A receiver's `Retry-After` is honoured up
/// to `max_retry_after_secs`, never sooner than the backoff.
fn next_delay(config: &WebhooksConfig, attempts: i32, retry_after: Option<Duration>) -> Duration {
    let exponent = u32::try_from(attempts.saturating_sub(1))
        .unwrap_or(0)
        .min(32);
    let base = config
        .backoff_min_ms
        .saturating_mul(1u64 << exponent)
        .min(config.backoff_max_ms.max(config.backoff_min_ms));
    let half = base / 2;
    let delay = Duration::from_millis(half + rand::rng().random_range(0..=half));
    let max_retry_after = Duration::from_secs(config.max_retry_after_secs);
    retry_after.map_or(delay, |r| r.min(max_retry_after).max(delay))
}

async fn send(
    client: &reqwest::Client,
    config: &WebhooksConfig,
    url: &str,
    keys: &[Vec<u8>],
    message: &Queued,
) -> Attempt {
    if let Err(refused) = target::check_literal(url, config) {
        return Attempt::TargetRefused(refused.to_string());
    }
    let timestamp = Utc::now().timestamp();
    let response = client
        .post(url)
        .header(header::CONTENT_TYPE, "application/json")
        .header("webhook-id", &message.msg_id)
        .header("webhook-timestamp", timestamp.to_string())
        .header(
            "webhook-signature",
            sign::signatures(keys, &message.msg_id, timestamp, &message.body),
        )
        .body(message.body.clone())
        .send()
        .await;
    match response {
        Ok(response) => classify(
            response.status(),
            response.headers().get(header::RETRY_AFTER),
        ),
        Err(e) => {
            tracing::debug!(%url, error = %ccm_core::telemetry::chain(&e), "webhook attempt failed");
            match target::refusal(&e) {
                Some(refused) => Attempt::TargetRefused(refused.to_string()),
                None => Attempt::NoAnswer(crate::error_chain(&e)),
            }
        }
    }
}

fn classify(status: StatusCode, retry_after: Option<&header::HeaderValue>) -> Attempt {
    if status.is_success() {
        Attempt::Delivered(status)
    } else if status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
    {
        Attempt::Retry(
            status,
            retry_after
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after),
        )
    } else {
        Attempt::Final(status)
    }
}

/// `Retry-After` as seconds or as an HTTP date.
fn parse_retry_after(value: &str) -> Option<Duration> {
    if let Ok(secs) = value.trim().parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value.trim()).ok()?;
    (at.with_timezone(&Utc) - Utc::now()).to_std().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified_like_standard_webhooks_senders() {
        assert_eq!(
            classify(StatusCode::NO_CONTENT, None),
            Attempt::Delivered(StatusCode::NO_CONTENT)
        );
        assert_eq!(
            classify(StatusCode::GONE, None),
            Attempt::Final(StatusCode::GONE)
        );
        assert_eq!(
            classify(StatusCode::BAD_REQUEST, None),
            Attempt::Final(StatusCode::BAD_REQUEST)
        );
        assert_eq!(
            classify(StatusCode::REQUEST_TIMEOUT, None),
            Attempt::Retry(StatusCode::REQUEST_TIMEOUT, None)
        );
        let five = header::HeaderValue::from_static("5");
        assert_eq!(
            classify(StatusCode::TOO_MANY_REQUESTS, Some(&five)),
            Attempt::Retry(StatusCode::TOO_MANY_REQUESTS, Some(Duration::from_secs(5)))
        );
        assert_eq!(
            classify(StatusCode::SERVICE_UNAVAILABLE, None),
            Attempt::Retry(StatusCode::SERVICE_UNAVAILABLE, None)
        );
    }

    #[test]
    fn retry_after_dates_in_the_past_are_ignored() {
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after(" 12 "), Some(Duration::from_secs(12)));
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap_and_honours_a_clamped_retry_after() {
        let config = WebhooksConfig {
            backoff_min_ms: 1000,
            backoff_max_ms: 8000,
            max_retry_after_secs: 30,
            ..WebhooksConfig::default()
        };
        for (attempts, base) in [
            (1, 1000),
            (2, 2000),
            (3, 4000),
            (4, 8000),
            (10, 8000),
            (200, 8000),
        ] {
            for _ in 0..50 {
                let d = next_delay(&config, attempts, None).as_millis() as u64;
                assert!((base / 2..=base).contains(&d), "attempt {attempts}: {d} ms");
            }
        }
        let d = next_delay(&config, 1, Some(Duration::from_secs(10)));
        assert_eq!(d, Duration::from_secs(10), "Retry-After honoured");
        let d = next_delay(&config, 1, Some(Duration::from_secs(3600)));
        assert_eq!(d, Duration::from_secs(30), "Retry-After clamped");
        let d = next_delay(&config, 4, Some(Duration::ZERO));
        assert!(d >= Duration::from_secs(4), "never sooner than the backoff");
    }
}
