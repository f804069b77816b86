//! Outcomes addressed to the dialer waiting for them: the one owner of how an outcome is
//! published and where its copy goes.
//!
//! An outcome is stored in `CALL_EVENTS` on `calls.outcome.<campaign>.<call>` as always (the
//! projector, the retrier and the webhooks read it there, unchanged). Dialers no longer
//! subscribe to that subject: each dialer process has an [`Address`] (a short token, fresh
//! per process), records it in a header ([`DIALER_HEADER`]) of the attempt's `Dialing` event,
//! and subscribes only to [`subjects::dialer_outcome`] of its own address. Once the outcome is
//! stored, [`publish`] sends a core-NATS copy there ([`copy`]): outcome traffic grows with
//! outcomes, not with outcomes × dialer replicas.
//!
//! Where the publisher learns the address from, cheapest first:
//! - it carries it: the dialer's own synthetic outcomes and its in-process simulator, and
//!   Twilio's callbacks, whose `StatusCallback` URL names it (`dialer=<address>`);
//! - the attempt's `Dialing` event in the stream ([`address_of`], one direct get): every
//!   carrier, including the old contract's, which echoes nothing of ours;
//! - nowhere (the event was placed by a dialer older than this, or the read failed): the copy
//!   goes to [`subjects::DIALER_OUTCOME_ANY`], which every dialer hears. Such outcomes are
//!   rare (a rolling upgrade), so broadcasting them costs little.
//!
//! The copy is a core message: it is lost when the addressee is disconnected or gone. The
//! stored outcome is what counts, and the dialer reads it from the stream after a reconnect,
//! every so often, and when it takes over an attempt another dialer placed (it then also
//! listens to that dialer's address for as long as it waits; see the dialer's `outcomes`).
//! The copy is sent after the outcome is stored, so a dialer woken by it always finds the
//! outcome in the stream.

use async_nats::{Client, HeaderMap, jetstream};

use crate::{CallEvent, CallId, CampaignId, nats::NatsError, subjects};

/// The header of a `Dialing` event that names the dialer waiting for the attempt's outcome.
/// A header, not a payload field: it is routing for the life of one call, meaningless once
/// the call ended, so it stays out of the projected payload, the API and the webhooks.
pub const DIALER_HEADER: &str = "Ccm-Dialer";

/// The longest address, in bytes.
pub const MAX_LEN: usize = 64;

/// A dialer process's address: one NATS subject token of `[A-Za-z0-9_-]`, at most
/// [`MAX_LEN`] bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address(String);

impl Address {
    /// `token` as an address, when it is one.
    pub fn parse(token: &str) -> Option<Self> {
        let valid = !token.is_empty()
            && token.len() <= MAX_LEN
            && token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        valid.then(|| Self(token.to_owned()))
    }

    /// A fresh address for a process named `name` (e.g. `host:pid`): the name made
    /// subject-safe and shortened, then a random suffix, so two processes of one name (a
    /// restarted pod, two dialers in one test) never share an address.
    pub fn fresh(name: &str) -> Self {
        let safe: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .take(MAX_LEN - 13)
            .collect();
        // 48 random bits of a v4 UUID (its first twelve hex digits).
        let random = uuid::Uuid::new_v4().simple().to_string();
        Self(format!("{safe}-{}", &random[..12]))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The address a `Dialing` event's headers name, if any.
    pub fn of_headers(headers: &HeaderMap) -> Option<Self> {
        headers
            .get(DIALER_HEADER)
            .and_then(|v| Self::parse(v.as_str()))
    }

    /// The headers that record this address on a `Dialing` event.
    pub fn headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(DIALER_HEADER, self.0.as_str());
        headers
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Stores `outcome` (de-duplicated by its id, as [`crate::nats::publish_event`]) and then sends
/// its copy to the dialer at `to`, or to every dialer when `to` is `None`. A repeated outcome
/// is copied again: harmless (no waiter is left) and it makes up for a copy that was lost.
pub async fn publish(
    js: &jetstream::Context,
    outcome: &CallEvent,
    to: Option<&Address>,
) -> Result<jetstream::publish::PublishAck, NatsError> {
    let ack = crate::nats::publish_event(js, outcome).await?;
    copy(&js.client(), outcome, to).await;
    Ok(ack)
}

/// Stores a carrier's outcome and copies it to the dialer waiting for it: the one `named` by
/// the callback, else the one the attempt's `Dialing` names ([`address_of`]), else every
/// dialer. What ingest does with a callback.
pub async fn publish_carrier_outcome(
    js: &jetstream::Context,
    outcome: &CallEvent,
    named: Option<Address>,
) -> Result<jetstream::publish::PublishAck, NatsError> {
    let to = match named {
        Some(address) => Some(address),
        None => address_of(js, outcome.campaign_id, outcome.call_id, outcome.attempt).await,
    };
    publish(js, outcome, to.as_ref()).await
}

/// Sends the core copy of a stored outcome. A failure is only logged: the outcome is stored,
/// and the waiting dialer reads it from the stream.
pub async fn copy(client: &Client, outcome: &CallEvent, to: Option<&Address>) {
    let subject = to.map_or_else(
        || subjects::DIALER_OUTCOME_ANY.to_owned(),
        |a| subjects::dialer_outcome(a.as_str()),
    );
    let Ok(body) = serde_json::to_vec(outcome) else {
        return;
    };
    if let Err(e) = client.publish(subject, body.into()).await {
        tracing::debug!(error = %e, call = %outcome.call_id,
            "cannot copy the outcome to its dialer; it reads it from the stream");
    }
}

/// The dialer waiting for `attempt` of `call`, as its `Dialing` event names it: `None` when the
/// call's latest event is not that attempt's `Dialing`, names no dialer, or cannot be read.
pub async fn address_of(
    js: &jetstream::Context,
    campaign: CampaignId,
    call: CallId,
    attempt: u32,
) -> Option<Address> {
    let events = js
        .get_stream_no_info(crate::topology::names::CALL_EVENTS)
        .await
        .ok()?;
    let last = events
        .direct_get_last_for_subject(subjects::event(campaign, call))
        .await
        .ok()?;
    let event: CallEvent = serde_json::from_slice(&last.payload).ok()?;
    let dialing = matches!(event.kind, crate::EventKind::Dialing { .. });
    if !dialing || event.attempt != attempt {
        return None;
    }
    Address::of_headers(&last.headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_addresses_are_subject_tokens_and_differ() {
        let names = ["host:1234", "", "a.b.c*>", &"x".repeat(200), "ünïcode:7"];
        for name in names {
            let a = Address::fresh(name);
            let b = Address::fresh(name);
            assert_ne!(a, b, "{name:?}");
            assert_eq!(Address::parse(a.as_str()).as_ref(), Some(&a), "{name:?}");
            assert!(a.as_str().len() <= MAX_LEN);
            assert_eq!(
                subjects::dialer_outcome(a.as_str()).split('.').count(),
                4,
                "{a}"
            );
        }
        assert_eq!(Address::parse("a.b"), None);
        assert_eq!(Address::parse("*"), None);
        assert_eq!(Address::parse(""), None);
        assert_eq!(Address::parse(&"a".repeat(MAX_LEN + 1)), None);
    }

    #[test]
    fn headers_carry_the_address() {
        let a = Address::fresh("dialer-0:1");
        assert_eq!(Address::of_headers(&a.headers()), Some(a));
        assert_eq!(Address::of_headers(&HeaderMap::new()), None);
    }
}
