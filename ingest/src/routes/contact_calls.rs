//! Starting a campaign over its contacts: one call accepted per contact, in chunks, through
//! the same path as the bulk API (do-not-call, duplicate claims, publish acknowledged).
//!
//! Resumable: a start that fails half-way (NATS unavailable, ingest killed) leaves some calls
//! accepted and held in the draft. Each contact's call has an id derived from the campaign
//! and the number ([`contact_call_id`]), so the retried start finds those calls (their claim
//! holds that very id, and the re-published dial message carries the same `Nats-Msg-Id`,
//! which JetStream de-duplicates) and counts them as accepted; it calls the rest. The retry
//! is expected within the `CALLS` de-duplication window (2 min): past it, a call whose claim
//! was taken would be queued a second time under the same id and attempt.

use ccm_core::{CallId, Campaign, CampaignId, PhoneNumber};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::{
    AppState,
    accept::{self, AcceptError},
    error::AppError,
};

/// Calls accepted per round: bounds the memory of one round, not of the list.
const CHUNK: usize = 10_000;

/// What calling the contacts gave.
#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub struct Called {
    pub contacts: usize,
    pub accepted: usize,
    /// Not called: the contact's (or the start's) `expires_at` had passed.
    pub expired: usize,
    /// On a do-not-call list.
    pub do_not_call: usize,
    /// Already live or within the duplicate window.
    pub duplicates: usize,
    /// Without the consent the campaign requires (never given, or revoked); left out when
    /// none, so a campaign requiring no consent answers as before.
    #[serde(skip_serializing_if = "is_zero")]
    pub consent_required: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Accepts a call for every contact of `campaign`, each expiring at the earlier of the
/// contact's `expires_at` and `expires_at` (the start's); a contact already past it is counted,
/// not called.
pub async fn call_all(
    state: &AppState,
    campaign: &Campaign,
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<Called, AppError> {
    let phones = crate::contacts::list(state, campaign.id)
        .await
        .map_err(|e| AppError::unavailable(std::io::Error::other(e.to_string())))?;
    let mut called = Called {
        contacts: phones.len(),
        ..Called::default()
    };
    for chunk in phones.chunks(CHUNK) {
        // The contacts' custom fields travel in their dial requests, to the carrier and into
        // the call's events.
        let fields = crate::contacts::fields(state, campaign.id, chunk)
            .await
            .map_err(|e| AppError::unavailable(std::io::Error::other(e.to_string())))?;
        let now = chrono::Utc::now();
        let mut targets = Vec::with_capacity(chunk.len());
        for (phone, (fields, own)) in chunk.iter().cloned().zip(fields) {
            let expiry = ccm_core::expiry::earliest(own, expires_at);
            if ccm_core::expiry::is_past(expiry, now) {
                called.expired += 1;
                continue;
            }
            let id = contact_call_id(campaign.id, &phone);
            targets.push((phone, fields, id, expiry));
        }
        for outcome in accept::accept_many_with_fields(state, campaign, targets).await {
            match outcome {
                Ok(_) => called.accepted += 1,
                Err(AcceptError::DoNotCall(_)) => called.do_not_call += 1,
                Err(AcceptError::Consent(_)) => called.consent_required += 1,
                Err(AcceptError::Claim(
                    ccm_core::claims::ClaimError::InProgress
                    | ccm_core::claims::ClaimError::WithinWindow,
                )) => called.duplicates += 1,
                Err(e) => return Err(AppError::unavailable(e)),
            }
        }
    }
    Ok(called)
}

/// The id of the call a campaign's start places to one of its contacts: the same for every
/// attempt of the start (a UUID of version 8, from a SHA-256 of the campaign and the number).
pub fn contact_call_id(campaign: CampaignId, phone: &PhoneNumber) -> CallId {
    let digest = Sha256::new()
        .chain_update(b"ccm contact call v1\0")
        .chain_update(campaign.to_string().as_bytes())
        .chain_update(b"\0")
        .chain_update(phone.as_str().as_bytes())
        .finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    bytes[6] = (bytes[6] & 0x0f) | 0x80; // version 8
    bytes[8] = (bytes[8] & 0x3f) | 0x80; // RFC 9562 variant
    CallId::from(uuid::Uuid::from_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_contacts_call_id_is_stable_and_distinct_per_campaign_and_number() {
        let phone = |s: &str| PhoneNumber::parse(s, ccm_core::PhoneRule::Lenient).expect("phone");
        let c = |n| CampaignId::new(n).expect("id");
        let a = contact_call_id(c(1), &phone("+15550001000"));
        assert_eq!(a, contact_call_id(c(1), &phone("+15550001000")));
        assert_ne!(a, contact_call_id(c(2), &phone("+15550001000")));
        assert_ne!(a, contact_call_id(c(1), &phone("+15550001001")));
        assert_eq!(a.as_uuid().get_version_num(), 8);
    }
}
