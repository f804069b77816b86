//! Short-lived signed tickets that open the dashboard's event stream.
//!
//! A browser's `EventSource` cannot send headers, so the stream's credential has to travel
//! in the URL. We chose a ticket over putting the API token itself in the query string:
//! URLs end up in proxy access logs, browser history and error reports, and a ticket found
//! there is worth little: it expires within a minute, and it opens only the read-only event
//! stream, never the API. The page obtains it with the token in a header
//! (`POST /api/v1/dashboard/ticket`), like any other API call.
//!
//! A ticket is `<expiry unix seconds>.<random nonce>.<HMAC-SHA256 signature>`. The signing
//! key is derived from the configured API tokens, so every ingest replica with the same
//! tokens accepts the tickets of the others (a load balancer may send the stream elsewhere
//! than the ticket request), and rotating the tokens voids outstanding tickets.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use ccm_core::config::Secret;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// How long a ticket opens the stream. Long enough for a slow page to connect; the stream
/// itself may then stay open as long as it likes.
pub const TICKET_TTL_SECS: i64 = 60;

/// Issues and checks tickets.
#[derive(Clone)]
pub struct Tickets {
    key: [u8; 32],
}

impl std::fmt::Debug for Tickets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tickets(***)")
    }
}

impl Tickets {
    /// The signer for these API tokens.
    pub fn new(tokens: &[Secret]) -> Self {
        let mut hash = Sha256::new();
        hash.update(b"ccm dashboard ticket key v1");
        for token in tokens {
            hash.update([0u8]);
            hash.update(token.expose().as_bytes());
        }
        Self {
            key: hash.finalize().into(),
        }
    }

    fn sign(&self, body: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length works");
        mac.update(body.as_bytes());
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    }

    /// A ticket valid until `now + TICKET_TTL_SECS`.
    pub fn issue(&self, now: i64) -> String {
        let nonce: [u8; 12] = rand::random();
        let body = format!(
            "{}.{}",
            now + TICKET_TTL_SECS,
            URL_SAFE_NO_PAD.encode(nonce)
        );
        let signature = self.sign(&body);
        format!("{body}.{signature}")
    }

    /// Whether `ticket` was issued by a replica with the same tokens and has not expired.
    pub fn verify(&self, ticket: &str, now: i64) -> bool {
        let Some((body, signature)) = ticket.rsplit_once('.') else {
            return false;
        };
        let Some(expiry) = body
            .split_once('.')
            .and_then(|(expiry, _)| expiry.parse::<i64>().ok())
        else {
            return false;
        };
        let Ok(given) = URL_SAFE_NO_PAD.decode(signature) else {
            return false;
        };
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length works");
        mac.update(body.as_bytes());
        // `verify_slice` compares in constant time.
        mac.verify_slice(&given).is_ok() && now <= expiry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_opens_until_it_expires() {
        let tickets = Tickets::new(&[Secret::new("token-a")]);
        let ticket = tickets.issue(1_000);
        assert!(tickets.verify(&ticket, 1_000));
        assert!(tickets.verify(&ticket, 1_000 + TICKET_TTL_SECS));
        assert!(!tickets.verify(&ticket, 1_001 + TICKET_TTL_SECS));
    }

    #[test]
    fn forged_altered_or_foreign_tickets_are_refused() {
        let tickets = Tickets::new(&[Secret::new("token-a")]);
        let ticket = tickets.issue(1_000);
        // Pushing the expiry out breaks the signature.
        let (_, rest) = ticket.split_once('.').expect("dots");
        assert!(!tickets.verify(&format!("9999999999.{rest}"), 1_000));
        let other = Tickets::new(&[Secret::new("token-b")]);
        assert!(!other.verify(&ticket, 1_000), "another token's ticket");
        for junk in ["", ".", "..", "1.2.3", "token-a", "1000.abc.!!!"] {
            assert!(!tickets.verify(junk, 1_000), "{junk:?}");
        }
        // Replicas with the same tokens accept each other's tickets.
        let twin = Tickets::new(&[Secret::new("token-a")]);
        assert!(twin.verify(&ticket, 1_000));
    }
}
