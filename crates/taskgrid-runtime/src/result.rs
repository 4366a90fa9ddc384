//! [`TaskResult`]: how a task ended.

use serde::de::DeserializeOwned;
use taskgrid_core::{State, TaskFailure, TaskId, TaskRecord};

/// How a task ended.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskResult {
    /// The task.
    pub id: TaskId,
    /// Its terminal state.
    pub state: State,
    /// The result JSON of a success.
    pub result: Option<Box<str>>,
    /// Why it did not succeed.
    pub error: Option<TaskFailure>,
    /// Attempts it took.
    pub attempts: u32,
}

impl TaskResult {
    /// Whether it succeeded.
    pub fn is_success(&self) -> bool {
        self.state == State::Succeeded
    }

    /// The result decoded as `T`.
    pub fn value<T: DeserializeOwned>(&self) -> Result<Option<T>, serde_json::Error> {
        self.result.as_deref().map(serde_json::from_str).transpose()
    }

    pub(crate) fn of(rec: &TaskRecord) -> Self {
        TaskResult {
            id: rec.id,
            state: rec.status.state,
            result: rec.status.result.clone(),
            error: rec.status.error.clone(),
            attempts: rec.status.attempt,
        }
    }
}
