//! Callees who ask to be called back ("call me back in a minute"), as an AI voice agent on the
//! line reports it: the first call to one of `--callback-number` is answered and its final
//! callback carries the time asked for, `--callback-after-ms` after the call ends (Twilio's
//! `CallbackAt`, RFC 3339). Each number asks once; its callback is answered plainly, so a
//! test sees the callback placed and completed.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use chrono::{SecondsFormat, Utc};

use crate::SimConfig;

/// The numbers that have asked already.
#[derive(Debug, Clone, Default)]
pub struct Asks {
    asked: Arc<Mutex<BTreeSet<String>>>,
}

impl Asks {
    /// The time the callee at `number` asks to be called back at, for a call lasting
    /// `length`: `Some` on the first call to a configured number, `None` otherwise.
    pub fn ask(&self, config: &SimConfig, number: &str, length: Duration) -> Option<String> {
        if !config.callback_numbers.iter().any(|n| n == number) {
            return None;
        }
        let first = self
            .asked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(number.to_owned());
        first.then(|| {
            let after = length + Duration::from_millis(config.callback_after_ms);
            let at = Utc::now() + chrono::Duration::from_std(after).unwrap_or_default();
            at.to_rfc3339_opts(SecondsFormat::Millis, true)
        })
    }
}
