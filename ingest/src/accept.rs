//! Accepting calls: claim the number, publish the first attempt, answer after the ack.
//!
//! Both APIs (compatible and resource) go through here, so the rules are the same for
//! everyone: a call is accepted only once JetStream stored its dial message, and a call that
//! could not be published gives its claim back, so nothing is half-accepted. A number on a
//! do-not-call list is refused and keeps no claim.
//!
//! A publish whose ack never came (timed out, connection lost) may still have been stored.
//! It is re-sent with the same `Nats-Msg-Id`, which JetStream's duplicate window makes safe,
//! until the answer is definite ([`plan`]); only a definite refusal gives the claim back. A
//! publish still ambiguous at the end keeps its claim (the call may exist) and is reported as
//! [`AcceptError::OutcomeUnknown`], for the client to retry with the same call.

use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage};
use ccm_core::{
    CallId, Campaign, CustomFields, DialRequest, PhoneNumber, dnc::DncList, metrics::counter,
};
use chrono::{DateTime, Utc};
use futures::{StreamExt, stream};

use ccm_core::claims::{Claim, ClaimError};

use crate::AppState;

/// How many claims are in flight at once during a bulk request. Each is one JetStream round
/// trip, so a bulk request's speed is this many round trips at a time.
const CLAIM_CONCURRENCY: usize = 1024;
/// How many dial publishes are awaited together: each un-awaited publish holds one of the
/// JetStream context's in-flight slots, so they are sent in bounded windows.
const PUBLISH_WINDOW: usize = 1000;

