//! Short-lived, single-use signed tickets that open the dashboard's event stream.
//!
//! A browser's `EventSource` cannot send headers, so the stream's credential has to travel
//! in the URL. We chose a ticket over putting the API token itself in the query string:
//! URLs end up in proxy access logs, browser history and error reports, and a ticket found
//! there is worth little: it expires within a minute, it opens one stream once, and it opens
//! only the read-only event stream, never the API. The page obtains it with the token in a
//! header (`POST /api/v1/dashboard/ticket`), like any other API call.
//!
//! A ticket is `<expiry unix seconds>.<random nonce>.<token fingerprint>.<HMAC-SHA256>`.
//! The signing key is `ingest.dashboard.ticket_key` (shared by replicas, since a load
//! balancer may send the stream elsewhere than the ticket request) or 32 random bytes drawn
//! at start. It is never derived from the API tokens: it once was, and then one ticket seen
//! in a proxy log let anyone test token guesses offline against its signature. The token
//! fingerprint ([`crate::auth::TokenId`]) is keyed with the same secret, so it reveals
//! nothing about the token either; it ties the stream to the token that obtained the ticket
//! (its stream cap, its rate limit) and voids the ticket when that token is removed.

use std::{collections::HashMap, sync::Mutex};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use ccm_core::config::Secret;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::auth::TokenId;

/// How long a ticket opens the stream. Long enough for a slow page to connect; the stream
/// itself may then stay open as long as it likes.
pub const TICKET_TTL_SECS: i64 = 60;

/// The shortest `ingest.dashboard.ticket_key` accepted: shorter ones could be guessed
/// offline from a ticket's signature.
pub const MIN_KEY_LEN: usize = 32;

/// Redeemed nonces remembered at most. Each is kept only until its ticket expires, and
/// tickets are issued under the per-token rate limit, so this is reached only by a flood; a
/// ticket redeemed while it is full is refused ([`Refused::Busy`]) rather than forgotten.
const MAX_REMEMBERED: usize = 100_000;

/// The secret tickets and token fingerprints are keyed with.
#[derive(Clone)]
pub struct TicketKey([u8; 32]);

impl std::fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TicketKey(***)")
    }
}

/// `ingest.dashboard.ticket_key` is set but too short.
#[derive(Debug, thiserror::Error)]
#[error(
    "ingest.dashboard.ticket_key must be at least {MIN_KEY_LEN} characters (or empty, for a random key per replica)"
)]
pub struct ShortKey;

impl TicketKey {
    /// The configured key, or 32 random bytes when none is configured.
    pub fn from_config(configured: &Secret) -> Result<Self, ShortKey> {
        let text = configured.expose();
        if text.is_empty() {
            return Ok(Self::random());
        }
        if text.len() < MIN_KEY_LEN {
            return Err(ShortKey);
        }
        Ok(Self(derive(
            text.as_bytes(),
            b"ccm dashboard ticket key v2",
        )))
    }

    /// A key of this process alone.
    pub fn random() -> Self {
        Self(rand::random())
    }

    /// A key for one purpose, so the signature and the fingerprints never share a key.
    pub(crate) fn derive(&self, purpose: &[u8]) -> [u8; 32] {
        derive(&self.0, purpose)
    }
}

fn derive(key: &[u8], purpose: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length works");
    mac.update(purpose);
    mac.finalize().into_bytes().into()
}

/// What a valid ticket says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    /// The token that obtained it.
    pub token: TokenId,
    nonce: [u8; 12],
    expiry: i64,
}

/// Why a ticket does not open the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Malformed, forged, signed with another key, or expired.
    Invalid,
    /// It opened a stream already.
    Used,
    /// Too many tickets are remembered as used to remember one more.
    Busy,
}

/// Issues, checks and redeems tickets.
pub struct Tickets {
    key: [u8; 32],
    used: Mutex<Used>,
}

impl std::fmt::Debug for Tickets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tickets(***)")
    }
}

impl Tickets {
    /// The signer for this key; replicas with the same key accept each other's tickets.
    pub fn new(key: &TicketKey) -> Self {
        Self {
            key: key.derive(b"ccm dashboard ticket signature v2"),
            used: Mutex::new(Used::default()),
        }
    }

