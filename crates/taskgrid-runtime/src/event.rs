//! [`TaskEvent`]: what subscribers see, published only after the change it
//! describes has been committed to the store.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use taskgrid_api::{ScheduleEvent, ScheduleEventKind};
use taskgrid_core::{Change, Progress, State, Stream, TaskFailure, TaskId, Timestamp};

/// Something that happened to a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskEvent {
    /// Position in the event stream (the SSE event id): increases by one
    /// per event. A process starts counting from the wall clock's
    /// microseconds at its start, so an id from an earlier process is
    /// below every id of this one and a resuming client is told `reset`.
    pub seq: u64,
    /// The task.
    pub id: TaskId,
    /// When it happened (engine time).
    pub at: Timestamp,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

/// The kinds of [`TaskEvent`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    /// The task was accepted.
    Submitted {
        /// Its queue.
        queue: Arc<str>,
        /// Its first state.
        state: State,
        /// The task that spawned it.
        parent: Option<TaskId>,
    },
    /// The task changed state.
    State {
        /// The state it left.
        from: State,
        /// The state it entered.
        to: State,
        /// The attempt number.
        attempt: u32,
        /// The error, when it failed or is retrying.
        error: Option<TaskFailure>,
        /// The result, when it succeeded.
        result: Option<Box<str>>,
        /// The handler, for terminal and retrying changes.
        #[serde(skip)]
        handler: Option<Arc<str>>,
    },
    /// The task reported progress.
    Progress(Progress),
    /// The task saved a checkpoint.
    Checkpoint,
    /// The task produced output.
    Output {
        /// Which stream.
        stream: Stream,
        /// The text.
        data: String,
    },
}

/// Where this process's event seqs start: the wall clock in microseconds
/// since 1970 (its first event is one more). An earlier process started
/// earlier and, publishing fewer than a million events a second, never
/// reached this number, so its ids read as older than all of this one's.
/// (Should the clock be stepped back across a restart by more than the
/// downtime, old ids could fall in this process's range; SSE clients then
/// resume at the wrong place until they reconnect without an id.)
pub(crate) fn seq_base() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX / 2))
}

/// The schedule events of a batch of changes (seq 0: the publisher numbers
/// them), committed at `at`.
pub(crate) fn schedule_events(changes: &[Change], at: Timestamp) -> Vec<ScheduleEvent> {
    changes
        .iter()
        .filter_map(|c| {
            let (schedule, kind) = match c {
                Change::Schedule(r) => (
                    r.name.clone(),
                    ScheduleEventKind::Changed {
                        paused: r.paused,
                        note: r.note.clone(),
                        runs: r.state.runs,
                    },
                ),
                Change::ScheduleDeleted { name } => (name.clone(), ScheduleEventKind::Deleted),
                Change::Fire(f) => (
                    f.schedule.clone(),
                    ScheduleEventKind::Fire {
                        fire: (**f).clone(),
                    },
                ),
                _ => return None,
            };
            Some(ScheduleEvent {
                seq: 0,
                at,
                schedule,
                kind,
            })
        })
        .collect()
}

impl TaskEvent {
    /// The event a committed change produces (none for a queue's change).
    pub(crate) fn from_change(
        c: &Change,
        at: Timestamp,
        handler: impl FnOnce() -> Option<Arc<str>>,
    ) -> Option<Self> {
        let (id, kind) = match c {
            Change::Submitted(r) => (
                r.id,
                EventKind::Submitted {
                    queue: r.spec.queue.clone(),
                    state: r.status.state,
                    parent: r.spec.parent,
                },
            ),
            Change::Status {
                id,
                from,
                status,
                at,
                ..
            } => {
                let to = status.state;
                let notable = to.is_terminal() || to == State::Retrying;
                return Some(TaskEvent {
                    seq: 0,
                    id: *id,
                    at: *at,
                    kind: EventKind::State {
                        from: *from,
                        to,
                        attempt: status.attempt,
                        error: status.error.clone().filter(|_| notable),
                        result: status.result.clone().filter(|_| to == State::Succeeded),
                        handler: if notable { handler() } else { None },
                    },
                });
            }
            Change::Progress { id, progress } => (*id, EventKind::Progress(progress.clone())),
            Change::Checkpoint { id, .. } => (*id, EventKind::Checkpoint),
            Change::Output(o) => (
                o.task,
                EventKind::Output {
                    stream: o.stream,
                    data: o.data.clone(),
                },
            ),
            Change::Queue { .. }
            | Change::Schedule(_)
            | Change::ScheduleDeleted { .. }
            | Change::Fire(_)
            | Change::Deleted { .. }
            | Change::Meta { .. }
            | Change::Audit(_)
            | Change::AuditPruned { .. }
            | Change::OutputDeleted { .. } => return None,
        };
        Some(TaskEvent {
            seq: 0,
            id,
            at,
            kind,
        })
    }

    /// The state this event moved its task into, if any.
    pub fn new_state(&self) -> Option<State> {
        match &self.kind {
            EventKind::Submitted { state, .. } => Some(*state),
            EventKind::State { to, .. } => Some(*to),
            _ => None,
        }
    }
}
