//! Configuration: defaults, then a YAML file, then `CCM_*` environment variables.
//!
//! Every service reads the same [`Config`] and uses its own section. The file is parsed
//! directly into the typed structure first, so a mistake in it is reported with the file, line
//! and reason. Environment variables are applied afterwards: `CCM_NATS_URL` sets `nats_url`,
//! `CCM_INGEST__LISTEN` sets `ingest.listen` (a double underscore descends one level;
//! `CCM_LOG_FORMAT` is accepted as a short name for `CCM_LOG__FORMAT`). Values
//! are read as YAML scalars, so `CCM_INGEST__AUTH_TOKENS='[a, b]'` gives a list. Variables that
//! name no setting are reported back rather than silently ignored.

use std::{
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use serde_yaml_ng::Value;

use crate::phone::PhoneRule;

/// A value that must never appear in logs, such as a token or a database URL with a password.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret value; call only where it is used, never to log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

/// A URL that may carry credentials (`nats://user:password@host`, `https://token@host`,
/// `?key=…`). It prints with the user information and the query replaced by `***`, so logs
/// and `Debug` keep the host and port an operator needs and never the secret.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The URL itself; call only where it is used, never to log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL as it may be logged.
    pub fn redacted(&self) -> String {
        redact_url(&self.0)
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl From<&str> for SecretUrl {
    fn from(value: &str) -> Self {
        Self::new(value)
    }
}

impl From<String> for SecretUrl {
    fn from(value: String) -> Self {
        Self::new(value)
    }
}

/// One URL split where credentials can hide: `scheme://userinfo@host/path?query`. The one
/// parser behind [`redact_url`] and the NATS connection's credential split.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct UrlParts<'a> {
    pub scheme: Option<&'a str>,
    pub userinfo: Option<&'a str>,
    /// Host and port.
    pub host: &'a str,
    /// Path, query and fragment, from the first `/`, `?` or `#` on.
    pub tail: &'a str,
}

impl<'a> UrlParts<'a> {
    pub(crate) fn of(url: &'a str) -> Self {
        let (scheme, rest) = match url.split_once("://") {
            Some((scheme, rest)) => (Some(scheme), rest),
            None => (None, url),
        };
        let (authority, tail) = rest.split_at(rest.find(['/', '?', '#']).unwrap_or(rest.len()));
        let (userinfo, host) = match authority.rsplit_once('@') {
            Some((userinfo, host)) => (Some(userinfo), host),
            None => (None, authority),
        };
        Self {
            scheme,
            userinfo,
            host,
            tail,
        }
    }

    /// The URL again, with `userinfo` in place of the user information.
    pub(crate) fn with_userinfo(&self, userinfo: Option<&str>, tail: &str) -> String {
        let scheme = self.scheme.map(|s| format!("{s}://")).unwrap_or_default();
        let userinfo = userinfo.map(|u| format!("{u}@")).unwrap_or_default();
        format!("{scheme}{userinfo}{}{tail}", self.host)
    }
}

/// `url` (or a comma-separated list of them, as NATS takes) with every user information part
/// and query replaced by `***`.
pub fn redact_url(url: &str) -> String {
    url.split(',')
        .map(|one| {
            let parts = UrlParts::of(one);
            let tail = match parts.tail.split_once('?') {
                Some((path, _)) => format!("{path}?***"),
                None => parts.tail.to_owned(),
            };
            parts.with_userinfo(parts.userinfo.map(|_| "***"), &tail)
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The whole configuration of a ccm deployment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// NATS server URL(s), comma separated; may carry credentials.
    pub nats_url: SecretUrl,
    /// PostgreSQL URL of the read model.
    pub database_url: Secret,
    pub streams: StreamSettings,
    pub ingest: IngestConfig,
    pub dialer: DialerConfig,
    pub retrier: RetrierConfig,
    pub projector: ProjectorConfig,
    pub webhooks: WebhooksConfig,
    pub log: LogConfig,
    /// Number claims and Idempotency-Keys: their per-key TTLs and the claim reaper.
    pub claims: ClaimsConfig,
    /// Calling rules by jurisdiction and cross-campaign frequency limits (`docs/compliance.md`).
    pub compliance: ComplianceConfig,
    /// Whether each service creates or updates the JetStream topology (and the projector runs
    /// the migrations) when it starts. Turned off (`CCM_PROVISION=false`) where a separate
    /// step does it once, as the Helm chart's provisioning Job does.
    pub provision: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            nats_url: SecretUrl::new("nats://127.0.0.1:4222"),
            database_url: Secret::new("postgres://ccm@127.0.0.1:5432/ccm"),
            streams: StreamSettings::default(),
            ingest: IngestConfig::default(),
            dialer: DialerConfig::default(),
            retrier: RetrierConfig::default(),
            projector: ProjectorConfig::default(),
            webhooks: WebhooksConfig::default(),
            log: LogConfig::default(),
            claims: ClaimsConfig::default(),
            compliance: ComplianceConfig::default(),
            provision: true,
        }
    }
}

/// An API token as configured: the token itself (a string, as before roles existed: an
/// `admin` token), or an entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TokenConfig {
    Plain(Secret),
    Entry(TokenEntry),
}

