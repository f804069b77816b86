//! The JetStream topology: streams, consumers and KV buckets, defined once in `nats/`.
//!
//! The JSON files in `nats/` are the NATS server's own configuration format, so an operator
//! can apply them with `nats stream add --config nats/streams/CALLS.json`. They are embedded
//! here so every service provisions exactly the same definitions. KV buckets are defined as
//! their backing streams (`KV_<bucket>.json`) and provisioned as buckets (see [`buckets`]).
//!
//! Provisioning is idempotent: an absent stream or consumer is created, a compatible
//! difference is updated in place, and an incompatible one (retention, storage, a consumer's
//! filter or policies) is reported as drift and left alone: nothing is ever deleted. A server
//! older than [`crate::server_version::MINIMUM`] is refused before anything is touched.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, kv, stream};
use serde::Serialize;

mod buckets;
pub use buckets::NotABucket;

use crate::{
    config::StreamSettings,
    server_version::{UnsupportedServer, require_supported},
};

/// A definition file as embedded: its path below `nats/` and its text.
#[derive(Debug, Clone, Copy)]
pub struct Definition {
    pub path: &'static str,
    pub json: &'static str,
}

macro_rules! definitions {
    ($($path:literal),* $(,)?) => {
        &[$(Definition { path: $path, json: include_str!(concat!("../../nats/", $path)) }),*]
    };
}

/// Every stream definition.
pub const STREAMS: &[Definition] = definitions![
    "streams/CALLS.json",
    "streams/CALL_EVENTS.json",
    "streams/RETRIES.json",
    "streams/DLQ.json",
    "streams/ADVISORIES.json",
    "streams/AUDIT.json",
    "streams/KV_campaigns.json",
    "streams/KV_active_calls.json",
    "streams/KV_counters.json",
    "streams/KV_contacts.json",
    "streams/KV_idempotency.json",
    "streams/KV_webhooks.json",
    "streams/KV_dnc.json",
    "streams/KV_consents.json",
    "streams/KV_pacing.json",
    "streams/KV_attempts.json",
    "streams/KV_placements.json",
    "streams/KV_tokens.json",
];

/// Every fixed consumer definition, with its stream (the folder name).
pub const CONSUMERS: &[Definition] = definitions![
    "consumers/CALLS/projector_calls.json",
    "consumers/CALL_EVENTS/projector_events.json",
    "consumers/CALL_EVENTS/retrier_outcomes.json",
    "consumers/CALL_EVENTS/webhooks.json",
    "consumers/RETRIES/retrier_retries.json",
    "consumers/ADVISORIES/retrier_advisories.json",
    "consumers/KV_campaigns/projector_campaigns.json",
    "consumers/KV_contacts/projector_contacts.json",
    "consumers/DLQ/projector_dlq.json",
];

/// The template of a campaign's dial consumer; `{campaign}` stands for the campaign id.
pub const DIAL_TEMPLATE: Definition = Definition {
    path: "consumers/CALLS/dial_template.json",
    json: include_str!("../../nats/consumers/CALLS/dial_template.json"),
};

/// Stream names, for code that addresses a stream directly.
pub mod names {
    pub const CALLS: &str = "CALLS";
    pub const CALL_EVENTS: &str = "CALL_EVENTS";
    pub const RETRIES: &str = "RETRIES";
    pub const DLQ: &str = "DLQ";
    pub const ADVISORIES: &str = "ADVISORIES";
    /// The API's audit log (`audit.<role>`), written by ingest.
    pub const AUDIT: &str = "AUDIT";
    /// KV bucket names (their streams are `KV_<bucket>`).
    pub const KV_CAMPAIGNS: &str = "campaigns";
    pub const KV_ACTIVE_CALLS: &str = "active_calls";
    pub const KV_COUNTERS: &str = "counters";
    /// A campaign's phone numbers (`<campaign>.<digits>`), written by ingest.
    pub const KV_CONTACTS: &str = "contacts";
    /// `Idempotency-Key` of `POST /api/v1/calls` (hex) → the call accepted for it.
    pub const KV_IDEMPOTENCY: &str = "idempotency";
    /// Outbound webhook subscriptions: subscription id -> [`crate::webhooks::Subscription`].
    pub const KV_WEBHOOKS: &str = "webhooks";
    /// Do-not-call lists (`global.<digits>`, `<campaign>.<digits>`), see [`crate::dnc`].
    pub const KV_DNC: &str = "dnc";
    /// Valid consents and the last revocation per number and type (`<digits>.<type>`), see
    /// [`crate::consent`].
    pub const KV_CONSENTS: &str = "consents";
    /// The dialers' shared pacing slots (`global`, `<campaign>`).
    pub const KV_PACING: &str = "pacing";
    /// Recent attempt times per number (`<digits>`), for the frequency limits.
    pub const KV_ATTEMPTS: &str = "attempts";
    /// The carrier's call id (base64url) → the attempt it placed, see [`crate::placements`].
    pub const KV_PLACEMENTS: &str = "placements";
    /// API tokens made through the API: id → [`crate::access::StoredToken`] (never the token).
    pub const KV_TOKENS: &str = "tokens";
}

