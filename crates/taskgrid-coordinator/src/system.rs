//! [`TaskSystem`]: the embedded engine — a store, a local executor with
//! registered handlers, and the driver loop between them.
//!
//! One driver task owns the rhythm: it takes finished attempts, fires the
//! engine's timers, dispatches, and accepts every assignment for the local
//! executor, all under one engine lock; the resulting changes go to the
//! group-commit writer in order, and subscribers, waiters and hooks hear of
//! them only after they are committed.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use taskgrid_core::{
    CancelOutcome, Change, Engine, EngineConfig, MetricsSnapshot, Outbox, Progress, QueueStats,
    State, Stream, Submitted, TaskId, TaskKind, TaskRecord, WorkerId, WorkerInfo,
};
use taskgrid_store::{MemoryStore, SqliteOptions, SqliteStore, Store, TaskQuery, Writer};
use tokio::sync::{Notify, broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::clock::Clock;
use crate::event::{EventKind, TaskEvent};
use crate::executor::{Report, Running};
use crate::handler::{Handler, HandlerResult, TaskContext, handler_fn};
use crate::{Error, Task, TaskHandle, TaskResult};

/// Settings of a [`TaskSystem`]; `Default` works.
#[derive(Debug, Clone)]
pub struct SystemConfig {
    /// Handler calls run at once by the local executor.
    pub concurrency: u32,
    /// Engine limits and tuning.
    pub engine: EngineConfig,
    /// How long a cancelled handler may take to notice before it is dropped.
    pub cancel_grace: Duration,
    /// How long shutdown waits for running handlers before handing their
    /// tasks back to the queue.
    pub shutdown_grace: Duration,
    /// Events buffered per subscriber before a slow one starts missing them.
    pub event_capacity: usize,
    /// Queues the local executor serves; every queue when empty.
    pub queues: Vec<String>,
    /// Refuse handler tasks no local handler is registered for. Off in a
    /// coordinator, where remote workers bring their own handlers.
    pub check_handlers: bool,
    /// Recent events kept for subscribers that resume (SSE `Last-Event-ID`).
    pub replay_capacity: usize,
}

impl SystemConfig {
    /// Default concurrency: 8.
    pub const CONCURRENCY_DEFAULT: u32 = 8;
    /// Default cancel grace: 10 s.
    pub const CANCEL_GRACE_DEFAULT: Duration = Duration::from_secs(10);
    /// Default shutdown grace: 30 s.
    pub const SHUTDOWN_GRACE_DEFAULT: Duration = Duration::from_secs(30);
    /// Default event buffer: 4,096.
    pub const EVENT_CAPACITY_DEFAULT: usize = 4096;
    /// Default replay buffer: 10,000 events.
    pub const REPLAY_CAPACITY_DEFAULT: usize = 10_000;
}

impl Default for SystemConfig {
    fn default() -> Self {
        SystemConfig {
            concurrency: Self::CONCURRENCY_DEFAULT,
            engine: EngineConfig::default(),
            cancel_grace: Self::CANCEL_GRACE_DEFAULT,
            shutdown_grace: Self::SHUTDOWN_GRACE_DEFAULT,
            event_capacity: Self::EVENT_CAPACITY_DEFAULT,
            queues: Vec::new(),
            check_handlers: true,
            replay_capacity: Self::REPLAY_CAPACITY_DEFAULT,
        }
    }
}

/// Builds a [`TaskSystem`].
pub struct TaskSystemBuilder {
    config: SystemConfig,
    store: Option<Arc<dyn Store>>,
    sqlite: Option<(std::path::PathBuf, SqliteOptions)>,
    handlers: HashMap<Arc<str>, Arc<dyn Handler>>,
}

impl TaskSystemBuilder {
    /// Uses this store (default: in memory, lost at exit).
    pub fn store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }
    /// Uses a SQLite database file, created if missing.
    pub fn sqlite(mut self, path: impl AsRef<Path>, options: SqliteOptions) -> Self {
        self.sqlite = Some((path.as_ref().to_owned(), options));
        self
    }
    /// Handler calls run at once.
    pub fn concurrency(mut self, n: u32) -> Self {
        self.config.concurrency = n.max(1);
        self
    }
    /// Serves only these queues (default: every queue). Tasks for other
    /// queues are accepted and wait.
    pub fn queues<S: AsRef<str>>(mut self, queues: impl IntoIterator<Item = S>) -> Self {
        self.config.queues = queues.into_iter().map(|q| q.as_ref().to_owned()).collect();
        self
    }
    /// Limits a queue to `depth` waiting tasks.
    pub fn queue_limit(mut self, queue: &str, depth: usize) -> Self {
        self.config
            .engine
            .queue_limits
            .insert(queue.to_owned(), depth);
        self
    }
    /// Replaces the whole configuration.
    pub fn config(mut self, config: SystemConfig) -> Self {
        self.config = config;
        self
    }
    /// Registers an async closure as handler `name`.
    pub fn handler<F, Fut>(self, name: &str, f: F) -> Self
    where
        F: Fn(TaskContext) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = HandlerResult> + Send + 'static,
    {
        self.handler_impl(name, handler_fn(f))
    }
    /// Registers a [`Handler`] (with hooks) as `name`.
    pub fn handler_impl(mut self, name: &str, h: impl Handler) -> Self {
        self.handlers.insert(Arc::from(name), Arc::new(h));
        self
    }

    /// Opens the store and rebuilds the engine from it: tasks that were
    /// running when the last process died go back to their queue as a new
    /// attempt. Call [`TaskSystem::start`] to begin running them.
    pub fn build(self) -> Result<TaskSystem, Error> {
        let store: Arc<dyn Store> = match (self.store, self.sqlite) {
            (Some(s), _) => s,
            (None, Some((path, opts))) => Arc::new(SqliteStore::open(path, opts)?),
            (None, None) => Arc::new(MemoryStore::new()),
        };
        let clock = Clock::system();
        let now = clock.now();
        let mut engine = Engine::new(self.config.engine.clone());
        let records = store.load_active()?;
        let live: std::collections::HashSet<TaskId> = records.iter().map(|r| r.id).collect();
        for rec in &records {
            for dep in engine
                .unresolved_dependencies(&rec.spec.after)
                .collect::<Vec<_>>()
            {
                if !live.contains(&dep)
                    && let Some(d) = store.get(dep)?
                {
                    engine.note_finished(dep, d.status.state);
                }
            }
        }
        let mut out = Outbox::default();
        engine.restore(records, now, &mut out);
        let worker = WorkerId::new("local");
        let names: Vec<String> = self.handlers.keys().map(|k| k.to_string()).collect();
        if !names.is_empty() {
            let mut local = WorkerInfo::local("local", self.config.concurrency, names);
            local.queues = self.config.queues.clone();
            engine.register_worker(local, now);
        }

        let writer = Writer::try_spawn(store.clone())?;
        let (completions, completions_rx) = mpsc::unbounded_channel();
        let (committed, committed_rx) = mpsc::unbounded_channel();
        let (events, _) = broadcast::channel(self.config.event_capacity.max(1));
        let inner = Arc::new_cyclic(|me| Inner {
            me: me.clone(),
            engine: Mutex::new(engine),
            store,
            writer,
            handlers: self.handlers,
            events,
            waiters: Mutex::new(HashMap::new()),
            recent: Mutex::new((0, std::collections::VecDeque::new())),
            running: Mutex::new(HashMap::new()),
            links: Mutex::new(HashMap::new()),
            completions,
            committed,
            wake: Notify::new(),
            idle: Notify::new(),
            all_done: Notify::new(),
            clock,
            worker,
            config: self.config,
            draining: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            rt: std::sync::OnceLock::new(),
        });
        inner.persist(&inner.lock(), std::mem::take(&mut out.changes), None);
        Ok(TaskSystem {
            inner,
            tasks: Mutex::new(Lifecycle::Built {
                completions: completions_rx,
                committed: committed_rx,
            }),
            shut_down: tokio::sync::Mutex::new(false),
        })
    }
}

