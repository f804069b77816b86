//! Accepting calls: claim the number, publish the first attempt, answer after the ack.
//!
//! Both APIs (compatible and resource) go through here, so the rules are the same for
//! everyone: a call is accepted only once JetStream stored its dial message, and a call that
//! could not be published gives its claim back, so nothing is half-accepted.

use async_nats::jetstream::{self, message::PublishMessage};
use ccm_core::{CallId, Campaign, DialRequest, PhoneNumber};
use chrono::Utc;
use futures::{StreamExt, stream};

use crate::{
    AppState,
    claim::{self, Claim, ClaimError},
};

/// How many claims are in flight at once during a bulk request.
const CLAIM_CONCURRENCY: usize = 256;
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
}

fn dial_request(campaign: &Campaign, phone: PhoneNumber, call_id: CallId) -> DialRequest {
    let now = Utc::now();
    DialRequest {
        call_id,
        campaign_id: campaign.id,
        phone_number: phone,
        attempt: 1,
        max_attempts: campaign.max_attempts,
        created_at: now,
        queued_at: now,
    }
}

/// Accepts one call: claim, publish, wait for the ack.
pub async fn accept_one(
    state: &AppState,
    campaign: &Campaign,
    phone: PhoneNumber,
    call_id: CallId,
) -> Result<DialRequest, AcceptError> {
    let claim = claim::claim(state, campaign.id, &phone, call_id).await?;
    let request = dial_request(campaign, phone, call_id);
    if let Err(e) = ccm_core::nats::publish_dial(&state.js, &request).await {
        claim::release(state, &claim).await;
        return Err(AcceptError::Publish(e.into()));
    }
    Ok(request)
}

/// Accepts many calls of one campaign. Claims run concurrently, publishes are pipelined in
/// bounded windows, and the results come back in the input order.
pub async fn accept_many(
    state: &AppState,
    campaign: &Campaign,
    phones: Vec<PhoneNumber>,
) -> Vec<Result<DialRequest, AcceptError>> {
    let claims: Vec<(PhoneNumber, CallId, Result<Claim, ClaimError>)> = stream::iter(phones)
        .map(|phone| async move {
            let call_id = CallId::new();
            let claimed = claim::claim(state, campaign.id, &phone, call_id).await;
            (phone, call_id, claimed)
        })
        .buffered(CLAIM_CONCURRENCY)
        .collect()
        .await;

    let mut results: Vec<Option<Result<DialRequest, AcceptError>>> =
        std::iter::repeat_with(|| None).take(claims.len()).collect();
    let mut window: Vec<Pending> = Vec::with_capacity(PUBLISH_WINDOW);
    for (index, (phone, call_id, claimed)) in claims.into_iter().enumerate() {
        let claim = match claimed {
            Ok(claim) => claim,
            Err(e) => {
                results[index] = Some(Err(AcceptError::Claim(e)));
                continue;
            }
        };
        let request = dial_request(campaign, phone, call_id);
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
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(AcceptError::Publish("not attempted".into()))))
        .collect()
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
    let message = PublishMessage::build()
        .payload(bytes::Bytes::from(body))
        .message_id(request.msg_id());
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
