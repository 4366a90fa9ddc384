//! The task state machine: a closed [`State`] enum and the one function,
//! [`transition`], through which every state change goes.
//!
//! ```text
//! pending ─► queued ─► assigned ─► running ─► succeeded
//!    │          │          │          ├──────► failed ──(retries left)──► retrying ─► queued
//!    │          │          │          └──────► timed_out ─(retries left)─┘
//!    └──────────┴──────────┴─────────────────► cancelled
//!    queued past expires_at ─────────────────► expired
//! ```
//! An attempt that fails or times out with retries left moves the task
//! straight from `running` to `retrying`; the attempt history keeps the
//! attempt's own outcome. `failed`, `timed_out`, `succeeded`, `cancelled` and
//! `expired` are terminal: nothing leaves them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Waiting for its `run_at` or for dependencies. The engine's timer or a
    /// dependency's success moves it to `queued`; cancel, expiry or a failed
    /// dependency end it.
    Pending,
    /// Ready, waiting for a capable worker with free slots. Dispatch moves it
    /// to `assigned`; cancel, expiry or "no capable worker" end it.
    Queued,
    /// Offered to a worker that has not accepted yet. The worker's accept moves
    /// it to `running`; a refusal or the worker's loss puts it back in `queued`.
    Assigned,
    /// Executing. The worker's report ends it (or sends it to `retrying`); the
    /// engine's deadline times it out; a lost worker sends it back to `queued`.
    Running,
    /// Waiting for its backoff to pass before the next attempt; the engine's
    /// timer moves it to `queued`.
    Retrying,
    /// Terminal: the work succeeded.
    Succeeded,
    /// Terminal: the work failed and no retries are left (or the failure was
    /// final, or no capable worker exists).
    Failed,
    /// Terminal: the last attempt ran past its timeout with no retries left.
    TimedOut,
    /// Terminal: cancelled by a client, or because a dependency did not succeed.
    Cancelled,
    /// Terminal: it did not start before its `expires_at`.
    Expired,
}

impl State {
    /// Every state, in lifecycle order.
    pub const ALL: [State; 10] = [
        State::Pending,
        State::Queued,
        State::Assigned,
        State::Running,
        State::Retrying,
        State::Succeeded,
        State::Failed,
        State::TimedOut,
        State::Cancelled,
        State::Expired,
    ];

    /// Whether nothing can move the task out of this state.
    pub const fn is_terminal(self) -> bool {
        matches!(
            self,
            State::Succeeded | State::Failed | State::TimedOut | State::Cancelled | State::Expired
        )
    }

    /// Waiting to start (counts towards a queue's depth).
    pub const fn is_waiting(self) -> bool {
        matches!(self, State::Pending | State::Queued | State::Retrying)
    }

    /// The lower-case name used in the API, the CLI and the store.
    pub const fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Queued => "queued",
            State::Assigned => "assigned",
            State::Running => "running",
            State::Retrying => "retrying",
            State::Succeeded => "succeeded",
            State::Failed => "failed",
            State::TimedOut => "timed_out",
            State::Cancelled => "cancelled",
            State::Expired => "expired",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// The text is not a state name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown task state {0:?}")]
pub struct ParseStateError(pub String);

impl FromStr for State {
    type Err = ParseStateError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        State::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| ParseStateError(s.to_owned()))
    }
}

/// What happens to a task; the input of [`transition`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Its `run_at` passed and its dependencies succeeded.
    Release,
    /// Dispatch offered it to a worker.
    Assign,
    /// The worker accepted the offer.
    Accept,
    /// Back to the queue: the offer was refused, the worker was lost, the
    /// backoff passed, or the coordinator restarted under a running attempt.
    Requeue,
    /// The attempt succeeded.
    Succeed,
    /// The attempt failed with no retry left, or the task can never run.
    Fail,
    /// The attempt ran out of time with no retry left.
    TimeOut,
    /// The attempt failed or timed out and a retry is left.
    Retry,
    /// A client (or a failed dependency) cancelled it.
    Cancel,
    /// It did not start before its `expires_at`.
    Expire,
}

/// An event that does not apply to the state the task is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a {from} task cannot take {event:?}")]
pub struct TransitionError {
    /// The task's state.
    pub from: State,
    /// The event that was refused.
    pub event: Event,
}

/// The single place where task states change: the state after `event`, or
/// an error if the event does not apply to `from`.
pub fn transition(from: State, event: Event) -> Result<State, TransitionError> {
    use Event as E;
    use State as S;
    let to = match (from, event) {
        (S::Pending, E::Release) => S::Queued,
        (S::Queued, E::Assign) => S::Assigned,
        (S::Assigned, E::Accept) => S::Running,
        (S::Assigned | S::Running | S::Retrying, E::Requeue) => S::Queued,
        (S::Running, E::Succeed) => S::Succeeded,
        (S::Pending | S::Queued | S::Assigned | S::Running, E::Fail) => S::Failed,
        (S::Running, E::TimeOut) => S::TimedOut,
        (S::Running, E::Retry) => S::Retrying,
        (S::Pending | S::Queued | S::Assigned | S::Running | S::Retrying, E::Cancel) => {
            S::Cancelled
        }
        (S::Pending | S::Queued | S::Retrying, E::Expire) => S::Expired,
        _ => return Err(TransitionError { from, event }),
    };
    Ok(to)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVENTS: [Event; 10] = [
        Event::Release,
        Event::Assign,
        Event::Accept,
        Event::Requeue,
        Event::Succeed,
        Event::Fail,
        Event::TimeOut,
        Event::Retry,
        Event::Cancel,
        Event::Expire,
    ];

    #[test]
    fn terminal_states_have_no_way_out() {
        for s in State::ALL.into_iter().filter(|s| s.is_terminal()) {
            for e in EVENTS {
                assert_eq!(transition(s, e), Err(TransitionError { from: s, event: e }));
            }
        }
    }

    #[test]
    fn every_live_state_can_be_cancelled_and_reaches_a_terminal_state() {
        for s in State::ALL.into_iter().filter(|s| !s.is_terminal()) {
            assert_eq!(transition(s, Event::Cancel), Ok(State::Cancelled));
        }
    }

    #[test]
    fn the_happy_path() {
        let mut s = State::Pending;
        for e in [Event::Release, Event::Assign, Event::Accept, Event::Succeed] {
            s = transition(s, e).unwrap();
        }
        assert_eq!(s, State::Succeeded);
        assert_eq!(
            transition(State::Running, Event::Retry),
            Ok(State::Retrying)
        );
        assert_eq!(
            transition(State::Retrying, Event::Requeue),
            Ok(State::Queued)
        );
        assert!(transition(State::Running, Event::Expire).is_err());
    }

    #[test]
    fn names_round_trip() {
        for s in State::ALL {
            assert_eq!(s.as_str().parse(), Ok(s));
        }
    }
}