/// What went wrong with the topology.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("nats/{path} does not parse as a NATS configuration")]
    Parse {
        path: &'static str,
        source: serde_json::Error,
    },
    #[error("nats/{path} is not a KV bucket: {source}")]
    NotABucket {
        path: &'static str,
        source: NotABucket,
    },
    #[error("cannot read stream {stream}")]
    StreamInfo {
        stream: String,
        source: async_nats::Error,
    },
    #[error("cannot create or update stream {stream}")]
    Stream {
        stream: String,
        source: async_nats::Error,
    },
    #[error("cannot create or update consumer {consumer} on {stream}")]
    Consumer {
        stream: String,
        consumer: String,
        source: async_nats::Error,
    },
    #[error("no answer from the NATS server in {0:?}, so its version is unknown")]
    NoServerInfo(Duration),
    #[error(transparent)]
    UnsupportedServer(#[from] UnsupportedServer),
}

/// One difference that provisioning may not fix on its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Drift {
    pub object: String,
    pub field: &'static str,
    pub wanted: String,
    pub actual: String,
}

/// What provisioning did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    pub created: Vec<String>,
    pub updated: Vec<String>,
    pub unchanged: Vec<String>,
    pub drift: Vec<Drift>,
}

/// The parsed topology with the deployment's settings applied.
#[derive(Debug, Clone)]
pub struct Topology {
    /// The streams other than buckets.
    pub streams: Vec<stream::Config>,
    /// The KV buckets (from their `KV_<bucket>.json` stream definitions).
    pub buckets: Vec<kv::Config>,
    /// `(stream, consumer)` pairs.
    pub consumers: Vec<(String, pull::Config)>,
    dial_template: pull::Config,
}

impl Topology {
    /// Parses the embedded definitions and applies `settings` (retention and replicas).
    pub fn load(settings: &StreamSettings) -> Result<Self, TopologyError> {
        let day = Duration::from_secs(86_400);
        let mut streams = Vec::with_capacity(STREAMS.len());
        let mut buckets = Vec::new();
        for def in STREAMS {
            let mut config: stream::Config = parse(def)?;
            config.num_replicas = settings.replicas;
            if config.name.starts_with("KV_") {
                let bucket = buckets::bucket_config(&config).map_err(|source| {
                    TopologyError::NotABucket {
                        path: def.path,
                        source,
                    }
                })?;
                buckets.push(bucket);
                continue;
            }
            match config.name.as_str() {
                names::CALLS | names::CALL_EVENTS => {
                    config.max_age = settings.calls_max_age();
                    // The server refuses a duplicate window longer than the retention (only a
                    // test's seconds-long retention comes near it).
                    if !config.max_age.is_zero() {
                        config.duplicate_window = config.duplicate_window.min(config.max_age);
                    }
                }
                names::DLQ => config.max_age = day * settings.dlq_max_age_days,
                _ => {}
            }
            streams.push(config);
        }
        let mut consumers = Vec::with_capacity(CONSUMERS.len());
        for def in CONSUMERS {
            let stream = def.path.split('/').nth(1).unwrap_or_default().to_owned();
            consumers.push((stream, parse(def)?));
        }
        Ok(Self {
            streams,
            buckets,
            consumers,
            dial_template: parse(&DIAL_TEMPLATE)?,
        })
    }

    /// The template of every campaign's dial consumer; [`crate::dial_consumer`] fills it in.
    pub(crate) fn dial_template(&self) -> &pull::Config {
        &self.dial_template
    }