impl From<Secret> for TokenConfig {
    fn from(token: Secret) -> Self {
        Self::Plain(token)
    }
}

/// A token with its role: `{sha256: <hex>, role: viewer, name: grafana, expires_at: …}`.
/// Exactly one of `token` and `sha256` is given; `sha256` (the hex SHA-256 of the token)
/// keeps the token itself out of the configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default)]
    pub role: crate::access::Role,
    /// Who holds it, for logs (never the token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// After this instant the token is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Retention of the streams; applied on top of the definitions in `nats/` when provisioning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamSettings {
    /// How long dial messages and events are kept.
    pub max_age_days: u32,
    /// How long dead letters are kept.
    pub dlq_max_age_days: u32,
    /// When set, how long dial messages and events are kept, in seconds, instead of
    /// `max_age_days` (tests make retention seconds long).
    pub max_age_secs: Option<u64>,
    /// Replicas of every stream (3 on a 3-node cluster).
    pub replicas: usize,
}

impl StreamSettings {
    /// The retention of `CALLS` and `CALL_EVENTS` (zero: unlimited).
    pub fn calls_max_age(&self) -> Duration {
        self.max_age_secs.map_or_else(
            || Duration::from_secs(86_400 * u64::from(self.max_age_days)),
            Duration::from_secs,
        )
    }
}

impl Default for StreamSettings {
    fn default() -> Self {
        Self {
            max_age_days: 7,
            dlq_max_age_days: 30,
            max_age_secs: None,
            replicas: 1,
        }
    }
}

/// The HTTP API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    pub listen: SocketAddr,
    /// Accepted API tokens (`X-Auth-Token` or `Authorization: Bearer`): a bare string is an
    /// `admin` token; an entry gives a role, a name, an expiry, and the token or only its
    /// SHA-256 ([`TokenConfig`]).
    pub auth_tokens: Vec<TokenConfig>,
    pub phone_validation: PhoneRule,
    /// Concurrency cap of a campaign created without one.
    pub default_max_concurrent_calls: u32,
    /// Attempts per call of a campaign created without a number.
    pub default_max_attempts: u32,
    /// Whether a number may have one live call across all campaigns (`global`, the old
    /// system's rule) or one per campaign (`campaign`).
    pub duplicate_scope: DuplicateScope,
    /// The old system's `duplicate_call_window_minutes`: a number whose call ended less than
    /// this long ago is not called again. 0 turns the window off.
    pub duplicate_call_window_minutes: u32,
    /// Most items one bulk request may carry.
    pub bulk_max_items: usize,
    /// Largest request body accepted, in bytes (a 100,000-number bulk fits).
    pub max_body_bytes: usize,
    /// How Twilio status callbacks are verified.
    pub twilio: TwilioWebhookConfig,
    /// Whether `GET /metrics` on the API listener needs an API token. Off by default:
    /// Prometheus scrapers rarely carry one, and the metrics hold no ids, numbers or secrets
    /// (labels are route templates, status classes and campaign ids). Turn it on when the
    /// listener is reachable by untrusted clients.
    pub metrics_require_token: bool,
    /// The live dashboard's tickets and event streams.
    pub dashboard: DashboardConfig,
    /// Per-token limits on the expensive routes.
    pub rate_limits: RateLimitConfig,
}

/// The live dashboard's tickets and event streams.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DashboardConfig {
    /// The key that signs the event stream's tickets, at least 32 characters, the same on
    /// every ingest replica (a load balancer may send the stream to another replica than
    /// the ticket request). Empty: 32 random bytes drawn at start, so a ticket opens a stream
    /// only on the replica that issued it.
    pub ticket_key: Secret,
    /// Event streams open at once per API token; 0: no limit.
    pub max_streams_per_token: u32,
}

impl Default for DashboardConfig {
    fn default() -> Self {
        Self {
            ticket_key: Secret::default(),
            max_streams_per_token: 4,
        }
    }
}

/// A token bucket per API token over the expensive routes (bulk calls, contact import, list
/// queries, dashboard tickets and streams), per ingest replica.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Requests per minute the bucket refills with; 0: no limit.
    pub expensive_per_minute: u32,
    /// Requests a token may make at once before the refill rate applies (at least 1).
    pub burst: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            expensive_per_minute: 600,
            burst: 60,
        }
    }
}

/// What ingest needs to verify Twilio's signed status callbacks.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TwilioWebhookConfig {
    /// The account's auth token, the key of `X-Twilio-Signature`. Empty: every Twilio
    /// callback is refused, since none can be verified.
    pub auth_token: Secret,
    /// The public base URL Twilio calls (e.g. `https://ccm.example.com`), needed because the
    /// signature covers the full URL as Twilio saw it. Empty: `http://<Host header>`.
    pub public_url: String,
    /// The keypad input of a `<Gather>` (Twilio's `Digits`, e.g. `9`) by which a callee asks
    /// not to be called again: a callback carrying it puts the number on the do-not-call list
    /// (see ingest's `opt_out`). Empty (the default): `Digits` is ignored.
    pub opt_out_digits: String,
}