    fn mac(&self, body: &str) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length works");
        mac.update(body.as_bytes());
        mac
    }

    /// A ticket for `token`, valid until `now + TICKET_TTL_SECS`.
    pub fn issue(&self, token: TokenId, now: i64) -> String {
        let nonce: [u8; 12] = rand::random();
        let body = format!(
            "{}.{}.{}",
            now + TICKET_TTL_SECS,
            URL_SAFE_NO_PAD.encode(nonce),
            URL_SAFE_NO_PAD.encode(token.as_bytes()),
        );
        let signature = URL_SAFE_NO_PAD.encode(self.mac(&body).finalize().into_bytes());
        format!("{body}.{signature}")
    }

    /// What `ticket` says, if it was signed with this key and has not expired. Whether it
    /// was used already is [`Tickets::redeem`]'s question.
    pub fn verify(&self, ticket: &str, now: i64) -> Option<Claim> {
        let (body, signature) = ticket.rsplit_once('.')?;
        let given = URL_SAFE_NO_PAD.decode(signature).ok()?;
        // `verify_slice` compares in constant time; nothing is parsed before it passed.
        self.mac(body).verify_slice(&given).ok()?;
        let mut parts = body.split('.');
        let expiry = parts.next()?.parse::<i64>().ok()?;
        let nonce = URL_SAFE_NO_PAD
            .decode(parts.next()?)
            .ok()?
            .try_into()
            .ok()?;
        let token = TokenId::from_bytes(&URL_SAFE_NO_PAD.decode(parts.next()?).ok()?)?;
        if parts.next().is_some() || now > expiry {
            return None;
        }
        Some(Claim {
            token,
            nonce,
            expiry,
        })
    }

    /// Checks `ticket` and marks it used: it opens one stream, once (on this replica).
    pub fn redeem(&self, ticket: &str, now: i64) -> Result<Claim, Refused> {
        let claim = self.verify(ticket, now).ok_or(Refused::Invalid)?;
        self.used
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(claim.nonce, claim.expiry, now)?;
        Ok(claim)
    }
}

/// Nonces of redeemed tickets, each until its ticket expires.
#[derive(Debug)]
struct Used {
    expiries: HashMap<[u8; 12], i64>,
    /// The size at which expired nonces are next dropped: twice what was left the last
    /// time, so dropping them costs O(1) per insert on average.
    prune_at: usize,
}

impl Default for Used {
    fn default() -> Self {
        Self {
            expiries: HashMap::new(),
            prune_at: 1024,
        }
    }
}