    /// Creates or updates every stream, bucket and fixed consumer; reports what it did.
    pub async fn provision(&self, js: &jetstream::Context) -> Result<Report, TopologyError> {
        let version = server_version(&js.client()).await?;
        require_supported(&version)?;
        let limits = crate::server_version::Version::parse(&version)
            .is_some_and(|v| v >= crate::server_version::DEFAULT_CONSUMER_LIMIT);
        let mut report = Report::default();
        for wanted in &self.streams {
            provision_stream(js, wanted, limits, &mut report).await?;
        }
        // Before the consumers: the projector follows two buckets' streams.
        for wanted in &self.buckets {
            buckets::provision_bucket(js, wanted, &mut report).await?;
        }
        for (stream, wanted) in &self.consumers {
            provision_consumer(js, stream, wanted, &mut report).await?;
        }
        Ok(report)
    }
}

/// How long provisioning waits for the first connection to learn the server's version.
const SERVER_INFO_TIMEOUT: Duration = Duration::from_secs(10);

/// The version the server announced in its `INFO`. The client may still be connecting
/// (`retry_on_initial_connect`), so a flush (a round trip) comes first.
async fn server_version(client: &async_nats::Client) -> Result<String, TopologyError> {
    if let Some(info) = client.try_server_info() {
        return Ok(info.version);
    }
    let _ = tokio::time::timeout(SERVER_INFO_TIMEOUT, client.flush()).await;
    client
        .try_server_info()
        .map(|info| info.version)
        .ok_or(TopologyError::NoServerInfo(SERVER_INFO_TIMEOUT))
}

fn parse<T: serde::de::DeserializeOwned>(def: &Definition) -> Result<T, TopologyError> {
    serde_json::from_str(def.json).map_err(|source| TopologyError::Parse {
        path: def.path,
        source,
    })
}

async fn provision_stream(
    js: &jetstream::Context,
    wanted: &stream::Config,
    default_consumer_limit: bool,
    report: &mut Report,
) -> Result<(), TopologyError> {
    provision_backed(
        js,
        &wanted.name,
        report,
        async {
            js.create_stream(wanted.clone())
                .await
                .map(drop)
                .map_err(Into::into)
        },
        |actual| {
            (
                stream_drift(wanted, actual),
                stream_differs(wanted, actual)
                    || consumer_limit_differs(wanted, actual, default_consumer_limit),
            )
        },
        async {
            js.update_stream(wanted.clone())
                .await
                .map(drop)
                .map_err(Into::into)
        },
    )
    .await
}

/// The one way an object kept in a stream (a stream, or a KV bucket's) is provisioned: read
/// it; create it when missing (a concurrent creator counts as unchanged); leave it, reporting
/// the drift, when `judge` finds differences the server cannot apply; else update it in place
/// when `judge` says it differs.
pub(super) async fn provision_backed(
    js: &jetstream::Context,
    name: &str,
    report: &mut Report,
    create: impl Future<Output = Result<(), async_nats::Error>>,
    judge: impl FnOnce(&stream::Config) -> (Vec<Drift>, bool),
    update: impl Future<Output = Result<(), async_nats::Error>>,
) -> Result<(), TopologyError> {
    let object = format!("stream {name}");
    let wrap = |source: async_nats::Error| TopologyError::Stream {
        stream: name.to_owned(),
        source,
    };
    let actual = match js.get_stream(name).await {
        Ok(stream) => stream.cached_info().config.clone(),
        Err(e) if is_stream_not_found(&e) => {
            match create.await {
                Ok(()) => report.created.push(object),
                // Another service provisioning at the same moment created it first.
                Err(_) if js.get_stream(name).await.is_ok() => report.unchanged.push(object),
                Err(e) => return Err(wrap(e)),
            }
            return Ok(());
        }
        Err(e) => {
            return Err(TopologyError::StreamInfo {
                stream: name.to_owned(),
                source: e.into(),
            });
        }
    };
    let (drift, differs) = judge(&actual);
    if !drift.is_empty() {
        report.drift.extend(drift);
    } else if differs {
        update.await.map_err(wrap)?;
        report.updated.push(object);
    } else {
        report.unchanged.push(object);
    }
    Ok(())
}