enum Lifecycle {
    Built {
        completions: mpsc::UnboundedReceiver<Report>,
        committed: mpsc::UnboundedReceiver<Vec<TaskEvent>>,
    },
    Started {
        driver: JoinHandle<()>,
        publisher: JoinHandle<()>,
        stop: oneshot::Sender<()>,
    },
    Stopped,
}

/// Waiters for a task's end, answered after the end is committed.
type Waiters = HashMap<TaskId, Vec<oneshot::Sender<TaskResult>>>;

/// State shared by the system, its handles, contexts and loops.
pub(crate) struct Inner {
    pub(crate) me: Weak<Inner>,
    engine: Mutex<Engine>,
    pub(crate) store: Arc<dyn Store>,
    writer: Writer,
    pub(crate) handlers: HashMap<Arc<str>, Arc<dyn Handler>>,
    pub(crate) events: broadcast::Sender<TaskEvent>,
    waiters: Mutex<Waiters>,
    /// The last events published, for resuming subscribers.
    pub(crate) recent: Mutex<(u64, std::collections::VecDeque<TaskEvent>)>,
    pub(crate) running: Mutex<HashMap<(TaskId, u32), Running>>,
    /// Streams of connected remote workers.
    pub(crate) links: Mutex<HashMap<WorkerId, crate::gateway::Link>>,
    pub(crate) completions: mpsc::UnboundedSender<Report>,
    committed: mpsc::UnboundedSender<Vec<TaskEvent>>,
    pub(crate) wake: Notify,
    pub(crate) idle: Notify,
    all_done: Notify,
    pub(crate) clock: Clock,
    pub(crate) worker: WorkerId,
    pub(crate) config: SystemConfig,
    draining: AtomicBool,
    closed: AtomicBool,
    /// A commit failed: the engine and the store disagree.
    pub(crate) failed: AtomicBool,
    /// The runtime the system was started on.
    rt: std::sync::OnceLock<tokio::runtime::Handle>,
}

