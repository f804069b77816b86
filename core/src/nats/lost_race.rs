//! Whether a JetStream write lost a compare-and-set race (the one owner of that rule).
//!
//! nats-server answers a publish whose `Nats-Expected-Last-Subject-Sequence` no longer holds
//! with error code 10071 ("wrong last sequence: N") on a single server, but on a replicated
//! stream with 10164 ("wrong last sequence", no number) while another write to the subject is
//! still in flight. async-nats 0.52 maps only 10071 to `WrongLastSequence` /
//! `WrongLastRevision`; 10164 arrives as kind `Other`, which callers would read as an outage.

use async_nats::jetstream::{
    self, ErrorCode,
    context::{PublishError, PublishErrorKind},
    kv,
};

/// True when `error` (or any error in its source chain) says the write lost a race with
/// another writer of the same key: a KV `update`/`delete` with a stale revision, a `create`
/// of a key that exists, or a publish with an expected last subject sequence that moved on.
pub fn lost_race(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if says_lost(e) {
            return true;
        }
        next = e.source();
    }
    false
}

fn says_lost(e: &(dyn std::error::Error + 'static)) -> bool {
    if let Some(e) = e.downcast_ref::<PublishError>() {
        return e.kind() == PublishErrorKind::WrongLastSequence;
    }
    if let Some(e) = e.downcast_ref::<kv::UpdateError>() {
        return e.kind() == kv::UpdateErrorKind::WrongLastRevision;
    }
    if let Some(e) = e.downcast_ref::<kv::CreateError>() {
        return e.kind() == kv::CreateErrorKind::AlreadyExists;
    }
    if let Some(e) = e.downcast_ref::<jetstream::Error>() {
        return is_wrong_last_sequence(e.error_code());
    }
    false
}

/// The server's codes for an expected last sequence that does not hold.
fn is_wrong_last_sequence(code: ErrorCode) -> bool {
    code == ErrorCode::STREAM_WRONG_LAST_SEQUENCE
        || code == ErrorCode::STREAM_WRONG_LAST_SEQUENCE_CONSTANT
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The server's answer as async-nats parses it.
    fn server_error(code: u64, description: &str) -> jetstream::Error {
        serde_json::from_value(serde_json::json!({
            "code": 400,
            "err_code": code,
            "description": description,
        }))
        .unwrap()
    }

    /// A publish refused with `code`, as async-nats 0.52 reports it (10164 has no kind).
    fn refused(code: u64) -> PublishError {
        let kind = if code == 10071 {
            PublishErrorKind::WrongLastSequence
        } else {
            PublishErrorKind::Other
        };
        PublishError::with_source(kind, server_error(code, "wrong last sequence"))
    }

    #[test]
    fn both_wrong_last_sequence_codes_are_a_lost_race_through_every_wrapper() {
        for code in [10071, 10164] {
            let publish = refused(code);
            assert!(lost_race(&publish), "publish {code}");
            let update = kv::UpdateError::from(refused(code));
            assert!(lost_race(&update), "update {code}");
            let create = kv::CreateError::from(kv::UpdateError::from(refused(code)));
            assert!(lost_race(&create), "create {code}");
            let boxed: async_nats::Error = Box::new(refused(code));
            assert!(lost_race(boxed.as_ref()), "boxed {code}");
        }
    }

    #[test]
    fn other_failures_are_not_a_lost_race() {
        // 10163: expected last sequence per subject not ready; 10059: stream not found.
        for code in [10163, 10059, 10071 + 1] {
            assert!(!lost_race(&refused(code)), "{code}");
        }
        assert!(!lost_race(&PublishError::new(PublishErrorKind::TimedOut)));
        assert!(!lost_race(&kv::UpdateError::new(
            kv::UpdateErrorKind::Other
        )));
        assert!(!lost_race(&kv::CreateError::new(
            kv::CreateErrorKind::Publish
        )));
    }

    #[test]
    fn the_kinds_alone_are_a_lost_race() {
        assert!(lost_race(&PublishError::new(
            PublishErrorKind::WrongLastSequence
        )));
        assert!(lost_race(&kv::UpdateError::new(
            kv::UpdateErrorKind::WrongLastRevision
        )));
        assert!(lost_race(&kv::CreateError::new(
            kv::CreateErrorKind::AlreadyExists
        )));
    }
}
