//! [`TaskSystem`]: the embedded engine — a store, a local executor with
//! registered handlers, and the driver loop between them (see `inner`).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use taskgrid_core::{
    AuditRecord, CancelOutcome, Engine, MetricsSnapshot, Outbox, QueueStats, State, Submitted,
    TaskId, TaskRecord,
};
use taskgrid_store::TaskQuery;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::driver::{drive, publish};
use crate::event::SharedEvent;
use crate::executor::Local;
use crate::inner::{Inner, relock};
use crate::report::Report;
use crate::{Error, Task, TaskHandle};

pub(crate) enum Lifecycle {
    Built {
        completions: mpsc::UnboundedReceiver<Report>,
        committed: mpsc::UnboundedReceiver<Option<crate::inner::Committed>>,
    },
    Started {
        driver: JoinHandle<()>,
        publisher: JoinHandle<()>,
        stop: oneshot::Sender<()>,
        /// Background retention, when configured.
        retention: Option<JoinHandle<()>>,
        /// Saves the metrics now and then.
        metrics: JoinHandle<()>,
    },
    Stopped,
}

/// An embedded task system. See the crate docs for an example.
pub struct TaskSystem {
    pub(crate) inner: Arc<Inner>,
    /// The local executor, to wait for and stop at shutdown.
    pub(crate) local: Arc<Local>,
    pub(crate) tasks: Mutex<Lifecycle>,
    pub(crate) shut_down: tokio::sync::Mutex<bool>,
}

impl TaskSystem {
    /// Starts the driver and publisher loops on the current tokio runtime,
    /// having handed the writer what is due at once (timers, a schedule's
    /// catch-up, dispatch): a [`flush`](Self::flush) after it sees that
    /// committed. Calling it again does nothing.
    pub fn start(&self) -> Result<(), Error> {
        let rt = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let _ = self.inner.rt.set(rt.clone());
        let mut state = relock(&self.tasks);
        let Lifecycle::Built { .. } = &*state else {
            return Ok(());
        };
        let Lifecycle::Built {
            completions,
            committed,
        } = std::mem::replace(&mut *state, Lifecycle::Stopped)
        else {
            unreachable!("checked above")
        };
        // What is due at start (timers, schedules' catch-up, dispatch) is
        // handed to the writer before this returns: a `flush` after
        // `start` sees it committed.
        self.inner.step(&mut Vec::new());
        let (stop, stop_rx) = oneshot::channel();
        let driver = rt.spawn(drive(self.inner.clone(), completions, stop_rx));
        let publisher = rt.spawn(publish(self.inner.clone(), committed));
        let config = &self.inner.config;
        let keep = crate::upkeep::Keep {
            default: config.retention,
            queues: config.queue_retention.clone(),
        };
        let retention = (keep.any() || config.output_retention.is_some()).then(|| {
            let every = config
                .retention_every
                .max(std::time::Duration::from_millis(1));
            rt.spawn(crate::upkeep::run(
                Arc::downgrade(&self.inner),
                keep,
                config.output_retention,
                every,
            ))
        });
        let metrics = rt.spawn(crate::upkeep::save_metrics(Arc::downgrade(&self.inner)));
        *state = Lifecycle::Started {
            driver,
            publisher,
            stop,
            retention,
            metrics,
        };
        Ok(())
    }

    /// Submits a task; returns once it is committed to the store.
    pub async fn submit(&self, task: Task) -> Result<TaskHandle, Error> {
        TaskHandle::submit(&self.inner, task).await
    }

    /// Submits a task and says whether it was created (`true`) or a live
    /// task with the same unique key was returned (`false`).
    pub async fn submit_unique(&self, task: Task) -> Result<(TaskHandle, bool), Error> {
        let r = self.inner.submit_detailed(vec![task], |_| None).await?;
        let (first, _) = *r.first().ok_or(Error::ShutDown)?;
        Ok((
            self.handle(first.id()),
            matches!(first, Submitted::Created(_)),
        ))
    }

    /// [`TaskSystem::submit_batch`], saying for each task whether it was
    /// created and the state the submit put it in (the same commit may
    /// already have offered it to a worker).
    pub async fn submit_detailed(
        &self,
        tasks: Vec<Task>,
    ) -> Result<Vec<(Submitted, State)>, Error> {
        self.inner.submit_detailed(tasks, |_| None).await
    }

    /// [`TaskSystem::submit_detailed`] for a front end that records the
    /// call in the audit log: `audit` makes the call's entry from what the
    /// submit did, and it is committed in the submit's own commit (its
    /// `at` set to the time of the command) — one commit before the
    /// answer, not the submit's and then the entry's. Nothing is recorded
    /// when the submit fails.
    pub async fn submit_audited(
        &self,
        tasks: Vec<Task>,
        audit: impl FnOnce(&[(Submitted, State)]) -> AuditRecord + Send,
    ) -> Result<Vec<(Submitted, State)>, Error> {
        self.inner
            .submit_detailed(tasks, |done| Some(audit(done)))
            .await
    }

