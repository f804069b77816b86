//! `POST /api/v1/campaigns/{id}/contacts/import`: a CSV upload of contacts, streamed.
//!
//! The body is read chunk by chunk and split into lines as it arrives; rows are validated one
//! by one and written to the `contacts` bucket in batches, so an import of a million rows
//! holds one batch and the first errors in memory, never the file (the route is exempt from
//! the API's body-size limit for that reason). The first line is a header: a `phone_number`
//! column is required, `time_zone` (IANA) and `postal_code` are optional, and every other column is a custom
//! field kept with the contact. A field may be quoted (`"a, b"`, `""` for a quote) but may not
//! contain a line break. A bad row is reported with its line number and reason and the others
//! go on; rows written before a broker failure stay written (a repeated import rewrites them).

use std::collections::BTreeMap;

use axum::{
    body::Body,
    extract::{Path, State},
};
use ccm_core::{CampaignId, campaign::Contact};
use chrono::Utc;
use futures::StreamExt;
use serde::Serialize;

use crate::{
    AppState,
    error::{ApiJson, AppError},
    routes::{
        campaigns,
        contacts::{NewContact, contact},
    },
};

/// Contacts written to the bucket at once.
const BATCH: usize = 1000;
/// Row errors reported in full; beyond them only counted.
const MAX_ERRORS: usize = 1000;
/// The longest line accepted (a row of custom fields, not a file).
const MAX_LINE_BYTES: usize = 64 * 1024;

/// One refused row.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RowError {
    /// The line number in the file (the header is line 1).
    pub line: u64,
    pub reason: String,
}

/// What the import did.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ImportResult {
    #[schema(value_type = u64)]
    pub campaign_id: CampaignId,
    /// Data rows read (blank lines skipped).
    pub rows: u64,
    pub imported: u64,
    pub rejected: u64,
    /// The first 1,000 refused rows.
    pub errors: Vec<RowError>,
}

/// Imports contacts from a CSV upload.
#[utoipa::path(post, path = "/api/v1/campaigns/{id}/contacts/import", tag = "campaigns",
    params(("id" = u64, Path)),
    request_body(content = String, content_type = "text/csv",
        description = "Header line with a phone_number column, optional time_zone and postal_code, any custom columns"),
    responses(
        (status = 429, description = "Over the token's rate limit (`rate_limited`); see `Retry-After`", body = crate::openapi::Problem,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 200, body = ImportResult),
        (status = 400, description = "No header, no phone_number column, not UTF-8, or a line too long", body = crate::openapi::Problem),
        (status = 404, body = crate::openapi::Problem),
    ))]
pub(crate) async fn import(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Body,
) -> Result<ApiJson<ImportResult>, AppError> {
    let id: CampaignId = id
        .parse()
        .map_err(|e: ccm_core::ids::IdError| AppError::bad_request("invalid_id", e.to_string()))?;
    crate::campaign_store::load(&state, id)
        .await?
        .ok_or_else(|| campaigns::not_found(id))?;
    let mut import = Import {
        state: &state,
        campaign: id,
        header: None,
        batch: Vec::with_capacity(BATCH),
        result: ImportResult {
            campaign_id: id,
            rows: 0,
            imported: 0,
            rejected: 0,
            errors: Vec::new(),
        },
        line: 0,
    };
    let mut stream = body.into_data_stream();
    let mut pending: Vec<u8> = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| AppError::bad_request("invalid_body", e.to_string()))?;
        pending.extend_from_slice(&chunk);
        let mut start = 0;
        while let Some(end) = pending[start..].iter().position(|b| *b == b'\n') {
            import.line(&pending[start..start + end]).await?;
            start += end + 1;
        }
        pending.drain(..start);
        if pending.len() > MAX_LINE_BYTES {
            return Err(AppError::bad_request(
                "invalid_csv",
                format!(
                    "line {} is longer than {MAX_LINE_BYTES} bytes",
                    import.line + 1
                ),
            ));
        }
    }
    if !pending.is_empty() {
        import.line(&pending).await?;
    }
    if import.header.is_none() {
        return Err(no_header());
    }
    import.flush().await?;
    Ok(ApiJson(import.result))
}

fn no_header() -> AppError {
    AppError::bad_request(
        "invalid_csv",
        "the CSV needs a header line with a phone_number column",
    )
}

/// The columns of the header.
struct Header {
    names: Vec<String>,
    phone: usize,
    zone: Option<usize>,
    postal: Option<usize>,
    /// The optional `expires_at` column (RFC 3339; empty: none).
    expiry: Option<usize>,
}

struct Import<'a> {
    state: &'a AppState,
    campaign: CampaignId,
    header: Option<Header>,
    batch: Vec<Contact>,
    result: ImportResult,
    line: u64,
}

