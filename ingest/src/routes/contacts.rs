//! `POST /api/v1/campaigns/{id}/contacts`: adds contacts to a campaign with their own time
//! zone (used by calling windows). The whole list is validated first; one bad item refuses
//! the request with every bad item named, and nothing is written.

use axum::extract::{Path, State};
use ccm_core::{
    CampaignId, PhoneNumber,
    campaign::Contact,
    contact_numbers::{self, ContactNumber},
};
use chrono::Utc;
use serde::{Deserialize, Serialize};

use crate::{
    AppState,
    error::{ApiJson, AppError},
    routes::campaigns,
};

/// Most contacts in one request (a CSV import streams larger lists).
const MAX_CONTACTS: usize = 10_000;

/// One contact to add.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewContact {
    /// The contact's number (its identity in the campaign); with `numbers`, it may be left
    /// out, and when given it must be the first of them.
    #[serde(default)]
    #[schema(example = "+33142685300")]
    pub phone_number: Option<String>,
    /// All the contact's numbers, in the order a call tries them (at most 10, none twice),
    /// each with a label (`mobile`, `home`, `work`, …: 1 to 24 characters of `a-z`, `0-9`,
    /// `_`, `-`). A call moves on to the next one after the outcomes the campaign's
    /// `alternate_numbers.advance_on` names.
    #[serde(default)]
    pub numbers: Option<Vec<NewContactNumber>>,
    /// The callee's IANA time zone; without it the number's region or the campaign's zone.
    #[schema(example = "Europe/Paris")]
    pub time_zone: Option<String>,
    /// The callee's postal code: a US ZIP code (`90210`, `90210-1234`) or a Canadian postal
    /// code (`T2P 1J9`, or its first three characters); it places the callee in a state or
    /// province (for calling rules) and, where it tells, a zone.
    #[serde(default)]
    #[schema(example = "90210")]
    pub postal_code: Option<String>,
    /// When calls made from this contact (`start?call_contacts=true`) expire, RFC 3339; a
    /// call's own `expires_at`, when earlier, wins. Must be in the future.
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "2026-12-31T18:00:00Z")]
    pub expires_at: Option<chrono::DateTime<Utc>>,
}

/// One of a contact's numbers.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewContactNumber {
    #[schema(example = "+33612345678")]
    pub number: String,
    #[schema(example = "mobile")]
    pub label: String,
}

/// The body: the contacts to add.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewContacts {
    pub contacts: Vec<NewContact>,
}

/// How many contacts were written.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ContactsAdded {
    #[schema(value_type = u64)]
    pub campaign_id: CampaignId,
    pub written: usize,
}

/// Adds (or updates) contacts of a campaign.
#[utoipa::path(post, path = "/api/v1/campaigns/{id}/contacts", tag = "campaigns",
    params(("id" = u64, Path)), request_body = NewContacts,
    responses(
        (status = 200, body = ContactsAdded),
        (status = 400, description = "Invalid numbers or zones, each named", body = crate::openapi::Problem),
        (status = 404, body = crate::openapi::Problem),
    ))]
pub(crate) async fn add(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<NewContacts>,
) -> Result<ApiJson<ContactsAdded>, AppError> {
    let id: CampaignId = id
        .parse()
        .map_err(|e: ccm_core::ids::IdError| AppError::bad_request("invalid_id", e.to_string()))?;
    if body.contacts.is_empty() || body.contacts.len() > MAX_CONTACTS {
        return Err(AppError::bad_request(
            "invalid_contacts",
            format!("contacts must hold 1 to {MAX_CONTACTS} items"),
        ));
    }
    crate::campaign_store::load(&state, id)
        .await?
        .ok_or_else(|| campaigns::not_found(id))?;
    let now = Utc::now();
    let mut contacts = Vec::with_capacity(body.contacts.len());
    let mut errors = Vec::new();
    for (i, item) in body.contacts.into_iter().enumerate() {
        match contact(&state, id, item, now) {
            Ok(contact) => contacts.push(contact),
            Err(reason) => errors.push(format!("contacts[{i}]: {reason}")),
        }
    }
    if !errors.is_empty() {
        errors.truncate(20);
        return Err(AppError::bad_request("invalid_contacts", errors.join("; ")));
    }
    let written = crate::contacts::put(&state, contacts)
        .await
        .map_err(|e| AppError::unavailable(std::io::Error::other(e.to_string())))?;
    Ok(ApiJson(ContactsAdded {
        campaign_id: id,
        written,
    }))
}

/// Validates one contact.
pub(crate) fn contact(
    state: &AppState,
    campaign: CampaignId,
    item: NewContact,
    now: chrono::DateTime<Utc>,
) -> Result<Contact, String> {
    let parse = |text: &str| {
        PhoneNumber::parse(text, state.config.phone_validation).map_err(|e| e.to_string())
    };
    let numbers = match item.numbers {
        None => Vec::new(),
        Some(list) => {
            let numbers = list
                .into_iter()
                .enumerate()
                .map(|(i, n)| {
                    Ok(ContactNumber {
                        number: parse(&n.number).map_err(|e| format!("numbers[{i}]: {e}"))?,
                        label: n.label,
                    })
                })
                .collect::<Result<Vec<_>, String>>()?;
            contact_numbers::check(&numbers).map_err(|e| e.to_string())?;
            numbers
        }
    };
    let phone_number = match (&item.phone_number, numbers.first()) {
        (Some(text), first) => {
            let phone = parse(text)?;
            if let Some(first) = first.filter(|f| f.number.digits() != phone.digits()) {
                return Err(contact_numbers::NumbersError::NotFirst {
                    phone: phone.to_string(),
                    first: first.number.to_string(),
                }
                .to_string());
            }
            phone
        }
        (None, Some(first)) => first.number.clone(),
        (None, None) => return Err("phone_number or numbers is required".into()),
    };
    // One number is a contact as before: no list is stored.
    let numbers = if numbers.len() > 1 {
        numbers
    } else {
        Vec::new()
    };
    if let Some(zone) = &item.time_zone {
        zone.parse::<chrono_tz::Tz>()
            .map_err(|_| format!("{zone:?} is not an IANA time zone"))?;
    }
    let postal_code = item
        .postal_code
        .map(|code| code.trim().to_owned())
        .filter(|code| !code.is_empty());
    if let Some(code) = &postal_code
        && (code.len() > 16
            || !code
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || " -".contains(c)))
    {
        return Err(format!("{code:?} is not a postal code"));
    }
    ccm_core::expiry::check_not_past(item.expires_at, now).map_err(|e| e.to_string())?;
    Ok(Contact {
        campaign_id: campaign,
        phone_number,
        created_at: now,
        time_zone: item.time_zone,
        postal_code,
        fields: Default::default(),
        expires_at: item.expires_at,
        numbers,
    })
}