    /// Submits tasks all or none, in one commit. Tasks may depend on
    /// earlier ones in the batch only through ids of existing tasks.
    pub async fn submit_batch(&self, tasks: Vec<Task>) -> Result<Vec<TaskHandle>, Error> {
        let ids = self.inner.submit(tasks).await?;
        Ok(ids
            .into_iter()
            .map(|id| TaskHandle::new(self.inner.clone(), id))
            .collect())
    }

    /// A handle on an existing task.
    pub fn handle(&self, id: TaskId) -> TaskHandle {
        TaskHandle::new(self.inner.clone(), id)
    }

    /// A task's record as the engine holds it now (from the store for old
    /// ones). It may show a change whose commit is still under way; for an
    /// answer that leaves the process, use [`TaskSystem::get_committed`].
    pub async fn get(&self, id: TaskId) -> Result<TaskRecord, Error> {
        self.inner.record(id).await
    }

    /// A task's record once everything it shows is committed: nothing in it
    /// can be taken back by a crash.
    pub async fn get_committed(&self, id: TaskId) -> Result<TaskRecord, Error> {
        let live = self.inner.read_committed(|e| e.get(id).cloned()).await?;
        match live {
            Some(rec) => Ok(rec),
            None => self.inner.stored(id).await,
        }
    }

    /// Cancels a task; returns once the cancel is committed (and only then
    /// tells a running task's executor to stop).
    pub async fn cancel(&self, id: TaskId) -> Result<CancelOutcome, Error> {
        self.inner.cancel(id).await
    }

    /// Cancels every live task with `tag`; returns how many, once that is
    /// committed.
    pub async fn cancel_tag(&self, tag: &str) -> Result<usize, Error> {
        self.inner.cancel_tag(tag).await
    }

    /// Every event, after it is committed. A subscriber that falls more than
    /// `event_capacity` behind misses the oldest (and is told it lagged).
    pub fn subscribe(&self) -> broadcast::Receiver<SharedEvent> {
        self.inner.publisher.subscribe()
    }

    /// Every schedule event (a schedule created, changed, deleted, or a
    /// fire recorded), after it is committed, with the seq of the last one
    /// published before the receiver was made. A subscriber that falls
    /// more than 1,024 behind misses the oldest (and is told it lagged).
    pub fn subscribe_schedules(&self) -> (broadcast::Receiver<taskgrid_api::ScheduleEvent>, u64) {
        self.inner.publisher.subscribe_schedules()
    }

    /// Depth by priority and running count of every queue.
    pub fn queue_stats(&self) -> Vec<QueueStats> {
        self.inner.lock().queue_stats()
    }

    /// [`TaskSystem::queue_stats`] once everything they count is committed.
    pub async fn queue_stats_committed(&self) -> Result<Vec<QueueStats>, Error> {
        self.inner.read_committed(Engine::queue_stats).await
    }

    /// Every limited concurrency key with tasks waiting or running (or a
    /// rate bucket still refilling): its limits, its tasks running, let
    /// through and held back, once everything they count is committed.
    pub async fn key_limits_committed(&self) -> Result<Vec<taskgrid_core::KeyLimitView>, Error> {
        let now = self.inner.clock.now();
        self.inner.read_committed(|e| e.key_limits(now)).await
    }

    /// Stops dispatching from `queue`; its tasks are kept and still
    /// accepted. Returns once the pause is committed: a restart keeps it.
    pub async fn pause_queue(&self, queue: &str) -> Result<(), Error> {
        self.inner.set_queue_paused(queue, true).await
    }

    /// Resumes dispatching from `queue`, once that is committed.
    pub async fn resume_queue(&self, queue: &str) -> Result<(), Error> {
        self.inner.set_queue_paused(queue, false).await
    }

    /// Why the system takes no work, if a commit failed (fail-stop: only a
    /// restart, which rebuilds the engine from the store, recovers).
    pub fn failure(&self) -> Option<String> {
        self.inner.fail_stop.failure()
    }

    /// Whether the system stopped because another coordinator took its
    /// store over (a PostgreSQL store's lease passed to a standby): this
    /// one may only stand by now.
    pub fn superseded(&self) -> bool {
        self.inner.fail_stop.superseded()
    }

    /// Resolves once a commit has failed (at once if one has).
    pub async fn failed(&self) -> String {
        self.inner.fail_stop.failed().await
    }

    /// Counters, rates, latency percentiles and throughput since start, in
    /// total and by queue, kind and worker.
    pub fn metrics(&self) -> MetricsSnapshot {
        // Copy under the lock; summarise (percentiles, merges) outside it.
        let metrics = self.inner.lock().metrics().clone();
        metrics.snapshot(self.inner.clock.now())
    }

    /// Tasks matching `query`, from the store.
    pub async fn list(&self, query: &TaskQuery) -> Result<Vec<TaskRecord>, Error> {
        let query = query.clone();
        self.inner.read_store(move |s| s.list(&query)).await
    }

