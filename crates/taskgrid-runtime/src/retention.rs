//! Deleting finished tasks on demand ([`TaskSystem::delete`],
//! [`TaskSystem::prune`]); the background sweep and the saving of the
//! metrics are in `upkeep`.

use taskgrid_core::{TaskId, Timestamp};

use crate::upkeep::prune;
use crate::{Error, TaskSystem};

impl TaskSystem {
    /// Deletes a finished task with its attempts and output; returns once
    /// that is committed. [`Error::NotFound`] for an unknown task,
    /// [`Error::NotFinished`] for one that has not finished (nothing is
    /// changed).
    pub async fn delete(&self, id: TaskId) -> Result<(), Error> {
        let rec = self.get_committed(id).await?;
        if !rec.status.state.is_terminal() {
            return Err(Error::NotFinished(id, rec.status.state));
        }
        let deleted = self
            .inner
            .committed_command(|e, _, out| e.delete_finished(&[id], out))
            .await?;
        if deleted.is_empty() {
            // Live again since it was read (it cannot be: a retry makes a
            // new task), so say what it is now.
            let rec = self.get(id).await?;
            return Err(Error::NotFinished(id, rec.status.state));
        }
        Ok(())
    }

    /// What the background retention sweeps have done so far; the
    /// receiver sees each sweep as it ends (wait with `wait_for`).
    pub fn retention_stats(&self) -> tokio::sync::watch::Receiver<crate::RetentionStats> {
        self.inner.retention.subscribe()
    }

    /// Deletes every task that finished before `cutoff` (with its attempts
    /// and output), [`DELETE_BATCH`](crate::DELETE_BATCH) per commit; returns how many. What
    /// the background retention runs with `cutoff` = now − retention.
    pub async fn prune(&self, cutoff: Timestamp) -> Result<usize, Error> {
        prune(&self.inner, cutoff).await
    }
}
