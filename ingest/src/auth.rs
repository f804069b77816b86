//! Token authentication: `X-Auth-Token` (the old API's header) or `Authorization: Bearer`,
//! and the token's role ([`ccm_core::access`]).
//!
//! A request that passes carries the [`Identity`] of its token in its extensions: the per-token
//! limits ([`crate::limits`], the dashboard's stream cap) count by its [`TokenId`].

use axum::{
    extract::{Request, State},
    http::{HeaderMap, Method, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
};
use ccm_core::{
    access::{Need, Role, StoredToken},
    config::TokenConfig,
    mirror::Mirror,
    topology::names,
};
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

use crate::AppState;

/// What a route needs of a token, by method ([`crate::routes::table`] sets it per route).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// GET and HEAD read, every other method writes.
    ByMethod,
    /// Every method only reads (a dashboard ticket, a query sent as POST).
    Reads,
    /// A carrier reporting an outcome (the old contract's callback).
    Callback,
    /// Administration (tokens): every method.
    Admin,
}

impl Rule {
    /// Whether a request with `method` may change something (and so is audited): GET and
    /// HEAD never do, nor a route that only reads.
    pub fn changes(self, method: &Method) -> bool {
        self != Self::Reads && method != Method::GET && method != Method::HEAD
    }

    /// What a request with `method` needs.
    pub fn need(self, method: &Method) -> Need {
        match self {
            Self::ByMethod if method == Method::GET || method == Method::HEAD => Need::Read,
            Self::ByMethod => Need::Write,
            Self::Reads => Need::Read,
            Self::Callback => Need::Callback,
            Self::Admin => Need::Admin,
        }
    }
}

/// The state of the token check of one route.
#[derive(Clone)]
pub(crate) struct Guard {
    pub(crate) state: AppState,
    pub(crate) rule: Rule,
}

/// Rejects requests without a valid token (401), or whose token's role may not do what the
/// route and method need (403), whatever their method. Tokens are compared in constant time
/// so the comparison leaks nothing about how much of a guess was right.
///
/// No method is let through: axum answers HEAD with the GET handler (its status and length
/// told who is on a do-not-call list), and the API serves no browser from another origin, so
/// there is no pre-flight to answer.
pub(crate) async fn require_token(
    State(guard): State<Guard>,
    request: Request,
    next: Next,
) -> Response {
    let Some(given) = token(request.headers()) else {
        return unauthorized("Authentication token not provided");
    };
    let identity = match guard.state.tokens.identify(given, Utc::now()) {
        Ok(identity) => identity,
        Err(Refused::Unknown) => return unauthorized("Invalid authentication token"),
        Err(Refused::Expired) => return unauthorized("Authentication token expired"),
    };
    let need = guard.rule.need(request.method());
    if !identity.role.allows(need) {
        return forbidden(identity.role, need);
    }
    // Anything but a read is recorded, with how it ended ([`crate::audit`]).
    let audit = guard
        .rule
        .changes(request.method())
        .then(|| crate::audit::Pending::of(&request));
    let mut request = request;
    request.extensions_mut().insert(identity.id);
    request.extensions_mut().insert(identity);
    let response = next.run(request).await;
    if let Some(audit) = audit {
        audit.finish(&guard.state, identity, response.status());
    }
    response
}

/// A token that passed: its id and role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub id: TokenId,
    pub role: Role,
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Unknown,
    Expired,
}

/// Why the configured tokens cannot be used; ingest refuses to start.
#[derive(Debug, thiserror::Error)]
pub enum TokenConfigError {
    #[error("refusing to start without an API token (set ingest.auth_tokens)")]
    NoToken,
    #[error(
        "refusing to start with an empty API token among ingest.auth_tokens: it would match a request that sends an empty header"
    )]
    EmptyToken,
    #[error("ingest.auth_tokens[{index}]: {reason}")]
    BadEntry { index: usize, reason: &'static str },
}

/// A configured API token, named without revealing it: an HMAC of the token's SHA-256 under a
/// key of the server's (derived from the dashboard's ticket key, so replicas sharing that key
/// name a token alike; a token configured by its SHA-256 is named alike). It travels inside dashboard tickets, where a plain hash of the token would
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

/// One configured token: only its SHA-256 is kept.
struct Known {
    digest: [u8; 32],
    id: TokenId,
    role: Role,
    expires_at: Option<DateTime<Utc>>,
}

/// The configured tokens with their [`TokenId`]s and roles, and those made through the API
/// (`routes::tokens`), followed in the `tokens` bucket.
pub struct Tokens {
    known: Vec<Known>,
    key: [u8; 32],
    managed: Mirror<StoredToken>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} configured)", self.known.len())
    }
}

