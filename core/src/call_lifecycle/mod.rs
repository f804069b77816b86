//! A call's life, in one place: its states, which state may follow which, which states are
//! open and which are the end, and when a campaign has no call left.
//!
//! ```text
//!  attempt n:  QUEUED ─> PROCESSING ─> outcome ─┬─> RETRYING ──> attempt n+1: QUEUED ...
//!                 │          │        (PICKED,  ├─> COMPLETED | FAILED          (the end)
//!                 │          │       RNR, ...)  └─> CANCELLED | DEAD_LETTERED
//!                 └──────────┴─> CANCELLED | DEAD_LETTERED | EXPIRED | LIMITED  (the end)
//!  a dead letter: DEAD_LETTERED ─> attempt n+1: QUEUED (redrive) | FAILED (discard)
//! ```
//!
//! The wire knows one word, `FAILED`, for two different facts, and clients of the old API and
//! of v1 see it for both: [`CallState::Outcome`]`(Failed)` is "this attempt failed at the
//! carrier" (open: the retrier has not decided, and a retry may follow) and
//! [`CallState::Ended`]`(`[`End::Failed`]`)` is "the call failed for good". Everything that
//! decides from a call's state uses [`CallState`], never the bare [`CallStatus`]; the read
//! model stores both the wire status and the phase ([`CallState::rank`]), which tells them
//! apart ([`CallState::stored`], [`CALL_IS_OPEN_SQL`]).
//!
//! A state replaces another only when it is later by `(attempt, rank)`
//! ([`CallState::supersedes`]): that is the projector's fold, the dashboard's tally and every
//! "latest event of a call" reader, and it makes applying events idempotent and insensitive to
//! their order.

mod finished;
#[cfg(test)]
mod tests;
mod unplaced;

pub use finished::{CampaignProgress, ProgressError, campaign_finished};
pub use unplaced::end_unplaced;

use crate::{
    events::EventKind,
    status::{CallStatus, OutcomeStatus},
};

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum End {
    /// Answered.
    Completed,
    /// Failed for good: the policy allows no further attempt, or an operator discarded its
    /// dead letter.
    Failed,
    /// Stopped by an operator, a campaign's end or a do-not-call listing.
    Cancelled,
    /// Technical failures exhausted redelivery; the dial message is in the DLQ (an operator
    /// may redrive it, which queues the next attempt).
    DeadLettered,
    /// Not placed by its `expires_at`, or queued longer than the maximum queue age.
    Expired,
    /// Not placed by its `expires_at` because a frequency limit held its number.
    Limited,
}

/// Where a call is, as far as deciding its next step goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallState {
    /// The attempt waits in `CALLS` for a dialer.
    Queued,
    /// A dialer is placing the attempt.
    Processing,
    /// The carrier's verdict on the attempt, not yet decided on by the retrier. Open whatever
    /// the verdict: `Outcome(Failed)` is "this attempt failed at the carrier".
    Outcome(OutcomeStatus),
    /// Another attempt is scheduled.
    Retrying,
    /// The call is over.
    Ended(End),
}

/// The read model's test for "this call has not ended", for every query that decides a
/// campaign is finished. It is the phase, not the status: a FAILED outcome (open) and a FAILED
/// end share the status `FAILED` and differ in the phase. Checked against
/// [`CallState::is_open`] for every state by this module's tests.
pub const CALL_IS_OPEN_SQL: &str = "phase_rank < 5";

/// The negation of [`CALL_IS_OPEN_SQL`]: the call has ended.
pub const CALL_HAS_ENDED_SQL: &str = "phase_rank >= 5";

/// The rank of the end; every open state ranks below it.
pub const ENDED_RANK: u8 = 5;

impl CallState {
    /// Every state, for tests and for iteration.
    pub const ALL: [CallState; 13] = [
        Self::Queued,
        Self::Processing,
        Self::Outcome(OutcomeStatus::Picked),
        Self::Outcome(OutcomeStatus::Disconnected),
        Self::Outcome(OutcomeStatus::Rnr),
        Self::Outcome(OutcomeStatus::Failed),
        Self::Retrying,
        Self::Ended(End::Completed),
        Self::Ended(End::Failed),
        Self::Ended(End::Cancelled),
        Self::Ended(End::DeadLettered),
        Self::Ended(End::Expired),
        Self::Ended(End::Limited),
    ];

    /// The state an event puts its attempt in.
    pub fn of(kind: &EventKind) -> CallState {
        match kind {
            EventKind::Dialing { .. } => Self::Processing,
            EventKind::Outcome { status, .. } => Self::Outcome(*status),
            EventKind::Retrying { .. } | EventKind::Rescheduled { .. } => Self::Retrying,
            EventKind::Completed => Self::Ended(End::Completed),
            EventKind::Failed { .. } => Self::Ended(End::Failed),
            EventKind::Cancelled { .. } => Self::Ended(End::Cancelled),
            EventKind::DeadLettered { .. } => Self::Ended(End::DeadLettered),
            EventKind::Expired { .. } => Self::Ended(End::Expired),
            EventKind::Limited { .. } => Self::Ended(End::Limited),
        }
    }

