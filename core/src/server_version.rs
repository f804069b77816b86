//! The oldest nats-server ccm runs on, and the check provisioning makes against it.
//!
//! 2.11 is the minimum because ccm is moving onto what 2.11 added: per-key TTL on KV
//! entries (ADR-43) for number claims and Idempotency-Keys, and consumer pause for paused
//! campaigns. Older servers lack both, so refusing them at provisioning says so at once
//! instead of failing later in a way that looks like a ccm bug.

use std::{cmp::Ordering, fmt};

/// The oldest supported release.
pub const MINIMUM: Version = Version {
    major: 2,
    minor: 11,
    patch: 0,
    pre_release: false,
};

/// The first release that gives every stream a default consumer limit (1,000) and reads
/// `max_consumers: -1` as that default; it also lets a stream's limit be changed in place.
pub const DEFAULT_CONSUMER_LIMIT: Version = Version {
    major: 2,
    minor: 15,
    patch: 0,
    pre_release: false,
};

/// A nats-server version as its `INFO` reports it: `2.15.1`, `2.11.0-RC.2`, `2.12.0-beta.3`.
/// Only what the minimum check needs is kept: a pre-release sorts before its release
/// (`2.11.0-RC.2` < `2.11.0`), and pre-releases of one version are not ordered among
/// themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
    pub pre_release: bool,
}

impl Version {
    /// Parses `MAJOR.MINOR.PATCH` with an optional `-suffix` (and tolerates a leading `v`).
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        let text = text.strip_prefix('v').unwrap_or(text);
        let (core, suffix) = match text.split_once('-') {
            Some((core, suffix)) => (core, Some(suffix)),
            None => (text, None),
        };
        if suffix.is_some_and(str::is_empty) {
            return None;
        }
        let mut parts = core.split('.').map(|p| {
            (!p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
                .then(|| p.parse::<u64>().ok())
                .flatten()
        });
        let (major, minor, patch) = (parts.next()??, parts.next()??, parts.next()??);
        if parts.next().is_some() {
            return None;
        }
        Some(Self {
            major,
            minor,
            patch,
            pre_release: suffix.is_some(),
        })
    }

    fn key(&self) -> (u64, u64, u64, bool) {
        // A release sorts after its pre-releases.
        (self.major, self.minor, self.patch, !self.pre_release)
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(&other.key())
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// Why ccm refuses a server.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnsupportedServer {
    #[error(
        "nats-server {actual} is older than {MINIMUM}, the oldest version ccm supports \
         (it needs per-key TTL and consumer pause from 2.11); upgrade the server"
    )]
    TooOld { actual: String },
    #[error(
        "nats-server reports version {actual:?}, which is not MAJOR.MINOR.PATCH; ccm needs \
         {MINIMUM} or newer"
    )]
    Unreadable { actual: String },
}

/// Whether ccm may run on a server reporting `actual` (its `INFO` version).
pub fn require_supported(actual: &str) -> Result<(), UnsupportedServer> {
    match Version::parse(actual) {
        Some(version) if version >= MINIMUM => Ok(()),
        Some(_) => Err(UnsupportedServer::TooOld {
            actual: actual.to_owned(),
        }),
        None => Err(UnsupportedServer::Unreadable {
            actual: actual.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// A version as numbers plus an optional pre-release suffix of the kinds nats-server
    /// uses, rendered as text.
    fn version() -> impl Strategy<Value = ((u64, u64, u64), Option<String>)> {
        let suffix = prop_oneof![
            Just(None),
            (1u32..20).prop_map(|n| Some(format!("beta.{n}"))),
            (1u32..20).prop_map(|n| Some(format!("RC.{n}"))),
            (1u32..20).prop_map(|n| Some(format!("RC{n}"))),
            Just(Some("preview.1".to_owned())),
        ];
        // Mostly near the minimum, so equal numbers (and 2.11.0 itself) come up often.
        let numbers = prop_oneof![
            3 => (1u64..4, 9u64..13, 0u64..3),
            1 => (0u64..1000, 0u64..1000, 0u64..1000),
        ];
        (numbers, suffix)
    }

    fn render((numbers, suffix): &((u64, u64, u64), Option<String>)) -> String {
        let (a, b, c) = numbers;
        match suffix {
            Some(s) => format!("{a}.{b}.{c}-{s}"),
            None => format!("{a}.{b}.{c}"),
        }
    }

    proptest! {
        /// Parsing keeps the numbers and whether there is a suffix.
        #[test]
        fn parses_what_it_renders(v in version()) {
            let parsed = Version::parse(&render(&v)).expect("a well-formed version");
            prop_assert_eq!((parsed.major, parsed.minor, parsed.patch), v.0);
            prop_assert_eq!(parsed.pre_release, v.1.is_some());
        }

        /// The order is the numbers' order, a pre-release just below its release.
        #[test]
        fn orders_as_the_numbers_then_release_after_pre_release(
            a in version(),
            b in version(),
            same_numbers in any::<bool>(),
        ) {
            let b = if same_numbers { (a.0, b.1) } else { b };
            let (pa, pb) = (Version::parse(&render(&a)).unwrap(), Version::parse(&render(&b)).unwrap());
            let expected = a.0.cmp(&b.0).then(b.1.is_some().cmp(&a.1.is_some()));
            prop_assert_eq!(pa.cmp(&pb), expected, "{} vs {}", render(&a), render(&b));
        }

        /// The check accepts exactly the versions at or above 2.11.0 (so not 2.11.0-RC.x),
        /// and its refusal names both versions.
        #[test]
        fn refuses_exactly_what_is_below_the_minimum(v in version()) {
            let text = render(&v);
            let supported = v.0 > (2, 11, 0) || (v.0 == (2, 11, 0) && v.1.is_none());
            match require_supported(&text) {
                Ok(()) => prop_assert!(supported, "{text} accepted"),
                Err(e) => {
                    prop_assert!(!supported, "{text} refused: {e}");
                    let message = e.to_string();
                    prop_assert!(message.contains(&text), "{message}");
                    prop_assert!(message.contains("2.11.0"), "{message}");
                }
            }
        }

        /// Anything that is not three dot-separated numbers is refused as unreadable.
        #[test]
        fn refuses_garbage(text in "[0-9a-zA-Z.\\-]{0,12}") {
            let well_formed = Version::parse(&text).is_some();
            let three_numbers = {
                let t = text.strip_prefix('v').unwrap_or(&text);
                let core = t.split_once('-').map_or(t, |(c, s)| if s.is_empty() { "x" } else { c });
                let parts: Vec<&str> = core.split('.').collect();
                parts.len() == 3 && parts.iter().all(|p| !p.is_empty() && p.len() < 20 && p.bytes().all(|b| b.is_ascii_digit()))
            };
            prop_assert_eq!(well_formed, three_numbers, "{:?}", text);
            if !well_formed {
                let refused = matches!(
                    require_supported(&text),
                    Err(UnsupportedServer::Unreadable { .. })
                );
                prop_assert!(refused, "{:?}", text);
            }
        }
    }

    #[test]
    fn the_debian_server_this_project_started_on_is_refused_by_name() {
        let message = require_supported("2.9.10").unwrap_err().to_string();
        assert!(
            message.contains("nats-server 2.9.10 is older than 2.11.0"),
            "{message}"
        );
        assert!(require_supported("2.15.1").is_ok());
        assert!(require_supported("").is_err());
    }
}
