//! The embedded system's error type.

use std::time::Duration;

use taskgrid_core::{CommandError, ScheduleError, State, SubmitError, TaskId};
use taskgrid_store::StoreError;

/// What went wrong with a [`crate::TaskSystem`] call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The engine refused the task; nothing was stored.
    #[error(transparent)]
    Submit(#[from] SubmitError),
    /// No handler is registered under this name; nothing was stored.
    #[error("unknown handler {0:?}")]
    UnknownHandler(String),
    /// No executor of this embedded system could ever run the task.
    #[error("cannot run here: {0}")]
    NotRunnable(String),
    /// A commit failed earlier; the system takes no more work until it is
    /// restarted (which rebuilds it from the store).
    #[error("a store commit failed; the coordinator takes no work until it is restarted")]
    StoreFailed,
    /// The payload could not be serialised as JSON.
    #[error("invalid payload: {0}")]
    InvalidPayload(String),
    /// No such task.
    #[error("no task {0}")]
    NotFound(TaskId),
    /// The task names a parent that does not exist; nothing was stored.
    #[error("unknown parent task {0}")]
    UnknownParent(TaskId),
    /// The task has not finished (so it cannot be retried).
    #[error("task {0} has not finished (it is {1})")]
    NotFinished(TaskId, State),
    /// The engine refused the command.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// The engine refused a schedule command; nothing was changed.
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The system is shutting down and takes no new work.
    #[error("the task system is shut down")]
    ShutDown,
    /// No tokio runtime to run on.
    #[error("TaskSystem::start must be called inside a tokio runtime")]
    NoRuntime,
    /// The wait ended before the task did.
    #[error("task {0} did not finish within {1:?}")]
    WaitTimeout(TaskId, Duration),
}

impl From<taskgrid_sdk::InvalidPayload> for Error {
    fn from(e: taskgrid_sdk::InvalidPayload) -> Self {
        Error::InvalidPayload(e.0)
    }
}

impl From<Error> for taskgrid_sdk::TaskError {
    fn from(e: Error) -> Self {
        taskgrid_sdk::TaskError::Failed(e.to_string())
    }
}
