//! Errors of the resource API, as `application/problem+json` (RFC 9457) with a stable `code`.
//!
//! Client-facing errors say what was wrong with the request. Internal errors are logged with
//! their whole `source()` chain and answered with a generic message, so nothing about the
//! infrastructure leaks to clients.

use axum::{
    extract::{FromRequest, Request, rejection::JsonRejection},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::{Serialize, de::DeserializeOwned};

/// An error answered to the client.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The request itself is wrong; `code` is stable, `detail` says why.
    #[error("{detail}")]
    Client {
        status: StatusCode,
        code: &'static str,
        detail: String,
    },
    /// A dependency (NATS) is unavailable; the client may retry later.
    #[error("service unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Anything else: a bug or an unexpected failure.
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl AppError {
    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::Client {
            status: StatusCode::BAD_REQUEST,
            code,
            detail: detail.into(),
        }
    }

    pub fn not_found(code: &'static str, detail: impl Into<String>) -> Self {
        Self::Client {
            status: StatusCode::NOT_FOUND,
            code,
            detail: detail.into(),
        }
    }

    pub fn conflict(code: &'static str, detail: impl Into<String>) -> Self {
        Self::Client {
            status: StatusCode::CONFLICT,
            code,
            detail: detail.into(),
        }
    }

    pub fn unavailable(source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Unavailable(Box::new(source))
    }

    pub fn internal(source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Internal(Box::new(source))
    }
}

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    title: &'a str,
    status: u16,
    code: &'a str,
    detail: &'a str,
}

/// An error and all its sources, for logs.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    ccm_core::telemetry::chain(error).to_string()
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, code, detail) = match &self {
            Self::Client {
                status,
                code,
                detail,
            } => (*status, *code, detail.clone()),
            Self::Unavailable(e) => {
                tracing::warn!(error = %error_chain(e.as_ref()), "dependency unavailable");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "The message broker is unavailable; nothing was accepted. Retry later.".into(),
                )
            }
            Self::Internal(e) => {
                tracing::error!(error = %error_chain(e.as_ref()), "internal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "Internal server error.".into(),
                )
            }
        };
        let body = Problem {
            kind: "about:blank",
            title: status.canonical_reason().unwrap_or("Error"),
            status: status.as_u16(),
            code,
            detail: &detail,
        };
        let mut response = (status, axum::Json(body)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        response
    }
}

/// A JSON object body: `axum::Json`, but its rejections (malformed JSON, wrong types, wrong
/// media type, body too large) are answered in the same problem shape as every other error,
/// and a body that is not an object is refused. serde's derived structs also accept a JSON
/// array of their fields in order, so without that check `["name"]` would create a campaign.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let (parts, body) = req.into_parts();
        let bytes =
            axum::body::Bytes::from_request(Request::from_parts(parts.clone(), body), state)
                .await
                .map_err(|rejection| AppError::Client {
                    status: rejection.status(),
                    code: if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                        "body_too_large"
                    } else {
                        "invalid_body"
                    },
                    detail: rejection.body_text(),
                })?;
        let is_object = bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
        let checked = bytes.clone();
        let req = Request::from_parts(parts, axum::body::Body::from(bytes));
        match axum::Json::<T>::from_request(req, state).await {
            Ok(_) if !is_object => Err(AppError::Client {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                code: "invalid_type",
                detail: "the request body must be a JSON object".into(),
            }),
            Ok(axum::Json(value)) => match nul_in_body(&checked) {
                Some(refused) => Err(refused),
                None => Ok(Self(value)),
            },
            Err(rejection) => Err(rejection_error(rejection)),
        }
    }
}

/// The 422 for a body with a NUL in some string or key, if it has one. PostgreSQL stores no
/// NUL (`text` refuses the character, `jsonb` its escape), so such a value would be refused
/// downstream for ever. JSON can only write a NUL as the escape `\u0000`, so bodies without
/// that text (nearly all) are not parsed a second time.
fn nul_in_body(bytes: &[u8]) -> Option<AppError> {
    if !bytes.windows(6).any(|w| w == b"\\u0000") {
        return None;
    }
    let value = serde_json::from_slice::<serde_json::Value>(bytes).ok()?;
    nul_path(&value).map(|path| nul_error(&path))
}

/// The refusal of a NUL in the field at `path`.
pub(crate) fn nul_error(path: &str) -> AppError {
    AppError::Client {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        code: "invalid_text",
        detail: format!(
            "{path} contains the NUL character (U+0000), which cannot be stored; remove it"
        ),
    }
}

/// The path (`contacts[2].fields.note`) of the first string or key holding a NUL.
pub(crate) fn nul_path(value: &serde_json::Value) -> Option<String> {
    fn walk(value: &serde_json::Value) -> Option<String> {
        use serde_json::Value;
        match value {
            Value::String(s) => s.contains('\0').then(String::new),
            Value::Array(items) => items
                .iter()
                .enumerate()
                .find_map(|(i, item)| walk(item).map(|rest| format!("[{i}]{rest}"))),
            Value::Object(map) => map.iter().find_map(|(key, item)| {
                if key.contains('\0') {
                    let shown = key.replace('\0', "\\u0000");
                    return Some(format!(".{shown} (a key)"));
                }
                walk(item).map(|rest| format!(".{key}{rest}"))
            }),
            Value::Null | Value::Bool(_) | Value::Number(_) => None,
        }
    }
    let path = walk(value)?;
    Some(match path.strip_prefix('.') {
        Some(rest) => rest.to_owned(),
        None if path.is_empty() => "the body".to_owned(),
        None => path,
    })
}

fn rejection_error(rejection: JsonRejection) -> AppError {
    let status = rejection.status();
    let code = match &rejection {
        JsonRejection::JsonDataError(e) => {
            let text = e.body_text();
            if text.contains("unknown field") {
                "unknown_field"
            } else if text.contains("missing field") {
                "missing_field"
            } else if text.contains("invalid type") || text.contains("did not match any variant") {
                "invalid_type"
            } else {
                "invalid_body"
            }
        }
        JsonRejection::JsonSyntaxError(_) => "malformed_json",
        JsonRejection::MissingJsonContentType(_) => "unsupported_media_type",
        _ if status == StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        _ => "invalid_body",
    };
    AppError::Client {
        status,
        code,
        detail: rejection.body_text(),
    }
}

/// `axum::extract::Query`, with its rejections (wrong types, unknown parameters) answered as
/// problems too.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiQuery<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Self(value)),
            Err(rejection) => Err(AppError::bad_request(
                "invalid_query",
                rejection.body_text(),
            )),
        }
    }
}

impl<T: Serialize> IntoResponse for ApiJson<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nul_is_found_in_any_string_or_key_and_named() {
        let cases = [
            (serde_json::json!({"name": "a\u{0}b"}), Some("name")),
            (
                serde_json::json!({"contacts": [{"fields": {}}, {"fields": {"note": "\u{0}"}}]}),
                Some("contacts[1].fields.note"),
            ),
            (
                serde_json::json!({"fields": {"k\u{0}": "v"}}),
                Some("fields.k\\u0000 (a key)"),
            ),
            (serde_json::json!({"name": "\\u0000 is text", "n": 0}), None),
            (serde_json::json!(["\u{0}"]), Some("[0]")),
        ];
        for (value, want) in cases {
            assert_eq!(nul_path(&value).as_deref(), want, "{value}");
        }
        assert!(nul_in_body(br#"{"a":"\\u0000 is text"}"#).is_none());
        assert!(nul_in_body(br#"{"a":"x\u0000"}"#).is_some());
    }
}
