//! Token authentication: `X-Auth-Token` (the old API's header) or `Authorization: Bearer`.
//!
//! A request that passes carries the [`TokenId`] of its token in its extensions: the per-token
//! limits ([`crate::limits`], the dashboard's stream cap) count by it.

use axum::{
    extract::{Request, State},
    http::{HeaderMap, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
};
use ccm_core::config::Secret;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::{ConditionallySelectable, ConstantTimeEq};

use crate::AppState;

/// Rejects requests without a configured token, whatever their method. Tokens are compared
/// in constant time so the comparison leaks nothing about how much of a guess was right.
///
/// No method is let through: axum answers HEAD with the GET handler (its status and length
/// told who is on a do-not-call list), and the API serves no browser from another origin, so
/// there is no pre-flight to answer.
pub async fn require_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let Some(given) = token(request.headers()) else {
        return unauthorized("Authentication token not provided");
    };
    match state.tokens.identify(given) {
        Some(id) => {
            let mut request = request;
            request.extensions_mut().insert(id);
            next.run(request).await
        }
        None => unauthorized("Invalid authentication token"),
    }
}

/// A configured API token, named without revealing it: an HMAC of the token under a key of
/// the server's (derived from the dashboard's ticket key, so replicas sharing that key name a
/// token alike). It travels inside dashboard tickets, where a plain hash of the token would
/// let anyone who saw a ticket test token guesses offline.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenId([u8; 16]);

impl std::fmt::Debug for TokenId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenId({:02x}{:02x}…)", self.0[0], self.0[1])
    }
}

impl TokenId {
    pub(crate) fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// A fingerprint read back from a ticket; `None` unless it is 16 bytes.
    pub(crate) fn from_bytes(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }
}

/// The configured tokens with their [`TokenId`]s.
pub struct Tokens {
    known: Vec<(Secret, TokenId)>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} configured)", self.known.len())
    }
}

impl Tokens {
    /// `tokens`, fingerprinted with `key`.
    pub fn new(tokens: &[Secret], key: &[u8; 32]) -> Self {
        let known = tokens
            .iter()
            .map(|token| {
                let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length works");
                mac.update(token.expose().as_bytes());
                let digest = mac.finalize().into_bytes();
                let id = TokenId(digest[..16].try_into().expect("32 bytes"));
                (token.clone(), id)
            })
            .collect();
        Self { known }
    }

    /// The id of `given` if it is one of the configured tokens. Every token is compared, in
    /// constant time, so the time taken leaks nothing about how much of a guess was right. An
    /// empty token is never one (ingest refuses to start with one configured, and this holds
    /// even if it did).
    pub fn identify(&self, given: &str) -> Option<TokenId> {
        if given.is_empty() {
            return None;
        }
        let mut hit = subtle::Choice::from(0);
        let mut found = [0u8; 16];
        for (token, id) in &self.known {
            let this = token.expose().as_bytes().ct_eq(given.as_bytes());
            for (slot, byte) in found.iter_mut().zip(id.0) {
                slot.conditional_assign(&byte, this);
            }
            hit |= this;
        }
        bool::from(hit).then_some(TokenId(found))
    }

    /// Whether `id` names a token that is still configured (a ticket of a removed token
    /// opens nothing).
    pub fn contains(&self, id: TokenId) -> bool {
        self.known.iter().any(|(_, known)| *known == id)
    }
}

/// The token a request carries in `X-Auth-Token` or `Authorization: Bearer`.
pub(crate) fn token(headers: &HeaderMap) -> Option<&str> {
    if let Some(value) = headers.get("x-auth-token").and_then(|v| v.to_str().ok()) {
        return Some(value.trim());
    }
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// The old API's 401 body, kept as it was for its clients.
pub(crate) fn unauthorized(message: &str) -> Response {
    let body = serde_json::json!({"error": {"code": "unauthorized", "message": message}});
    (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response()
}
