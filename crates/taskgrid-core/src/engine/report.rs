//! What executors and clients say about existing tasks: accept or refuse an
//! offer, report an attempt's end, progress, checkpoints and output, and
//! cancel.
//!
//! Every executor command names `(task, attempt)`. The attempt number is the
//! fencing token: once the task has moved on (re-queued after a lost worker,
//! timed out, cancelled), reports about the old attempt are [`Stale`] and
//! change nothing but the worker's slot count.
//!
//! [`Stale`]: CommandError::Stale

use crate::{
    AttemptOutcome, Change, Event, FailureCode, Outcome, OutputChunk, Progress, State, Stream,
    TaskFailure, TaskId, Timestamp, WorkerId,
};

use super::{CommandError, Engine, Outbox, StopAttempt, StopReason};

/// What a report achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportAck {
    /// The task's state after the report.
    pub state: State,
}

/// What a cancel achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The task was not running: it is `cancelled` now.
    Cancelled,
    /// The task is running: its executor was told to stop, and it ends
    /// `cancelled` when the executor reports.
    Requested,
    /// It had already finished in this state.
    AlreadyFinished(State),
}

impl Engine {
    /// Checks that `(id, attempt)` is the task's current attempt and that the
    /// task is in one of `states`.
    fn current(&self, id: TaskId, attempt: u32, states: &[State]) -> Result<State, CommandError> {
        let e = self.tasks.get(&id).ok_or(CommandError::NotFound(id))?;
        let st = &e.rec.status;
        if st.attempt != attempt || !states.contains(&st.state) {
            return Err(CommandError::Stale {
                task: id,
                attempt,
                current: st.attempt,
                state: st.state,
            });
        }
        Ok(st.state)
    }

    /// [`Engine::current`], and the attempt must be `worker`'s: another
    /// worker cannot accept, refuse or finish it.
    fn current_of(
        &self,
        worker: &WorkerId,
        id: TaskId,
        attempt: u32,
        states: &[State],
    ) -> Result<State, CommandError> {
        let state = self.current(id, attempt, states)?;
        let e = self.tasks.get(&id).ok_or(CommandError::NotFound(id))?;
        if e.rec.status.worker.as_ref() != Some(worker) {
            return Err(CommandError::Stale {
                task: id,
                attempt,
                current: e.rec.status.attempt,
                state,
            });
        }
        Ok(state)
    }

    /// Whether `(id, attempt)` is the current, running attempt of `worker`
    /// (for requests a worker makes on behalf of an attempt, like spawning).
    pub fn attempt_is_live(&self, worker: &WorkerId, id: TaskId, attempt: u32) -> bool {
        self.current_of(worker, id, attempt, &[State::Running])
            .is_ok()
    }

    /// Whether a cancel is pending on task `id`.
    pub fn cancel_pending(&self, id: TaskId) -> bool {
        self.tasks
            .get(&id)
            .is_some_and(|e| e.rec.status.cancel_requested)
    }

    /// The worker accepted the offer: the task is running.
    pub fn accept(
        &mut self,
        worker: &WorkerId,
        id: TaskId,
        attempt: u32,
        now: Timestamp,
        out: &mut Outbox,
    ) -> Result<(), CommandError> {
        self.current_of(worker, id, attempt, &[State::Assigned])?;
        self.apply_event(id, Event::Accept, now, None, out, |_| {})?;
        Ok(())
    }

    /// The worker refused the offer (not capable). The task goes back to its
    /// queue for another worker — or fails "no capable worker" when every
    /// connected capable worker has refused it.
    pub fn reject(
        &mut self,
        worker: &WorkerId,
        id: TaskId,
        attempt: u32,
        reason: &str,
        now: Timestamp,
        out: &mut Outbox,
    ) -> Result<(), CommandError> {
        self.pass_on(worker, id, attempt, Some(reason), now, out)
    }

    /// The worker hands back an offer it held beyond its slots (its
    /// prefetch) and did not start: not a refusal. The task goes back to
    /// its place in its queue, and from then on is offered only into a
    /// free slot (of any worker), so that no busy worker sits on it while
    /// another could run it.
    pub fn release(
        &mut self,
        worker: &WorkerId,
        id: TaskId,
        attempt: u32,
        now: Timestamp,
        out: &mut Outbox,
    ) -> Result<(), CommandError> {
        self.pass_on(worker, id, attempt, None, now, out)
    }

    /// [`Engine::reject`] (with the reason) or [`Engine::release`].
    fn pass_on(
        &mut self,
        worker: &WorkerId,
        id: TaskId,
        attempt: u32,
        refusal: Option<&str>,
        now: Timestamp,
        out: &mut Outbox,
    ) -> Result<(), CommandError> {
        // Handing back an attempt that is already running is a protocol
        // error: the attempt keeps its slot.
        let running = self
            .current_of(worker, id, attempt, &[State::Running])
            .is_ok();
        if !running {
            self.release_slots(worker, id, attempt);
        }
        self.current_of(worker, id, attempt, &[State::Assigned])?;
        let outcome = Some(AttemptOutcome::Rejected);
        if self.worker_paused(worker) {
            // A draining (or disconnected) worker hands work back: that says
            // nothing about whether it could run the task.
            self.apply_event(id, Event::Requeue, now, outcome, out, |_| {})?;
            return Ok(());
        }
        if let Some(e) = self.tasks.get_mut(&id) {
            match refusal {
                Some(_) => e.refused_by(worker),
                None => e.handed_back(),
            }
        }
        if let Some(reason) = refusal
            && self.all_capable_refused(id)
        {
            let failure = TaskFailure::new(
                FailureCode::NoCapableWorker,
                format!(
                    "no capable worker: every capable worker refused it (last: {worker}: {reason})"
                ),
            );
            self.apply_event(id, Event::Fail, now, outcome, out, |s| {
                s.error = Some(failure)
            })?;
        } else {
            self.apply_event(id, Event::Requeue, now, outcome, out, |_| {})?;
        }
        Ok(())
    }

