//! Per-token rate limits on the expensive routes.
//!
//! The route table marks which methods of which routes are expensive (bulk calls, contact
//! import, list queries, dashboard tickets); [`expensive`] wraps them, inside the token check,
//! and the dashboard's stream checks [`RateLimits::check`] itself after its own credential
//! check. Each API token has a token bucket (GCRA, `governor`) that refills at
//! `ingest.rate_limits.expensive_per_minute` and holds `ingest.rate_limits.burst`; a request
//! over it answers `429` with `Retry-After`. Buckets are keyed by [`TokenId`], so there are
//! at most as many as configured tokens. They are per replica: behind a load balancer a token
//! gets the limit of each replica it reaches.

use std::num::NonZeroU32;

use axum::{
    extract::{Request, State},
    http::{HeaderValue, Method, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use ccm_core::config::RateLimitConfig;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter, clock::Clock};

use crate::{AppState, auth::TokenId, error::AppError};

/// The buckets of every token.
#[derive(Debug)]
pub struct RateLimits {
    /// `None`: `expensive_per_minute` is 0, no limit.
    limiter: Option<DefaultKeyedRateLimiter<TokenId>>,
}

/// A request over its token's limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooMany {
    /// Whole seconds until the bucket holds a request again (at least 1).
    pub retry_after_secs: u64,
}

impl RateLimits {
    pub fn new(config: &RateLimitConfig) -> Self {
        let limiter = NonZeroU32::new(config.expensive_per_minute).map(|per_minute| {
            let burst = NonZeroU32::new(config.burst).unwrap_or(NonZeroU32::MIN);
            RateLimiter::keyed(Quota::per_minute(per_minute).allow_burst(burst))
        });
        Self { limiter }
    }

    /// Takes one request from `token`'s bucket, or says how long until it can.
    pub fn check(&self, token: TokenId) -> Result<(), TooMany> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        limiter.check_key(&token).map_err(|not_until| {
            let wait = not_until.wait_time_from(limiter.clock().now());
            TooMany {
                retry_after_secs: retry_after_secs(wait),
            }
        })
    }
}

/// `Retry-After` is whole seconds: rounded up, so a client that waits that long gets through,
/// and at least 1, since 0 would invite an immediate retry.
fn retry_after_secs(wait: std::time::Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

impl IntoResponse for TooMany {
    fn into_response(self) -> Response {
        too_many_requests(
            "rate_limited",
            format!(
                "This token made too many requests to expensive routes; retry in {} s.",
                self.retry_after_secs
            ),
            self.retry_after_secs,
        )
    }
}

/// A `429` problem answer with `Retry-After`.
pub(crate) fn too_many_requests(
    code: &'static str,
    detail: String,
    retry_after_secs: u64,
) -> Response {
    let mut response = AppError::Client {
        status: StatusCode::TOO_MANY_REQUESTS,
        code,
        detail,
    }
    .into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
    response
}

/// The state of [`expensive`]: which methods of its route are limited.
#[derive(Debug, Clone)]
pub(crate) struct Limited {
    pub(crate) state: AppState,
    pub(crate) methods: &'static [Method],
}

/// Counts a request to an expensive method against its token's bucket. Runs inside the token
/// check, which put the token's id in the request. HEAD counts as GET, since axum answers it
/// with the GET handler.
pub(crate) async fn expensive(
    State(limited): State<Limited>,
    request: Request,
    next: Next,
) -> Response {
    let method = if request.method() == Method::HEAD {
        &Method::GET
    } else {
        request.method()
    };
    if limited.methods.contains(method) {
        // Always there: the table layers this inside `auth::require_token`.
        if let Some(token) = request.extensions().get::<TokenId>().copied()
            && let Err(too_many) = limited.state.limits.check(token)
        {
            return too_many.into_response();
        }
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn token(n: u8) -> TokenId {
        TokenId::from_bytes(&[n; 16]).expect("16 bytes")
    }

    #[test]
    fn a_token_gets_its_burst_then_waits_while_others_go_on() {
        let limits = RateLimits::new(&RateLimitConfig {
            expensive_per_minute: 1,
            burst: 5,
        });
        for _ in 0..5 {
            assert_eq!(limits.check(token(1)), Ok(()));
        }
        let Err(too_many) = limits.check(token(1)) else {
            panic!("over the burst")
        };
        // One a minute: the next one is a minute away, give or take the test's own time.
        assert!(
            (55..=60).contains(&too_many.retry_after_secs),
            "{too_many:?}"
        );
        assert_eq!(limits.check(token(2)), Ok(()), "another token");
    }

    #[test]
    fn zero_per_minute_turns_the_limit_off() {
        let limits = RateLimits::new(&RateLimitConfig {
            expensive_per_minute: 0,
            burst: 0,
        });
        for _ in 0..1_000 {
            assert_eq!(limits.check(token(1)), Ok(()));
        }
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up_and_never_zero() {
        for (wait, secs) in [
            (Duration::ZERO, 1),
            (Duration::from_millis(1), 1),
            (Duration::from_millis(1_000), 1),
            (Duration::from_millis(1_001), 2),
            (Duration::from_secs(59), 59),
        ] {
            assert_eq!(retry_after_secs(wait), secs, "{wait:?}");
        }
    }
}
