//! Time-driven transitions: a pending task's `run_at`, a retry's backoff, a
//! waiting task's `expires_at`, a running attempt's timeout, a queued task's
//! dispatch timeout, and worker liveness.
//!
//! Timers are derived from a task's state ([`of`]); `apply_event` diffs them
//! before and after each change, so a timer exists exactly while its task is
//! in the state that needs it — none outlives its task.

use crate::{
    AttemptOutcome, Event, FailureCode, Outcome, RetryHint, State, TaskFailure, TaskId, Timestamp,
};

use super::{Engine, Entry, Outbox, StopAttempt, StopReason};

/// What a timer does when it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum TimerKind {
    /// Pending `run_at` or retry backoff passed: release to `queued`.
    Wake,
    /// `expires_at` passed before the task started.
    Expire,
    /// The running attempt's timeout passed.
    Deadline,
    /// No capable worker appeared within the dispatch timeout.
    Dispatch,
}

pub(super) type TimerSet = [Option<(Timestamp, TimerKind)>; 4];

/// The timers task `e` needs in its current state.
pub(super) fn of(e: &Entry) -> TimerSet {
    let st = &e.rec.status;
    let wake = match st.state {
        State::Pending | State::Retrying => st.wake_at.map(|t| (t, TimerKind::Wake)),
        _ => None,
    };
    let expire = e
        .rec
        .spec
        .expires_at
        .filter(|_| st.state.is_waiting())
        .map(|t| (t, TimerKind::Expire));
    let deadline = match (st.state, e.rec.spec.timeout, st.started_at) {
        (State::Running, Some(limit), Some(start)) => {
            Some((start.plus(limit), TimerKind::Deadline))
        }
        _ => None,
    };
    let dispatch = e
        .dispatch_deadline
        .filter(|_| st.state == State::Queued)
        .map(|t| (t, TimerKind::Dispatch));
    [wake, expire, deadline, dispatch]
}

impl Engine {
    pub(super) fn retime(&mut self, id: TaskId, before: &TimerSet, after: &TimerSet) {
        for (b, a) in before.iter().zip(after) {
            if b != a {
                if let Some((t, k)) = b {
                    self.timers.remove(&(*t, *k, id));
                }
                if let Some((t, k)) = a {
                    self.timers.insert((*t, *k, id));
                }
            }
        }
    }