/// Why one call was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error(transparent)]
    Claim(#[from] ClaimError),
    /// JetStream definitely refused the dial message; the claim was given back.
    #[error("the dial message was not acknowledged")]
    Publish(#[source] async_nats::Error),
    /// JetStream never answered whether it stored the dial message: the call may exist, so
    /// its claim is kept. Re-sending the same call (same id) settles it.
    #[error("cannot tell whether the dial message was stored")]
    OutcomeUnknown(#[source] async_nats::Error),
    /// The number is on a do-not-call list; nothing was published and no claim is kept.
    #[error("do-not-call")]
    DoNotCall(DncList),
    /// The do-not-call lists could not be read.
    #[error("cannot read the do-not-call lists")]
    DncUnavailable(#[source] async_nats::Error),
    /// The campaign requires a consent the number does not hold (never given, or revoked);
    /// nothing was published and no claim is kept.
    #[error("{}", .0.refusal.map_or("consent_required", |r| r.code()))]
    Consent(ccm_core::consent::ConsentSeen),
    /// The consents could not be read.
    #[error("cannot read the consents")]
    ConsentUnavailable(#[source] ccm_core::consent::ConsentError),
}

impl AcceptError {
    /// The refusal's detail for a consent refusal.
    pub fn consent_detail(seen: &ccm_core::consent::ConsentSeen, phone: &PhoneNumber) -> String {
        match seen.refusal {
            Some(ccm_core::consent::ConsentRefusal::ConsentRevoked) => format!(
                "{phone}'s {} consent was revoked; the campaign requires it",
                seen.required.as_str()
            ),
            _ => format!(
                "{phone} has no valid {} consent; the campaign requires it",
                seen.required.as_str()
            ),
        }
    }
}

/// Refuses a number without the consent `campaign` requires (a campaign requiring none lets
/// every number through without a read).
async fn check_consent(
    state: &AppState,
    campaign: &Campaign,
    phone: &PhoneNumber,
) -> Result<(), AcceptError> {
    let Some(required) = campaign.required_consent else {
        return Ok(());
    };
    let seen = ccm_core::consent::check(&state.consents, phone, required)
        .await
        .map_err(AcceptError::ConsentUnavailable)?;
    match seen.refusal {
        None => Ok(()),
        Some(_) => Err(AcceptError::Consent(seen)),
    }
}

/// Looks the number up on the do-not-call lists and claims it. The lists are normally in
/// memory ([`crate::dnc_cache`]): a listed number is refused without a claim, any other costs
/// the claim's round trip only. While the cache cannot answer, the bucket read and the claim
/// are independent round trips run together, which keeps a call's acceptance at two round
/// trips (this, then the publish); a listed number then gives its claim back at once. Nothing
/// is published for a listed number either way.
async fn check_and_claim(
    state: &AppState,
    campaign: &Campaign,
    phone: &PhoneNumber,
    call_id: CallId,
) -> Result<Claim, AcceptError> {
    // Before the claim: a refused number keeps none.
    check_consent(state, campaign, phone).await?;
    match state.dnc_cache.lookup(campaign.id, phone) {
        Some(Some(list)) => return Err(AcceptError::DoNotCall(list)),
        Some(None) => return Ok(claim(state, campaign.id, phone, call_id).await?),
        None => {}
    }
    let (listed, claimed) = tokio::join!(
        ccm_core::dnc::listed(&state.dnc, campaign.id, phone),
        claim(state, campaign.id, phone, call_id)
    );
    let refusal = match listed {
        Ok(None) => None,
        Ok(Some(list)) => Some(AcceptError::DoNotCall(list)),
        Err(e) => Some(AcceptError::DncUnavailable(e.into())),
    };
    match (refusal, claimed) {
        (None, claimed) => Ok(claimed?),
        (Some(refusal), Ok(claim)) => {
            state.claims.give_back(&claim).await;
            Err(refusal)
        }
        (Some(refusal), Err(_)) => Err(refusal),
    }
}

async fn claim(
    state: &AppState,
    campaign: ccm_core::CampaignId,
    phone: &PhoneNumber,
    call_id: CallId,
) -> Result<Claim, ClaimError> {
    let scope = state.config.duplicate_scope;
    state.claims.claim(scope, campaign, phone, call_id).await
}

/// Makes an accepted call's claim last as long as the call. A failure leaves the claim
/// pending, for the reaper to bind from the call's dial message: the call is accepted
/// either way.
async fn bind(state: &AppState, claim: &Claim) {
    if let Err(e) = state.claims.bind(claim).await {
        tracing::warn!(key = %claim.key, call = %claim.call, error = %ccm_core::telemetry::chain(&e), "cannot bind the claim yet; the reaper will");
    }
}

/// Refuses an `expires_at` that is not in the future: `422 expires_at_in_past` (a call that
/// could never be placed is not accepted).
pub(crate) fn refuse_past_expiry(
    expires_at: Option<DateTime<Utc>>,
) -> Result<(), crate::error::AppError> {
    ccm_core::expiry::check_not_past(expires_at, Utc::now()).map_err(|e| {
        crate::error::AppError::Client {
            status: axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            code: "expires_at_in_past",
            detail: e.to_string(),
        }
    })
}

fn dial_request(
    campaign: &Campaign,
    phone: PhoneNumber,
    call_id: CallId,
    custom_fields: CustomFields,
    expires_at: Option<DateTime<Utc>>,
) -> DialRequest {
    let now = Utc::now();
    DialRequest {
        call_id,
        campaign_id: campaign.id,
        phone_number: phone,
        attempt: 1,
        max_attempts: campaign.max_attempts,
        created_at: now,
        queued_at: now,
        custom_fields,
        expires_at,
        alternate: None,
        callback: None,
    }
}

/// How many times a dial message is sent before its fate is reported unknown.
const PUBLISH_TRIES: u32 = 4;
/// Total time the re-sends of one ambiguous publish may take, on top of the first try.
const PUBLISH_BUDGET: Duration = Duration::from_secs(15);

/// What one publish attempt told us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PublishResult {
    /// Acknowledged (possibly as a duplicate of an earlier send): the message is stored.
    Stored,
    /// JetStream answered with a refusal, or the message never left: nothing is stored.
    Refused,
    /// No answer (ack timed out, connection lost): the message may or may not be stored.
    Ambiguous,
}

impl PublishResult {
    pub(crate) fn of(e: &jetstream::context::PublishError) -> Self {
        use jetstream::context::PublishErrorKind as K;
        match e.kind() {
            // The request may have reached the server; only its answer is missing.
            K::TimedOut | K::BrokenPipe => Self::Ambiguous,
            // No stream answered, the server answered with an error, or the client refused to
            // send (payload too large, too many in flight, connection closed before sending).
            K::StreamNotFound
            | K::WrongLastMessageId
            | K::WrongLastSequence
            | K::MaxAckPending
            | K::MaxPayloadExceeded
            | K::Other => Self::Refused,
        }
    }
}

/// What to do after a publish attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plan {
    /// The call is accepted.
    Accept,
    /// Nothing was stored: give the claim (and the idempotency key) back.
    Release,
    /// Send the same message again (same `Nats-Msg-Id`) after this pause.
    Resend(Duration),
    /// Out of tries and still ambiguous: keep the claim, the call may exist.
    KeepUnknown,
}

/// The decision after try number `tries` (1-based) with `left` of the budget remaining.
pub(crate) fn plan(result: PublishResult, tries: u32, left: Duration) -> Plan {
    match result {
        PublishResult::Stored => Plan::Accept,
        PublishResult::Refused => Plan::Release,
        PublishResult::Ambiguous => {
            let pause = Duration::from_millis(100 * 2_u64.pow(tries.min(6)));
            if tries < PUBLISH_TRIES && left > pause {
                Plan::Resend(pause)
            } else {
                Plan::KeepUnknown
            }
        }
    }
}

/// Publishes `request` on `js` until JetStream's answer is definite or the tries run out.
/// Returns the last plan (never [`Plan::Resend`]) and the last error.
async fn publish_until_definite(
    js: &jetstream::Context,
    request: &DialRequest,
    first: Option<Result<(), jetstream::context::PublishError>>,
) -> (Plan, Option<async_nats::Error>) {
    let deadline = tokio::time::Instant::now() + PUBLISH_BUDGET;
    let mut tries = 0;
    let mut outcome = first;
    loop {
        let attempt = match outcome.take() {
            Some(result) => result,
            None => publish(js, request).await,
        };
        tries += 1;
        let (result, error) = match attempt {
            Ok(()) => (PublishResult::Stored, None),
            Err(e) => (PublishResult::of(&e), Some(e)),
        };
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match plan(result, tries, left) {
            Plan::Resend(pause) => {
                tracing::warn!(call = %request.call_id, tries, "dial publish unanswered; sending it again");
                tokio::time::sleep(pause).await;
            }
            done => return (done, error.map(Into::into)),
        }
    }
}

async fn publish(
    js: &jetstream::Context,
    request: &DialRequest,
) -> Result<(), jetstream::context::PublishError> {
    send(js, request).await?.await.map(|_| ())
}

/// Accepts one call: claim, publish, wait for the ack.
pub async fn accept_one(
    state: &AppState,
    campaign: &Campaign,
    phone: PhoneNumber,
    call_id: CallId,
    expires_at: Option<DateTime<Utc>>,
) -> Result<DialRequest, AcceptError> {
    let result = async {
        let claim = check_and_claim(state, campaign, &phone, call_id).await?;
        let request = dial_request(campaign, phone, call_id, CustomFields::new(), expires_at);
        publish_claimed(state, &state.js, &claim, request).await
    }
    .await;
    count(std::slice::from_ref(&result));
    result
}

/// Publishes the dial message of a claimed call on `js` (a test gives it a short ack
/// timeout) until the answer is definite, and gives the claim back only on a refusal.
pub(crate) async fn publish_claimed(
    state: &AppState,
    js: &jetstream::Context,
    claim: &Claim,
    request: DialRequest,
) -> Result<DialRequest, AcceptError> {
    let (plan, error) = publish_until_definite(js, &request, None).await;
    conclude(state, claim, request, plan, error).await
}

/// Applies the final plan of a publish: the one place a publish's claim is given back.
async fn conclude(
    state: &AppState,
    claim: &Claim,
    request: DialRequest,
    plan: Plan,
    error: Option<async_nats::Error>,
) -> Result<DialRequest, AcceptError> {
    let error = || error.unwrap_or_else(|| "publish failed".into());
    match plan {
        Plan::Accept => {
            bind(state, claim).await;
            Ok(request)
        }
        Plan::Release => {
            state.claims.give_back(claim).await;
            Err(AcceptError::Publish(error()))
        }
        Plan::KeepUnknown | Plan::Resend(_) => {
            tracing::error!(call = %request.call_id, key = %claim.key, "dial publish still unanswered; the claim is kept");
            Err(AcceptError::OutcomeUnknown(error()))
        }
    }
}

/// Counts accepted and refused calls. Refusals before this point (invalid number, unknown
/// campaign) are bad input, visible as `4xx` in the API latency histogram.
fn count(results: &[Result<DialRequest, AcceptError>]) {
    let mut accepted = 0_u64;
    for result in results {
        match result {
            Ok(_) => accepted += 1,
            Err(e) => {
                let reason = match e {
                    AcceptError::Claim(ClaimError::InProgress) => "in_progress",
                    AcceptError::Claim(ClaimError::WithinWindow) => "within_window",
                    AcceptError::Claim(ClaimError::Unavailable(_)) => "claim_unavailable",
                    AcceptError::Publish(_) => "publish_failed",
                    AcceptError::OutcomeUnknown(_) => "outcome_unknown",
                    AcceptError::DoNotCall(_) => "do_not_call",
                    AcceptError::DncUnavailable(_) => "dnc_unavailable",
                    AcceptError::Consent(_) => "consent_required",
                    AcceptError::ConsentUnavailable(_) => "consent_unavailable",
                };
                counter!("ccm_ingest_calls_refused_total", "reason" => reason).increment(1);
            }
        }
    }
    counter!("ccm_ingest_calls_accepted_total").increment(accepted);
}

/// Accepts many calls of one campaign. Claims run concurrently, publishes are pipelined in
/// bounded windows as claims come back, and the results come back in the input order.
pub async fn accept_many(
    state: &AppState,
    campaign: &Campaign,
    phones: Vec<PhoneNumber>,
    expires_at: Option<DateTime<Utc>>,
) -> Vec<Result<DialRequest, AcceptError>> {
    let targets = phones
        .into_iter()
        .map(|phone| (phone, CustomFields::new(), CallId::new(), expires_at))
        .collect();
    accept_many_with_fields(state, campaign, targets).await
}

/// As [`accept_many`], each number with the custom fields its dial request carries and the
/// id its call is accepted as (a campaign's contacts, called at its start: a retried start
/// gives each contact the id it had, so a call already accepted is found, not doubled).
pub async fn accept_many_with_fields(
    state: &AppState,
    campaign: &Campaign,
    targets: Vec<(PhoneNumber, CustomFields, CallId, Option<DateTime<Utc>>)>,
) -> Vec<Result<DialRequest, AcceptError>> {
    let total = targets.len();
    // Claims stream into publishes: a number's dial message is sent as soon as its claim (and
    // every claim before it, so the campaign is dialled in the order given) is back, which
    // overlaps the two round trips instead of running all claims first.
    let mut claims = stream::iter(targets)
        .map(|(phone, fields, call_id, expires_at)| async move {
            let claimed = check_and_claim(state, campaign, &phone, call_id).await;
            (phone, (fields, expires_at), call_id, claimed)
        })
        .buffered(CLAIM_CONCURRENCY)
        .enumerate();

    let mut results: Vec<Option<Result<DialRequest, AcceptError>>> =
        std::iter::repeat_with(|| None).take(total).collect();
    let mut window: Vec<Pending> = Vec::with_capacity(PUBLISH_WINDOW);
    while let Some((index, (phone, fields, call_id, claimed))) = claims.next().await {
        let claim = match claimed {
            Ok(claim) => claim,
            Err(e) => {
                results[index] = Some(Err(e));
                continue;
            }
        };
        let request = dial_request(campaign, phone, call_id, fields.0, fields.1);
        match send(&state.js, &request).await {
            Ok(ack) => window.push(Pending {
                index,
                request,
                claim,
                ack,
            }),
            Err(e) => {
                let (plan, error) = publish_until_definite(&state.js, &request, Some(Err(e))).await;
                results[index] = Some(conclude(state, &claim, request, plan, error).await);
            }
        }
        if window.len() >= PUBLISH_WINDOW {
            settle(state, &mut window, &mut results).await;
        }
    }
    settle(state, &mut window, &mut results).await;
    let results: Vec<_> = results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(AcceptError::Publish("not attempted".into()))))
        .collect();
    count(&results);
    results
}

