//! Subject builders: the only place subject strings are assembled.
//!
//! Campaign ids are integers and call ids UUIDs, so every token built here is a valid NATS
//! subject token without escaping.

use crate::ids::{CallId, CampaignId};

/// Every dial message: what the projector's `CALLS` consumer reads.
pub const DIAL_ALL: &str = "calls.dial.>";
/// Every lifecycle event and outcome.
pub const EVENTS_ALL: &str = "calls.>";
/// Every lifecycle event (not outcomes).
pub const LIFECYCLE_ALL: &str = "calls.event.>";
/// Every carrier outcome: what the retrier reads.
pub const OUTCOME_ALL: &str = "calls.outcome.>";
/// Outcome copies no dialer address could be found for: every dialer hears them
/// ([`crate::outcome_route`]). Outside `calls.>`, so no stream stores them.
pub const DIALER_OUTCOME_ANY: &str = "ccm.dialers.outcome";
/// Every admission audit record.
pub const AUDIT_ALL: &str = "calls.audit.>";
/// Every retry entry.
pub const RETRY_ALL: &str = "calls.retry.>";
/// The MAX_DELIVERIES advisories that the `ADVISORIES` stream captures.
pub const MAX_DELIVERIES_ALL: &str = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.>";
/// The MSG_TERMINATED advisories (a `+TERM`, with its reason) that `ADVISORIES` also captures.
pub const MSG_TERMINATED_ALL: &str = "$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.>";

/// `calls.dial.<campaign>`: one message per call attempt.
pub fn dial(campaign: CampaignId) -> String {
    format!("calls.dial.{campaign}")
}

/// The campaign of a dial subject (`calls.dial.<campaign>`), read without looking at the
/// payload: `Some` only for a subject [`dial`] builds exactly, so the dialer's wake-ups
/// ([`DIAL_ALL`]) never take a look-alike for a campaign.
pub fn dial_campaign(subject: &str) -> Option<CampaignId> {
    let campaign: CampaignId = subject.strip_prefix("calls.dial.")?.parse().ok()?;
    (dial(campaign) == subject).then_some(campaign)
}

/// `calls.event.<campaign>.<call>`: the call's lifecycle events.
pub fn event(campaign: CampaignId, call: CallId) -> String {
    format!("calls.event.{campaign}.{call}")
}

/// `calls.audit.<campaign>.<call>`: the audit records of the call's admission decisions
/// ([`crate::attempt_audit`]), kept off the event subject so they never move its sequence.
pub fn audit(campaign: CampaignId, call: CallId) -> String {
    format!("calls.audit.{campaign}.{call}")
}

/// `calls.event.*.<call>`: the call's lifecycle events whatever its campaign, for a lookup
/// that knows only the call id (a stream get by subject filter, never a publish).
pub fn event_any_campaign(call: CallId) -> String {
    format!("calls.event.*.{call}")
}

/// `calls.outcome.<campaign>.<call>`: what the carrier reported.
pub fn outcome(campaign: CampaignId, call: CallId) -> String {
    format!("calls.outcome.{campaign}.{call}")
}

/// The call of an outcome subject (`calls.outcome.<campaign>.<call>`), read without looking
/// at the payload; `None` for any other subject.
pub fn outcome_call(subject: &str) -> Option<CallId> {
    let (_campaign, call) = subject.strip_prefix("calls.outcome.")?.split_once('.')?;
    call.parse().ok()
}

/// `ccm.dialer.<address>.outcome`: the core copies of the outcomes of the attempts one dialer
/// process placed ([`crate::outcome_route`]); `address` is one subject token. Outside
/// `calls.>`, so no stream stores them.
pub fn dialer_outcome(address: &str) -> String {
    format!("ccm.dialer.{address}.outcome")
}

/// `calls.retry.<campaign>`: attempts due later.
pub fn retry(campaign: CampaignId) -> String {
    format!("calls.retry.{campaign}")
}

/// `calls.dlq.<stream>`: dead letters taken from a stream.
pub fn dlq(source_stream: &str) -> String {
    format!("calls.dlq.{source_stream}")
}

/// The name of a campaign's dial consumer on `CALLS`.
pub fn dial_consumer(campaign: CampaignId) -> String {
    format!("dial_{campaign}")
}

/// The campaign whose dial consumer `name` is: `Some` only for a name [`dial_consumer`]
/// builds exactly (no sign, no leading zero, no space), so a look-alike such as `dial_07`
/// or `dial_7_test` is not taken for one.
pub fn dial_consumer_campaign(name: &str) -> Option<CampaignId> {
    let campaign: CampaignId = name.strip_prefix("dial_")?.parse().ok()?;
    (dial_consumer(campaign) == name).then_some(campaign)
}

/// The `Nats-Msg-Id` of a dial message: one per call attempt, so a retried publish (by ingest
/// or by the retrier after a crash) can never create a second attempt.
pub fn dial_msg_id(call: CallId, attempt: u32) -> String {
    format!("{call}/{attempt}")
}

/// The `Nats-Msg-Id` of an event or outcome of one attempt.
pub fn event_msg_id(call: CallId, attempt: u32, event: &str) -> String {
    format!("{call}/{attempt}/{event}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_have_the_documented_shape() {
        let campaign = CampaignId::new(7).expect("valid");
        let call: CallId = "0190a0a0-0000-7000-8000-000000000001"
            .parse()
            .expect("uuid");
        assert_eq!(dial(campaign), "calls.dial.7");
        assert_eq!(event(campaign, call), format!("calls.event.7.{call}"));
        assert_eq!(outcome(campaign, call), format!("calls.outcome.7.{call}"));
        assert_eq!(event_any_campaign(call), format!("calls.event.*.{call}"));
        assert_eq!(outcome_call(&outcome(campaign, call)), Some(call));
        assert_eq!(outcome_call(&event(campaign, call)), None);
        assert_eq!(outcome_call("calls.outcome.7"), None);
        assert_eq!(retry(campaign), "calls.retry.7");
        assert_eq!(dialer_outcome("d-1"), "ccm.dialer.d-1.outcome");
        assert_eq!(dlq("CALLS"), "calls.dlq.CALLS");
        assert_eq!(dial_consumer(campaign), "dial_7");
        assert_eq!(dial_consumer_campaign("dial_7"), Some(campaign));
        for not_dial in [
            "dial_",
            "dial_0",
            "dial_07",
            "dial_+7",
            "dial_ 7",
            "dial_7 ",
            "dial_7_x",
            "Dial_7",
            "dial-7",
            "xdial_7",
            "projector_calls",
            "",
        ] {
            assert_eq!(dial_consumer_campaign(not_dial), None, "{not_dial:?}");
        }
        assert_eq!(dial_campaign(&dial(campaign)), Some(campaign));
        for not_dial in [
            "calls.dial.",
            "calls.dial.0",
            "calls.dial.07",
            "calls.dial.+7",
            "calls.dial.7.x",
            "calls.event.7",
            "calls.dial",
            "",
        ] {
            assert_eq!(dial_campaign(not_dial), None, "{not_dial:?}");
        }
        assert_eq!(dial_msg_id(call, 2), format!("{call}/2"));
        assert_eq!(
            event_msg_id(call, 2, "dialing"),
            format!("{call}/2/dialing")
        );
    }
}