    /// When [`Engine::tick`] next has something to do, if ever.
    pub fn next_wake(&self) -> Option<Timestamp> {
        [
            self.timers.first().map(|(t, _, _)| *t),
            self.next_liveness_check,
            self.next_schedule_wake(),
            self.next_limit_wake(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Number of armed task timers (for tests and stats).
    pub fn timer_count(&self) -> usize {
        self.timers.len()
    }

    /// Fires every timer due at `now`, and drops workers whose heartbeat
    /// is overdue (re-queuing what they ran).
    pub fn tick(&mut self, now: Timestamp, out: &mut Outbox) {
        self.trim_finished();
        if self.next_liveness_check.is_some_and(|t| t <= now) {
            self.check_liveness(now, out);
        }
        while let Some(&(at, kind, id)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            match kind {
                TimerKind::Wake => self.on_wake(id, now, out),
                TimerKind::Expire => {
                    let failure = TaskFailure::new(
                        FailureCode::Expired,
                        "did not start before its expires_at",
                    );
                    let _ = self.apply_event(id, Event::Expire, now, None, out, |s| {
                        s.error = Some(failure)
                    });
                }
                TimerKind::Deadline => self.on_deadline(id, now, out),
                TimerKind::Dispatch => self.on_dispatch_deadline(id, now, out),
            }
        }
        self.tick_limits(now);
        self.tick_schedules(now, out);
    }

    fn on_wake(&mut self, id: TaskId, now: Timestamp, out: &mut Outbox) {
        let Some(e) = self.tasks.get_mut(&id) else {
            return;
        };
        match e.rec.status.state {
            State::Retrying => {
                let _ = self.apply_event(id, Event::Requeue, now, None, out, |_| {});
            }
            State::Pending => {
                // The timer has fired: its time is no longer a gate.
                e.rec.status.wake_at = None;
                self.release_if_ready(id, now, out);
            }
            _ => {}
        }
    }

    fn on_deadline(&mut self, id: TaskId, now: Timestamp, out: &mut Outbox) {
        let Some(e) = self.tasks.get(&id) else { return };
        let (attempt, worker) = (e.rec.status.attempt, e.rec.status.worker.clone());
        if let Some(worker) = worker {
            out.stops.push(StopAttempt {
                id,
                attempt,
                worker,
                reason: StopReason::Timeout,
            });
        }
        self.finish_attempt(id, Outcome::TimedOut, now, out);
    }

    fn on_dispatch_deadline(&mut self, id: TaskId, now: Timestamp, out: &mut Outbox) {
        let Some(e) = self.tasks.get_mut(&id) else {
            return;
        };
        let class = e.class;
        if !self.classes[class.0 as usize].capable.is_empty() {
            // A capable worker appeared; it is only busy. Keep waiting.
            e.dispatch_deadline = None;
            return;
        }
        let message = format!(
            "no capable worker: {}",
            self.classes[class.0 as usize].key.describe()
        );
        let failure = TaskFailure::new(FailureCode::NoCapableWorker, message);
        let _ = self.apply_event(id, Event::Fail, now, None, out, |s| s.error = Some(failure));
    }

    /// Ends the current attempt of a running task with `outcome`, retrying
    /// it when the outcome and policy allow. Returns the task's new state.
    pub(super) fn finish_attempt(
        &mut self,
        id: TaskId,
        outcome: Outcome,
        now: Timestamp,
        out: &mut Outbox,
    ) -> Option<State> {
        let e = self.tasks.get(&id)?;
        let (cancel_requested, retries, policy) = (
            e.rec.status.cancel_requested,
            e.rec.status.retries,
            e.rec.spec.retry,
        );
        // What the attempt's end means: its outcome, the task's error, and
        // whether it may be retried.
        let (ended, failure, retry, result, exit_code) = match outcome {
            _ if cancel_requested => {
                let f = TaskFailure::new(FailureCode::Cancelled, "cancelled while running");
                (
                    AttemptOutcome::Cancelled,
                    Some(f),
                    RetryHint::Never,
                    None,
                    None,
                )
            }
            Outcome::Succeeded { result, exit_code } => (
                AttemptOutcome::Succeeded,
                None,
                RetryHint::Never,
                result,
                exit_code,
            ),
            Outcome::Cancelled => {
                let f = TaskFailure::new(FailureCode::Cancelled, "stopped by its executor");
                (
                    AttemptOutcome::Cancelled,
                    Some(f),
                    RetryHint::Never,
                    None,
                    None,
                )
            }
            Outcome::Failed {
                message,
                retry,
                exit_code,
            } => (
                AttemptOutcome::Failed,
                Some(TaskFailure::new(FailureCode::Error, message)),
                retry,
                None,
                exit_code,
            ),
            Outcome::TimedOut => {
                let f = TaskFailure::new(FailureCode::Timeout, "ran past its timeout");
                (
                    AttemptOutcome::TimedOut,
                    Some(f),
                    RetryHint::Policy,
                    None,
                    None,
                )
            }
        };
        let delay = match retry {
            _ if ended == AttemptOutcome::Succeeded || retries >= policy.max_retries => None,
            RetryHint::Never => None,
            RetryHint::After(d) => Some(d),
            RetryHint::Policy => Some(policy.backoff(retries + 1, self.next_unit())),
        };
        let event = match (delay, ended) {
            (Some(_), _) => Event::Retry,
            (None, AttemptOutcome::Succeeded) => Event::Succeed,
            (None, AttemptOutcome::Cancelled) => Event::Cancel,
            (None, AttemptOutcome::TimedOut) => Event::TimeOut,
            (None, _) => Event::Fail,
        };
        self.apply_event(id, event, now, Some(ended), out, |s| {
            s.error = failure;
            s.exit_code = exit_code;
            s.result = result;
            if let Some(d) = delay {
                s.retries += 1;
                s.wake_at = Some(now.plus(d));
            }
        })
        .ok()
    }
}