impl Import<'_> {
    async fn line(&mut self, bytes: &[u8]) -> Result<(), AppError> {
        self.line += 1;
        let text = std::str::from_utf8(bytes).map_err(|_| {
            AppError::bad_request("invalid_csv", format!("line {} is not UTF-8", self.line))
        })?;
        let text = text.strip_suffix('\r').unwrap_or(text);
        if text.trim().is_empty() {
            return Ok(());
        }
        let fields = match split(text) {
            Ok(fields) => fields,
            Err(reason) if self.header.is_none() => {
                return Err(AppError::bad_request("invalid_csv", reason));
            }
            Err(reason) => {
                self.result.rows += 1;
                self.reject(reason);
                return Ok(());
            }
        };
        // PostgreSQL stores no NUL: a field holding one is refused here, not for ever later.
        let nul = fields.iter().position(|f| f.contains('\0'));
        let Some(header) = &self.header else {
            if let Some(column) = nul {
                return Err(AppError::bad_request(
                    "invalid_csv",
                    format!(
                        "header column {} contains the NUL character (U+0000)",
                        column + 1
                    ),
                ));
            }
            let names: Vec<String> = fields.iter().map(|f| f.trim().to_owned()).collect();
            let phone = names
                .iter()
                .position(|n| n.eq_ignore_ascii_case("phone_number"))
                .ok_or_else(no_header)?;
            let zone = names
                .iter()
                .position(|n| n.eq_ignore_ascii_case("time_zone"));
            let postal = names
                .iter()
                .position(|n| n.eq_ignore_ascii_case("postal_code"));
            let expiry = names
                .iter()
                .position(|n| n.eq_ignore_ascii_case("expires_at"));
            self.header = Some(Header {
                names,
                phone,
                zone,
                postal,
                expiry,
            });
            return Ok(());
        };
        self.result.rows += 1;
        if fields.len() != header.names.len() {
            let reason = format!(
                "{} fields where the header has {}",
                fields.len(),
                header.names.len()
            );
            self.reject(reason);
            return Ok(());
        }
        if let Some(column) = nul {
            let reason = format!(
                "field {} contains the NUL character (U+0000), which cannot be stored",
                header.names[column]
            );
            self.reject(reason);
            return Ok(());
        }
        let expires_at = match header.expiry.map(|e| fields[e].trim()) {
            None | Some("") => None,
            Some(text) => match chrono::DateTime::parse_from_rfc3339(text) {
                Ok(at) => Some(at.with_timezone(&Utc)),
                Err(_) => {
                    self.reject(format!("expires_at {text:?} is not an RFC 3339 date-time"));
                    return Ok(());
                }
            },
        };
        let item = NewContact {
            expires_at,
            phone_number: Some(fields[header.phone].trim().to_owned()),
            numbers: None,
            time_zone: header
                .zone
                .map(|z| fields[z].trim().to_owned())
                .filter(|z| !z.is_empty()),
            postal_code: header.postal.map(|p| fields[p].trim().to_owned()),
        };
        let custom: BTreeMap<String, String> = header
            .names
            .iter()
            .zip(&fields)
            .enumerate()
            .filter(|(i, _)| {
                *i != header.phone
                    && Some(*i) != header.zone
                    && Some(*i) != header.postal
                    && Some(*i) != header.expiry
            })
            .map(|(_, (name, value))| (name.clone(), value.clone()))
            .collect();
        match contact(self.state, self.campaign, item, Utc::now()) {
            Ok(mut contact) => {
                contact.fields = custom;
                self.batch.push(contact);
                if self.batch.len() >= BATCH {
                    self.flush().await?;
                }
            }
            Err(reason) => self.reject(reason),
        }
        Ok(())
    }

    fn reject(&mut self, reason: String) {
        self.result.rejected += 1;
        if self.result.errors.len() < MAX_ERRORS {
            self.result.errors.push(RowError {
                line: self.line,
                reason,
            });
        }
    }

    async fn flush(&mut self) -> Result<(), AppError> {
        let batch = std::mem::take(&mut self.batch);
        let written = crate::contacts::put(self.state, batch)
            .await
            .map_err(|e| AppError::unavailable(std::io::Error::other(e.to_string())))?;
        self.result.imported += written as u64;
        Ok(())
    }
}

/// Splits one CSV line into fields: commas separate, a field in double quotes may hold commas
/// and doubled quotes.
pub fn split(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                    None => return Err("a quoted field is not closed".into()),
                }
            }
            match chars.next() {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(',') => fields.push(field),
                Some(c) => return Err(format!("{c:?} after a closing quote")),
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(field);
                        return Ok(fields);
                    }
                    Some(',') => break,
                    Some(c) => field.push(c),
                }
            }
            fields.push(field);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::split;

    #[test]
    fn fields_are_split_on_commas_outside_quotes() {
        assert_eq!(split("a,b,,c").expect("csv"), ["a", "b", "", "c"]);
        assert_eq!(
            split(r#""+1 555","Doe, Jane","say ""hi""""#).expect("csv"),
            ["+1 555", "Doe, Jane", r#"say "hi""#]
        );
        assert_eq!(split(r#"x,"y""#).expect("csv"), ["x", "y"]);
        assert!(split(r#""open"#).is_err());
        assert!(split(r#""a"b"#).is_err());
    }
}
