//! What an erase does with each message it found: pure decisions, carried out by
//! [`super::apply`].

use std::collections::{BTreeMap, BTreeSet};

use ccm_core::{CallId, topology::names};
use serde::Serialize;

use super::scan::Hit;

/// A call, as the read model knows it: its phase rank, or none when not projected (yet).
pub(crate) type Known = BTreeMap<CallId, Option<i16>>;

/// What keeps an erase from running: calls not ended, numbers still claimed.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct Live {
    /// Calls of the number not known to have ended.
    #[schema(value_type = Vec<String>)]
    pub calls: Vec<CallId>,
    /// Claims held on the number in `active_calls` (keys, the number shown as `<number>`).
    pub claims: Vec<String>,
}

impl Live {
    pub(crate) fn is_empty(&self) -> bool {
        self.calls.is_empty() && self.claims.is_empty()
    }
}

/// The calls not known to have ended (a call the read model has not seen counts as live:
/// it was accepted a moment ago) and the claims still held, by the hits' last revisions.
pub(crate) fn live(known: &Known, hits: &[Hit], redact: impl Fn(&str) -> String) -> Live {
    let calls = known
        .iter()
        .filter(|(_, rank)| !rank.is_some_and(|r| r >= i16::from(ccm_core::events::TERMINAL_RANK)))
        .map(|(id, _)| *id)
        .collect();
    let claims = last_per_subject(hits.iter().filter(|h| bucket_of(h) == Some(CLAIMS)))
        .into_iter()
        .filter(|h| !h.is_kv_marker())
        .filter_map(|h| h.kv_key().map(|(_, key)| redact(key)))
        .collect();
    Live { calls, claims }
}

const CLAIMS: &str = names::KV_ACTIVE_CALLS;

/// One step of an erase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// Securely delete one message (its bytes overwritten, not only unlinked).
    Erase { stream: String, seq: u64 },
    /// Remove a key's revisions up to `seq` (the last that names the person); when that is
    /// the key's current value, delete the key first so every watcher drops it.
    PurgeKey {
        stream: String,
        bucket: String,
        key: String,
        subject: String,
        seq: u64,
        is_marker: bool,
    },
    /// Replace an audit record by a copy without the number (the record of who did what stays).
    Redact { stream: String, seq: u64 },
}

/// Something found and left where it is, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Kept {
    /// `stream`, `bucket` or `table`.
    pub store: String,
    pub name: String,
    /// The key, subject or row (the number shown as `<number>`).
    pub what: String,
    pub why: String,
}

pub(crate) const DNC_KEPT: &str = "a do-not-call entry is kept so the number is never called \
    again (suppression is a legal obligation and a legitimate interest that outlives the \
    erasure: GDPR art. 17(3)(b) and (e), TCPA 47 CFR 64.1200(d))";
const LIVE_KEPT: &str = "names a call that is not one of the person's ended calls (another \
    person's as well, or one accepted while the erase ran: the do-not-call entry stops it \
    before any placement; erase again once it has ended)";
const AUDIT_KEPT: &str = "an audit record that names one of the calls, not the number: who did \
    what is kept";