/// A dial message sent but not yet acknowledged.
struct Pending {
    index: usize,
    request: DialRequest,
    claim: Claim,
    ack: jetstream::context::PublishAckFuture,
}

async fn send(
    js: &jetstream::Context,
    request: &DialRequest,
) -> Result<jetstream::context::PublishAckFuture, jetstream::context::PublishError> {
    let body = serde_json::to_vec(request).map_err(|e| {
        jetstream::context::PublishError::with_source(
            jetstream::context::PublishErrorKind::Other,
            e,
        )
    })?;
    let message = ccm_core::trace_context::inject(
        PublishMessage::build()
            .payload(bytes::Bytes::from(body))
            .message_id(request.msg_id()),
    );
    js.send_publish(request.subject(), message).await
}

async fn settle(
    state: &AppState,
    window: &mut Vec<Pending>,
    results: &mut [Option<Result<DialRequest, AcceptError>>],
) {
    let acks = futures::future::join_all(window.drain(..).map(|p| async move {
        let acked = p.ack.await;
        (p.index, p.request, p.claim, acked)
    }))
    .await;
    // Unanswered acks are re-sent together, so a stalled server costs the window one
    // publish budget, not one per message.
    let settled = futures::future::join_all(acks.into_iter().map(
        |(index, request, claim, acked)| async move {
            let result = match acked {
                Ok(_) => {
                    bind(state, &claim).await;
                    Ok(request)
                }
                Err(e) => {
                    let (plan, error) =
                        publish_until_definite(&state.js, &request, Some(Err(e))).await;
                    conclude(state, &claim, request, plan, error).await
                }
            };
            (index, result)
        },
    ))
    .await;
    for (index, result) in settled {
        results[index] = Some(result);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use async_nats::jetstream::context::{PublishError, PublishErrorKind as K};
    use ccm_tests::TestEnv;

    use super::*;

    #[test]
    fn only_a_definite_refusal_releases_and_ambiguity_is_resent_then_kept() {
        let kinds = [
            (K::TimedOut, PublishResult::Ambiguous),
            (K::BrokenPipe, PublishResult::Ambiguous),
            (K::StreamNotFound, PublishResult::Refused),
            (K::WrongLastMessageId, PublishResult::Refused),
            (K::WrongLastSequence, PublishResult::Refused),
            (K::MaxAckPending, PublishResult::Refused),
            (K::MaxPayloadExceeded, PublishResult::Refused),
            (K::Other, PublishResult::Refused),
        ];
        for (kind, expected) in kinds {
            assert_eq!(
                PublishResult::of(&PublishError::new(kind)),
                expected,
                "{kind:?}"
            );
        }
        let plenty = Duration::from_secs(60);
        for tries in 1..=PUBLISH_TRIES + 1 {
            assert_eq!(plan(PublishResult::Stored, tries, plenty), Plan::Accept);
            assert_eq!(plan(PublishResult::Refused, tries, plenty), Plan::Release);
            let ambiguous = plan(PublishResult::Ambiguous, tries, plenty);
            if tries < PUBLISH_TRIES {
                assert!(
                    matches!(ambiguous, Plan::Resend(_)),
                    "try {tries}: {ambiguous:?}"
                );
            } else {
                assert_eq!(ambiguous, Plan::KeepUnknown, "try {tries}");
            }
            // Out of budget: never another send, never a release.
            assert_eq!(
                plan(PublishResult::Ambiguous, tries, Duration::ZERO),
                Plan::KeepUnknown
            );
        }
    }

    fn signal(pid: u32, name: &str) {
        let status = std::process::Command::new("kill")
            .args([format!("-{name}"), pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{name} {pid}");
    }

    /// The server is frozen (SIGSTOP) between the claim and the publish, so every ack times
    /// out while the sent message waits in the server's socket; it is stored once the server
    /// resumes. The claim must survive that, and the same call sent again is the same call.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unanswered_publish_keeps_its_claim_and_a_resend_is_the_same_call() {
        let env = TestEnv::start().await.expect("env");
        env.provision().await.expect("provision");
        let pid = env
            .local_nats
            .as_ref()
            .and_then(|n| n.pid())
            .expect("a local nats-server");
        let state = AppState::connect(&env.config()).await.expect("connect");
        let campaign: Campaign = serde_json::from_value(serde_json::json!({
            "id": 7, "name": "c", "is_active": true, "max_concurrent_calls": 1,
            "max_attempts": 1, "created_at": Utc::now(), "updated_at": Utc::now(),
        }))
        .expect("campaign");
        let phone =
            PhoneNumber::parse("+15550001234", state.config.phone_validation).expect("phone");
        let client = async_nats::connect(&env.nats_url).await.expect("connect");
        let quick = jetstream::ContextBuilder::new()
            .timeout(Duration::from_millis(150))
            .build(client);
        let call_id = CallId::new();
        let key = ccm_core::claims::key(state.config.duplicate_scope, campaign.id, &phone);

        // Claim with the server up, then freeze it for the publish; resume it only once
        // the publish has given its answer.
        let claim = claim(&state, campaign.id, &phone, call_id)
            .await
            .expect("claim");
        let request = dial_request(&campaign, phone.clone(), call_id, CustomFields::new(), None);
        signal(pid, "STOP");
        let first = publish_claimed(&state, &quick, &claim, request).await;
        signal(pid, "CONT");
        let calls = state.js.get_stream("CALLS").await.expect("stream");
        let stored = ccm_tests::eventually(Duration::from_secs(10), || {
            let mut calls = calls.clone();
            async move {
                let n = calls.info().await.ok()?.state.messages;
                (n > 0).then_some(n)
            }
        })
        .await;
        let holder = state.active_calls.get(&key).await.expect("kv");
        println!("first answer: {first:?}; stored messages: {stored:?}; claim: {holder:?}");
        assert!(
            matches!(first, Err(AcceptError::OutcomeUnknown(_))),
            "an unanswered publish is neither accepted nor refused: {first:?}"
        );
        assert_eq!(stored, Some(1), "the frozen server stored the call once");
        assert_eq!(
            holder.as_deref(),
            Some(call_id.to_string().as_bytes()),
            "the stored call keeps its claim"
        );

        // The client's retry (same key, so same call id) re-sends the same message.
        let again = accept_one(&state, &campaign, phone, call_id, None)
            .await
            .expect("the same call is accepted");
        assert_eq!(again.call_id, call_id);
        let mut calls = calls;
        assert_eq!(
            calls.info().await.expect("info").state.messages,
            1,
            "JetStream kept one message for the call"
        );
    }
}