pub(crate) fn relock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave these maps half-changed
    // (every change is one insert/remove), so carry on with the data.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Inner {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Engine> {
        relock(&self.engine)
    }
    pub(crate) fn running(&self) -> MutexGuard<'_, HashMap<(TaskId, u32), Running>> {
        relock(&self.running)
    }

    /// Sends changes to the writer (call with the engine locked, so the
    /// store sees them in engine order); their events are published after
    /// the commit, then `done` is told the result.
    pub(crate) fn persist(
        &self,
        engine: &Engine,
        changes: Vec<Change>,
        done: Option<oneshot::Sender<Result<(), Error>>>,
    ) {
        if changes.is_empty() {
            if let Some(d) = done {
                let _ = d.send(Ok(()));
            }
            return;
        }
        let events: Vec<TaskEvent> = changes
            .iter()
            .map(|c| {
                TaskEvent::from_change(c, self.clock.now(), || {
                    match engine.get(c.task_id()).map(|r| &r.spec.kind) {
                        Some(TaskKind::Handler { name, .. }) => Some(name.clone()),
                        _ => None,
                    }
                })
            })
            .collect();
        let committed = self.committed.clone();
        let me = self.me.clone();
        let callback = Box::new(move |res: Result<(), taskgrid_store::StoreError>| {
            match &res {
                Ok(()) => {
                    let _ = committed.send(events);
                }
                Err(e) => {
                    // The engine moved on but the store did not: from here
                    // they disagree. Fail-stop: refuse submits and dispatch
                    // nothing; a restart rebuilds the engine from the store.
                    tracing::error!(error = %e, "a commit failed; the task system stops taking work");
                    if let Some(inner) = me.upgrade() {
                        inner.failed.store(true, Ordering::Release);
                    }
                }
            }
            if let Some(d) = done {
                let _ = d.send(res.map_err(Error::from));
            }
        });
        if let Err(e) = self.writer.submit(changes, Some(callback)) {
            tracing::error!(error = %e, "store writer refused changes");
        }
    }

    /// Accepts tasks: validated, handed to the engine and committed before
    /// this returns their ids.
    pub(crate) async fn submit(&self, tasks: Vec<Task>) -> Result<Vec<TaskId>, Error> {
        Ok(self
            .submit_detailed(tasks)
            .await?
            .into_iter()
            .map(Submitted::id)
            .collect())
    }

    /// [`Inner::submit`], saying for each task whether it was created or an
    /// existing task with its unique key was returned.
    pub(crate) async fn submit_detailed(&self, tasks: Vec<Task>) -> Result<Vec<Submitted>, Error> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::ShutDown);
        }
        if self.failed.load(Ordering::Acquire) {
            return Err(Error::StoreFailed);
        }
        let now = self.clock.now();
        let mut items = Vec::with_capacity(tasks.len());
        for t in tasks {
            let spec = t.resolve(now)?;
            if self.config.check_handlers {
                self.check_runnable(&spec)?;
            }
            items.push((TaskId::from_bytes(*uuid::Uuid::now_v7().as_bytes()), spec));
        }
        self.resolve_dependencies(&items)?;
        let (tx, rx) = oneshot::channel();
        let results = {
            let mut engine = self.lock();
            let mut out = Outbox::default();
            let results = engine.submit_batch(items, now, &mut out)?;
            self.persist(&engine, out.changes, Some(tx));
            results
        };
        self.wake.notify_one();
        rx.await.map_err(|_| Error::ShutDown)??;
        Ok(results)
    }

    /// In an embedded system only the local executor runs tasks: refuse
    /// what it could never run instead of letting it wait forever.
    fn check_runnable(&self, spec: &taskgrid_core::TaskSpec) -> Result<(), Error> {
        let TaskKind::Handler { name, .. } = &spec.kind else {
            return Err(Error::NotRunnable(
                "the embedded system runs only handler tasks".into(),
            ));
        };
        if !self.handlers.contains_key(name) {
            return Err(Error::UnknownHandler(name.to_string()));
        }
        if !spec.labels.is_empty() {
            return Err(Error::NotRunnable(
                "the local executor has no labels".into(),
            ));
        }
        if spec.slots > self.config.concurrency {
            return Err(Error::NotRunnable(format!(
                "the task needs {} slots; the local executor has {}",
                spec.slots, self.config.concurrency
            )));
        }
        Ok(())
    }

    /// Tells the engine the end state of dependencies it has forgotten.
    fn resolve_dependencies(
        &self,
        items: &[(TaskId, taskgrid_core::TaskSpec)],
    ) -> Result<(), Error> {
        let missing: Vec<TaskId> = {
            let engine = self.lock();
            items
                .iter()
                .flat_map(|(_, s)| engine.unresolved_dependencies(&s.after).collect::<Vec<_>>())
                .filter(|d| items.iter().all(|(id, _)| id != d))
                .collect()
        };
        let mut found = Vec::new();
        for d in missing {
            if let Some(rec) = self.store.get(d)? {
                found.push((d, rec.status.state));
            }
        }
        let mut engine = self.lock();
        for (d, s) in found {
            engine.note_finished(d, s);
        }
        Ok(())
    }

    /// The task from the engine, or from the store if the engine forgot it.
    pub(crate) fn record(&self, id: TaskId) -> Result<TaskRecord, Error> {
        if let Some(r) = self.lock().get(id) {
            return Ok(r.clone());
        }
        self.store.get(id)?.ok_or(Error::NotFound(id))
    }

    pub(crate) async fn wait(&self, id: TaskId) -> Result<TaskResult, Error> {
        let (tx, rx) = oneshot::channel();
        relock(&self.waiters).entry(id).or_default().push(tx);
        // Registered first, then read what is committed: if the end is not
        // committed yet, the publisher will find the waiter.
        match self.store.get(id)? {
            Some(rec) if rec.status.state.is_terminal() => {
                self.drop_waiter(id, rx);
                return Ok(TaskResult::of(&rec));
            }
            Some(_) => {}
            None if self.lock().get(id).is_none() => {
                self.drop_waiter(id, rx);
                return Err(Error::NotFound(id));
            }
            None => {}
        }
        rx.await.map_err(|_| Error::ShutDown)
    }

    /// Removes one waiter (and only that one) that is no longer needed.
    fn drop_waiter(&self, id: TaskId, rx: oneshot::Receiver<TaskResult>) {
        drop(rx);
        let mut waiters = relock(&self.waiters);
        if let Some(ws) = waiters.get_mut(&id) {
            ws.retain(|w| !w.is_closed());
            if ws.is_empty() {
                waiters.remove(&id);
            }
        }
    }

    /// The runtime to spawn on: the one the system was started on.
    pub(crate) fn runtime(&self) -> tokio::runtime::Handle {
        match self.rt.get() {
            Some(h) => h.clone(),
            // Only a started system runs handlers: this is its runtime.
            None => tokio::runtime::Handle::current(),
        }
    }

    pub(crate) fn cancel(&self, id: TaskId) -> Result<CancelOutcome, Error> {
        let mut out = Outbox::default();
        let res = {
            let mut engine = self.lock();
            let res = engine.cancel(id, self.clock.now(), &mut out);
            self.persist(&engine, std::mem::take(&mut out.changes), None);
            res
        };
        self.handle_stops(out.stops);
        self.wake.notify_one();
        match res {
            Ok(r) => Ok(r),
            Err(taskgrid_core::CommandError::NotFound(_)) => match self.store.get(id)? {
                Some(rec) => Ok(CancelOutcome::AlreadyFinished(rec.status.state)),
                None => Err(Error::NotFound(id)),
            },
            Err(e) => Err(e.into()),
        }
    }

    pub(crate) fn cancel_tag(&self, tag: &str) -> usize {
        let mut out = Outbox::default();
        let n = {
            let mut engine = self.lock();
            let n = engine.cancel_tag(tag, self.clock.now(), &mut out);
            self.persist(&engine, std::mem::take(&mut out.changes), None);
            n
        };
        self.handle_stops(out.stops);
        self.wake.notify_one();
        n
    }

    /// Runs one engine command, persists what it changed and wakes the
    /// driver (the command may have freed slots or queued work).
    pub(crate) fn command<T, E: std::fmt::Display>(
        &self,
        f: impl FnOnce(&mut Engine, &mut Outbox) -> Result<T, E>,
    ) -> Result<(), String> {
        let mut out = Outbox::default();
        let r = {
            let mut engine = self.lock();
            let r = f(&mut engine, &mut out);
            self.persist(&engine, std::mem::take(&mut out.changes), None);
            r
        };
        self.handle_stops(out.stops);
        self.wake.notify_one();
        r.map(|_| ()).map_err(|e| e.to_string())
    }

    pub(crate) fn progress(&self, id: TaskId, attempt: u32, p: Progress) {
        let mut engine = self.lock();
        let mut out = Outbox::default();
        if engine.progress(id, attempt, p, &mut out).is_ok() {
            self.persist(&engine, out.changes, None);
        }
    }

    pub(crate) fn output(&self, id: TaskId, attempt: u32, stream: Stream, data: String) {
        let mut engine = self.lock();
        let mut out = Outbox::default();
        if engine.output(id, attempt, stream, data, &mut out).is_ok() {
            self.persist(&engine, out.changes, None);
        }
    }

    pub(crate) async fn checkpoint(
        &self,
        id: TaskId,
        attempt: u32,
        data: Box<str>,
    ) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        {
            let mut engine = self.lock();
            let mut out = Outbox::default();
            engine.checkpoint(id, attempt, data, &mut out)?;
            self.persist(&engine, out.changes, Some(tx));
        }
        rx.await.map_err(|_| Error::ShutDown)?
    }

    /// One turn of the driver: finished attempts, timers, dispatch.
    fn step(&self, completions: &mut Vec<Report>) {
        let now = self.clock.now();
        let mut out = Outbox::default();
        {
            let mut engine = self.lock();
            for r in completions.drain(..) {
                match r {
                    Report::Attempt(c) => {
                        if let Some(u) = c.usage {
                            engine.record_usage(c.id, c.attempt, u);
                        }
                        let _ = engine.report(&c.worker, c.id, c.attempt, c.outcome, now, &mut out);
                    }
                    Report::Left(w) => {
                        engine.remove_worker(&w, now, &mut out);
                    }
                }
            }
            engine.tick(now, &mut out);
            if !self.draining.load(Ordering::Acquire) && !self.failed.load(Ordering::Acquire) {
                engine.dispatch(now, &mut out);
                // The local executor accepts at once; remote workers answer.
                for i in 0..out.assignments.len() {
                    let a = &out.assignments[i];
                    if a.worker == self.worker {
                        let (id, attempt) = (a.id, a.attempt);
                        if engine
                            .accept(&self.worker, id, attempt, now, &mut out)
                            .is_ok()
                        {
                            crate::executor::prepare(self, id, attempt);
                        }
                    }
                }
            }
            self.persist(&engine, std::mem::take(&mut out.changes), None);
            if engine.live_tasks() == 0 {
                self.all_done.notify_waiters();
            }
        }
        self.handle_stops(out.stops);
        let mut remote: HashMap<WorkerId, Vec<taskgrid_proto::worker::Assignment>> = HashMap::new();
        for a in out.assignments {
            if a.worker == self.worker {
                crate::executor::start(self, a);
            } else {
                remote
                    .entry(a.worker.clone())
                    .or_default()
                    .push(taskgrid_proto::assignment_from_core(&a));
            }
        }
        for (worker, assignments) in remote {
            // A worker that vanished meanwhile keeps its offers until its
            // heartbeat times out, which re-queues them. Batches stay well
            // under the 4 MiB message limit whatever the payloads.
            for batch in crate::gateway::msg::batches(assignments) {
                self.send_to(&worker, batch);
            }
        }
    }

    fn next_wake(&self) -> Option<tokio::time::Instant> {
        self.lock().next_wake().map(|t| self.clock.instant_at(t))
    }

    /// Publishes committed events: to subscribers, waiters and hooks.
    fn publish(&self, mut events: Vec<TaskEvent>) {
        {
            let mut recent = relock(&self.recent);
            let cap = self.config.replay_capacity;
            for ev in &mut events {
                recent.0 += 1;
                ev.seq = recent.0;
                if cap > 0 {
                    if recent.1.len() == cap {
                        recent.1.pop_front();
                    }
                    recent.1.push_back(ev.clone());
                }
            }
        }
        for ev in events {
            if let EventKind::State {
                to,
                attempt,
                error,
                result,
                handler,
                ..
            } = &ev.kind
            {
                if to.is_terminal() {
                    let waiters = relock(&self.waiters).remove(&ev.id);
                    if let Some(ws) = waiters {
                        let r = TaskResult {
                            id: ev.id,
                            state: *to,
                            result: result.clone(),
                            error: error.clone(),
                            attempts: *attempt,
                        };
                        for w in ws {
                            let _ = w.send(r.clone());
                        }
                    }
                }
                if let Some(h) = handler.as_ref().and_then(|h| self.handlers.get(h)) {
                    run_hook(|| match (to, error) {
                        (State::Succeeded, _) => h.on_success(ev.id, result.as_deref()),
                        (State::Retrying, Some(e)) => h.on_retry(ev.id, *attempt, e),
                        (_, Some(e)) => h.on_failure(ev.id, e),
                        _ => {}
                    });
                }
            }
            if self.events.receiver_count() > 0 {
                let _ = self.events.send(ev);
            }
        }
    }
}

