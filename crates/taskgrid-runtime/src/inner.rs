//! The state a [`TaskSystem`](crate::TaskSystem) shares with its handles,
//! contexts, worker service and loops ([`Inner`]), and the commit
//! discipline every change goes through ([`Inner::persist_then`]). The
//! loops are in `driver`; what is published after a commit, in
//! `publisher`; the local executor, in `executor`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use taskgrid_core::{
    Assignment, AuditRecord, CancelOutcome, Change, Engine, Outbox, Progress, State, StopAttempt,
    Stream, Submitted, TaskId, TaskKind, TaskRecord, WorkerId,
};
use taskgrid_store::{LAZY_WINDOW, Store, Writer};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::clock::Clock;
use crate::config::SystemConfig;
use crate::event::TaskEvent;
use crate::failstop::FailStop;
use crate::link::{Links, SessionRecord};
use crate::publisher::Publisher;
use crate::report::Report;
pub(crate) use crate::sync::relock;
use crate::{Error, Task, TaskResult};
use taskgrid_sdk::Handler;

/// Adds the audit entry `record`, stamped `now` (the time of its
/// command), to the changes `out` commits.
pub(crate) fn add_audit(out: &mut Outbox, mut record: AuditRecord, now: taskgrid_core::Timestamp) {
    record.at = now;
    out.changes.push(Change::Audit(Box::new(record)));
}

/// State shared by the system, its handles, contexts and loops.
pub(crate) struct Inner {
    pub(crate) me: Weak<Inner>,
    pub(crate) engine: Mutex<Engine>,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) writer: Writer,
    pub(crate) handlers: HashMap<Arc<str>, Arc<dyn Handler>>,
    /// Subscribers, waiters and hooks, told after each commit.
    pub(crate) publisher: Publisher,
    /// The current session of each remote worker (see `workers`).
    pub(crate) sessions: Mutex<HashMap<WorkerId, SessionRecord>>,
    /// How to reach each worker: the local executor, and the stream of
    /// each connected remote worker.
    pub(crate) links: Mutex<Links>,
    pub(crate) completions: mpsc::UnboundedSender<Report>,
    /// Committed batches' events and effects, for the publisher; `None`
    /// stops it.
    pub(crate) committed: mpsc::UnboundedSender<Option<Committed>>,
    pub(crate) wake: Notify,
    /// Tells the driver only to look again at when it must wake (gathered
    /// notes opened a window), not to take a step.
    pub(crate) rewake: Notify,
    pub(crate) all_done: Notify,
    /// What the retention sweeps have done so far.
    pub(crate) retention: tokio::sync::watch::Sender<crate::RetentionStats>,
    pub(crate) clock: Clock,
    pub(crate) worker: WorkerId,
    pub(crate) config: SystemConfig,
    pub(crate) draining: AtomicBool,
    pub(crate) closed: AtomicBool,
    /// Whether a commit failed (the engine and the store disagree).
    pub(crate) fail_stop: FailStop,
    /// Workers' notes not yet handed to the writer (see [`Inner::note`]).
    pub(crate) lazy: Mutex<Lazy>,
    /// Batches carrying offers handed to the writer and not yet committed
    /// (see [`OFFER_BATCHES`]).
    pub(crate) offer_batches: AtomicUsize,
    /// The runtime the system was started on.
    pub(crate) rt: std::sync::OnceLock<tokio::runtime::Handle>,
}

/// How many batches carrying offers may wait for their commit at once.
///
/// An offer leaves only once committed, so while the writer commits a
/// batch of offers the executors have nothing new from it to start: with
/// every free slot filled in one batch, the store and the executors take
/// turns, each idle while the other works. Dispatch therefore fills at
/// most half the slots per batch and waits while two batches are
/// uncommitted: one is committed while the executors run the other. A
/// commit wakes the driver to hand out what waited. (Measured: +6 % no-op
/// throughput, median of 6 and of 8 interleaved rounds; four batches of a
/// quarter gained nothing more. BENCHMARKS.md.)
pub(crate) const OFFER_BATCHES: usize = 2;

/// Counts a batch of offers out until its commit's callback has run (or
/// was dropped unrun: a closed writer), then wakes the driver.
struct OfferBatch(Weak<Inner>);

