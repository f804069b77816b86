//! The connect-time check of webhook targets: ingest checks a URL when it is stored, but a
//! host name can resolve to anything when the request is made (a name pointing at
//! 127.0.0.1, DNS rebinding), so the deliverer's HTTP client judges every address it would
//! connect to by [`ccm_core::ssrf`]. Names go through [`PublicResolver`], which drops the
//! addresses that are not public; IP literals never reach a resolver, so [`check_literal`]
//! judges them before the request. Redirects are not followed and no proxy is used, so no
//! connection bypasses the check.
//!
//! Off with `webhooks.allow_private_targets` (tests and development deliver to loopback).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use ccm_core::{
    config::WebhooksConfig,
    ssrf::{self, RefusedAddress},
};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Why a delivery was not attempted: its target is not public.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetRefused {
    #[error("target refused: {0}")]
    Literal(RefusedAddress),
    #[error("target refused: {host} resolves only to addresses that are not public ({refused})")]
    Resolved { host: String, refused: String },
}

/// The HTTP client deliveries are made with.
pub fn client(config: &WebhooksConfig) -> reqwest::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .timeout(Duration::from_millis(config.request_timeout_ms))
        // A redirect could lead to a target the check would refuse; it counts as a refusal.
        .redirect(reqwest::redirect::Policy::none())
        // A proxy (from HTTP_PROXY and the like) would resolve the name itself, unchecked.
        .no_proxy()
        .user_agent(concat!("ccm-webhooks/", env!("CARGO_PKG_VERSION")));
    if !config.allow_private_targets {
        builder = builder.dns_resolver(Arc::new(PublicResolver));
    }
    builder.build()
}

/// Refuses a URL whose host is an IP literal that is not public (a name is judged when it
/// is resolved). A URL that does not parse is left to the client to report.
pub fn check_literal(url: &str, config: &WebhooksConfig) -> Result<(), TargetRefused> {
    if config.allow_private_targets {
        return Ok(());
    }
    let Ok(url) = reqwest::Url::parse(url) else {
        return Ok(());
    };
    let ip = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.into(),
        Some(url::Host::Ipv6(ip)) => ip.into(),
        _ => return Ok(()),
    };
    ssrf::check(ip).map_err(TargetRefused::Literal)
}

/// The refusal behind a failed request, if the resolver refused its target.
pub fn refusal(error: &reqwest::Error) -> Option<&TargetRefused> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(refused) = e.downcast_ref::<TargetRefused>() {
            return Some(refused);
        }
        source = e.source();
    }
    None
}

/// Resolves with the system resolver, as reqwest does by default, and keeps only the public
/// addresses: a name with some public addresses is delivered to those.
#[derive(Debug)]
pub struct PublicResolver;

impl Resolve for PublicResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let public = public_only(&host, addrs)?;
            Ok(Box::new(public.into_iter()) as Addrs)
        })
    }
}

/// The public addresses among those `host` resolved to; refused when there is none.
fn public_only(
    host: &str,
    addrs: impl IntoIterator<Item = SocketAddr>,
) -> Result<Vec<SocketAddr>, TargetRefused> {
    let (public, refused): (Vec<SocketAddr>, Vec<SocketAddr>) =
        addrs.into_iter().partition(|a| ssrf::is_public(a.ip()));
    if public.is_empty() {
        let refused = refused
            .iter()
            .filter_map(|a| ssrf::check(a.ip()).err())
            .map(|r| r.to_string())
            .collect::<Vec<_>>();
        let refused = if refused.is_empty() {
            "no address".to_owned()
        } else {
            refused.join(", ")
        };
        return Err(TargetRefused::Resolved {
            host: host.to_owned(),
            refused,
        });
    }
    Ok(public)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(allow: bool) -> WebhooksConfig {
        WebhooksConfig {
            allow_private_targets: allow,
            ..WebhooksConfig::default()
        }
    }

    #[test]
    fn private_answers_are_dropped_and_a_name_with_none_left_is_refused() {
        let addr = |s: &str| s.parse::<SocketAddr>().expect("addr");
        let kept = public_only(
            "mixed.example",
            [addr("10.0.0.1:0"), addr("93.184.215.14:0"), addr("[::1]:0")],
        )
        .expect("a public address is left");
        assert_eq!(kept, [addr("93.184.215.14:0")]);
        let refused = public_only(
            "rebound.example",
            [addr("127.0.0.1:0"), addr("[::ffff:169.254.169.254]:0")],
        )
        .expect_err("nothing public");
        assert_eq!(
            refused.to_string(),
            "target refused: rebound.example resolves only to addresses that are not public \
             (127.0.0.1 is not public (loopback), ::ffff:169.254.169.254 is not public (link-local))"
        );
    }

    #[test]
    fn ip_literals_are_judged_unless_private_targets_are_allowed() {
        for url in [
            "http://127.0.0.1:8080/hook",
            "http://[::ffff:7f00:1]/",
            "http://0x7f.1/",
            "http://[64:ff9b::a00:1]/",
            "https://169.254.169.254/latest/meta-data",
        ] {
            assert!(check_literal(url, &config(false)).is_err(), "{url}");
            assert!(check_literal(url, &config(true)).is_ok(), "{url}");
        }
        for url in [
            "https://8.8.8.8/",
            "https://[2606:4700:4700::1111]/",
            "https://localhost/",
        ] {
            assert!(check_literal(url, &config(false)).is_ok(), "{url}");
        }
    }
}