/// The scope of the one-live-call-per-number rule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DuplicateScope {
    /// One live call per number across every campaign.
    #[default]
    Global,
    /// One live call per number within each campaign.
    Campaign,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8000)),
            auth_tokens: Vec::new(),
            phone_validation: PhoneRule::Lenient,
            default_max_concurrent_calls: 100,
            default_max_attempts: 3,
            duplicate_scope: DuplicateScope::Global,
            duplicate_call_window_minutes: 5,
            bulk_max_items: 100_000,
            max_body_bytes: 8 * 1024 * 1024,
            twilio: TwilioWebhookConfig::default(),
            metrics_require_token: false,
            dashboard: DashboardConfig::default(),
            rate_limits: RateLimitConfig::default(),
        }
    }
}

/// Outbound webhooks: subscriptions are managed by ingest, deliveries made by ccm-webhooks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhooksConfig {
    /// Accept endpoints on loopback, private, link-local or unspecified addresses. Off in
    /// production, so an API user cannot make ccm call into its own network; tests turn it
    /// on because their receivers listen on 127.0.0.1.
    pub allow_private_targets: bool,
    /// How long a message is retried before it is given up for its endpoint; an endpoint
    /// whose attempts all failed for this long is disabled.
    pub retry_horizon_secs: u64,
    /// How long the previous secret keeps signing (beside the new one) after a rotation.
    pub secret_grace_secs: u64,
    /// How often an idle endpoint worker looks for messages queued by the API (manual
    /// redeliveries); live events wake it at once.
    pub poll_interval_ms: u64,
    /// First retry delay; it doubles (with jitter) up to `backoff_max_ms`.
    pub backoff_min_ms: u64,
    pub backoff_max_ms: u64,
    /// A receiver's `Retry-After` is honoured up to this many seconds.
    pub max_retry_after_secs: u64,
    /// How long one delivery request may take; a timeout is retried.
    pub request_timeout_ms: u64,
    /// Messages an endpoint's worker reads ahead from its queue in PostgreSQL at a time.
    pub queue_per_endpoint: usize,
    /// How long a replica's lease on the dispatcher or on an endpoint's lane lasts without
    /// renewal: a crashed replica's work is taken over after this long. It must be at least
    /// 2 × (`request_timeout_ms` + 1000), so a lease renewed every third of it outlasts a
    /// request.
    pub lease_ttl_ms: u64,
    /// Where `/metrics`, `/healthz` and `/readyz` are served; none by default (see
    /// `projector.metrics_listen`).
    pub metrics_listen: Option<SocketAddr>,
    /// How often the answer rates of the caller-id pools' numbers are computed (gauges
    /// `ccm_caller_id_answer_rate`, `ccm_caller_id_flagged`, and `caller_id.flagged`); 0: never.
    pub caller_id_check_ms: u64,
    /// The window those rates are computed over (attempts placed since then).
    pub caller_id_window_secs: u64,
    /// Attempts a number, and the rest of its pool, need before it can be flagged.
    pub caller_id_flag_min_attempts: u64,
    /// A number answering under this share of the rest of its pool's rate is flagged.
    pub caller_id_flag_ratio: f64,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self {
            allow_private_targets: false,
            retry_horizon_secs: 24 * 3600,
            secret_grace_secs: 24 * 3600,
            poll_interval_ms: 1000,
            backoff_min_ms: 1000,
            backoff_max_ms: 600_000,
            max_retry_after_secs: 30,
            request_timeout_ms: 10_000,
            queue_per_endpoint: 256,
            lease_ttl_ms: 30_000,
            metrics_listen: None,
            caller_id_check_ms: 60_000,
            caller_id_window_secs: 24 * 3600,
            caller_id_flag_min_attempts: 20,
            caller_id_flag_ratio: 0.5,
        }
    }
}

/// The dialer and its carrier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DialerConfig {
    /// Trunk capacity of one dialer replica: live calls it carries at most, all campaigns.
    pub max_calls: u32,
    /// A call with no outcome after this long is hung up at the carrier and, unless the
    /// carrier's own outcome follows, ends with a synthetic FAILED outcome.
    pub max_call_duration_secs: u64,
    /// How long a call hung up at its maximum duration waits for the carrier's own outcome
    /// (which a carrier sends right after a hang-up) before the synthetic one is published.
    pub hangup_grace_ms: u64,
    pub carrier: CarrierConfig,
    /// Where `/metrics`, `/healthz` and `/readyz` are served; none by default (see
    /// `projector.metrics_listen`).
    pub metrics_listen: Option<SocketAddr>,
    /// New calls per second across all campaigns and all dialer replicas; 0: no limit.
    pub max_calls_per_second: u32,
    /// Attempts placed to one number per UTC day across all campaigns; 0: no limit. An
    /// attempt beyond it waits until the next day.
    pub max_attempts_per_number_per_day: u32,
    /// How often each dialer lists the dial consumers and repairs any that disagrees with
    /// the campaign document it follows (a writer that died between the two, a hand edit).
    pub consumer_sweep_secs: u64,
    /// The carrier account's own rate, shared by all campaigns and replicas, slowed down by
    /// the carrier's 429s (AIMD).
    pub carrier_account: CarrierAccountConfig,
}

