//! What "naming a person" means: the forms of their number, and the ids of their calls.

use ccm_core::{CallId, PhoneNumber};
use sha2::{Digest, Sha256};

/// The strings that name one person in a message, a key or a row.
#[derive(Debug, Clone)]
pub(crate) struct Needles {
    /// E.164 digits and national forms: matched only between non-digits, so `+14155552671`
    /// never matches inside `+141555526710` (another person).
    numbers: Vec<String>,
    /// The person's calls (their histories name the call, not always the number).
    calls: Vec<String>,
}

impl Needles {
    pub(crate) fn of(phone: &PhoneNumber) -> Self {
        let mut numbers = vec![phone.digits().to_owned()];
        numbers.extend(phone.national_forms());
        Self {
            numbers,
            calls: Vec::new(),
        }
    }

    /// These needles and the person's calls.
    pub(crate) fn with_calls(&self, calls: &[CallId]) -> Self {
        Self {
            numbers: self.numbers.clone(),
            calls: calls.iter().map(ToString::to_string).collect(),
        }
    }

    /// Whether `text` names the number (in any form).
    pub(crate) fn names_number(&self, text: &[u8]) -> bool {
        self.numbers
            .iter()
            .any(|n| occurs_between_non_digits(text, n.as_bytes()))
    }

    /// Whether `text` names the number or one of the calls.
    pub(crate) fn names(&self, text: &[u8]) -> bool {
        self.names_number(text)
            || self
                .calls
                .iter()
                .any(|c| memfind(text, c.as_bytes()).is_some())
    }

    /// `text` with every form of the number replaced by `replacement`.
    pub(crate) fn redact(&self, text: &str, replacement: &str) -> String {
        let mut out = text.to_owned();
        // The longest form first, so a national form never leaves a fragment of a longer one.
        let mut forms = self.numbers.clone();
        forms.push(format!("+{}", self.numbers[0]));
        forms.sort_by_key(|f| std::cmp::Reverse(f.len()));
        for form in forms {
            out = out.replace(&form, replacement);
            // Paths carry `+` encoded.
            out = out.replace(&form.replace('+', "%2B"), replacement);
        }
        out
    }
}

/// The pseudonym of a number in the audit log and reports: the first 16 hex digits of the
/// SHA-256 of its E.164 form. It identifies a request about the same number without holding
/// it; a number has few enough values that this is a pseudonym, not an anonymisation.
pub fn fingerprint(phone: &PhoneNumber) -> String {
    let digest = Sha256::digest(phone.as_str().as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

fn memfind(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn occurs_between_non_digits(haystack: &[u8], needle: &[u8]) -> bool {
    let mut from = 0;
    while let Some(i) = memfind(&haystack[from..], needle) {
        let start = from + i;
        let end = start + needle.len();
        let before = start.checked_sub(1).map(|b| haystack[b]);
        let after = haystack.get(end).copied();
        if !before.is_some_and(|b| b.is_ascii_digit()) && !after.is_some_and(|a| a.is_ascii_digit())
        {
            return true;
        }
        from = start + 1;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_number_is_found_in_every_form_and_never_inside_a_longer_one() {
        let phone: PhoneNumber = "+14155552671".parse().expect("phone");
        let needles = Needles::of(&phone);
        for text in [
            "+14155552671",
            "calls.x.14155552671",
            r#"{"phone":"(415) 555-2671"}"#,
            "4155552671",
        ] {
            assert!(needles.names(text.as_bytes()), "{text}");
        }
        for text in ["+141555526710", "24155552671", "415555267"] {
            assert!(!needles.names(text.as_bytes()), "{text}");
        }
        assert_eq!(
            needles.redact("/api/v1/dnc/%2B14155552671", "x"),
            "/api/v1/dnc/x"
        );
    }
}