/// Differences the server cannot apply to an existing stream.
fn stream_drift(wanted: &stream::Config, actual: &stream::Config) -> Vec<Drift> {
    let object = format!("stream {}", wanted.name);
    let mut drift = Vec::new();
    let mut check = |field, w: String, a: String| {
        if w != a {
            drift.push(Drift {
                object: object.clone(),
                field,
                wanted: w,
                actual: a,
            });
        }
    };
    check(
        "retention",
        format!("{:?}", wanted.retention),
        format!("{:?}", actual.retention),
    );
    check(
        "storage",
        format!("{:?}", wanted.storage),
        format!("{:?}", actual.storage),
    );
    // The server turns per-message TTLs on in place but never off again.
    if actual.allow_message_ttl && !wanted.allow_message_ttl {
        check("allow_msg_ttl", "false".into(), "true".into());
    }
    drift
}

/// Whether a stream's consumer limit must be written: only where the server both limits
/// streams by default (nats-server 2.15 reads `-1`, and a missing limit, as 1,000 consumers,
/// which `CALLS`, one dial consumer per campaign, outgrows) and lets the limit be changed in
/// place. An older server refuses the change and reads `-1` as unlimited: left alone there.
fn consumer_limit_differs(
    wanted: &stream::Config,
    actual: &stream::Config,
    default_consumer_limit: bool,
) -> bool {
    default_consumer_limit
        && wanted.max_consumers > 0
        && actual.max_consumers != wanted.max_consumers
}

/// Whether any field we define differs (the server fills in others we leave at default).
fn stream_differs(wanted: &stream::Config, actual: &stream::Config) -> bool {
    let mut w = wanted.subjects.clone();
    let mut a = actual.subjects.clone();
    w.sort();
    a.sort();
    w != a
        || wanted.max_age != actual.max_age
        || wanted.max_messages_per_subject != actual.max_messages_per_subject
        || wanted.duplicate_window != actual.duplicate_window
        || wanted.allow_direct != actual.allow_direct
        || wanted.allow_rollup != actual.allow_rollup
        || wanted.deny_delete != actual.deny_delete
        || wanted.discard != actual.discard
        || wanted.num_replicas != actual.num_replicas
        || wanted.description != actual.description
        || wanted.allow_message_ttl != actual.allow_message_ttl
}

async fn provision_consumer(
    js: &jetstream::Context,
    stream_name: &str,
    wanted: &pull::Config,
    report: &mut Report,
) -> Result<(), TopologyError> {
    let name = wanted.durable_name.clone().unwrap_or_default();
    let wrap = |source: async_nats::Error| TopologyError::Consumer {
        stream: stream_name.to_owned(),
        consumer: name.clone(),
        source,
    };
    let stream = js
        .get_stream(stream_name)
        .await
        .map_err(|e| wrap(e.into()))?;
    let object = format!("consumer {stream_name}/{name}");
    match stream.consumer_info(&name).await {
        Ok(info) => {
            let actual = &info.config;
            let drift = consumer_drift(&object, wanted, actual);
            if !drift.is_empty() {
                report.drift.extend(drift);
                return Ok(());
            }
            if consumer_differs(wanted, actual) {
                // On 2.9 a create with the same durable name updates the editable fields.
                stream
                    .create_consumer(wanted.clone())
                    .await
                    .map_err(|e| wrap(e.into()))?;
                report.updated.push(object);
            } else {
                report.unchanged.push(object);
            }
        }
        Err(e) if e.kind() == jetstream::context::ConsumerInfoErrorKind::NotFound => {
            stream
                .create_consumer(wanted.clone())
                .await
                .map_err(|e| wrap(e.into()))?;
            report.created.push(object);
        }
        Err(e) => return Err(wrap(e.into())),
    }
    Ok(())
}