/// The carrier account's rate: new calls per second across all campaigns and dialer replicas,
/// cut by `decrease_factor` when the carrier answers 429 (at most once per `cut_every_ms`)
/// and regained by `increase_per_second` each second without one (AIMD).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CarrierAccountConfig {
    /// The account's rate at most (where it starts and recovers to, e.g. Twilio's CPS for
    /// the account); 0: the dialer keeps no account rate (a 429 still puts the call off).
    pub max_calls_per_second: f64,
    /// The rate is never cut below this.
    pub min_calls_per_second: f64,
    /// The rate is multiplied by this on a 429 (between 0 and 1).
    pub decrease_factor: f64,
    /// Calls per second regained per second without a 429.
    pub increase_per_second: f64,
    /// 429s within this long of a cut are taken as the same overload (calls already on
    /// their way when the first was answered): one cut.
    pub cut_every_ms: u64,
    /// How long a throttled call waits when the carrier gave no `Retry-After`.
    pub retry_ms: u64,
}

impl Default for CarrierAccountConfig {
    fn default() -> Self {
        Self {
            max_calls_per_second: 0.0,
            min_calls_per_second: 0.5,
            decrease_factor: 0.7,
            increase_per_second: 1.0,
            cut_every_ms: 1000,
            retry_ms: 1000,
        }
    }
}

impl CarrierAccountConfig {
    /// Why these values cannot be used, if they cannot.
    pub fn invalid(&self) -> Option<String> {
        let a = self;
        if !(a.max_calls_per_second.is_finite() && a.max_calls_per_second >= 0.0) {
            return Some("max_calls_per_second must be 0 or more".into());
        }
        if !(a.min_calls_per_second.is_finite() && a.min_calls_per_second > 0.0) {
            return Some("min_calls_per_second must be above 0".into());
        }
        if a.max_calls_per_second > 0.0 && a.min_calls_per_second > a.max_calls_per_second {
            return Some("min_calls_per_second must not exceed max_calls_per_second".into());
        }
        if !(a.decrease_factor > 0.0 && a.decrease_factor < 1.0) {
            return Some("decrease_factor must be between 0 and 1 (exclusive)".into());
        }
        if !(a.increase_per_second.is_finite() && a.increase_per_second > 0.0) {
            return Some("increase_per_second must be above 0".into());
        }
        None
    }
}

impl Default for DialerConfig {
    fn default() -> Self {
        Self {
            max_calls: 1000,
            max_call_duration_secs: 600,
            hangup_grace_ms: 15_000,
            carrier: CarrierConfig::default(),
            metrics_listen: None,
            max_calls_per_second: 0,
            max_attempts_per_number_per_day: 0,
            consumer_sweep_secs: 30,
            carrier_account: CarrierAccountConfig::default(),
        }
    }
}

/// Which carrier adapter places calls.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum CarrierConfig {
    /// The in-process simulator.
    Sim(SimCarrierConfig),
    /// The old system's carrier contract: `POST {base_url}/api/initiate-call`.
    Http(HttpCarrierConfig),
    /// Twilio's Programmable Voice REST API (or carrier-sim speaking it).
    Twilio(TwilioCarrierConfig),
}

/// The old system's HTTP carrier contract. Outcomes come back to ingest's
/// `PUT /api/v1/callback/`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpCarrierConfig {
    /// Where the carrier listens, e.g. `http://127.0.0.1:9000`; may carry credentials.
    pub base_url: SecretUrl,
    /// Sent as `X-Auth-Token` when not empty.
    pub api_token: Secret,
    /// How long one placement request may take before it counts as ambiguous.
    pub request_timeout_ms: u64,
    /// Seconds the phone rings when the campaign sets none, sent as `ring_timeout_secs`
    /// (an addition to the old contract); none: sent only for campaigns that set one, or
    /// as the 15 s floor for telemarketing campaigns.
    pub ring_timeout_secs: Option<u32>,
}

impl Default for HttpCarrierConfig {
    fn default() -> Self {
        Self {
            base_url: SecretUrl::new("http://127.0.0.1:9000"),
            api_token: Secret::default(),
            request_timeout_ms: 5000,
            ring_timeout_secs: None,
        }
    }
}

/// Twilio's Programmable Voice REST API. Status callbacks go to ingest's
/// `POST /api/v1/callbacks/twilio`, signed with `auth_token`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TwilioCarrierConfig {
    /// `https://api.twilio.com`, or carrier-sim's address.
    pub base_url: SecretUrl,
    pub account_sid: String,
    pub auth_token: Secret,
    /// The caller id (`From`), an E.164 number of the account.
    pub from: String,
    /// The TwiML the callee hears when answering (`Url`).
    pub answer_url: String,
    /// Ingest's public base URL; the `StatusCallback` is this plus `/api/v1/callbacks/twilio`.
    pub status_callback_base: String,
    /// Seconds Twilio lets the phone ring (`Timeout`).
    pub ring_timeout_secs: u32,
    /// `MachineDetection` (e.g. `Enable`); empty leaves it off.
    pub machine_detection: String,
    /// How long one placement request may take before it counts as ambiguous.
    pub request_timeout_ms: u64,
}