impl Drop for OfferBatch {
    fn drop(&mut self) {
        if let Some(inner) = self.0.upgrade() {
            inner.offer_batches.fetch_sub(1, Ordering::AcqRel);
            inner.wake.notify_one();
        }
    }
}

/// What workers said that only needs recording (accepts, progress,
/// output), gathered under the engine lock until the next batch goes to
/// the writer, or for [`LAZY_WINDOW`] at most: one batch for many notes,
/// not one each.
#[derive(Default)]
pub(crate) struct Lazy {
    changes: Vec<Change>,
    events: Vec<TaskEvent>,
    /// When they must go at the latest (the driver sends them then).
    due: Option<tokio::time::Instant>,
}

/// What a committed batch releases, carried out by the publisher task (off
/// the writer thread, in commit order).
pub(crate) struct Committed {
    pub(crate) events: Vec<TaskEvent>,
    /// What happened to schedules in the batch (their own stream).
    pub(crate) schedules: Vec<taskgrid_api::ScheduleEvent>,
    pub(crate) effects: Effects,
}

/// Work run by the publisher once a batch is committed.
pub(crate) type AfterCommit = Box<dyn FnOnce(&Inner) + Send>;

/// What may leave the coordinator only once the batch it comes with is
/// committed (see [`Inner::persist_then`]).
#[derive(Default)]
pub(crate) struct Effects {
    /// Offers to hand to executors.
    pub(crate) assignments: Vec<Assignment>,
    /// Attempts executors must stop.
    pub(crate) stops: Vec<StopAttempt>,
    /// Anything else, run once the batch is committed, in commit order.
    pub(crate) then: Option<AfterCommit>,
}

impl Effects {
    /// Stops only.
    pub(crate) fn stops(stops: Vec<StopAttempt>) -> Self {
        Effects {
            stops,
            ..Effects::default()
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.assignments.is_empty() && self.stops.is_empty() && self.then.is_none()
    }
}

/// The most attempts out (assigned or running) at which a caller commits
/// its own small batch ([`Writer::submit_then_help`]).
const HELP_ATTEMPTS_OUT: usize = 4;

/// The engine, locked ([`Inner::lock`]). Once the lock is let go, this
/// thread commits what it left to the writer while holding it
/// ([`Writer::help`]): a commit made at light load costs no thread switch,
/// and never holds the engine.
pub(crate) struct EngineGuard<'a> {
    // Fields drop in order: the lock goes first, then the help.
    engine: MutexGuard<'a, Engine>,
    _help: HelpWriter<'a>,
}

/// Helps the writer as it drops (the second half of [`EngineGuard`]).
struct HelpWriter<'a>(&'a Writer);

impl Drop for HelpWriter<'_> {
    fn drop(&mut self) {
        self.0.help();
    }
}

impl std::ops::Deref for EngineGuard<'_> {
    type Target = Engine;

    fn deref(&self) -> &Engine {
        &self.engine
    }
}

impl std::ops::DerefMut for EngineGuard<'_> {
    fn deref_mut(&mut self) -> &mut Engine {
        &mut self.engine
    }
}

