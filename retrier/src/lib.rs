//! # ccm-retrier
//!
//! Decides what happens to a call after each carrier outcome, holds retries until they are
//! due, and keeps dead letters.
//!
//! [`run`] loads the retry policy (`retrier.policy_file`) and consumes three durable
//! consumers, each with bounded concurrency, so several replicas share the work:
//!
//! - `retrier_outcomes` (`calls.outcome.>`): [`outcome`] applies the policy: `Completed`,
//!   `Retrying` plus an entry in `RETRIES`, or `Failed`; terminal states release the number's
//!   `active_calls` claim. [`history`] reads the call's past from `CALL_EVENTS`; [`window`]
//!   moves a retry due outside the campaign's calling window to its opening.
//! - `retrier_retries` (`RETRIES`): [`retries`] delays each entry until due, then publishes
//!   attempt n+1 to `CALLS`.
//! - `retrier_advisories` (`ADVISORIES`): [`advisories`] moves messages that exhausted
//!   `max_deliver` or were TERMed into `DLQ`.
//!
//! All three run on the shared consumer runtime (`ccm_core::consumer`), whose module docs
//! state each one's poison and shutdown policy.
//!
//! Beside them, [`expiry`] ends `EXPIRED` every attempt left undialled in `CALLS` longer than
//! `retrier.max_queue_age_secs`, before the stream's retention could drop it, and [`deadline`]
//! every call of a held campaign whose own `expires_at` has passed.
//!
//! [`stranded`] puts back entries of `RETRIES` the server kept but no longer delivers.
//!
//! [`dlq`] also holds the operator's actions (list, show, redrive, discard) that the
//! `ccm-retrier dlq` subcommands run.

pub(crate) mod advisories;
pub(crate) mod alternate;
pub(crate) mod asked;
pub mod deadline;
pub mod dlq;
pub mod expiry;
pub mod history;
pub(crate) mod outcome;
pub(crate) mod reaper;
pub(crate) mod retries;
pub(crate) mod sample;
pub mod stranded;

use std::{future::Future, sync::Arc, time::Duration};