impl Default for TwilioCarrierConfig {
    fn default() -> Self {
        Self {
            base_url: SecretUrl::new("https://api.twilio.com"),
            account_sid: String::new(),
            auth_token: Secret::default(),
            from: String::new(),
            answer_url: "http://demo.twilio.com/docs/voice.xml".into(),
            status_callback_base: "http://127.0.0.1:8000".into(),
            ring_timeout_secs: 30,
            machine_detection: String::new(),
            request_timeout_ms: 5000,
        }
    }
}

impl CarrierConfig {
    /// The adapter's name, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Sim(_) => "sim",
            Self::Http(_) => "http",
            Self::Twilio(_) => "twilio",
        }
    }
}

impl Default for CarrierConfig {
    fn default() -> Self {
        Self::Sim(SimCarrierConfig::default())
    }
}

/// The in-process simulated carrier: outcome weights and how long a call lasts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimCarrierConfig {
    pub picked: u32,
    pub disconnected: u32,
    pub rnr: u32,
    pub failed: u32,
    /// How long after placement the outcome is reported.
    pub call_ms: u64,
}

impl Default for SimCarrierConfig {
    /// Every call answered, quickly: the local stack shows a completed call at once. Tests and
    /// benchmarks set their own mix.
    fn default() -> Self {
        Self {
            picked: 1,
            disconnected: 0,
            rnr: 0,
            failed: 0,
            call_ms: 50,
        }
    }
}

/// Number claims (`active_calls`) and Idempotency-Keys (`idempotency`), see [`crate::claims`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClaimsConfig {
    /// How long a claim or an Idempotency-Key lives before its call's publish is definite: a
    /// writer that dies in between leaves a number blocked, or a key pending, no longer.
    pub pending_ttl_secs: u64,
    /// How often the retrier's reaper walks the claims, freeing those of ended or never
    /// published calls (a few requests per claim; every replica may run it).
    pub reap_interval_secs: u64,
    /// How long a completed Idempotency-Key answers with its call.
    pub idempotency_ttl_secs: u64,
}

impl Default for ClaimsConfig {
    fn default() -> Self {
        Self {
            pending_ttl_secs: 120,
            reap_interval_secs: 60,
            idempotency_ttl_secs: 86_400,
        }
    }
}

/// Calling rules and frequency limits, applied by the dialer and the retrier.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ComplianceConfig {
    /// Rule packs, loaded in order and validated at start (a later rule replaces an earlier
    /// one of the same id); e.g. `[config/rules/us.yaml, config/rules/ca.yaml,
    /// /etc/ccm/our-rules.yaml]`. None by default: no jurisdiction rules apply.
    pub rule_files: Vec<PathBuf>,
    /// At most `max_attempts` attempts per number in the callee's last `days` local days
    /// (1 to 31), across campaigns. `dialer.max_attempts_per_number_per_day: N` is the limit
    /// `{max_attempts: N, days: 1}`.
    pub frequency_limits: Vec<crate::rules::FrequencyLimit>,
}

impl Config {
    /// Every cross-campaign frequency limit, the old daily setting included.
    pub fn frequency_limits(&self) -> Vec<crate::rules::FrequencyLimit> {
        let mut limits = self.compliance.frequency_limits.clone();
        if self.dialer.max_attempts_per_number_per_day > 0 {
            limits.push(crate::rules::FrequencyLimit {
                max_attempts: self.dialer.max_attempts_per_number_per_day,
                days: 1,
            });
        }
        limits
    }
}

/// The retrier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetrierConfig {
    /// The retry policy file.
    pub policy_file: PathBuf,
    /// Where `/metrics`, `/healthz` and `/readyz` are served; none by default (see
    /// `projector.metrics_listen`).
    pub metrics_listen: Option<SocketAddr>,
    /// The longest an attempt may wait in `CALLS` undialled before it ends `EXPIRED` (six days,
    /// below the seven of `CALLS`' retention). With one sweep interval it must stay below that
    /// retention, or a call could age out unseen: [`Config::validate`] refuses it.
    pub max_queue_age_secs: u64,
    /// How often the expiry sweep runs.
    pub expiry_sweep_ms: u64,
    /// How often `RETRIES` is compared with its consumer for entries the server no longer
    /// delivers (put back after two sweeps in a row; see the retrier's `stranded` module).
    pub stranded_sweep_ms: u64,
}

impl Default for RetrierConfig {
    fn default() -> Self {
        Self {
            policy_file: PathBuf::from("config/retry.yaml"),
            metrics_listen: None,
            max_queue_age_secs: 6 * 86_400,
            expiry_sweep_ms: 60_000,
            stranded_sweep_ms: 30_000,
        }
    }
}

