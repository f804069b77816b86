//! Faults that can be changed while the simulator runs, through `GET|PUT /faults`.
//!
//! The command-line flags set the starting values; a fault-injection run then switches 5xx
//! bursts, added latency and callback faults on and off mid-load without restarting the
//! simulator, whose ledger (the audit trail of every placement) lives in memory.

use serde::{Deserialize, Serialize};

use crate::SimConfig;

/// The faults in force now. A `PUT /faults` body replaces all of them; omitted fields are 0.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Share of placement requests answered 503 without placing anything (0 to 1).
    pub error_rate: f64,
    /// Added latency of every placement response, in milliseconds.
    pub latency_ms: u64,
    /// Share of final callbacks never sent.
    pub drop_rate: f64,
    /// Share of final callbacks sent twice.
    pub duplicate_rate: f64,
    /// Share of calls whose callbacks are sent out of order.
    pub reorder_rate: f64,
    /// Share of hang-up requests answered 503 with the call left live.
    pub hangup_error_rate: f64,
    /// Added length of every call placed from now on, in milliseconds (long calls).
    pub extra_call_ms: u64,
}

impl Faults {
    /// The faults the command line asked for.
    pub fn from_config(config: &SimConfig) -> Self {
        Self {
            error_rate: config.error_rate,
            latency_ms: config.latency_ms,
            drop_rate: config.drop_rate,
            duplicate_rate: config.duplicate_rate,
            reorder_rate: config.reorder_rate,
            hangup_error_rate: 0.0,
            extra_call_ms: 0,
        }
    }

    /// Why these values cannot be used, if they cannot.
    pub fn invalid(&self) -> Option<String> {
        [
            ("error_rate", self.error_rate),
            ("drop_rate", self.drop_rate),
            ("duplicate_rate", self.duplicate_rate),
            ("reorder_rate", self.reorder_rate),
            ("hangup_error_rate", self.hangup_error_rate),
        ]
        .into_iter()
        .find(|(_, rate)| !(0.0..=1.0).contains(rate))
        .map(|(name, rate)| format!("{name} = {rate} is not a share between 0 and 1"))
    }
}

#[cfg(test)]
mod tests {
    use super::Faults;

    #[test]
    fn rates_outside_zero_to_one_are_refused() {
        assert_eq!(Faults::default().invalid(), None);
        let faults = Faults {
            drop_rate: 1.5,
            ..Faults::default()
        };
        assert_eq!(
            faults.invalid().as_deref(),
            Some("drop_rate = 1.5 is not a share between 0 and 1")
        );
        let faults = Faults {
            error_rate: f64::NAN,
            ..Faults::default()
        };
        assert!(faults.invalid().is_some());
    }
}