/// The steps for `hits`. `ended` are the calls known to have ended; a message naming any
/// other call is kept (see [`LIVE_KEPT`]). `kept_key` is the do-not-call key the erase wrote.
pub(crate) fn plan(
    hits: &[Hit],
    ended: &BTreeSet<CallId>,
    kept_key: (&str, &str),
    redact: impl Fn(&str) -> String,
) -> (Vec<Step>, Vec<Kept>) {
    let mut steps = Vec::new();
    let mut kept = Vec::new();
    let mut keep = |store: &str, name: &str, what: &str, why: &str| {
        kept.push(Kept {
            store: store.into(),
            name: name.into(),
            what: redact(what),
            why: why.into(),
        });
    };
    let live = |hit: &Hit| call_ids(hit).iter().any(|c| !ended.contains(c));
    let (kv, plain): (Vec<&Hit>, Vec<&Hit>) = hits.iter().partition(|h| h.kv_key().is_some());
    for hit in plain {
        if live(hit) {
            keep("stream", &hit.stream, &hit.subject, LIVE_KEPT);
        } else if hit.stream == names::AUDIT {
            if hit.names_number {
                steps.push(Step::Redact {
                    stream: hit.stream.clone(),
                    seq: hit.seq,
                });
            } else {
                keep("stream", &hit.stream, &hit.subject, AUDIT_KEPT);
            }
        } else {
            steps.push(Step::Erase {
                stream: hit.stream.clone(),
                seq: hit.seq,
            });
        }
    }
    let mut by_subject: BTreeMap<&str, Vec<&Hit>> = BTreeMap::new();
    for hit in kv {
        by_subject.entry(&hit.subject).or_default().push(hit);
    }
    for (_, group) in by_subject {
        let last = group
            .iter()
            .max_by_key(|h| h.seq)
            .expect("a group is never empty");
        let (bucket, key) = last.kv_key().expect("a KV hit");
        if (bucket, key) == kept_key {
            keep("bucket", bucket, key, DNC_KEPT);
        } else if group.iter().any(|h| live(h)) || (bucket == CLAIMS && !last.is_kv_marker()) {
            keep("bucket", bucket, key, LIVE_KEPT);
        } else {
            steps.push(Step::PurgeKey {
                stream: last.stream.clone(),
                bucket: bucket.to_owned(),
                key: key.to_owned(),
                subject: last.subject.clone(),
                seq: last.seq,
                is_marker: last.is_kv_marker(),
            });
        }
    }
    (steps, kept)
}

fn bucket_of(hit: &Hit) -> Option<&str> {
    hit.kv_key().map(|(bucket, _)| bucket)
}

fn last_per_subject<'a>(hits: impl Iterator<Item = &'a Hit>) -> Vec<&'a Hit> {
    let mut last: BTreeMap<&str, &Hit> = BTreeMap::new();
    for hit in hits {
        let entry = last.entry(&hit.subject).or_insert(hit);
        if hit.seq > entry.seq {
            *entry = hit;
        }
    }
    last.into_values().collect()
}

/// The calls a message names: every `call_id` in its JSON body (at any depth, so a retry
/// entry's request and a dead letter's copy count), and a call id as a subject's token.
pub(crate) fn call_ids(hit: &Hit) -> BTreeSet<CallId> {
    let mut ids: BTreeSet<CallId> = hit
        .subject
        .split('.')
        .filter_map(|t| t.parse().ok())
        .collect();
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(&hit.payload) {
        collect(&value, &mut ids);
    }
    ids
}

/// The person's calls a message shows: a `call_id` beside a `phone_number` naming the number
/// in the same JSON object (a dial request, a retry's request, a `Dialing` event, a dead
/// letter's copy). Not every call id in a message that names the number: an answer listing
/// many calls (a bulk request's) would make other people's calls the person's, and the erase
/// would then remove them.
pub(crate) fn person_calls(hit: &Hit, names_number: impl Fn(&[u8]) -> bool) -> BTreeSet<CallId> {
    let mut ids = BTreeSet::new();
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(&hit.payload) {
        collect_beside_number(&value, &names_number, &mut ids);
    }
    ids
}

fn collect_beside_number(
    value: &serde_json::Value,
    names_number: &impl Fn(&[u8]) -> bool,
    ids: &mut BTreeSet<CallId>,
) {
    match value {
        serde_json::Value::Object(map) => {
            let call = map
                .get("call_id")
                .and_then(|v| v.as_str())
                .and_then(|s| s.parse().ok());
            let phone = map
                .get("phone_number")
                .and_then(|v| v.as_str())
                .is_some_and(|p| names_number(p.as_bytes()));
            if let (Some(id), true) = (call, phone) {
                ids.insert(id);
            }
            map.values()
                .for_each(|v| collect_beside_number(v, names_number, ids));
        }
        serde_json::Value::Array(items) => items
            .iter()
            .for_each(|v| collect_beside_number(v, names_number, ids)),
        _ => {}
    }
}