/// The projector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProjectorConfig {
    /// Messages applied in one transaction at most.
    pub batch_size: usize,
    /// How long a fetch waits to fill a batch.
    pub batch_wait_ms: u64,
    /// Unused: a message that cannot be applied is TERMed and parked at once
    /// (`ccm_core::consumer`). Kept so that existing configuration files still load.
    pub poison_delay_ms: u64,
    /// Where `/metrics`, `/healthz` and `/readyz` are served; none by default, since several
    /// processes may share a host (set e.g. `CCM_PROJECTOR__METRICS_LISTEN=0.0.0.0:9464`).
    pub metrics_listen: Option<SocketAddr>,
    /// Batches of one consumer written concurrently (each its own transaction).
    pub writers: usize,
    /// Calls ended more than this many days ago are anonymised in the read model (number,
    /// custom fields, carrier id, error text; see `docs/privacy.md`). 0 (the default) keeps
    /// them as they are.
    pub retention_days: u32,
    /// How often the retention job runs when it is on.
    pub retention_every_secs: u64,
}

impl Default for ProjectorConfig {
    fn default() -> Self {
        Self {
            batch_size: 1000,
            batch_wait_ms: 20,
            poison_delay_ms: 5000,
            metrics_listen: None,
            writers: 3,
            retention_days: 0,
            retention_every_secs: 3600,
        }
    }
}

/// Logging.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `tracing` filter, overridden by `RUST_LOG`.
    pub filter: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            filter: "info,async_nats=warn".into(),
            format: LogFormat::Text,
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The message of the source names the line and column.
    #[error("invalid config file {path}")]
    File {
        path: PathBuf,
        source: serde_yaml_ng::Error,
    },
    #[error("invalid value in environment variable {var}")]
    Env {
        var: String,
        source: serde_yaml_ng::Error,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// A loaded configuration and the environment variables that named no setting.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub unknown_env: Vec<String>,
}

impl Config {
    /// Loads defaults, then `file` (when given), then the process environment.
    pub fn load(file: Option<&Path>) -> Result<Loaded, ConfigError> {
        Self::load_from(file, std::env::vars())
    }

    /// Rules between settings. A queued call must be expired (one sweep after its maximum
    /// queue age at worst) before `CALLS` retention drops its message.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let retention = self.streams.calls_max_age();
        let queue = Duration::from_secs(self.retrier.max_queue_age_secs);
        let sweep = Duration::from_millis(self.retrier.expiry_sweep_ms);
        if self.retrier.stranded_sweep_ms == 0 {
            return Err(ConfigError::Invalid(
                "retrier.stranded_sweep_ms must be above zero".into(),
            ));
        }
        if self.retrier.max_queue_age_secs == 0 || self.retrier.expiry_sweep_ms == 0 {
            return Err(ConfigError::Invalid(
                "retrier.max_queue_age_secs and retrier.expiry_sweep_ms must be above zero".into(),
            ));
        }
        if let Some(reason) = self.dialer.carrier_account.invalid() {
            return Err(ConfigError::Invalid(format!(
                "dialer.carrier_account: {reason}"
            )));
        }
        for limit in &self.compliance.frequency_limits {
            if limit.max_attempts == 0 || !(1..=crate::rules::MAX_LIMIT_DAYS).contains(&limit.days)
            {
                return Err(ConfigError::Invalid(format!(
                    "compliance.frequency_limits: {limit:?} needs max_attempts of at least 1 and \
                     days from 1 to {} (the attempts bucket keeps a record that long)",
                    crate::rules::MAX_LIMIT_DAYS
                )));
            }
        }
        if !retention.is_zero() && queue + sweep >= retention {
            return Err(ConfigError::Invalid(format!(
                "retrier.max_queue_age_secs ({}s) plus one expiry sweep ({}ms) must be below the \
                 retention of CALLS ({}s, streams.max_age_days or streams.max_age_secs): a queued \
                 call would age out without a terminal state",
                queue.as_secs(),
                sweep.as_millis(),
                retention.as_secs()
            )));
        }
        Ok(())
    }

    /// As [`Config::load`], with the environment given explicitly (for tests).
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Loaded, ConfigError> {
        let mut config = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                serde_yaml_ng::from_str::<Config>(&text).map_err(|source| ConfigError::File {
                    path: path.to_owned(),
                    source,
                })?
            }
            None => Config::default(),
        };
        let mut unknown_env = Vec::new();
        let mut overrides: Vec<(String, Vec<String>, String)> = env
            .into_iter()
            .filter_map(|(var, value)| {
                let path = match ALIASES.iter().find(|(alias, _)| *alias == var) {
                    Some((_, path)) => (*path).to_owned(),
                    None => var.strip_prefix("CCM_")?.to_ascii_lowercase(),
                };
                let keys = path.split("__").map(str::to_owned).collect();
                Some((var, keys, value))
            })
            .collect();
        if overrides.is_empty() {
            config.validate()?;
            return Ok(Loaded {
                config,
                unknown_env,
            });
        }
        overrides.sort();
        let mut tree = serde_yaml_ng::to_value(&config).map_err(|source| ConfigError::Env {
            var: "(serialising the configuration)".into(),
            source,
        })?;
        for (var, keys, raw) in &overrides {
            let value: Value =
                serde_yaml_ng::from_str(raw).unwrap_or_else(|_| Value::String(raw.clone()));
            if !set_path(&mut tree, keys, value) {
                unknown_env.push(var.clone());
                continue;
            }
            // Re-check after each variable so an error names the variable that caused it.
            config =
                serde_yaml_ng::from_value(tree.clone()).map_err(|source| ConfigError::Env {
                    var: var.clone(),
                    source,
                })?;
        }
        config.validate()?;
        Ok(Loaded {
            config,
            unknown_env,
        })
    }
}

