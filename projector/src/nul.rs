//! Storing text Postgres refuses: the NUL character.
//!
//! PostgreSQL stores no NUL (`U+0000`) in `text`, and `jsonb` refuses the `\u0000` escape, so
//! a message carrying one (a contact's custom field, a campaign's name, a carrier's reason)
//! would be refused for ever and, after `max_deliver`, parked. Ingest refuses such input now,
//! but messages already in the streams (and carriers' callbacks) may still carry it: every
//! string of such a payload, keys included, has its NULs replaced by `U+FFFD` (the
//! replacement character) before it is decoded, so the row is stored and visibly marked.

use std::borrow::Cow;

/// What a NUL becomes.
pub const REPLACEMENT: char = '\u{FFFD}';

/// `payload` with every NUL in its JSON strings replaced; borrowed when there is none. A
/// payload that is not JSON is returned as it is (decoding it fails as before).
pub fn replaced(payload: &[u8]) -> Cow<'_, [u8]> {
    // JSON can carry a NUL only as the escape `\u0000` (a raw control character is invalid),
    // so a payload without that text needs no parsing: the hot path stays a byte scan.
    if !payload.windows(6).any(|w| w == b"\\u0000") {
        return Cow::Borrowed(payload);
    }
    let Ok(mut value) = serde_json::from_slice::<serde_json::Value>(payload) else {
        return Cow::Borrowed(payload);
    };
    replace_in(&mut value);
    match serde_json::to_vec(&value) {
        Ok(bytes) => Cow::Owned(bytes),
        Err(_) => Cow::Borrowed(payload),
    }
}

/// `text` without NULs.
pub fn replaced_str(text: &str) -> Cow<'_, str> {
    if text.contains('\0') {
        Cow::Owned(text.replace('\0', &REPLACEMENT.to_string()))
    } else {
        Cow::Borrowed(text)
    }
}

fn replace_in(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::String(s) => {
            if let Cow::Owned(clean) = replaced_str(s) {
                *s = clean;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(replace_in),
        Value::Object(map) => {
            let entries = std::mem::take(map);
            for (key, mut item) in entries {
                replace_in(&mut item);
                // Two keys differing only by their NULs collapse into one: the later wins,
                // as a JSON object with a repeated key does.
                map.insert(replaced_str(&key).into_owned(), item);
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nuls_are_replaced_in_every_string_and_key() {
        let payload = br#"{"a\u0000b":["x\u0000", {"k":"\u0000"}], "n": 1, "t": "ok"}"#;
        let out: serde_json::Value = serde_json::from_slice(&replaced(payload)).expect("json");
        assert_eq!(
            out,
            serde_json::json!({"a\u{FFFD}b": ["x\u{FFFD}", {"k": "\u{FFFD}"}], "n": 1, "t": "ok"})
        );
    }

    #[test]
    fn a_payload_without_nul_is_left_alone() {
        for payload in [
            &br#"{"a":"b"}"#[..],
            br#"{"a":"\\u0000 is text"}"#,
            b"{not json \\u0000",
        ] {
            let out = replaced(payload);
            assert_eq!(out.as_ref(), payload);
        }
    }
}
