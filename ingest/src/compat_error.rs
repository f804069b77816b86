//! Errors of the compatible API, in the old system's `{"error": …}` shape.

use axum::{
    extract::{FromRequest, Request},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

/// An error answered the way the old API answered it.
#[derive(Debug)]
pub struct CompatError {
    pub status: StatusCode,
    pub body: Value,
}

impl CompatError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            body: json!({ "error": message.into() }),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// The broker (or the read model) is unavailable: the old API's 503 with `retry_after`.
    pub fn unavailable(error: impl std::fmt::Display) -> Self {
        tracing::warn!(%error, "dependency unavailable");
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            body: json!({
                "error": "Service temporarily unavailable; nothing was recorded. Retry later.",
                "retry_after": 60
            }),
        }
    }
}

impl IntoResponse for CompatError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body)).into_response()
    }
}

/// The body of a compatible request as loose JSON: the old API accepted ids as numbers or
/// strings and answered missing fields with its own messages, so fields are checked by the
/// handlers. Malformed JSON, which the old system answered 500, is a 400 here.
#[derive(Debug)]
pub struct CompatJson(pub Value);

impl<S: Send + Sync> FromRequest<S> for CompatJson {
    type Rejection = CompatError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|rejection| CompatError::new(rejection.status(), rejection.body_text()))?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self(Value::Object(Default::default())));
        }
        let value: Value = serde_json::from_slice(&bytes)
            .map_err(|e| CompatError::bad_request(format!("Invalid JSON: {e}")))?;
        // PostgreSQL stores no NUL: refused here rather than for ever downstream.
        if let Some(path) = crate::error::nul_path(&value) {
            return Err(CompatError::new(
                axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                format!("{path} contains the NUL character (U+0000), which cannot be stored"),
            ));
        }
        Ok(Self(value))
    }
}