use async_nats::jetstream::{self, consumer::PullConsumer, kv};
use ccm_core::{
    Config, RetryPolicy,
    consumer::{Delivery, Options, Poison},
    policy::PolicyError,
    service::Started,
    topology::names,
};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Why the retrier stopped.
#[derive(Debug, thiserror::Error)]
pub enum RetrierError {
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Nats(#[from] ccm_core::nats::NatsError),
    #[error(transparent)]
    Topology(#[from] ccm_core::topology::TopologyError),
    #[error("cannot open {0}")]
    Open(&'static str, #[source] async_nats::Error),
    /// Names the rule file and line.
    #[error(transparent)]
    Rules(#[from] ccm_core::rules::RulesError),
    #[error("a retrier task failed")]
    Task(#[source] tokio::task::JoinError),
    #[error(transparent)]
    Start(#[from] ccm_core::service::StartError),
    #[error(transparent)]
    Config(#[from] ccm_core::config::ConfigError),
}

/// What the retrier's handlers share.
#[derive(Debug, Clone)]
pub struct Shared {
    pub js: jetstream::Context,
    pub events: jetstream::stream::Stream,
    /// Number claims: released when a call ends, and reaped (see [`ccm_core::claims`]).
    pub claims: ccm_core::claims::Claims,
    pub campaigns: kv::Store,
    /// Contacts, for the callee's own time zone when a retry meets a calling window.
    pub contacts: kv::Store,
    pub policy: RetryPolicy,
    /// Do-not-call lists and consents: a contact's further number is skipped when barred.
    pub dnc: kv::Store,
    pub consents: kv::Store,
    /// The claims' scope (`ingest.duplicate_scope`), for a contact's further numbers.
    pub scope: ccm_core::config::DuplicateScope,
    /// The rule packs: a retry is scheduled when the callee's rules permit it, as the dialer
    /// will check. Empty until [`run`] loads `compliance.rule_files`.
    pub rules: Arc<ccm_core::rules::Rules>,
    /// How far ahead a callback asked for with an outcome may be
    /// ([`ccm_core::callback::horizon`]); set by [`run`] from the streams' retention.
    pub callback_horizon: chrono::Duration,
}

impl Shared {
    /// Opens what the handlers use, on a provisioned topology.
    pub async fn open(
        js: jetstream::Context,
        policy: RetryPolicy,
        claims: ccm_core::claims::ClaimSettings,
    ) -> Result<Self, RetrierError> {
        Ok(Self {
            events: js
                .get_stream(names::CALL_EVENTS)
                .await
                .map_err(|e| RetrierError::Open(names::CALL_EVENTS, e.into()))?,
            claims: ccm_core::claims::Claims::open(js.clone(), claims).await?,
            campaigns: ccm_core::nats::bucket(&js, names::KV_CAMPAIGNS).await?,
            contacts: ccm_core::nats::bucket(&js, names::KV_CONTACTS).await?,
            dnc: ccm_core::nats::bucket(&js, names::KV_DNC).await?,
            consents: ccm_core::nats::bucket(&js, names::KV_CONSENTS).await?,
            scope: ccm_core::config::DuplicateScope::Global,
            js,
            policy,
            rules: Arc::default(),
            callback_horizon: ccm_core::callback::horizon(std::time::Duration::ZERO),
        })
    }
}

/// Outcomes and advisories handled at once by one replica.
const HANDLERS: usize = 64;

/// How long a pull request waits for messages. Short, so shutdown is never held up long.
pub(crate) const PULL_EXPIRES: Duration = Duration::from_secs(1);

/// Runs the retrier until `shutdown` is cancelled. A bad policy file stops it at start.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), RetrierError> {
    config.validate()?;
    let policy = RetryPolicy::load(&config.retrier.policy_file)?;
    let rules = Arc::new(ccm_core::rules::Rules::load(&config.compliance.rule_files)?);
    let Started { client, js, .. } =
        ccm_core::service::start("retrier", &config, config.retrier.metrics_listen, &shutdown)
            .await?;
    tokio::spawn(sample::run(js.clone(), shutdown.clone()));
    let mut shared = Shared::open(js, policy, ccm_core::claims::ClaimSettings::of(&config)).await?;
    shared.rules = rules;
    shared.scope = config.ingest.duplicate_scope;
    shared.callback_horizon = ccm_core::callback::horizon(config.streams.calls_max_age());
    let ctx = Arc::new(shared);
    let mut tasks = JoinSet::new();
    let (c, s) = (ctx.clone(), shutdown.clone());
    tasks.spawn(async move {
        // An outcome nobody can decode is TERMed and parked from its advisory.
        let options = Options::new("retrier_outcomes", HANDLERS, PULL_EXPIRES);
        consume(c, s, names::CALL_EVENTS, options, |ctx, m| async move {
            outcome::handle(&ctx, m).await
        })
        .await
    });
    let (c, s) = (ctx.clone(), shutdown.clone());
    tasks.spawn(async move {
        // An advisory nobody can read names no message: skipped.
        let options = Options {
            poison: Poison::Skip,
            ..Options::new("retrier_advisories", HANDLERS, PULL_EXPIRES)
        };
        consume(c, s, names::ADVISORIES, options, |ctx, m| async move {
            advisories::handle(&ctx, m).await
        })
        .await
    });
    let (c, s) = (ctx.clone(), shutdown.clone());
    tasks.spawn(retries::run(c, s));
    let (c, s) = (ctx.clone(), shutdown.clone());
    let (max_age, every) = (
        Duration::from_secs(config.retrier.max_queue_age_secs),
        Duration::from_millis(config.retrier.expiry_sweep_ms),
    );
    tasks.spawn(async move {
        expiry::run(c, max_age, every, s).await;
        Ok(())
    });
    let (c, s) = (ctx.clone(), shutdown.clone());
    let every = Duration::from_millis(config.retrier.stranded_sweep_ms);
    tasks.spawn(async move {
        stranded::run(c, every, s).await;
        Ok(())
    });
    let interval = Duration::from_secs(config.claims.reap_interval_secs.max(1));
    tasks.spawn(reaper::run(ctx.claims.clone(), interval, shutdown.clone()));
    tracing::info!(policy = %config.retrier.policy_file.display(), "retrier running");
    let mut result = Ok(());
    let stop = shutdown.clone();
    ccm_core::service::join_tasks(
        &mut tasks,
        &shutdown,
        ccm_core::service::SHUTDOWN_GRACE,
        |joined| {
            // A task aborted at the end of the grace is no failure of the replica.
            let outcome = match joined {
                Err(e) if e.is_cancelled() => Ok(()),
                joined => joined.map_err(RetrierError::Task).and_then(|r| r),
            };
            if let Err(e) = outcome {
                // One loop failing stops the others: a replica that half works hides the fault.
                stop.cancel();
                if result.is_ok() {
                    result = Err(e);
                }
            }
        },
    )
    .await;
    // Acks and NAKs are fire-and-forget publishes; flush them to the server before draining,
    // or a NAK sent just before shutdown can be lost and its message wait out AckWait.
    ccm_core::service::close_nats(&client, std::time::Duration::from_secs(1)).await;
    result
}

// The span each delivery is handled in, opened in this crate (see `Options::span`).
ccm_core::consumer_span!();

/// Opens a durable consumer of `stream` and runs `handler` on each of its messages with the
/// shared runtime ([`ccm_core::consumer::run`]) until `shutdown`.
pub(crate) async fn consume<F, Fut>(
    ctx: Arc<Shared>,
    shutdown: CancellationToken,
    stream: &'static str,
    options: Options,
    handler: F,
) -> Result<(), RetrierError>
where
    F: Fn(Arc<Shared>, Delivery) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    // Spans opened here, so traces name the retrier.
    let options = Options {
        span: consumer_span,
        ..options
    };
    let consumer: PullConsumer = ctx
        .js
        .get_consumer_from_stream(options.name, stream)
        .await
        .map_err(|e| RetrierError::Open(options.name, e.into()))?;
    ccm_core::consumer::run(
        &consumer,
        &options,
        |delivery| handler(ctx.clone(), delivery),
        &shutdown,
    )
    .await;
    Ok(())
}