fn run_hook(f: impl FnOnce()) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err() {
        tracing::warn!("a handler hook panicked");
    }
}

/// An embedded task system. See the crate docs for an example.
pub struct TaskSystem {
    pub(crate) inner: Arc<Inner>,
    tasks: Mutex<Lifecycle>,
    shut_down: tokio::sync::Mutex<bool>,
}

impl TaskSystem {
    /// Starts building a system.
    pub fn builder() -> TaskSystemBuilder {
        TaskSystemBuilder {
            config: SystemConfig::default(),
            store: None,
            sqlite: None,
            handlers: HashMap::new(),
        }
    }

    /// Starts the driver and publisher loops on the current tokio runtime.
    /// Calling it again does nothing.
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
        let (stop, stop_rx) = oneshot::channel();
        let driver = rt.spawn(drive(self.inner.clone(), completions, stop_rx));
        let publisher = rt.spawn(publish(self.inner.clone(), committed));
        *state = Lifecycle::Started {
            driver,
            publisher,
            stop,
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
        let r = self.inner.submit_detailed(vec![task]).await?;
        let first = *r.first().ok_or(Error::ShutDown)?;
        Ok((
            self.handle(first.id()),
            matches!(first, Submitted::Created(_)),
        ))
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

    /// A task's record (from memory, or the store for old ones).
    pub fn get(&self, id: TaskId) -> Result<TaskRecord, Error> {
        self.inner.record(id)
    }

    /// Cancels a task.
    pub fn cancel(&self, id: TaskId) -> Result<CancelOutcome, Error> {
        self.inner.cancel(id)
    }

    /// Cancels every live task with `tag`; returns how many.
    pub fn cancel_tag(&self, tag: &str) -> usize {
        self.inner.cancel_tag(tag)
    }

    /// Every event, after it is committed. A subscriber that falls more than
    /// `event_capacity` behind misses the oldest (and is told it lagged).
    pub fn subscribe(&self) -> broadcast::Receiver<TaskEvent> {
        self.inner.events.subscribe()
    }

    /// Depth by priority and running count of every queue.
    pub fn queue_stats(&self) -> Vec<QueueStats> {
        self.inner.lock().queue_stats()
    }

    /// Stops dispatching from `queue`; its tasks are kept and still accepted.
    pub fn pause_queue(&self, queue: &str) {
        self.inner.lock().pause_queue(queue);
    }

    /// Resumes dispatching from `queue`.
    pub fn resume_queue(&self, queue: &str) {
        self.inner.lock().resume_queue(queue);
        self.inner.wake.notify_one();
    }

    /// Counters, rates, latency percentiles and throughput since start, in
    /// total and by queue, kind and worker.
    pub fn metrics(&self) -> MetricsSnapshot {
        // Copy under the lock; summarise (percentiles, merges) outside it.
        let metrics = self.inner.lock().metrics().clone();
        metrics.snapshot(self.inner.clock.now())
    }

    /// Tasks matching `query`, from the store.
    pub fn list(&self, query: &TaskQuery) -> Result<Vec<TaskRecord>, Error> {
        Ok(self.inner.store.list(query)?)
    }

    /// Subtasks spawned by `id`.
    pub fn children(&self, id: TaskId) -> Result<Vec<TaskRecord>, Error> {
        let q = TaskQuery {
            parent: Some(id),
            limit: usize::MAX,
            ..TaskQuery::default()
        };
        self.list(&q)
    }

    /// The attempts of a task.
    pub fn attempts(&self, id: TaskId) -> Result<Vec<taskgrid_core::AttemptRecord>, Error> {
        Ok(self.inner.store.attempts(id)?)
    }

    /// The output and log lines of a task.
    pub fn output(&self, id: TaskId) -> Result<Vec<taskgrid_core::OutputChunk>, Error> {
        Ok(self
            .inner
            .store
            .output(id, 0, usize::MAX)?
            .into_iter()
            .map(|(_, c)| c)
            .collect())
    }

    /// Tasks per state, counted in the store.
    pub fn counts(&self) -> Result<Vec<(State, u64)>, Error> {
        Ok(self.inner.store.count_by_state()?)
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
        tokio::task::spawn_blocking(move || inner.writer.flush())
            .await
            .map_err(|_| Error::ShutDown)??;
        Ok(())
    }

    /// Blocks until everything changed so far is committed.
    pub fn flush(&self) -> Result<(), Error> {
        Ok(self.inner.writer.flush()?)
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
        loop {
            let idle = inner.idle.notified();
            if inner.running().is_empty() {
                break;
            }
            tokio::select! {
                _ = idle => {}
                _ = &mut grace => break,
            }
        }
        let state = std::mem::replace(&mut *relock(&self.tasks), Lifecycle::Stopped);
        if let Lifecycle::Started {
            driver,
            publisher,
            stop,
        } = state
        {
            let _ = stop.send(());
            let _ = driver.await;
            // Whatever still runs is handed back to the queue.
            let abandoned: Vec<Running> = inner.running().drain().map(|(_, r)| r).collect();
            for r in &abandoned {
                r.abort();
            }
            {
                let mut engine = inner.lock();
                let mut out = Outbox::default();
                engine.remove_worker(&inner.worker, inner.clock.now(), &mut out);
                inner.persist(&engine, out.changes, None);
            }
            let writer_done = {
                let inner = inner.clone();
                tokio::task::spawn_blocking(move || inner.writer.flush())
            };
            writer_done.await.map_err(|_| Error::ShutDown)??;
            // Closing the committed channel ends the publisher once drained.
            inner.publisher_close();
            let _ = publisher.await;
        }
        inner.writer.shutdown();
        *done = true;
        Ok(())
    }
}

impl Inner {
    fn publisher_close(&self) {
        // The publisher stops on an empty Vec sent after everything else.
        let _ = self.committed.send(Vec::new());
    }