    /// The state a read-model row describes (its wire status and its phase), or `None` for a
    /// combination no fold produces.
    pub fn stored(status: CallStatus, rank: u8) -> Option<CallState> {
        let state = match status {
            CallStatus::Initiated | CallStatus::Queued => Self::Queued,
            CallStatus::Processing => Self::Processing,
            CallStatus::Picked => Self::Outcome(OutcomeStatus::Picked),
            CallStatus::Disconnected => Self::Outcome(OutcomeStatus::Disconnected),
            CallStatus::Rnr => Self::Outcome(OutcomeStatus::Rnr),
            CallStatus::Failed if rank >= ENDED_RANK => Self::Ended(End::Failed),
            CallStatus::Failed => Self::Outcome(OutcomeStatus::Failed),
            CallStatus::Retrying => Self::Retrying,
            CallStatus::Completed => Self::Ended(End::Completed),
            CallStatus::Cancelled => Self::Ended(End::Cancelled),
            CallStatus::DeadLettered => Self::Ended(End::DeadLettered),
            CallStatus::Expired => Self::Ended(End::Expired),
            CallStatus::Limited => Self::Ended(End::Limited),
        };
        (state.rank() == rank).then_some(state)
    }

    /// The status clients see. Both failures are `FAILED`, as they always were.
    pub fn status(self) -> CallStatus {
        match self {
            Self::Queued => CallStatus::Queued,
            Self::Processing => CallStatus::Processing,
            Self::Outcome(outcome) => outcome.call_status(),
            Self::Retrying => CallStatus::Retrying,
            Self::Ended(End::Completed) => CallStatus::Completed,
            Self::Ended(End::Failed) => CallStatus::Failed,
            Self::Ended(End::Cancelled) => CallStatus::Cancelled,
            Self::Ended(End::DeadLettered) => CallStatus::DeadLettered,
            Self::Ended(End::Expired) => CallStatus::Expired,
            Self::Ended(End::Limited) => CallStatus::Limited,
        }
    }

    /// The state's place within its attempt (stored as `calls.phase_rank`). Ranked by the
    /// phase, not the status: every outcome is "the carrier answered", so a FAILED outcome
    /// never outranks the `Retrying` or the FAILED end the retrier decides from it.
    pub fn rank(self) -> u8 {
        match self {
            Self::Queued => 1,
            Self::Processing => 2,
            Self::Outcome(_) => 3,
            Self::Retrying => 4,
            Self::Ended(_) => ENDED_RANK,
        }
    }

    /// Whether the call may still change without an operator: queued, dialling, waiting for
    /// the retrier's decision or for its next attempt.
    pub fn is_open(self) -> bool {
        !self.is_terminal()
    }

    /// Whether the call is over.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Ended(_))
    }

    /// Whether `(attempt, self)` replaces `(other_attempt, other)` as a call's state: a later
    /// attempt, or a later phase of the same attempt.
    pub fn supersedes(self, attempt: u32, other: CallState, other_attempt: u32) -> bool {
        (attempt, self.rank()) > (other_attempt, other.rank())
    }

    /// Whether a call in `self` at attempt `attempt` may move to `next` at `next_attempt`:
    /// the diagram of the module's documentation.
    pub fn may_move_to(self, attempt: u32, next: CallState, next_attempt: u32) -> bool {
        use End::*;
        if next_attempt == attempt.saturating_add(1) {
            // The next attempt is queued after a retry or after an operator's redrive; a
            // scheduled retry cancelled before it was queued ends under its own number.
            return matches!(
                (self, next),
                (Self::Retrying | Self::Ended(DeadLettered), Self::Queued)
                    | (Self::Retrying, Self::Ended(Cancelled | Expired | Limited))
            );
        }
        if next_attempt != attempt {
            return false;
        }
        match (self, next) {
            (Self::Queued, Self::Processing) => true,
            (Self::Queued, Self::Ended(Cancelled | DeadLettered | Expired | Limited)) => true,
            (Self::Processing, Self::Outcome(_)) => true,
            (Self::Processing, Self::Ended(Cancelled | DeadLettered)) => true,
            (Self::Outcome(_), Self::Retrying) => true,
            // Expired: the retry the policy wants would fall after the call's expiry.
            (
                Self::Outcome(_),
                Self::Ended(Completed | Failed | Cancelled | DeadLettered | Expired),
            ) => true,
            (Self::Retrying, Self::Ended(Cancelled)) => true,
            // An operator discards a dead letter: the call fails for good.
            (Self::Ended(DeadLettered), Self::Ended(Failed)) => true,
            _ => false,
        }
    }
}
