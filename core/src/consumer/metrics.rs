//! The runtime's metrics, recorded in one place. `consumer` is a durable consumer's name from
//! the code (a closed set), never anything a message carries.

use crate::metrics::counter;

/// A delivery decided: `ack`, `nak`, `term`, `abandoned` (left to `ack_wait`), `dropped`
/// (undecided, NAKed by the drop).
pub(super) fn decided(consumer: &'static str, decision: &'static str) {
    counter!("ccm_consumer_messages_total", "consumer" => consumer, "decision" => decision)
        .increment(1);
}

/// A message found poison, whatever the policy then did with it.
pub(super) fn poisoned(consumer: &'static str) {
    counter!("ccm_consumer_poison_total", "consumer" => consumer).increment(1);
}

/// A pull request that failed or a pull error inside a batch.
pub(super) fn pull_failed(consumer: &'static str) {
    counter!("ccm_consumer_pull_errors_total", "consumer" => consumer).increment(1);
}