/// Short names operators expect, beside the general `__` form of the same settings.
const ALIASES: &[(&str, &str)] = &[("CCM_LOG_FORMAT", "log__format")];

/// Sets `keys` in `tree` when that path exists already (every setting has a default, so an
/// absent path is a variable meant for something else).
fn set_path(tree: &mut Value, keys: &[String], value: Value) -> bool {
    let Some((first, rest)) = keys.split_first() else {
        return false;
    };
    let Some(slot) = tree
        .as_mapping_mut()
        .and_then(|m| m.get_mut(first.as_str()))
    else {
        return false;
    };
    if rest.is_empty() {
        // Strings stay strings: `CCM_NATS_URL=123` must not become a number.
        *slot = match (&*slot, value) {
            (Value::String(_), Value::Number(n)) => Value::String(n.to_string()),
            (Value::String(_), Value::Bool(b)) => Value::String(b.to_string()),
            (_, v) => v,
        };
        return true;
    }
    set_path(slot, rest, value)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn log_format_is_set_by_its_short_and_long_names() {
        for var in ["CCM_LOG_FORMAT", "CCM_LOG__FORMAT"] {
            let loaded = Config::load_from(None, env(&[(var, "json")])).expect("loads");
            assert_eq!(loaded.config.log.format, LogFormat::Json, "{var}");
            assert!(loaded.unknown_env.is_empty(), "{var}");
        }
        let err = Config::load_from(None, env(&[("CCM_LOG_FORMAT", "xml")])).expect_err("xml");
        assert!(matches!(&err, ConfigError::Env { var, .. } if var == "CCM_LOG_FORMAT"));
    }

    #[test]
    fn provisioning_on_start_can_be_turned_off() {
        assert!(Config::default().provision);
        let loaded = Config::load_from(None, env(&[("CCM_PROVISION", "false")])).expect("loads");
        assert!(!loaded.config.provision);
    }

    /// `config/ccm.example.yaml` is the commented reference operators copy: it must load, hold
    /// exactly the defaults, and name every setting (a setting added without it fails here).
    #[test]
    fn the_example_configuration_names_every_setting_with_its_default() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/ccm.example.yaml");
        let loaded = Config::load_from(Some(&path), env(&[])).expect("the example loads");
        assert_eq!(
            loaded.config,
            Config::default(),
            "the example's values are the defaults"
        );

        let text = std::fs::read_to_string(&path).expect("reads");
        let example: Value = serde_yaml_ng::from_str(&text).expect("yaml");
        let defaults = serde_yaml_ng::to_value(Config::default()).expect("serialises");
        let mut missing = Vec::new();
        key_paths(&defaults, "", &mut |key| {
            if lookup(&example, key).is_none() {
                missing.push(key.to_owned());
            }
        });
        assert!(
            missing.is_empty(),
            "settings missing from the example: {missing:?}"
        );
    }

    fn key_paths(value: &Value, prefix: &str, found: &mut impl FnMut(&str)) {
        if let Value::Mapping(map) = value {
            for (key, child) in map {
                let key = format!("{prefix}{}", key.as_str().unwrap_or_default());
                found(&key);
                key_paths(child, &format!("{key}."), found);
            }
        }
    }

    fn lookup<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
        path.split('.').try_fold(value, |value, key| value.get(key))
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_then_file_then_environment() {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        writeln!(
            file,
            "nats_url: nats://file:4222\ningest:\n  default_max_attempts: 5"
        )
        .expect("write");
        let loaded = Config::load_from(
            Some(file.path()),
            env(&[
                ("CCM_INGEST__DEFAULT_MAX_ATTEMPTS", "7"),
                ("CCM_INGEST__AUTH_TOKENS", "[a, b]"),
                ("CCM_TEST_BACKEND", "local"),
                ("PATH", "/bin"),
            ]),
        )
        .expect("loads");
        assert_eq!(loaded.config.nats_url.expose(), "nats://file:4222");
        assert_eq!(loaded.config.ingest.default_max_attempts, 7);
        assert_eq!(
            loaded.config.ingest.auth_tokens,
            vec![Secret::new("a").into(), Secret::new("b").into()]
        );
        assert_eq!(loaded.config.projector, ProjectorConfig::default());
        assert_eq!(loaded.unknown_env, vec!["CCM_TEST_BACKEND".to_owned()]);
    }

    #[test]
    fn a_bad_file_names_the_file_and_line() {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        writeln!(file, "nats_url: x\ningest:\n  listen: not-an-address").expect("write");
        let err = Config::load_from(Some(file.path()), env(&[])).expect_err("invalid");
        let ConfigError::File { path, source } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(path, file.path());
        assert_eq!(source.location().map(|l| l.line()), Some(3), "{source}");
    }

    #[test]
    fn unknown_keys_in_the_file_are_errors() {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        writeln!(file, "nats_ulr: x").expect("write");
        let err = Config::load_from(Some(file.path()), env(&[])).expect_err("typo");
        assert!(
            err.source_string().contains("nats_ulr"),
            "{}",
            err.source_string()
        );
    }

    #[test]
    fn a_bad_environment_value_names_the_variable() {
        let err = Config::load_from(None, env(&[("CCM_DIALER__MAX_CALLS", "many")]))
            .expect_err("not a number");
        assert!(matches!(&err, ConfigError::Env { var, .. } if var == "CCM_DIALER__MAX_CALLS"));
    }

    #[test]
    fn string_settings_stay_strings() {
        let loaded = Config::load_from(None, env(&[("CCM_NATS_URL", "1234")])).expect("loads");
        assert_eq!(loaded.config.nats_url.expose(), "1234");
    }

    #[test]
    fn a_carrier_is_chosen_with_one_variable() {
        let loaded = Config::load_from(
            None,
            env(&[(
                "CCM_DIALER__CARRIER",
                "{kind: twilio, base_url: 'http://127.0.0.1:9000', account_sid: ACx, from: '+15550009999'}",
            )]),
        )
        .expect("loads");
        let CarrierConfig::Twilio(twilio) = &loaded.config.dialer.carrier else {
            panic!("{:?}", loaded.config.dialer.carrier)
        };
        assert_eq!(
            (twilio.account_sid.as_str(), twilio.ring_timeout_secs),
            ("ACx", 30)
        );
        let loaded = Config::load_from(None, env(&[("CCM_DIALER__CARRIER", "{kind: http}")]))
            .expect("loads");
        assert_eq!(loaded.config.dialer.carrier.kind(), "http");
    }

    #[test]
    fn a_token_is_a_string_or_an_entry_with_a_role() {
        let yaml = "ingest:\n  auth_tokens:\n    - plain-token\n    - {sha256: 5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8, role: viewer, name: grafana}\n    - {token: carrier-token, role: carrier, expires_at: 2027-01-01T00:00:00Z}\n";
        let mut file = tempfile::NamedTempFile::new().expect("file");
        file.write_all(yaml.as_bytes()).expect("write");
        let loaded = Config::load_from(Some(file.path()), env(&[])).expect("loads");
        let tokens = &loaded.config.ingest.auth_tokens;
        assert_eq!(tokens[0], TokenConfig::Plain(Secret::new("plain-token")));
        let TokenConfig::Entry(viewer) = &tokens[1] else {
            panic!("an entry: {:?}", tokens[1]);
        };
        assert_eq!(viewer.role, crate::access::Role::Viewer);
        assert_eq!(viewer.name.as_deref(), Some("grafana"));
        let TokenConfig::Entry(carrier) = &tokens[2] else {
            panic!("an entry: {:?}", tokens[2]);
        };
        assert_eq!(carrier.role, crate::access::Role::Carrier);
        assert!(carrier.expires_at.is_some());
        let bad = "ingest:\n  auth_tokens:\n    - {token: t, role: superuser}\n";
        let mut file = tempfile::NamedTempFile::new().expect("file");
        file.write_all(bad.as_bytes()).expect("write");
        assert!(
            Config::load_from(Some(file.path()), env(&[])).is_err(),
            "an unknown role"
        );
    }

    #[test]
    fn secrets_are_not_printed() {
        let config = Config {
            ingest: IngestConfig {
                auth_tokens: vec![Secret::new("hunter2").into()],
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(!format!("{config:?}").contains("hunter2"));
    }

    impl ConfigError {
        fn source_string(&self) -> String {
            std::error::Error::source(self)
                .map(ToString::to_string)
                .unwrap_or_default()
        }
    }
    /// User names, passwords and tokens in the NATS and carrier URLs never print: the URLs
    /// print with `***` in their place, host and port kept for the operator.
    #[test]
    fn credentials_in_urls_never_print() {
        let file = "nats_url: 'nats://ccm:nats-pw-5e1@10.0.0.1:4222,tls://tok-9f2c@10.0.0.2:4222'\n\
                    dialer:\n  carrier: {kind: http, base_url: 'https://carrier:http-pw-77@carrier.example:8443/v1?key=q-secret-3'}\n";
        let mut tmp = tempfile::NamedTempFile::new().expect("temp file");
        write!(tmp, "{file}").expect("write");
        let mut config = Config::load_from(Some(tmp.path()), Vec::new())
            .expect("loads")
            .config;
        let debug = format!("{config:?}");
        for secret in ["nats-pw-5e1", "tok-9f2c", "http-pw-77", "q-secret-3"] {
            assert!(!debug.contains(secret), "{secret} in {debug}");
        }
        assert!(debug.contains("10.0.0.1:4222") && debug.contains("carrier.example:8443"));
        assert_eq!(
            config.nats_url.expose(),
            "nats://ccm:nats-pw-5e1@10.0.0.1:4222,tls://tok-9f2c@10.0.0.2:4222"
        );
        config.dialer.carrier = CarrierConfig::Twilio(TwilioCarrierConfig {
            base_url: SecretUrl::new("https://AC1:tw-pw-31@api.twilio.example"),
            ..TwilioCarrierConfig::default()
        });
        assert!(!format!("{config:?}").contains("tw-pw-31"));
    }
}
