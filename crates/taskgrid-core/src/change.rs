//! [`Change`]: the ordered log of what the engine decided. The shell hands
//! each change to the store (one group-committed transaction per batch) and,
//! once committed, to subscribers — so what anyone sees has been persisted.

use serde::{Deserialize, Serialize};

use crate::{
    AttemptOutcome, FireRecord, OutputChunk, Progress, ScheduleRecord, State, TaskId, TaskRecord,
    TaskStatus, Timestamp,
};

/// One durable change to a task (or, for [`Change::Queue`], to a queue).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum Change {
    /// A task was accepted: insert it.
    Submitted(Box<TaskRecord>),
    /// A task changed state. The store writes `status` only if the stored
    /// state is still `from` (compare-and-set).
    Status {
        /// The task.
        id: TaskId,
        /// The state it left.
        from: State,
        /// When.
        at: Timestamp,
        /// The whole new status.
        status: Box<TaskStatus>,
        /// Set when this change ends an attempt: how it ended.
        attempt_outcome: Option<AttemptOutcome>,
    },
    /// A running task reported progress.
    Progress {
        /// The task.
        id: TaskId,
        /// Its progress.
        progress: Progress,
    },
    /// A running task saved a checkpoint (JSON text).
    Checkpoint {
        /// The task.
        id: TaskId,
        /// The checkpoint.
        data: Box<str>,
    },
    /// A running task produced output.
    Output(Box<OutputChunk>),
    /// A queue was paused or resumed: the store keeps it across restarts.
    Queue {
        /// The queue.
        name: String,
        /// Whether dispatch from it is paused.
        paused: bool,
    },
    /// A schedule was created, edited, paused, resumed, or fired: store the
    /// whole record (insert or replace, by name).
    Schedule(Box<ScheduleRecord>),
    /// A schedule was deleted, with its fire history.
    ScheduleDeleted {
        /// The schedule.
        name: String,
    },
    /// A schedule fired (or skipped, or missed, a fire): insert the record.
    /// (schedule, scheduled time) is unique: a second record of one fire
    /// fails the commit.
    Fire(Box<FireRecord>),
    /// A coordinator's own state that outlives it (its metrics): stored
    /// under `key`, replacing what was there.
    Meta {
        /// What it is (`metrics`).
        key: String,
        /// Its JSON.
        value: String,
    },
    /// A finished task's output was deleted (output retention): the store
    /// removes its chunks and keeps the rest of the task.
    OutputDeleted {
        /// The task.
        id: TaskId,
    },
    /// A finished task was deleted (by an operator, or by retention): the
    /// store removes it with its tags, attempts and output. An unknown id
    /// is no error.
    Deleted {
        /// The task.
        id: TaskId,
    },
    /// A mutating call was answered: append it to the audit log.
    Audit(Box<crate::AuditRecord>),
    /// Audit entries older than `before` are deleted (retention).
    AuditPruned {
        /// Entries with `at` before this go.
        before: crate::Timestamp,
    },
}

impl Change {
    /// The task this change is about (`None` for a queue's change).
    pub fn task_id(&self) -> Option<TaskId> {
        match self {
            Change::Submitted(r) => Some(r.id),
            Change::Status { id, .. }
            | Change::Progress { id, .. }
            | Change::Checkpoint { id, .. }
            | Change::Deleted { id }
            | Change::OutputDeleted { id } => Some(*id),
            Change::Output(c) => Some(c.task),
            Change::Queue { .. }
            | Change::Meta { .. }
            | Change::Audit(_)
            | Change::AuditPruned { .. }
            | Change::Schedule(_)
            | Change::ScheduleDeleted { .. }
            | Change::Fire(_) => None,
        }
    }

    /// The state this change moves its task into, if it moves it.
    pub fn new_state(&self) -> Option<State> {
        match self {
            Change::Submitted(r) => Some(r.status.state),
            Change::Status { status, .. } => Some(status.state),
            _ => None,
        }
    }
}