impl Inner {
    pub(crate) fn lock(&self) -> EngineGuard<'_> {
        EngineGuard {
            engine: relock(&self.engine),
            _help: HelpWriter(&self.writer),
        }
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
        self.persist_then(engine, changes, Duration::ZERO, Effects::default(), done);
    }

    /// The one place where the commit discipline (docs/engine.md) is kept:
    /// `changes` go to the writer (call with the engine locked, so the
    /// store sees them in engine order), and only once they are committed
    /// are their events published, `effects` carried out (assignments and
    /// stops sent to executors) and `done` told. A failed commit publishes
    /// and sends nothing, answers `done` with [`Error::StoreFailed`], and
    /// stops the system taking work.
    ///
    /// With no changes but something to answer or send, the empty batch is
    /// a barrier: it is committed after everything submitted before it, so
    /// whatever the caller read from the engine is durable by then.
    ///
    /// The commit may wait up to `window` for company (see
    /// [`Writer::submit_within`]).
    pub(crate) fn persist_then(
        &self,
        engine: &Engine,
        changes: Vec<Change>,
        window: Duration,
        effects: Effects,
        done: Option<oneshot::Sender<Result<(), Error>>>,
    ) {
        // The notes gathered so far go first: they were made before these.
        let lazy = std::mem::take(&mut *relock(&self.lazy));
        if changes.is_empty() && lazy.changes.is_empty() && effects.is_empty() && done.is_none() {
            return;
        }
        if self.fail_stop.is_failed() {
            // The fail-stop writer takes nothing more: say why.
            self.abandon(effects);
            if let Some(d) = done {
                let _ = d.send(Err(Error::StoreFailed));
            }
            return;
        }
        let mut events = lazy.events;
        events.extend(self.events_of(engine, &changes));
        let changes = if lazy.changes.is_empty() {
            changes
        } else {
            let mut all = lazy.changes;
            all.extend(changes);
            all
        };
        let schedules = crate::event::schedule_events(&changes, self.clock.now());
        let committed = self.committed.clone();
        let me = self.me.clone();
        let offers = (!effects.assignments.is_empty()).then(|| {
            self.offer_batches.fetch_add(1, Ordering::AcqRel);
            OfferBatch(self.me.clone())
        });
        // On the writer thread (or this thread, helping it as the engine
        // guard drops): keep it short. Sending and publishing are the
        // publisher task's work, in the same (commit) order.
        let callback = Box::new(move |res: Result<(), taskgrid_store::StoreError>| {
            // Counted out until here (or until the callback is dropped).
            let _offers = offers;
            match res {
                Ok(()) => {
                    if !events.is_empty() || !effects.is_empty() || !schedules.is_empty() {
                        let _ = committed.send(Some(Committed {
                            events,
                            schedules,
                            effects,
                        }));
                    }
                    if let Some(d) = done {
                        let _ = d.send(Ok(()));
                    }
                }
                Err(e) => {
                    // The engine moved on but the store did not: from here
                    // they disagree. Fail-stop: refuse work and send nothing;
                    // a restart rebuilds the engine from the store.
                    tracing::error!(error = %e, "a commit failed; the task system stops taking work");
                    if let Some(inner) = me.upgrade() {
                        inner.fail(&e);
                        inner.abandon(effects);
                    }
                    if let Some(d) = done {
                        let _ = d.send(Err(Error::StoreFailed));
                    }
                }
            }
        });
        // With the engine locked, a commit due now is left for this thread
        // to make once it lets go of the lock (see `EngineGuard`), while
        // few attempts are out: with more, results and submits come close
        // together and the writer thread's groups are larger.
        let submitted = if window.is_zero() && engine.attempts_out() <= HELP_ATTEMPTS_OUT {
            self.writer.submit_then_help(changes, Some(callback))
        } else {
            self.writer.submit_within(changes, Some(callback), window)
        };
        if let Err(e) = submitted {
            tracing::error!(error = %e, "store writer refused changes");
        }
    }

    /// The events `changes` make.
    fn events_of(&self, engine: &Engine, changes: &[Change]) -> Vec<TaskEvent> {
        if changes.is_empty() {
            return Vec::new();
        }
        // One clock read per batch: the changes were decided at one instant.
        let now = self.clock.now();
        changes
            .iter()
            .filter_map(|c| {
                TaskEvent::from_change(c, now, || {
                    match c
                        .task_id()
                        .and_then(|id| engine.get(id))
                        .map(|r| &r.spec.kind)
                    {
                        Some(TaskKind::Handler { name, .. }) => Some(name.clone()),
                        _ => None,
                    }
                })
            })
            .collect()
    }

    /// Gathers a note's changes for the next batch (see [`Lazy`]); call
    /// with the engine locked. Returns whether they opened a new window,
    /// which the driver must be woken to close in time.
    fn defer(&self, engine: &Engine, changes: Vec<Change>) -> bool {
        if changes.is_empty() {
            return false;
        }
        let events = self.events_of(engine, &changes);
        let mut lazy = relock(&self.lazy);
        lazy.changes.extend(changes);
        lazy.events.extend(events);
        if lazy.due.is_some() {
            return false;
        }
        lazy.due = Some(tokio::time::Instant::now() + LAZY_WINDOW);
        true
    }

    /// When the gathered notes must go to the writer, if there are any.
    pub(crate) fn lazy_due(&self) -> Option<tokio::time::Instant> {
        relock(&self.lazy).due
    }

    /// Blocks until every change made so far, gathered notes included, is
    /// committed. After a failed commit, says that commit's error (the
    /// writer stopped on it, and itself only knows it is closed).
    pub(crate) fn flush(&self) -> Result<(), taskgrid_store::StoreError> {
        self.persist(&self.lock(), Vec::new(), None);
        self.writer.flush().map_err(|e| self.fail_stop.explain(e))
    }

    /// Marks the system failed (fail-stop), keeping the first reason.
    fn fail(&self, e: &taskgrid_store::StoreError) {
        self.fail_stop.fail(e);
        self.wake.notify_one();
    }

    /// Drops what a failed commit would have released: the local
    /// executor's prepared attempts are forgotten (never started), so
    /// nothing waits for them.
    fn abandon(&self, effects: Effects) {
        let groups = relock(&self.links).group(effects.assignments, |a| &a.worker);
        for (link, assignments) in groups {
            link.abandon(&assignments);
        }
    }

    /// Refuses work once a commit has failed, or after shutdown.
    fn check_open(&self) -> Result<(), Error> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::ShutDown);
        }
        if self.fail_stop.is_failed() {
            return Err(Error::StoreFailed);
        }
        Ok(())
    }

    /// Reads the engine, then waits until everything the read may reflect
    /// is committed: no answer shows a change a crash could take back.
    pub(crate) async fn read_committed<T>(
        &self,
        read: impl FnOnce(&Engine) -> T,
    ) -> Result<T, Error> {
        let (tx, rx) = oneshot::channel();
        let value = {
            let engine = self.lock();
            let value = read(&engine);
            self.persist_then(
                &engine,
                Vec::new(),
                Duration::ZERO,
                Effects::default(),
                Some(tx),
            );
            value
        };
        rx.await.map_err(|_| Error::ShutDown)??;
        if self.fail_stop.is_failed() {
            // The engine may hold changes whose commit failed.
            return Err(Error::StoreFailed);
        }
        Ok(value)
    }

    /// Carries out what a commit released (on the publisher task): stops,
    /// then assignments, each through its worker's link, then the rest.
    pub(crate) fn carry_out(&self, effects: Effects) {
        let Effects {
            assignments,
            stops,
            then,
        } = effects;
        if !stops.is_empty() || !assignments.is_empty() {
            let (stops, offers) = {
                let links = relock(&self.links);
                (
                    links.group(stops, |s| &s.worker),
                    links.group(assignments, |a| &a.worker),
                )
            };
            for (link, stops) in stops {
                for s in stops {
                    link.stop(s);
                }
            }
            for (link, assignments) in offers {
                link.offer(assignments);
            }
        }
        if let Some(then) = then {
            then(self);
        }
    }

    /// Accepts tasks: validated, handed to the engine and committed before
    /// this returns their ids.
    pub(crate) async fn submit(&self, tasks: Vec<Task>) -> Result<Vec<TaskId>, Error> {
        Ok(self
            .submit_detailed(tasks, |_| None)
            .await?
            .into_iter()
            .map(|(s, _)| s.id())
            .collect())
    }

    /// [`Inner::submit`], saying for each task whether it was created or an
    /// existing task with its unique key was returned, and the state the
    /// submit put it in (the same commit may already have offered it to a
    /// worker). The call's audit entry, if `audit` makes one from what the
    /// submit did, is committed in the submit's own commit, stamped with
    /// the time of its command.
    pub(crate) async fn submit_detailed(
        &self,
        tasks: Vec<Task>,
        audit: impl FnOnce(&[(Submitted, State)]) -> Option<AuditRecord> + Send,
    ) -> Result<Vec<(Submitted, State)>, Error> {
        self.check_open()?;
        let now = self.clock.now();
        let mut items = Vec::with_capacity(tasks.len());
        for t in tasks {
            let spec = t.resolve(now)?;
            if self.config.check_handlers {
                self.check_runnable(&spec)?;
            }
            items.push((TaskId::from_bytes(*uuid::Uuid::now_v7().as_bytes()), spec));
        }
        self.resolve_references(&items).await?;
        let (tx, rx) = oneshot::channel();
        let results = {
            let mut engine = self.lock();
            let mut out = Outbox::default();
            let results = engine.submit_batch(items, now, &mut out)?;
            // Read before the driver can move them on: what the batch
            // below commits (or, for an existing task, what was submitted
            // before it).
            let results: Vec<(Submitted, State)> = results
                .into_iter()
                .map(|r| {
                    let state = engine
                        .get(r.id())
                        .map_or(State::Queued, |rec| rec.status.state);
                    (r, state)
                })
                .collect();
            if let Some(record) = audit(&results) {
                add_audit(&mut out, record, now);
            }
            // Offer the new tasks now, in the same commit: one commit, not
            // two in a row, between a submit and the worker hearing of it.
            self.dispatch_into(&mut engine, now, &mut out);
            let effects = Effects {
                assignments: out.assignments,
                stops: out.stops,
                then: None,
            };
            self.persist_then(&engine, out.changes, Duration::ZERO, effects, Some(tx));
            results
        };
        self.wake.notify_one();
        rx.await.map_err(|_| Error::ShutDown)??;
        Ok(results)
    }

    /// A schedule's template, checked as a submit would check its task.
    pub(crate) fn check_runnable_template(
        &self,
        spec: &taskgrid_core::TaskSpec,
    ) -> Result<(), Error> {
        if self.config.check_handlers {
            self.check_runnable(spec)?;
        }
        Ok(())
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

    /// The one door through which async code reads the store: the call runs
    /// on tokio's blocking pool, never on an async worker thread. A store
    /// call is blocking IO (a SQLite page read, or a round trip to a
    /// network database) and would stall every task sharing that thread.
    /// Writes go through the [`Writer`]'s own thread.
    pub(crate) async fn read_store<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store) -> Result<T, taskgrid_store::StoreError> + Send + 'static,
    ) -> Result<T, Error> {
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || f(&*store)).await {
            Ok(r) => Ok(r?),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(Error::ShutDown),
        }
    }

    /// Tells the engine the end state of dependencies it has forgotten, and
    /// refuses a parent that names no task.
    async fn resolve_references(
        &self,
        items: &[(TaskId, taskgrid_core::TaskSpec)],
    ) -> Result<(), Error> {
        let (missing, parents): (Vec<TaskId>, Vec<TaskId>) = {
            let engine = self.lock();
            let missing = items
                .iter()
                .flat_map(|(_, s)| engine.unresolved_dependencies(&s.after).collect::<Vec<_>>())
                .filter(|d| items.iter().all(|(id, _)| id != d))
                .collect();
            let parents = items
                .iter()
                .filter_map(|(_, s)| s.parent)
                .filter(|p| engine.get(*p).is_none())
                .collect();
            (missing, parents)
        };
        if parents.is_empty() && missing.is_empty() {
            return Ok(());
        }
        let (unknown_parent, found) = self
            .read_store(move |store| {
                for p in parents {
                    if store.get(p)?.is_none() {
                        return Ok((Some(p), Vec::new()));
                    }
                }
                let mut found = Vec::new();
                for d in missing {
                    if let Some(rec) = store.get(d)? {
                        found.push((d, rec.status.state));
                    }
                }
                Ok((None, found))
            })
            .await?;
        if let Some(p) = unknown_parent {
            return Err(Error::UnknownParent(p));
        }
        let mut engine = self.lock();
        for (d, s) in found {
            engine.note_finished(d, s);
        }
        Ok(())
    }

    /// The task from the engine, or from the store if the engine forgot it.
    pub(crate) async fn record(&self, id: TaskId) -> Result<TaskRecord, Error> {
        let live = self.lock().get(id).cloned();
        match live {
            Some(r) => Ok(r),
            None => self.stored(id).await,
        }
    }

    /// The task as the store holds it.
    pub(crate) async fn stored(&self, id: TaskId) -> Result<TaskRecord, Error> {
        self.read_store(move |s| s.get(id))
            .await?
            .ok_or(Error::NotFound(id))
    }

    pub(crate) async fn wait(&self, id: TaskId) -> Result<TaskResult, Error> {
        let rx = self.publisher.waiter(id);
        // Registered first, then read what is committed: if the end is not
        // committed yet, the publisher will find the waiter.
        match self.read_store(move |s| s.get(id)).await? {
            Some(rec) if rec.status.state.is_terminal() => {
                self.publisher.drop_waiter(id, rx);
                return Ok(TaskResult::of(&rec));
            }
            Some(_) => {}
            None if self.lock().get(id).is_none() => {
                self.publisher.drop_waiter(id, rx);
                return Err(Error::NotFound(id));
            }
            None => {}
        }
        rx.await.map_err(|_| Error::ShutDown)
    }

    /// The runtime to spawn on: the one the system was started on.
    pub(crate) fn runtime(&self) -> tokio::runtime::Handle {
        match self.rt.get() {
            Some(h) => h.clone(),
            // Only a started system runs handlers: this is its runtime.
            None => tokio::runtime::Handle::current(),
        }
    }

    /// Runs one engine command for a client and answers with its result
    /// once what it changed (or, with no change, what it read) is
    /// committed; only then are the attempts it stops told.
    pub(crate) async fn committed_command<T>(
        &self,
        f: impl FnOnce(&mut Engine, taskgrid_core::Timestamp, &mut Outbox) -> T,
    ) -> Result<T, Error> {
        self.check_open()?;
        let (tx, rx) = oneshot::channel();
        let r = {
            let mut engine = self.lock();
            let mut out = Outbox::default();
            let r = f(&mut engine, self.clock.now(), &mut out);
            let effects = Effects::stops(out.stops);
            self.persist_then(&engine, out.changes, Duration::ZERO, effects, Some(tx));
            r
        };
        self.wake.notify_one();
        rx.await.map_err(|_| Error::ShutDown)??;
        Ok(r)
    }

    /// Cancels a task; answers once the cancel (or the end it found) is
    /// committed, and only then tells the executor to stop.
    pub(crate) async fn cancel(&self, id: TaskId) -> Result<CancelOutcome, Error> {
        match self
            .committed_command(|e, now, out| e.cancel(id, now, out))
            .await?
        {
            Ok(r) => Ok(r),
            Err(taskgrid_core::CommandError::NotFound(_)) => Ok(CancelOutcome::AlreadyFinished(
                self.stored(id).await?.status.state,
            )),
            Err(e) => Err(e.into()),
        }
    }

    /// Cancels every live task with `tag`; answers once that is committed.
    pub(crate) async fn cancel_tag(&self, tag: &str) -> Result<usize, Error> {
        self.committed_command(|e, now, out| e.cancel_tag(tag, now, out))
            .await
    }

    /// Pauses or resumes dispatch from a queue; answers once that is
    /// committed (a restart keeps it).
    pub(crate) async fn set_queue_paused(&self, queue: &str, paused: bool) -> Result<(), Error> {
        self.committed_command(|e, _, out| e.set_queue_paused(queue, paused, out))
            .await
    }

    /// Runs one engine command for a worker, persists what it changed and
    /// wakes the driver (the command may have freed slots or queued work).
    pub(crate) fn command<T, E>(
        &self,
        f: impl FnOnce(&mut Engine, &mut Outbox) -> Result<T, E>,
    ) -> Result<(), E> {
        let mut out = Outbox::default();
        let r = {
            let mut engine = self.lock();
            let r = f(&mut engine, &mut out);
            self.persist_then(
                &engine,
                out.changes,
                Duration::ZERO,
                Effects::stops(out.stops),
                None,
            );
            r
        };
        self.wake.notify_one();
        r.map(|_| ())
    }

    /// Runs one engine command that only records what a worker said (an
    /// accept, progress, output): its changes are gathered for the next
    /// batch (see [`Lazy`]), and the driver is woken only if it must send
    /// them or a timer now falls due sooner (an accept arms the attempt's
    /// timeout), since nothing it could dispatch has changed.
    pub(crate) fn note<T>(&self, f: impl FnOnce(&mut Engine, &mut Outbox) -> T) -> T {
        let mut out = Outbox::default();
        let (r, sooner) = {
            let mut engine = self.lock();
            let before = engine.next_wake();
            let r = f(&mut engine, &mut out);
            let after = engine.next_wake();
            // While shutting down the driver may be gone: straight to the
            // writer (which refuses once closed), as is a note with stops.
            let opened = if out.stops.is_empty() && !self.closed.load(Ordering::Acquire) {
                self.defer(&engine, out.changes)
            } else {
                // Stops leave only after the commit: a batch of their own.
                self.persist_then(
                    &engine,
                    out.changes,
                    LAZY_WINDOW,
                    Effects::stops(out.stops),
                    None,
                );
                false
            };
            if opened {
                self.rewake.notify_one();
            }
            (r, after.is_some_and(|a| before.is_none_or(|b| a < b)))
        };
        if sooner {
            self.wake.notify_one();
        }
        r
    }

    pub(crate) fn progress(&self, worker: &WorkerId, id: TaskId, attempt: u32, p: Progress) {
        let _ = self.note(|e, out| e.progress(worker, id, attempt, p, out));
    }

    pub(crate) fn output(
        &self,
        worker: &WorkerId,
        id: TaskId,
        attempt: u32,
        stream: Stream,
        data: String,
    ) {
        let _ = self.note(|e, out| e.output(worker, id, attempt, stream, data, out));
    }

    /// Saves a checkpoint of `worker`'s attempt; answers once committed.
    pub(crate) async fn checkpoint(
        &self,
        worker: &WorkerId,
        id: TaskId,
        attempt: u32,
        data: Box<str>,
    ) -> Result<(), Error> {
        self.check_open()?;
        let (tx, rx) = oneshot::channel();
        {
            let mut engine = self.lock();
            let mut out = Outbox::default();
            engine.checkpoint(worker, id, attempt, data, &mut out)?;
            self.persist(&engine, out.changes, Some(tx));
        }
        rx.await.map_err(|_| Error::ShutDown)?
    }

    /// Offers what can run now to the workers (unless draining or failed);
    /// the local executor accepts its offers at once, remote workers answer.
    pub(crate) fn dispatch_into(
        &self,
        engine: &mut Engine,
        now: taskgrid_core::Timestamp,
        out: &mut Outbox,
    ) {
        if self.draining.load(Ordering::Acquire) || self.fail_stop.is_failed() {
            return;
        }
        if self.offer_batches.load(Ordering::Acquire) >= OFFER_BATCHES {
            // A commit wakes the driver to dispatch.
            return;
        }
        let first = out.assignments.len();
        // Half the slots per batch (see `OFFER_BATCHES`), at least one.
        let slots = engine
            .free_slots()
            .saturating_add(u64::try_from(engine.attempts_out()).unwrap_or(u64::MAX));
        let limit = usize::try_from(slots.div_ceil(OFFER_BATCHES as u64))
            .unwrap_or(usize::MAX)
            .max(1);
        // There may be more to hand out, in a batch of its own: wake the
        // driver for it now if that batch may go before this one is
        // committed (this one's commit wakes it anyway).
        if engine.dispatch_up_to(now, out, limit) == limit
            && self.offer_batches.load(Ordering::Acquire) + 1 < OFFER_BATCHES
        {
            self.wake.notify_one();
        }
        if out.assignments.len() == first {
            return;
        }
        // Lock order: engine, then links, then the local executor's table.
        let links = relock(&self.links);
        for i in first..out.assignments.len() {
            let (worker, id, attempt) = {
                let a = &out.assignments[i];
                (a.worker.clone(), a.id, a.attempt)
            };
            if let Some(link) = links.get(&worker)
                && link.accepts_at_once()
                && engine.accept(&worker, id, attempt, now, out).is_ok()
            {
                link.accepted(id, attempt);
            }
        }
    }
}

impl Inner {
    pub(crate) fn publisher_close(&self) {
        // The publisher stops on `None`, sent after everything else.
        let _ = self.committed.send(None);
    }
}

impl crate::ContextBackend for Inner {
    fn progress(&self, id: TaskId, attempt: u32, progress: Progress) {
        Inner::progress(self, &self.worker, id, attempt, progress);
    }
    fn output(&self, id: TaskId, attempt: u32, stream: Stream, data: String) {
        Inner::output(self, &self.worker, id, attempt, stream, data);
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
            Ok(Inner::checkpoint(&me, &me.worker, id, attempt, data).await?)
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
