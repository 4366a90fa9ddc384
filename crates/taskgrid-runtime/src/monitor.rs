//! The read side of a [`TaskSystem`]: workers, explain, output paging,
//! event replay, and retrying a finished task.

use std::collections::BTreeMap;

use taskgrid_api::Summary;
pub use taskgrid_api::WorkerView;
use taskgrid_core::{Explanation, OutputChunk, State, TaskId};

use crate::{Error, SharedEvent, Task, TaskHandle, TaskSystem};

impl TaskSystem {
    /// Every registered worker (the local executor is `local`).
    pub fn workers(&self) -> Vec<WorkerView> {
        worker_views(&self.inner.lock())
    }

    /// [`TaskSystem::workers`] once every attempt it lists is committed.
    pub async fn workers_committed(&self) -> Result<Vec<WorkerView>, Error> {
        self.inner.read_committed(worker_views).await
    }

    /// The cluster at a glance, cheap enough to take several times a
    /// second: counters, tasks waiting and running, workers and slots, and
    /// the last event's seq. Its `tasks` are left empty.
    pub fn summary(&self) -> Summary {
        let seq = self.inner.publisher.last_seq();
        let engine = self.inner.lock();
        let totals = engine.metrics().totals();
        let (workers, slots, used) = engine.worker_load();
        let (mut waiting, mut running) = (0, 0);
        for (state, n) in engine.state_counts() {
            match state {
                State::Pending | State::Queued | State::Retrying => waiting += n as u64,
                State::Assigned | State::Running => running += n as u64,
                _ => {}
            }
        }
        drop(engine);
        Summary {
            seq,
            at: self.inner.clock.now(),
            totals,
            waiting,
            running,
            workers: workers as u64,
            slots: u64::from(slots),
            used: u64::from(used),
            tasks: BTreeMap::new(),
        }
    }

    /// [`TaskSystem::explain`] once everything it shows is committed.
    pub async fn explain_committed(&self, id: TaskId) -> Result<Explanation, Error> {
        let now = self.inner.clock.now();
        match self.inner.read_committed(|e| e.explain(id, now)).await? {
            Some(x) => Ok(x),
            None => self.explain(id).await,
        }
    }

    /// Why a task is not running yet (or where it stands).
    pub async fn explain(&self, id: TaskId) -> Result<Explanation, Error> {
        let now = self.inner.clock.now();
        let live = self.inner.lock().explain(id, now);
        if let Some(x) = live {
            return Ok(x);
        }
        let rec = self.inner.stored(id).await?;
        Ok(Explanation {
            task: id,
            state: rec.status.state,
            worker: rec.status.worker,
            gates: Vec::new(),
        })
    }

    /// Output chunks of a task after sequence number `after` (0: from the
    /// start), at most `limit`, with their sequence numbers.
    pub async fn output_since(
        &self,
        id: TaskId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, OutputChunk)>, Error> {
        self.inner
            .read_store(move |s| s.output(id, after, limit))
            .await
    }

    /// Events after `seq` still in the replay buffer, and whether the
    /// buffer reached back that far (if not, some were missed). To resume
    /// without a gap, [`TaskSystem::subscribe`] first, then replay, then
    /// skip live events with `seq` at or below the last replayed one.
    ///
    /// An id from an earlier process (below this process's first seq, or
    /// above its last one) reaches back to nothing here: the answer is every
    /// event still buffered, marked incomplete.
    pub fn events_since(&self, seq: u64) -> (Vec<SharedEvent>, bool) {
        self.inner.publisher.events_since(seq)
    }

    /// Whether `seq` is an event id this process gave out (or the zero
    /// it counts from): false for an id from an earlier process.
    pub fn issued_event(&self, seq: u64) -> bool {
        self.inner.publisher.issued(seq)
    }

    /// Runs a finished task again: a new task with the same spec. A task
    /// that has not finished cannot be retried.
    pub async fn retry(&self, id: TaskId) -> Result<TaskHandle, Error> {
        let rec = self.get(id).await?;
        if !rec.status.state.is_terminal() {
            return Err(Error::NotFinished(id, rec.status.state));
        }
        let mut spec = rec.spec;
        // Times were relative to the first submission.
        spec.run_at = None;
        spec.expires_at = None;
        self.submit(Task::from_spec(spec)).await
    }
}

fn worker_views(engine: &taskgrid_core::Engine) -> Vec<WorkerView> {
    let mut out: Vec<WorkerView> = engine
        .workers()
        .map(|(info, used, trust, running)| WorkerView {
            id: info.id.clone(),
            labels: info.labels.clone(),
            handlers: info.handlers.clone(),
            shell: info.shell,
            container: info.container,
            slots: info.slots,
            prefetch: info.prefetch,
            used,
            trust,
            running,
            memory_bytes: info.memory_bytes,
            cpus: info.cpus,
            max_load: info.max_load,
            health: info.health,
        })
        .collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}