impl Used {
    fn insert(&mut self, nonce: [u8; 12], expiry: i64, now: i64) -> Result<(), Refused> {
        if self.expiries.contains_key(&nonce) {
            return Err(Refused::Used);
        }
        if self.expiries.len() >= self.prune_at.min(MAX_REMEMBERED) {
            self.expiries.retain(|_, e| *e >= now);
            self.prune_at = (self.expiries.len() * 2).max(1024);
            if self.expiries.len() >= MAX_REMEMBERED {
                return Err(Refused::Busy);
            }
        }
        self.expiries.insert(nonce, expiry);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(n: u8) -> TokenId {
        TokenId::from_bytes(&[n; 16]).expect("16 bytes")
    }

    fn shared_key() -> TicketKey {
        TicketKey::from_config(&Secret::new("a-shared-ticket-key-of-32-chars!!")).expect("long")
    }

    #[test]
    fn a_ticket_opens_until_it_expires() {
        let tickets = Tickets::new(&TicketKey::random());
        let ticket = tickets.issue(token(1), 1_000);
        assert_eq!(
            tickets.verify(&ticket, 1_000).map(|c| c.token),
            Some(token(1))
        );
        assert!(tickets.verify(&ticket, 1_000 + TICKET_TTL_SECS).is_some());
        assert!(tickets.verify(&ticket, 1_001 + TICKET_TTL_SECS).is_none());
    }

    /// The key is not derived from the tokens: two replicas with the same tokens accept each
    /// other's tickets only when they share `ticket_key` (once, with the tokens alone, a
    /// ticket from a proxy log let anyone check token guesses offline).
    #[test]
    fn only_a_shared_ticket_key_makes_replicas_accept_each_others_tickets() {
        let (a, b) = (
            Tickets::new(&TicketKey::random()),
            Tickets::new(&TicketKey::random()),
        );
        let ticket = a.issue(token(1), 1_000);
        assert!(a.verify(&ticket, 1_000).is_some());
        assert!(b.verify(&ticket, 1_000).is_none(), "no shared key");
        let (a, b) = (Tickets::new(&shared_key()), Tickets::new(&shared_key()));
        assert!(b.verify(&a.issue(token(1), 1_000), 1_000).is_some());
        assert!(a.verify(&b.issue(token(1), 1_000), 1_000).is_some());
    }

    #[test]
    fn a_short_configured_key_is_refused() {
        assert!(TicketKey::from_config(&Secret::new("too-short")).is_err());
        assert!(TicketKey::from_config(&Secret::new("")).is_ok(), "random");
    }

    #[test]
    fn a_ticket_is_redeemed_once() {
        let tickets = Tickets::new(&TicketKey::random());
        let ticket = tickets.issue(token(7), 1_000);
        assert_eq!(
            tickets.redeem(&ticket, 1_000).map(|c| c.token),
            Ok(token(7))
        );
        assert_eq!(tickets.redeem(&ticket, 1_001), Err(Refused::Used));
        let other = tickets.issue(token(7), 1_000);
        assert!(tickets.redeem(&other, 1_000).is_ok(), "another ticket");
    }

    #[test]
    fn used_nonces_are_forgotten_once_their_ticket_expired() {
        let tickets = Tickets::new(&TicketKey::random());
        // Redeem many tickets issued at the same second, then many more after those expired:
        // the first lot is dropped rather than kept forever.
        for _ in 0..3_000 {
            let ticket = tickets.issue(token(1), 1_000);
            assert!(tickets.redeem(&ticket, 1_000).is_ok());
        }
        let later = 1_001 + TICKET_TTL_SECS;
        for _ in 0..3_000 {
            let ticket = tickets.issue(token(1), later);
            assert!(tickets.redeem(&ticket, later).is_ok());
        }
        let remembered = tickets.used.lock().expect("lock").expiries.len();
        assert!(remembered <= 4_096, "{remembered} nonces remembered");
    }

    #[test]
    fn a_full_memory_refuses_rather_than_forgets() {
        let mut used = Used::default();
        for i in 0..MAX_REMEMBERED as u64 {
            let mut nonce = [0u8; 12];
            nonce[..8].copy_from_slice(&i.to_le_bytes());
            assert_eq!(used.insert(nonce, 2_000, 1_000), Ok(()));
        }
        assert_eq!(used.insert([0xff; 12], 2_000, 1_000), Err(Refused::Busy));
        // Once those expired, there is room again.
        assert_eq!(used.insert([0xff; 12], 3_000, 2_001), Ok(()));
    }

    #[test]
    fn forged_altered_or_foreign_tickets_are_refused() {
        let tickets = Tickets::new(&TicketKey::random());
        let ticket = tickets.issue(token(1), 1_000);
        // Pushing the expiry out breaks the signature.
        let (_, rest) = ticket.split_once('.').expect("dots");
        assert!(
            tickets
                .verify(&format!("9999999999.{rest}"), 1_000)
                .is_none()
        );
        // So does naming another token.
        let parts: Vec<&str> = ticket.split('.').collect();
        let other = URL_SAFE_NO_PAD.encode(token(2).as_bytes());
        let swapped = format!("{}.{}.{other}.{}", parts[0], parts[1], parts[3]);
        assert!(tickets.verify(&swapped, 1_000).is_none());
        for junk in [
            "",
            ".",
            "..",
            "...",
            "1.2.3",
            "1.2.3.4",
            "token-a",
            "1000.abc.!!!",
        ] {
            assert!(tickets.verify(junk, 1_000).is_none(), "{junk:?}");
        }
    }
}