impl Tokens {
    /// `tokens`, checked and fingerprinted with `key`.
    pub fn new(tokens: &[TokenConfig], key: &[u8; 32]) -> Result<Self, TokenConfigError> {
        let blank =
            |t: &TokenConfig| matches!(t, TokenConfig::Plain(t) if t.expose().trim().is_empty());
        if tokens.iter().all(blank) {
            return Err(TokenConfigError::NoToken);
        }
        let known = tokens
            .iter()
            .enumerate()
            .map(|(index, token)| parse(index, token, key))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            known,
            key: *key,
            managed: Mirror::new(names::KV_TOKENS),
        })
    }

    /// The tokens made through the API, in memory (a watch on the bucket keeps it current).
    pub fn managed(&self) -> &Mirror<StoredToken> {
        &self.managed
    }

    /// The identity of `given` if it is one of the configured tokens and has not expired at
    /// `now`. Every token's digest is compared, in constant time, so the time taken leaks
    /// nothing about which token matched or how much of a guess was right. An empty token is
    /// never one (ingest refuses to start with one configured, and this holds even if it did).
    pub fn identify(&self, given: &str, now: DateTime<Utc>) -> Result<Identity, Refused> {
        if given.is_empty() {
            return Err(Refused::Unknown);
        }
        let digest: [u8; 32] = Sha256::digest(given.as_bytes()).into();
        let mut hit = subtle::Choice::from(0);
        let mut found = 0u8;
        for (index, known) in self.known.iter().enumerate() {
            let this = known.digest.ct_eq(&digest);
            // At most 256 tokens are told apart; a deployment configures a handful.
            found.conditional_assign(&(index as u8), this);
            hit |= this;
        }
        let known = if bool::from(hit) {
            let known = &self.known[usize::from(found)];
            (known.id, known.role, known.expires_at)
        } else {
            let managed = self.find_managed(&digest).ok_or(Refused::Unknown)?;
            (self.id_of(&digest), managed.role, managed.expires_at)
        };
        let (id, role, expires_at) = known;
        if expires_at.is_some_and(|at| at <= now) {
            return Err(Refused::Expired);
        }
        Ok(Identity { id, role })
    }

    /// The token made through the API whose SHA-256 is `digest`; every one is compared, in
    /// constant time.
    fn find_managed(&self, digest: &[u8; 32]) -> Option<std::sync::Arc<StoredToken>> {
        let mut found = None;
        for token in self.managed.values() {
            let stored = decode_hex(&token.sha256).unwrap_or_default();
            if bool::from(stored.ct_eq(digest)) {
                found = Some(token);
            }
        }
        found
    }

    fn id_of(&self, digest: &[u8; 32]) -> TokenId {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length works");
        mac.update(digest);
        TokenId(
            mac.finalize().into_bytes()[..16]
                .try_into()
                .expect("32 bytes"),
        )
    }

    /// Whether `id` names a token that is still known and valid at `now` (a ticket of a
    /// removed, revoked or expired token opens nothing).
    pub fn contains(&self, id: TokenId, now: DateTime<Utc>) -> bool {
        self.lookup(id)
            .is_some_and(|(_, expires_at)| expires_at.is_none_or(|at| at > now))
    }

    /// The role of the token `id`, if known.
    pub fn role(&self, id: TokenId) -> Option<Role> {
        self.lookup(id).map(|(role, _)| role)
    }

    fn lookup(&self, id: TokenId) -> Option<(Role, Option<DateTime<Utc>>)> {
        if let Some(k) = self.known.iter().find(|k| k.id == id) {
            return Some((k.role, k.expires_at));
        }
        self.managed.values().into_iter().find_map(|t| {
            let digest = decode_hex(&t.sha256)?;
            (self.id_of(&digest) == id).then_some((t.role, t.expires_at))
        })
    }
}

/// A configured token, fingerprinted with `key`.
fn parse(index: usize, token: &TokenConfig, key: &[u8; 32]) -> Result<Known, TokenConfigError> {
    let bad = |reason| TokenConfigError::BadEntry { index, reason };
    let digest_of = |token: &str| -> Result<[u8; 32], TokenConfigError> {
        if token.trim().is_empty() {
            return Err(TokenConfigError::EmptyToken);
        }
        Ok(Sha256::digest(token.as_bytes()).into())
    };
    let (digest, role, expires_at) = match token {
        TokenConfig::Plain(token) => (digest_of(token.expose())?, Role::Admin, None),
        TokenConfig::Entry(entry) => {
            let digest = match (&entry.token, &entry.sha256) {
                (Some(token), None) => digest_of(token.expose())?,
                (None, Some(hex)) => {
                    decode_hex(hex).ok_or_else(|| bad("sha256 must be 64 hexadecimal digits"))?
                }
                _ => return Err(bad("give exactly one of token and sha256")),
            };
            (digest, entry.role, entry.expires_at)
        }
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length works");
    mac.update(&digest);
    let id = TokenId(
        mac.finalize().into_bytes()[..16]
            .try_into()
            .expect("32 bytes"),
    );
    Ok(Known {
        digest,
        id,
        role,
        expires_at,
    })
}

/// The 32 bytes written as 64 hexadecimal digits.
pub(crate) fn decode_hex(digits: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(digits.trim(), &mut out).ok()?;
    Some(out)
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

/// A token whose role may not do this: the old API's error shape, as for 401.
pub(crate) fn forbidden(role: Role, need: Need) -> Response {
    let message = format!("a {} token may not {}", role.as_str(), need.as_str());
    let body = serde_json::json!({"error": {"code": "forbidden", "message": message}});
    (StatusCode::FORBIDDEN, axum::Json(body)).into_response()
}
