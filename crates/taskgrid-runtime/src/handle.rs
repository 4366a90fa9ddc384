//! [`TaskHandle`]: a submitted task — its status, progress, result, and
//! cancel.

use std::sync::Arc;
use std::time::Duration;

use taskgrid_core::{CancelOutcome, Progress, State, TaskId, TaskRecord};

use crate::inner::Inner;
use crate::{Error, Task, TaskResult};

/// A submitted task.
#[derive(Clone)]
pub struct TaskHandle {
    inner: Arc<Inner>,
    id: TaskId,
}

impl std::fmt::Debug for TaskHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskHandle").field("id", &self.id).finish()
    }
}

impl TaskHandle {
    pub(crate) fn new(inner: Arc<Inner>, id: TaskId) -> Self {
        TaskHandle { inner, id }
    }

    pub(crate) async fn submit(inner: &Arc<Inner>, task: Task) -> Result<TaskHandle, Error> {
        let ids = inner.submit(vec![task]).await?;
        Ok(TaskHandle::new(inner.clone(), ids[0]))
    }

    /// The task's id.
    pub fn id(&self) -> TaskId {
        self.id
    }

    /// The task as the engine holds it now (a change may still be being
    /// committed).
    pub async fn record(&self) -> Result<TaskRecord, Error> {
        self.inner.record(self.id).await
    }

    /// The task's current state.
    pub async fn status(&self) -> Result<State, Error> {
        Ok(self.record().await?.status.state)
    }

    /// The last progress it reported.
    pub async fn progress(&self) -> Result<Option<Progress>, Error> {
        Ok(self.record().await?.progress)
    }

    /// Waits until the task has finished and its end is stored.
    pub async fn wait(&self) -> Result<TaskResult, Error> {
        self.inner.wait(self.id).await
    }

    /// [`TaskHandle::wait`], giving up after `limit`.
    pub async fn wait_timeout(&self, limit: Duration) -> Result<TaskResult, Error> {
        tokio::time::timeout(limit, self.wait())
            .await
            .map_err(|_| Error::WaitTimeout(self.id, limit))?
    }

    /// Cancels the task (see [`taskgrid_core::Engine::cancel`]); returns
    /// once the cancel is committed.
    pub async fn cancel(&self) -> Result<CancelOutcome, Error> {
        self.inner.cancel(self.id).await
    }

    /// Calls `f` with the result once the task has succeeded.
    pub fn on_success(&self, f: impl FnOnce(&TaskResult) + Send + 'static) {
        let h = self.clone();
        tokio::spawn(async move {
            if let Ok(r) = h.wait().await
                && r.is_success()
            {
                f(&r);
            }
        });
    }

    /// Calls `f` with the result once the task has ended unsuccessfully.
    pub fn on_failure(&self, f: impl FnOnce(&TaskResult) + Send + 'static) {
        let h = self.clone();
        tokio::spawn(async move {
            if let Ok(r) = h.wait().await
                && !r.is_success()
            {
                f(&r);
            }
        });
    }
}