    pub(crate) fn handle_stops(&self, stops: Vec<taskgrid_core::StopAttempt>) {
        for s in stops {
            if s.worker == self.worker {
                crate::executor::stop(self, s);
            } else {
                let msg = crate::gateway::msg::cancel(&s);
                self.send_to(&s.worker.clone(), msg);
            }
        }
    }

    /// Sends a message on a remote worker's stream, if it is connected.
    pub(crate) fn send_to(
        &self,
        worker: &WorkerId,
        msg: taskgrid_proto::worker::CoordinatorMessage,
    ) {
        if let Some(link) = relock(&self.links).get(worker) {
            let _ = link.tx.send(Ok(msg));
        }
    }
}

async fn drive(
    inner: Arc<Inner>,
    mut completions: mpsc::UnboundedReceiver<Report>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut batch = Vec::with_capacity(1024);
    inner.step(&mut batch);
    loop {
        let wake_at = inner.next_wake();
        let sleep = async {
            match wake_at {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = &mut stop => break,
            n = completions.recv_many(&mut batch, 4096) => {
                if n == 0 { break; }
            }
            _ = inner.wake.notified() => {}
            _ = sleep => {}
        }
        inner.step(&mut batch);
    }
    // Record what finished while stopping.
    while let Ok(c) = completions.try_recv() {
        batch.push(c);
    }
    inner.step(&mut batch);
}

async fn publish(inner: Arc<Inner>, mut committed: mpsc::UnboundedReceiver<Vec<TaskEvent>>) {
    while let Some(events) = committed.recv().await {
        if events.is_empty() {
            break;
        }
        inner.publish(events);
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
            driver, publisher, ..
        } = &*relock(&self.tasks)
        {
            driver.abort();
            publisher.abort();
        }
        for (_, r) in self.inner.running().drain() {
            r.abort();
        }
    }
}

impl crate::ContextBackend for Inner {
    fn progress(&self, id: TaskId, attempt: u32, progress: Progress) {
        Inner::progress(self, id, attempt, progress);
    }
    fn output(&self, id: TaskId, attempt: u32, stream: Stream, data: String) {
        Inner::output(self, id, attempt, stream, data);
    }
    fn checkpoint(
        &self,
        id: TaskId,
        attempt: u32,
        data: Box<str>,
    ) -> crate::BoxFuture<Result<(), crate::TaskError>> {
        let me = self.me.upgrade();
        Box::pin(async move {
            let me = me.ok_or_else(|| crate::TaskError::failed("the task system is gone"))?;
            Ok(Inner::checkpoint(&me, id, attempt, data).await?)
        })
    }
    fn spawn(
        &self,
        parent: TaskId,
        mut spec: taskgrid_core::TaskSpec,
    ) -> crate::BoxFuture<Result<TaskId, crate::TaskError>> {
        let me = self.me.upgrade();
        spec.parent = Some(parent);
        Box::pin(async move {
            let me = me.ok_or_else(|| crate::TaskError::failed("the task system is gone"))?;
            let ids = me.submit(vec![Task::from_spec(spec)]).await?;
            ids.first()
                .copied()
                .ok_or_else(|| crate::TaskError::failed("no task was created"))
        })
    }
    fn now(&self) -> taskgrid_core::Timestamp {
        self.clock.now()
    }
}
