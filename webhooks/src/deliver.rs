//! One endpoint's deliveries: a task per endpoint takes its events in order from a bounded
//! queue and delivers each before the next, so a slow endpoint only delays itself and the
//! events of a call reach an endpoint in the order they were consumed.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use async_nats::jetstream::{AckKind, Message};
use backon::{BackoffBuilder, ExponentialBuilder};
use bytes::Bytes;
use ccm_core::config::WebhooksConfig;
use reqwest::{StatusCode, header};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{sign, subscriptions::Subscriptions};

/// A JetStream message shared by the deliveries it fans out to. The last delivery to finish
/// acks it; if any was abandoned (shutdown) it is NAKed instead, so no endpoint loses it.
#[derive(Debug)]
pub struct Pending {
    pub message: Message,
    abandoned: AtomicBool,
}

impl Pending {
    pub fn new(message: Message) -> Arc<Self> {
        Arc::new(Self {
            message,
            abandoned: AtomicBool::new(false),
        })
    }

    /// Called by each delivery when it is over.
    async fn release(self: Arc<Self>, delivered: bool) {
        if !delivered {
            self.abandoned.store(true, Ordering::SeqCst);
        }
        if let Some(last) = Arc::into_inner(self) {
            let kind = if last.abandoned.load(Ordering::SeqCst) {
                AckKind::Nak(None)
            } else {
                AckKind::Ack
            };
            tracing::debug!(?kind, "event settled");
            if let Err(e) = last.message.ack_with(kind).await {
                tracing::warn!(error = %e, "webhook event ack failed; it will come again");
            }
        }
    }
}

/// One event for one endpoint.
#[derive(Debug)]
pub struct Job {
    /// `webhook-id`: the event's de-duplication id, the same on every attempt and redelivery.
    pub id: String,
    pub body: Bytes,
    pub pending: Arc<Pending>,
}

/// What one attempt came to.
#[derive(Debug, PartialEq, Eq)]
enum Attempt {
    Delivered,
    /// Retrying cannot help (a 4xx other than 408/429, or a redirect).
    Final(StatusCode),
    /// 408, 429, 5xx or no answer; the receiver's `Retry-After`, if any.
    Retry(Option<Duration>),
}

/// Runs one endpoint's queue until `shutdown`.
pub async fn endpoint(
    endpoint: String,
    mut jobs: mpsc::Receiver<Job>,
    subscriptions: Subscriptions,
    client: reqwest::Client,
    config: Arc<WebhooksConfig>,
    shutdown: CancellationToken,
) {
    while let Some(job) = tokio::select! {
        _ = shutdown.cancelled() => None,
        job = jobs.recv() => job,
    } {
        let done = deliver(&endpoint, &job, &subscriptions, &client, &config, &shutdown).await;
        job.pending.release(done).await;
    }
    // What is still queued goes back to JetStream.
    jobs.close();
    while let Some(job) = jobs.recv().await {
        job.pending.release(false).await;
    }
}

/// Delivers one event with retries. True when it is settled (delivered, refused for good,
/// attempts exhausted, or the subscription is gone); false when abandoned at shutdown.
async fn deliver(
    endpoint: &str,
    job: &Job,
    subscriptions: &Subscriptions,
    client: &reqwest::Client,
    config: &WebhooksConfig,
    shutdown: &CancellationToken,
) -> bool {
    let mut backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(config.backoff_min_ms))
        .with_max_delay(Duration::from_millis(config.backoff_max_ms))
        .with_max_times(config.max_attempts.saturating_sub(1) as usize)
        .with_jitter()
        .build();
    let max_retry_after = Duration::from_secs(config.max_retry_after_secs);
    let mut attempts = 0u32;
    loop {
        // Read on every attempt, so a changed URL or secret applies to retries too.
        let Some(sub) = subscriptions.get(endpoint).filter(|s| s.enabled) else {
            tracing::info!(%endpoint, id = %job.id, "subscription gone or disabled; event dropped");
            return true;
        };
        let Some(key) = sub.key() else {
            tracing::error!(%endpoint, "subscription secret is not whsec_<base64>; event dropped");
            return true;
        };
        attempts += 1;
        let result = attempt(client, &sub.url, &key, job).await;
        let wait = match result {
            Attempt::Delivered => {
                tracing::debug!(%endpoint, id = %job.id, attempts, "webhook delivered");
                return true;
            }
            Attempt::Final(status) => {
                tracing::warn!(%endpoint, id = %job.id, %status, "webhook refused; not retried");
                return true;
            }
            Attempt::Retry(retry_after) => match backoff.next() {
                // The receiver's wish is honoured, within the clamp; never sooner than ours.
                Some(delay) => retry_after.map_or(delay, |r| r.min(max_retry_after).max(delay)),
                None => {
                    tracing::warn!(%endpoint, id = %job.id, attempts, "webhook attempts exhausted");
                    return true;
                }
            },
        };
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

async fn attempt(client: &reqwest::Client, url: &str, key: &[u8], job: &Job) -> Attempt {
    let timestamp = chrono::Utc::now().timestamp();
    let response = client
        .post(url)
        .header(header::CONTENT_TYPE, "application/json")
        .header("webhook-id", &job.id)
        .header("webhook-timestamp", timestamp.to_string())
        .header(
            "webhook-signature",
            sign::signature(key, &job.id, timestamp, &job.body),
        )
        .body(job.body.clone())
        .send()
        .await;
    let response = match response {
        Ok(response) => response,
        Err(e) => {
            tracing::debug!(%url, error = %e, "webhook attempt failed");
            return Attempt::Retry(None);
        }
    };
    classify(
        response.status(),
        response.headers().get(header::RETRY_AFTER),
    )
}

fn classify(status: StatusCode, retry_after: Option<&header::HeaderValue>) -> Attempt {
    if status.is_success() {
        Attempt::Delivered
    } else if status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
    {
        Attempt::Retry(
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
    (at.with_timezone(&chrono::Utc) - chrono::Utc::now())
        .to_std()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified_like_standard_webhooks_senders() {
        assert_eq!(classify(StatusCode::NO_CONTENT, None), Attempt::Delivered);
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
            Attempt::Retry(None)
        );
        let five = header::HeaderValue::from_static("5");
        assert_eq!(
            classify(StatusCode::TOO_MANY_REQUESTS, Some(&five)),
            Attempt::Retry(Some(Duration::from_secs(5)))
        );
        assert_eq!(
            classify(StatusCode::SERVICE_UNAVAILABLE, None),
            Attempt::Retry(None)
        );
    }

    #[test]
    fn retry_after_dates_in_the_past_are_ignored() {
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after(" 12 "), Some(Duration::from_secs(12)));
        assert_eq!(parse_retry_after("soon"), None);
    }
}
