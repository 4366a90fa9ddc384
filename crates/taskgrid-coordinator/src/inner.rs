//! The state a [`TaskSystem`](crate::TaskSystem) shares with its handles,
//! contexts, gateway and loops ([`Inner`]), and the two loops that drive it:
//!
//! One driver task owns the rhythm: it takes finished attempts, fires the
//! engine's timers, dispatches, and accepts every assignment for the local
//! executor, all under one engine lock; the resulting changes go to the
//! group-commit writer in order, and subscribers, waiters and hooks hear of
//! them only after they are committed (the publisher loop).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use taskgrid_core::{
    CancelOutcome, Change, Engine, Outbox, Progress, State, Stream, Submitted, TaskId, TaskKind,
    TaskRecord, WorkerId,
};
use taskgrid_store::{LAZY_WINDOW, Store, Writer};
use tokio::sync::{Notify, broadcast, mpsc, oneshot};

use crate::builder::SystemConfig;
use crate::clock::Clock;
use crate::event::{EventKind, TaskEvent};
use crate::executor::{Report, Running};
use crate::handler::Handler;
use crate::{Error, Task, TaskResult};

/// Waiters for a task's end, answered after the end is committed.
type Waiters = HashMap<TaskId, Vec<oneshot::Sender<TaskResult>>>;

/// State shared by the system, its handles, contexts and loops.
pub(crate) struct Inner {
    pub(crate) me: Weak<Inner>,
    pub(crate) engine: Mutex<Engine>,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) writer: Writer,
    pub(crate) handlers: HashMap<Arc<str>, Arc<dyn Handler>>,
    pub(crate) events: broadcast::Sender<TaskEvent>,
    pub(crate) waiters: Mutex<Waiters>,
    /// The last events published, for resuming subscribers.
    pub(crate) recent: Mutex<(u64, std::collections::VecDeque<TaskEvent>)>,
    pub(crate) running: Mutex<HashMap<(TaskId, u32), Running>>,
    /// Streams of connected remote workers.
    pub(crate) links: Mutex<HashMap<WorkerId, crate::gateway::Link>>,
    pub(crate) completions: mpsc::UnboundedSender<Report>,
    pub(crate) committed: mpsc::UnboundedSender<Vec<TaskEvent>>,
    pub(crate) wake: Notify,
    pub(crate) idle: Notify,
    pub(crate) all_done: Notify,
    pub(crate) clock: Clock,
    pub(crate) worker: WorkerId,
    pub(crate) config: SystemConfig,
    pub(crate) draining: AtomicBool,
    pub(crate) closed: AtomicBool,
    /// A commit failed: the engine and the store disagree.
    pub(crate) failed: AtomicBool,
    /// The runtime the system was started on.
    pub(crate) rt: std::sync::OnceLock<tokio::runtime::Handle>,
}

/// How long the changes of a driver step (results, timeouts, dispatch) may
/// wait to share a commit while other attempts are still out (counted
/// before the step dispatches more). Results of short tasks arrive close
/// together, and each commit costs the store a WAL append (or an fsync);
/// this many milliseconds late, nobody notices. With nothing else out (one
/// task at a time, or one after another on one slot) the commit goes at
/// once.
const RESULT_WINDOW: Duration = Duration::from_millis(2);

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
        self.persist_within(engine, changes, done, Duration::ZERO);
    }

    /// Like [`persist`](Inner::persist), for changes nothing waits on and
    /// no guarantee rests on (a worker's accept, progress, output): the
    /// writer may hold them a few milliseconds so that they share the next
    /// commit instead of paying for their own.
    pub(crate) fn persist_lazily(&self, engine: &Engine, changes: Vec<Change>) {
        self.persist_within(engine, changes, None, LAZY_WINDOW);
    }

    /// Like [`persist`](Inner::persist), letting the commit wait up to
    /// `window` for company (see [`Writer::submit_within`]).
    fn persist_within(
        &self,
        engine: &Engine,
        changes: Vec<Change>,
        done: Option<oneshot::Sender<Result<(), Error>>>,
        window: Duration,
    ) {
        if changes.is_empty() {
            if let Some(d) = done {
                let _ = d.send(Ok(()));
            }
            return;
        }
        // One clock read per batch: the changes were decided at one instant.
        let now = self.clock.now();
        let events: Vec<TaskEvent> = changes
            .iter()
            .map(|c| {
                TaskEvent::from_change(c, now, || {
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
        if let Err(e) = self.writer.submit_within(changes, Some(callback), window) {
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

    /// Runs one engine command that only records what a worker said (an
    /// accept, progress, output): its changes are persisted lazily, and the
    /// driver is woken only if a timer now falls due sooner (an accept arms
    /// the attempt's timeout), since nothing it could dispatch has changed.
    pub(crate) fn note<T, E: std::fmt::Display>(
        &self,
        f: impl FnOnce(&mut Engine, &mut Outbox) -> Result<T, E>,
    ) -> Result<(), String> {
        let mut out = Outbox::default();
        let (r, sooner) = {
            let mut engine = self.lock();
            let before = engine.next_wake();
            let r = f(&mut engine, &mut out);
            let after = engine.next_wake();
            self.persist_lazily(&engine, std::mem::take(&mut out.changes));
            (r, after.is_some_and(|a| before.is_none_or(|b| a < b)))
        };
        self.handle_stops(out.stops);
        if sooner {
            self.wake.notify_one();
        }
        r.map(|_| ()).map_err(|e| e.to_string())
    }

    pub(crate) fn progress(&self, id: TaskId, attempt: u32, p: Progress) {
        let _ = self.note(|e, out| e.progress(id, attempt, p, out));
    }

    pub(crate) fn output(&self, id: TaskId, attempt: u32, stream: Stream, data: String) {
        let _ = self.note(|e, out| e.output(id, attempt, stream, data, out));
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
            // Attempts still out before this step hands out more: those will
            // report soon, and usually close together.
            let others_out = engine.attempts_out() > 0;
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
            // Let their results share one commit with these changes.
            let window = if others_out {
                RESULT_WINDOW
            } else {
                Duration::ZERO
            };
            self.persist_within(&engine, std::mem::take(&mut out.changes), None, window);
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

impl Inner {
    pub(crate) fn publisher_close(&self) {
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

pub(crate) async fn drive(
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

pub(crate) async fn publish(
    inner: Arc<Inner>,
    mut committed: mpsc::UnboundedReceiver<Vec<TaskEvent>>,
) {
    while let Some(events) = committed.recv().await {
        if events.is_empty() {
            break;
        }
        inner.publish(events);
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
