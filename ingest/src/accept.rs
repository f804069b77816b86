//! Accepting calls: claim the number, publish the first attempt, answer after the ack.
//!
//! Both APIs (compatible and resource) go through here, so the rules are the same for
//! everyone: a call is accepted only once JetStream stored its dial message, and a call that
//! could not be published gives its claim back, so nothing is half-accepted. A number on a
//! do-not-call list is refused and keeps no claim.

use async_nats::jetstream::{self, message::PublishMessage};
use ccm_core::{
    CallId, Campaign, CustomFields, DialRequest, PhoneNumber, dnc::DncList, metrics::counter,
};
use chrono::Utc;
use futures::{StreamExt, stream};

use crate::{
    AppState,
    claim::{self, Claim, ClaimError},
};

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
    /// JetStream did not acknowledge the dial message; the claim was given back.
    #[error("the dial message was not acknowledged")]
    Publish(#[source] async_nats::Error),
    /// The number is on a do-not-call list; nothing was published and no claim is kept.
    #[error("do-not-call")]
    DoNotCall(DncList),
    /// The do-not-call lists could not be read.
    #[error("cannot read the do-not-call lists")]
    DncUnavailable(#[source] async_nats::Error),
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
    match state.dnc_cache.lookup(campaign.id, phone) {
        Some(Some(list)) => return Err(AcceptError::DoNotCall(list)),
        Some(None) => return Ok(claim::claim(state, campaign.id, phone, call_id).await?),
        None => {}
    }
    let (listed, claimed) = tokio::join!(
        ccm_core::dnc::listed(&state.dnc, campaign.id, phone),
        claim::claim(state, campaign.id, phone, call_id)
    );
    let refusal = match listed {
        Ok(None) => None,
        Ok(Some(list)) => Some(AcceptError::DoNotCall(list)),
        Err(e) => Some(AcceptError::DncUnavailable(e.into())),
    };
    match (refusal, claimed) {
        (None, claimed) => Ok(claimed?),
        (Some(refusal), Ok(claim)) => {
            claim::release(state, &claim).await;
            Err(refusal)
        }
        (Some(refusal), Err(_)) => Err(refusal),
    }
}

fn dial_request(
    campaign: &Campaign,
    phone: PhoneNumber,
    call_id: CallId,
    custom_fields: CustomFields,
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
    }
}

/// Accepts one call: claim, publish, wait for the ack.
pub async fn accept_one(
    state: &AppState,
    campaign: &Campaign,
    phone: PhoneNumber,
    call_id: CallId,
) -> Result<DialRequest, AcceptError> {
    let result = async {
        let claim = check_and_claim(state, campaign, &phone, call_id).await?;
        let request = dial_request(campaign, phone, call_id, CustomFields::new());
        if let Err(e) = ccm_core::nats::publish_dial(&state.js, &request).await {
            claim::release(state, &claim).await;
            return Err(AcceptError::Publish(e.into()));
        }
        Ok(request)
    }
    .await;
    count(std::slice::from_ref(&result));
    result
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
                    AcceptError::DoNotCall(_) => "do_not_call",
                    AcceptError::DncUnavailable(_) => "dnc_unavailable",
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
) -> Vec<Result<DialRequest, AcceptError>> {
    let targets = phones
        .into_iter()
        .map(|phone| (phone, CustomFields::new()))
        .collect();
    accept_many_with_fields(state, campaign, targets).await
}

/// As [`accept_many`], each number with the custom fields its dial request carries (a
/// campaign's contacts, called at its start).
pub async fn accept_many_with_fields(
    state: &AppState,
    campaign: &Campaign,
    targets: Vec<(PhoneNumber, CustomFields)>,
) -> Vec<Result<DialRequest, AcceptError>> {
    let total = targets.len();
    // Claims stream into publishes: a number's dial message is sent as soon as its claim (and
    // every claim before it, so the campaign is dialled in the order given) is back, which
    // overlaps the two round trips instead of running all claims first.
    let mut claims = stream::iter(targets)
        .map(|(phone, fields)| async move {
            let call_id = CallId::new();
            let claimed = check_and_claim(state, campaign, &phone, call_id).await;
            (phone, fields, call_id, claimed)
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
        let request = dial_request(campaign, phone, call_id, fields);
        match send(state, &request).await {
            Ok(ack) => window.push(Pending {
                index,
                request,
                claim,
                ack,
            }),
            Err(e) => {
                claim::release(state, &claim).await;
                results[index] = Some(Err(AcceptError::Publish(e)));
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
    state: &AppState,
    request: &DialRequest,
) -> Result<jetstream::context::PublishAckFuture, async_nats::Error> {
    let body = serde_json::to_vec(request)?;
    let message = ccm_core::trace_context::inject(
        PublishMessage::build()
            .payload(bytes::Bytes::from(body))
            .message_id(request.msg_id()),
    );
    Ok(state.js.send_publish(request.subject(), message).await?)
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
    for (index, request, claim, acked) in acks {
        results[index] = Some(match acked {
            Ok(_) => Ok(request),
            Err(e) => {
                claim::release(state, &claim).await;
                Err(AcceptError::Publish(e.into()))
            }
        });
    }
}