    /// Subtasks spawned by `id`.
    pub async fn children(&self, id: TaskId) -> Result<Vec<TaskRecord>, Error> {
        let q = TaskQuery {
            parent: Some(id),
            limit: usize::MAX,
            ..TaskQuery::default()
        };
        self.list(&q).await
    }

    /// The attempts of a task.
    pub async fn attempts(&self, id: TaskId) -> Result<Vec<taskgrid_core::AttemptRecord>, Error> {
        self.inner.read_store(move |s| s.attempts(id)).await
    }

    /// The output and log lines of a task.
    pub async fn output(&self, id: TaskId) -> Result<Vec<taskgrid_core::OutputChunk>, Error> {
        let chunks = self
            .inner
            .read_store(move |s| s.output(id, 0, usize::MAX))
            .await?;
        Ok(chunks.into_iter().map(|(_, c)| c).collect())
    }

    /// Tasks per state, counted in the store.
    pub async fn counts(&self) -> Result<Vec<(State, u64)>, Error> {
        self.inner.read_store(|s| s.count_by_state()).await
    }

    /// Who leads the store and who stands by, where several coordinators
    /// share it (PostgreSQL); `None` for a store of this process alone.
    pub async fn cluster(&self) -> Result<Option<taskgrid_store::Cluster>, Error> {
        self.inner.read_store(|s| s.cluster()).await
    }

    /// Tasks that have not finished (pending, queued, running, retrying…).
    pub fn live_tasks(&self) -> usize {
        self.inner.lock().live_tasks()
    }

    /// Waits until no task is live and every change is committed. Tasks
    /// submitted meanwhile are waited for too.
    pub async fn wait_idle(&self) -> Result<(), Error> {
        loop {
            let done = self.inner.all_done.notified();
            if self.live_tasks() == 0 {
                break;
            }
            self.inner.wake.notify_one();
            done.await;
        }
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.flush())
            .await
            .map_err(|_| Error::ShutDown)??;
        Ok(())
    }

    /// Blocks until everything changed so far is committed.
    pub fn flush(&self) -> Result<(), Error> {
        Ok(self.inner.flush()?)
    }

    /// Stops gracefully: no new submits or dispatches; running handlers get
    /// `shutdown_grace` to finish, then the rest are stopped and their tasks
    /// go back to the queue (to run at the next start). Everything is
    /// committed before this returns. Idempotent.
    pub async fn shutdown(&self) -> Result<(), Error> {
        let inner = &self.inner;
        // A second caller waits here for the first to finish.
        let mut done = self.shut_down.lock().await;
        if *done {
            return Ok(());
        }
        inner.closed.store(true, Ordering::Release);
        inner.draining.store(true, Ordering::Release);
        let grace = tokio::time::sleep(inner.config.shutdown_grace);
        tokio::pin!(grace);
        tokio::select! {
            _ = self.local.until_idle() => {}
            _ = &mut grace => {}
        }
        let state = std::mem::replace(&mut *relock(&self.tasks), Lifecycle::Stopped);
        // A failed flush (the writer stopped) still lets the rest shut
        // down; its error is returned at the end.
        let mut flushed = Ok(());
        if let Lifecycle::Started {
            driver,
            publisher,
            stop,
            retention,
            metrics,
        } = state
        {
            if let Some(r) = retention {
                r.abort();
            }
            metrics.abort();
            let _ = stop.send(());
            let _ = driver.await;
            // Whatever still runs is handed back to the queue.
            self.local.abort_all();
            {
                let mut engine = inner.lock();
                let mut out = Outbox::default();
                engine.remove_worker(&inner.worker, inner.clock.now(), &mut out);
                // The metrics as they end: the next start counts on.
                out.changes.extend(crate::upkeep::metrics_change(&engine));
                inner.persist(&engine, out.changes, None);
            }
            let writer_done = {
                let inner = inner.clone();
                tokio::task::spawn_blocking(move || inner.flush())
            };
            flushed = match writer_done.await {
                Ok(r) => r.map_err(Error::from),
                Err(_) => Err(Error::ShutDown),
            };
            // Closing the committed channel ends the publisher once drained.
            inner.publisher_close();
            let _ = publisher.await;
        }
        inner.writer.shutdown();
        *done = true;
        flushed
    }
}

impl Drop for TaskSystem {
    /// Dropping a system without `shutdown` stops it hard: no new work, the
    /// loops and running handlers are aborted. Their tasks stay `running`
    /// in the store and are re-queued at the next start.
    fn drop(&mut self) {
        self.inner.closed.store(true, Ordering::Release);
        self.inner.draining.store(true, Ordering::Release);
        if let Lifecycle::Started {
            driver,
            publisher,
            retention,
            metrics,
            ..
        } = &*relock(&self.tasks)
        {
            driver.abort();
            publisher.abort();
            metrics.abort();
            if let Some(r) = retention {
                r.abort();
            }
        }
        self.local.abort_all();
    }
}
