//! Twilio's webhook signature and call statuses.
//!
//! Twilio signs every callback with `X-Twilio-Signature`: the base64 HMAC-SHA1, keyed by the
//! account's auth token, of the full URL it called followed by each POST parameter's name and
//! value, parameters sorted by name. The same code signs (carrier-sim) and verifies (ingest),
//! so the two cannot drift apart; the known vector from Twilio's documentation pins both.

use base64::{Engine, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac};
use sha1::Sha1;
use subtle::ConstantTimeEq;

use crate::status::OutcomeStatus;

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "X-Twilio-Signature";

/// The signature of a request to `url` with form `params`.
pub fn signature(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    // Twilio sorts by name, and by value for repeated names (e.g. StatusCallbackEvent).
    sorted.sort();
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(auth_token.as_bytes())
        .expect("HMAC takes any key length");
    mac.update(url.as_bytes());
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    STANDARD.encode(mac.finalize().into_bytes())
}

/// Whether `given` is the signature of the request, compared in constant time so the
/// comparison leaks nothing about the expected value. An empty token verifies nothing.
pub fn verify(auth_token: &str, url: &str, params: &[(String, String)], given: &str) -> bool {
    if auth_token.is_empty() {
        return false;
    }
    let expected = signature(auth_token, url, params);
    expected.as_bytes().ct_eq(given.trim().as_bytes()).into()
}

/// How a final Twilio `CallStatus` maps onto ccm's outcomes; `None` for the intermediate
/// statuses (`queued`, `initiated`, `ringing`, `in-progress`) which end nothing.
///
/// A `completed` call lasting zero seconds was dropped as it was answered: DISCONNECTED.
pub fn outcome(call_status: &str, duration_secs: Option<u32>) -> Option<OutcomeStatus> {
    match call_status {
        "completed" if duration_secs == Some(0) => Some(OutcomeStatus::Disconnected),
        "completed" => Some(OutcomeStatus::Picked),
        "no-answer" | "busy" => Some(OutcomeStatus::Rnr),
        "failed" | "canceled" => Some(OutcomeStatus::Failed),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// The example of Twilio's "Webhooks security" documentation.
    #[test]
    fn matches_twilios_documented_example() {
        let params = pairs(&[
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+12349013030"),
            ("Digits", "1234"),
            ("From", "+12349013030"),
            ("To", "+18005551212"),
        ]);
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        let sig = signature("12345", url, &params);
        assert_eq!(sig, "0/KCTR6DLpKmkAf8muzZqo1nDgQ=");
        assert!(verify("12345", url, &params, &sig));
    }

    #[test]
    fn any_change_breaks_the_signature() {
        let params = pairs(&[("CallStatus", "completed"), ("CallSid", "CA1")]);
        let sig = signature("token", "http://h/cb?a=1", &params);
        assert!(verify("token", "http://h/cb?a=1", &params, &sig));
        assert!(!verify("other", "http://h/cb?a=1", &params, &sig));
        assert!(!verify("token", "http://h/cb?a=2", &params, &sig));
        let tampered = pairs(&[("CallStatus", "busy"), ("CallSid", "CA1")]);
        assert!(!verify("token", "http://h/cb?a=1", &tampered, &sig));
        assert!(!verify(
            "",
            "http://h/cb?a=1",
            &params,
            &signature("", "http://h/cb?a=1", &params)
        ));
    }

    #[test]
    fn statuses_map_as_documented() {
        assert_eq!(outcome("completed", Some(42)), Some(OutcomeStatus::Picked));
        assert_eq!(
            outcome("completed", Some(0)),
            Some(OutcomeStatus::Disconnected)
        );
        assert_eq!(outcome("no-answer", None), Some(OutcomeStatus::Rnr));
        assert_eq!(outcome("busy", None), Some(OutcomeStatus::Rnr));
        assert_eq!(outcome("failed", None), Some(OutcomeStatus::Failed));
        assert_eq!(outcome("canceled", None), Some(OutcomeStatus::Failed));
        assert_eq!(outcome("ringing", None), None);
    }
}
