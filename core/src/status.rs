//! Call statuses, spelled on the wire exactly as the old system spelled them.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// Every state a call can be in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CallStatus {
    /// Accepted by the old system but not yet queued; kept for wire compatibility.
    Initiated,
    /// Durably queued in `CALLS`, waiting for a dialer slot.
    Queued,
    /// A dialer has placed (or is placing) the attempt with the carrier.
    Processing,
    /// The callee answered.
    Picked,
    /// The call connected and then dropped.
    Disconnected,
    /// Ringing, no response.
    Rnr,
    /// The carrier failed the attempt, or the call ended failed for good.
    Failed,
    /// A further attempt is scheduled.
    Retrying,
    /// Terminal: the call was answered.
    Completed,
    /// Terminal: stopped by an operator.
    Cancelled,
    /// Terminal: technical failures exhausted `max_deliver`; the message is in the DLQ.
    DeadLettered,
    /// Terminal: queued longer than the maximum queue age (`retrier.max_queue_age_secs`),
    /// ended before `CALLS` retention could drop its message.
    Expired,
    /// Terminal: a frequency limit kept the number from being called before the call's
    /// `expires_at`.
    Limited,
}

impl CallStatus {
    /// All statuses, for iteration in metrics and filters.
    pub const ALL: [CallStatus; 13] = [
        Self::Initiated,
        Self::Queued,
        Self::Processing,
        Self::Picked,
        Self::Disconnected,
        Self::Rnr,
        Self::Failed,
        Self::Retrying,
        Self::Completed,
        Self::Cancelled,
        Self::DeadLettered,
        Self::Expired,
        Self::Limited,
    ];

    /// The wire spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Initiated => "INITIATED",
            Self::Queued => "QUEUED",
            Self::Processing => "PROCESSING",
            Self::Picked => "PICKED",
            Self::Disconnected => "DISCONNECTED",
            Self::Rnr => "RNR",
            Self::Failed => "FAILED",
            Self::Retrying => "RETRYING",
            Self::Completed => "COMPLETED",
            Self::Cancelled => "CANCELLED",
            Self::DeadLettered => "DEAD_LETTERED",
            Self::Expired => "EXPIRED",
            Self::Limited => "LIMITED",
        }
    }
}

impl fmt::Display for CallStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The text is not one of the status names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown call status {0:?}")]
pub struct UnknownStatus(pub String);

impl FromStr for CallStatus {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

/// What the carrier reported for one attempt: the four values the old callback accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OutcomeStatus {
    Picked,
    Disconnected,
    Rnr,
    Failed,
}

impl OutcomeStatus {
    /// All outcomes, in the order the old API listed them in its error message.
    pub const ALL: [OutcomeStatus; 4] = [Self::Picked, Self::Disconnected, Self::Rnr, Self::Failed];

    /// The call status an outcome puts the call in.
    pub fn call_status(&self) -> CallStatus {
        match self {
            Self::Picked => CallStatus::Picked,
            Self::Disconnected => CallStatus::Disconnected,
            Self::Rnr => CallStatus::Rnr,
            Self::Failed => CallStatus::Failed,
        }
    }

    /// The wire spelling.
    pub fn as_str(&self) -> &'static str {
        self.call_status().as_str()
    }
}

impl FromStr for OutcomeStatus {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

impl fmt::Display for OutcomeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_use_the_old_wire_names() {
        for status in CallStatus::ALL {
            let json = serde_json::to_string(&status).expect("serialize");
            assert_eq!(json, format!("\"{}\"", status.as_str()));
            assert_eq!(status.as_str().parse::<CallStatus>(), Ok(status));
        }
        assert_eq!(CallStatus::DeadLettered.as_str(), "DEAD_LETTERED");
        assert!("picked".parse::<CallStatus>().is_err());
    }

    #[test]
    fn outcomes_parse_only_the_four_callback_values() {
        assert_eq!("RNR".parse::<OutcomeStatus>(), Ok(OutcomeStatus::Rnr));
        assert!("COMPLETED".parse::<OutcomeStatus>().is_err());
    }
}