fn is_stream_not_found(e: &jetstream::context::GetStreamError) -> bool {
    matches!(
        e.kind(),
        jetstream::context::GetStreamErrorKind::JetStream(err)
            if err.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}

/// Differences the server cannot apply to an existing consumer.
pub(crate) fn consumer_drift(
    object: &str,
    wanted: &pull::Config,
    actual: &jetstream::consumer::Config,
) -> Vec<Drift> {
    let mut drift = Vec::new();
    let mut check = |field, w: String, a: String| {
        if w != a {
            drift.push(Drift {
                object: object.to_owned(),
                field,
                wanted: w,
                actual: a,
            });
        }
    };
    check(
        "filter_subject",
        wanted.filter_subject.clone(),
        actual.filter_subject.clone(),
    );
    check(
        "deliver_policy",
        format!("{:?}", wanted.deliver_policy),
        format!("{:?}", actual.deliver_policy),
    );
    check(
        "ack_policy",
        format!("{:?}", wanted.ack_policy),
        format!("{:?}", actual.ack_policy),
    );
    drift
}

/// Whether an editable field other than the pause differs (the pause has its own API).
pub(crate) fn consumer_differs(
    wanted: &pull::Config,
    actual: &jetstream::consumer::Config,
) -> bool {
    wanted.max_ack_pending != actual.max_ack_pending
        || wanted.ack_wait != actual.ack_wait
        || wanted.max_deliver != actual.max_deliver
        || wanted.backoff != actual.backoff
        || wanted.description != actual.description
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_consumer_limit_is_written_only_where_the_server_defaults_it_and_can_change_it() {
        let calls = |max_consumers| stream::Config {
            name: "CALLS".into(),
            max_consumers,
            ..Default::default()
        };
        let wanted = calls(100_000);
        // 2.15: `-1` means 1,000 there; the change is allowed.
        assert!(consumer_limit_differs(&wanted, &calls(-1), true));
        assert!(consumer_limit_differs(&wanted, &calls(1_000), true));
        assert!(!consumer_limit_differs(&wanted, &calls(100_000), true));
        // 2.11: `-1` is unlimited, and the server refuses the change.
        assert!(!consumer_limit_differs(&wanted, &calls(-1), false));
        // A stream that sets no limit of its own is never changed.
        assert!(!consumer_limit_differs(&calls(-1), &calls(1_000), true));
        let parsed: stream::Config = parse(
            STREAMS
                .iter()
                .find(|d| d.path.ends_with("CALLS.json"))
                .expect("CALLS"),
        )
        .expect("CALLS");
        assert!(
            parsed.max_consumers > 10_000,
            "CALLS holds one dial consumer per campaign: {}",
            parsed.max_consumers
        );
    }

    #[test]
    fn every_definition_parses_and_round_trips() {
        for def in STREAMS {
            let config: stream::Config = parse(def).expect(def.path);
            let json = serde_json::to_string(&config).expect("serialize");
            let back: stream::Config = serde_json::from_str(&json).expect("reparse");
            assert_eq!(back, config, "{}", def.path);
            assert!(
                def.path.ends_with(&format!("{}.json", config.name)),
                "{}",
                def.path
            );
        }
        for def in CONSUMERS.iter().chain([&DIAL_TEMPLATE]) {
            let config: pull::Config = parse(def).expect(def.path);
            let json = serde_json::to_string(&config).expect("serialize");
            let back: pull::Config = serde_json::from_str(&json).expect("reparse");
            assert_eq!(back, config, "{}", def.path);
            assert!(config.durable_name.is_some(), "{} is durable", def.path);
        }
    }

    /// An advisory that stopped being redelivered would strand its call: the dial message
    /// sits in `CALLS` undelivered, never terminal, its number claimed. The advisories'
    /// consumer retries for ever (with a growing delay, see the retrier).
    #[test]
    fn the_advisories_consumer_never_gives_up() {
        let def = CONSUMERS
            .iter()
            .find(|d| d.path.ends_with("retrier_advisories.json"))
            .expect("defined");
        let config: pull::Config = parse(def).expect("parses");
        assert_eq!(config.max_deliver, -1, "{}", def.path);
    }

    #[test]
    fn settings_apply_retention_and_replicas() {
        let settings = StreamSettings {
            max_age_days: 2,
            dlq_max_age_days: 9,
            max_age_secs: None,
            replicas: 3,
        };
        let topology = Topology::load(&settings).expect("loads");
        let calls = topology
            .streams
            .iter()
            .find(|s| s.name == names::CALLS)
            .expect("CALLS");
        assert_eq!(calls.max_age, Duration::from_secs(2 * 86_400));
        assert_eq!(calls.retention, stream::RetentionPolicy::Limits);
        let dlq = topology
            .streams
            .iter()
            .find(|s| s.name == names::DLQ)
            .expect("DLQ");
        assert_eq!(dlq.max_age, Duration::from_secs(9 * 86_400));
        assert!(topology.streams.iter().all(|s| s.num_replicas == 3));
        assert!(topology.buckets.iter().all(|b| b.num_replicas == 3));
        let retries = topology
            .streams
            .iter()
            .find(|s| s.name == names::RETRIES)
            .expect("RETRIES");
        assert_eq!(retries.retention, stream::RetentionPolicy::WorkQueue);
    }
}