    /// The attempt ended with `outcome`. A report for an attempt that is no
    /// longer current is refused as stale (after freeing the worker's slots).
    pub fn report(
        &mut self,
        worker: &WorkerId,
        id: TaskId,
        attempt: u32,
        outcome: Outcome,
        now: Timestamp,
        out: &mut Outbox,
    ) -> Result<ReportAck, CommandError> {
        self.release_slots(worker, id, attempt);
        let state = self.current_of(worker, id, attempt, &[State::Assigned, State::Running])?;
        if state == State::Assigned {
            self.apply_event(id, Event::Accept, now, None, out, |_| {})?;
        }
        let success = matches!(outcome, Outcome::Succeeded { .. });
        if !matches!(outcome, Outcome::Cancelled)
            && let Some(w) = self.worker_mut(worker)
        {
            w.record(success);
        }
        let state = self.finish_attempt(id, outcome, now, out).unwrap_or(state);
        Ok(ReportAck { state })
    }

    /// Records what the current attempt cost, ahead of its report (which
    /// persists it with the attempt's end). Ignored for other attempts.
    pub fn record_usage(&mut self, id: TaskId, attempt: u32, usage: crate::Usage) {
        if let Some(e) = self.tasks.get_mut(&id)
            && e.rec.status.attempt == attempt
        {
            e.rec.status.usage = Some(usage);
        }
    }

    /// The running attempt reports progress (`fraction` is clamped to 0–1).
    /// Like every report about an attempt, only the worker holding it may
    /// send it: anyone else's is [`Stale`](CommandError::Stale).
    pub fn progress(
        &mut self,
        worker: &WorkerId,
        id: TaskId,
        attempt: u32,
        progress: Progress,
        out: &mut Outbox,
    ) -> Result<(), CommandError> {
        self.current_of(worker, id, attempt, &[State::Running])?;
        let progress = Progress {
            fraction: if progress.fraction.is_nan() {
                0.0
            } else {
                progress.fraction.clamp(0.0, 1.0)
            },
            message: progress.message,
        };
        if let Some(e) = self.tasks.get_mut(&id) {
            e.rec.progress = Some(progress.clone());
        }
        out.changes.push(Change::Progress { id, progress });
        Ok(())
    }

    /// The running attempt saves a checkpoint; later attempts receive it.
    /// Only the worker holding the attempt may save one.
    pub fn checkpoint(
        &mut self,
        worker: &WorkerId,
        id: TaskId,
        attempt: u32,
        data: Box<str>,
        out: &mut Outbox,
    ) -> Result<(), CommandError> {
        self.current_of(worker, id, attempt, &[State::Running])?;
        if let Some(e) = self.tasks.get_mut(&id) {
            e.rec.checkpoint = Some(data.clone());
        }
        out.changes.push(Change::Checkpoint { id, data });
        Ok(())
    }

    /// The running attempt produced output. Only the worker holding the
    /// attempt may add to it.
    pub fn output(
        &mut self,
        worker: &WorkerId,
        id: TaskId,
        attempt: u32,
        stream: Stream,
        data: String,
        out: &mut Outbox,
    ) -> Result<(), CommandError> {
        self.current_of(worker, id, attempt, &[State::Running])?;
        out.changes.push(Change::Output(Box::new(OutputChunk {
            task: id,
            attempt,
            stream,
            data,
        })));
        Ok(())
    }

    /// Cancels a task: at once unless it is running, in which case its
    /// executor is told to stop and the task ends when it reports.
    pub fn cancel(
        &mut self,
        id: TaskId,
        now: Timestamp,
        out: &mut Outbox,
    ) -> Result<CancelOutcome, CommandError> {
        let e = self.tasks.get(&id).ok_or(CommandError::NotFound(id))?;
        let st = &e.rec.status;
        let (state, attempt, worker) = (st.state, st.attempt, st.worker.clone());
        if state.is_terminal() {
            return Ok(CancelOutcome::AlreadyFinished(state));
        }
        if matches!(state, State::Assigned | State::Running)
            && let Some(worker) = worker
        {
            out.stops.push(StopAttempt {
                id,
                attempt,
                worker,
                reason: StopReason::Cancel,
            });
        }
        if state == State::Running {
            if !st.cancel_requested {
                self.touch(id, now, out, |s| s.cancel_requested = true);
            }
            return Ok(CancelOutcome::Requested);
        }
        let failure = TaskFailure::new(FailureCode::Cancelled, "cancelled");
        let outcome = (state == State::Assigned).then_some(AttemptOutcome::Cancelled);
        self.apply_event(id, Event::Cancel, now, outcome, out, |s| {
            s.error = Some(failure)
        })?;
        Ok(CancelOutcome::Cancelled)
    }

    /// Cancels every live task carrying `tag`; returns how many were
    /// cancelled or asked to stop.
    pub fn cancel_tag(&mut self, tag: &str, now: Timestamp, out: &mut Outbox) -> usize {
        let mut ids: Vec<TaskId> = self
            .tasks
            .values()
            .filter(|e| {
                !e.rec.status.state.is_terminal() && e.rec.spec.tags.iter().any(|t| t == tag)
            })
            .map(|e| e.rec.id)
            .collect();
        ids.sort();
        ids.into_iter()
            .filter(|id| {
                matches!(
                    self.cancel(*id, now, out),
                    Ok(CancelOutcome::Cancelled | CancelOutcome::Requested)
                )
            })
            .count()
    }
}
