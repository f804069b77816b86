//! Starting a campaign over its contacts: one call accepted per contact, in chunks, through
//! the same path as the bulk API (do-not-call, duplicate claims, publish acknowledged).

use ccm_core::Campaign;
use serde::Serialize;

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
    /// On a do-not-call list.
    pub do_not_call: usize,
    /// Already live or within the duplicate window.
    pub duplicates: usize,
}

/// Accepts a call for every contact of `campaign`.
pub async fn call_all(state: &AppState, campaign: &Campaign) -> Result<Called, AppError> {
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
        let targets = chunk.iter().cloned().zip(fields).collect();
        for outcome in accept::accept_many_with_fields(state, campaign, targets).await {
            match outcome {
                Ok(_) => called.accepted += 1,
                Err(AcceptError::DoNotCall(_)) => called.do_not_call += 1,
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