fn collect(value: &serde_json::Value, ids: &mut BTreeSet<CallId>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                if k == "call_id"
                    && let Some(id) = v.as_str().and_then(|s| s.parse().ok())
                {
                    ids.insert(id);
                }
                collect(v, ids);
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect(v, ids)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use async_nats::HeaderMap;
    use bytes::Bytes;

    use super::*;

    fn hit(stream: &str, seq: u64, subject: &str, payload: &str, marker: bool) -> Hit {
        let mut headers = HeaderMap::new();
        if marker {
            headers.insert("KV-Operation", "DEL");
        }
        Hit {
            stream: stream.into(),
            seq,
            subject: subject.into(),
            headers,
            payload: Bytes::from(payload.to_owned()),
            names_number: true,
        }
    }

    #[test]
    fn messages_of_ended_calls_go_those_of_live_ones_and_the_dnc_entry_stay() {
        let ended: CallId = "0193a000-0000-7000-8000-000000000001".parse().expect("id");
        let live: CallId = "0193a000-0000-7000-8000-000000000002".parse().expect("id");
        let hits = [
            hit(
                "CALLS",
                1,
                "calls.dial.7",
                &format!(r#"{{"call_id":"{ended}"}}"#),
                false,
            ),
            hit(
                "CALLS",
                2,
                "calls.dial.7",
                &format!(r#"{{"call_id":"{live}"}}"#),
                false,
            ),
            hit("KV_dnc", 3, "$KV.dnc.global.15550001", "{}", false),
            hit("KV_contacts", 4, "$KV.contacts.7.15550001", "{}", false),
            hit("KV_active_calls", 5, "$KV.active_calls.15550001", "", true),
            hit(
                "AUDIT",
                6,
                "audit.admin",
                r#"{"path":"/api/v1/dnc/+15550001"}"#,
                false,
            ),
        ];
        let (steps, kept) = plan(&hits, &[ended].into(), ("dnc", "global.15550001"), |s| {
            s.to_owned()
        });
        assert_eq!(
            steps,
            [
                Step::Erase {
                    stream: "CALLS".into(),
                    seq: 1
                },
                Step::Redact {
                    stream: "AUDIT".into(),
                    seq: 6
                },
                Step::PurgeKey {
                    stream: "KV_active_calls".into(),
                    bucket: "active_calls".into(),
                    key: "15550001".into(),
                    subject: "$KV.active_calls.15550001".into(),
                    seq: 5,
                    is_marker: true
                },
                Step::PurgeKey {
                    stream: "KV_contacts".into(),
                    bucket: "contacts".into(),
                    key: "7.15550001".into(),
                    subject: "$KV.contacts.7.15550001".into(),
                    seq: 4,
                    is_marker: false
                },
            ]
        );
        let kept: Vec<_> = kept
            .iter()
            .map(|k| (k.name.as_str(), k.what.as_str()))
            .collect();
        assert_eq!(
            kept,
            [("CALLS", "calls.dial.7"), ("dnc", "global.15550001")]
        );
    }

    #[test]
    fn only_a_call_beside_the_number_is_the_persons() {
        let mine = "0193a000-0000-7000-8000-000000000004";
        let other = "0193a000-0000-7000-8000-000000000005";
        let body = format!(
            r#"{{"request": {{"call_id": "{mine}", "phone_number": "+15550001"}},
                "calls": [{{"call_id": "{other}", "phone_number": "+15550002"}}]}}"#
        );
        let found = person_calls(&hit("RETRIES", 1, "calls.retry.7", &body, false), |t| {
            t == b"+15550001"
        });
        assert_eq!(found, [mine.parse().expect("id")].into());
    }

    #[test]
    fn a_held_claim_or_an_unprojected_call_is_live() {
        let id: CallId = "0193a000-0000-7000-8000-000000000003".parse().expect("id");
        let claim = hit(
            "KV_active_calls",
            9,
            "$KV.active_calls.15550001",
            "{}",
            false,
        );
        let live = live(&[(id, None)].into(), &[claim], |s| s.to_owned());
        assert_eq!(live.calls, [id]);
        assert_eq!(live.claims, ["15550001"]);
        let ended = super::live(&[(id, Some(6))].into(), &[], |s| s.to_owned());
        assert!(ended.is_empty());
    }
}
