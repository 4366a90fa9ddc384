//! [`Writer`]: group commit. One background thread owns writing to a
//! [`Store`] (a caller may stand in for it at light load, below); callers
//! hand it batches of changes without blocking, and it commits everything that queued up while the previous commit ran in one
//! transaction — so the cost of a commit (an fsync, with
//! [`Durability::PowerLoss`](crate::Durability::PowerLoss)) is shared by every
//! batch in it.
//!
//! A batch may also be given a *window* ([`Writer::submit_within`]): a
//! commit starts at once if anything in it was submitted without one, and
//! otherwise when the earliest window of its batches ends, taking whatever
//! arrived meanwhile. So changes that may wait (one of several results
//! expected close together; [`Writer::submit_lazy`], up to [`LAZY_WINDOW`])
//! ride in a shared commit instead of paying for one of their own. (The
//! runtime goes further with a worker's accepts, progress and output: it
//! gathers them itself and hands them over at the head of its next batch,
//! or alone once [`LAZY_WINDOW`] has passed.)
//!
//! A caller about to let go of the lock that orders its submissions may
//! commit itself instead of waking the thread ([`Writer::submit_then_help`],
//! then [`Writer::help`]): where the thread sleeps with nothing queued, the
//! batch waits for the caller's `help`, which commits it — and whatever
//! queued meanwhile — on the caller's thread. At light load that spares
//! each commit two thread switches, the way to the writer and back.
//!
//! Batches are committed in submission order (a store with several lanes
//! writes groups of other tasks beside the one committing, see `lanes`).
//! Each batch's `done` callback is called once its changes are committed
//! (or have failed), in submission order, on the writer's thread, one of
//! its lanes or a helping caller's thread: keep callbacks short (send on a channel, wake a task) and
//! never call [`Writer::flush`] from one.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use taskgrid_core::Change;

use crate::{Store, StoreError, Turn};

/// Called with the result of a submitted batch once it is committed (or
/// failed).
pub type Done = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// The most changes one group commit takes (a single larger batch is still
/// applied whole, on its own).
pub const BATCH_CAP: usize = 65_536;

/// The window of a lazy batch ([`Writer::submit_lazy`]): how long after
/// its submission its commit may start at the latest.
pub const LAZY_WINDOW: Duration = Duration::from_millis(10);

/// How long callers leave their commits to the writer thread after a
/// helped commit had company: under a steady stream of batches the
/// thread commits beside the callers' own work, in larger groups.
pub const HELP_PAUSE: Duration = Duration::from_millis(10);

/// The most changes a caller leaves for its own commit: a larger batch
/// would hold the caller's thread for long.
pub const HELP_MAX_CHANGES: usize = 64;

/// The longest window a batch gets; longer ones are cut to it.
pub const MAX_WINDOW: Duration = Duration::from_secs(3600);

/// The group-commit writer: a handle to the background thread.
///
/// Dropping it (or calling [`shutdown`](Writer::shutdown)) commits
/// everything already submitted, then stops the thread.
pub struct Writer {
    queue: Arc<Queue>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// The store and whether the writer is fail-stop, for commits made by
    /// a helping caller ([`Writer::help`]); `None` where the store has
    /// several lanes or slow commits (only the writer thread commits then).
    helped: Option<(Arc<dyn Store>, bool)>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("queue", &self.queue)
            .field("helped", &self.helped.is_some())
            .finish_non_exhaustive()
    }
}

/// One submitted batch.
struct Job {
    changes: Vec<Change>,
    done: Option<Done>,
    /// The latest its commit may start.
    by: Instant,
}

/// The batches waiting for the writer thread. A submitter wakes the thread
/// only when it sleeps and this batch is due before it would wake anyway,
/// so batches that may wait cost no thread switch each.
#[derive(Default)]
struct Queue {
    /// This writer's number in the process (for [`HELP`]).
    id: u64,
    state: Mutex<Pending>,
    wake: Condvar,
    /// The groups in flight, with lanes.
    flight: lanes::Flight,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = lock(&self.state);
        f.debug_struct("Queue")
            .field("batches", &st.jobs.len())
            .field("changes", &st.changes)
            .field("closed", &st.closed)
            .finish()
    }
}

#[derive(Default)]
struct Pending {
    jobs: VecDeque<Job>,
    /// Changes in `jobs`.
    changes: usize,
    /// The earliest `by` in `jobs`.
    due: Option<Instant>,
    /// No more batches are taken (shut down, or the thread is gone).
    closed: bool,
    /// What the writer thread is doing.
    thread: Thread,
    /// Whether a caller commits instead of the thread.
    helper: Helper,
    /// No caller commits before this: the last helped commit had company
    /// (see [`HELP_PAUSE`]).
    no_help_until: Option<Instant>,
}

impl Pending {
    /// Queues `job` last.
    fn push(&mut self, job: Job) {
        self.changes += job.changes.len();
        self.due = Some(self.due.map_or(job.by, |d| d.min(job.by)));
        self.jobs.push_back(job);
    }
}

/// A caller committing in the writer thread's place ([`Writer::help`]).
#[derive(Default, Clone, Copy, PartialEq, Eq, Debug)]
enum Helper {
    /// None: the thread commits.
    #[default]
    None,
    /// The caller that left its batch (the one thread whose [`HELP`] names
    /// this writer) will commit what is queued when it calls
    /// [`Writer::help`]; until then the thread takes nothing (unless it is
    /// shutting down, when it takes over: the writer is closed then, so no
    /// other claim can follow and the claimer's `help` finds none).
    Claimed,
    /// A caller is committing: the thread takes nothing until it is done.
    Helping,
}

#[derive(Default, Clone, Copy)]
enum Thread {
    /// Working (or about to look at the queue): no need to wake it.
    #[default]
    Busy,
    /// Waiting for any batch.
    Idle,
    /// Waiting until this instant for more batches.
    Until(Instant),
}

impl Writer {
    /// Starts the writer thread for `store`.
    ///
    /// # Panics
    ///
    /// If the operating system cannot create a thread, like
    /// [`std::thread::spawn`]; [`try_spawn`](Writer::try_spawn) returns the
    /// error instead.
    pub fn spawn(store: Arc<dyn Store>) -> Writer {
        match Self::try_spawn(store) {
            Ok(w) => w,
            Err(e) => panic!("cannot start the store writer thread: {e}"),
        }
    }

    /// Starts the writer thread for `store`, or fails with
    /// [`StoreError::Io`] if the operating system cannot create it.
    pub fn try_spawn(store: Arc<dyn Store>) -> Result<Writer, StoreError> {
        Self::start(store, false)
    }

    /// Like [`try_spawn`](Writer::try_spawn), but the writer stops at the
    /// first failed commit: every batch of that commit gets its error
    /// (none is retried alone), every batch queued after it gets
    /// [`StoreError::Closed`] without being applied, and later submissions
    /// are refused. For a caller whose later batches depend on the earlier
    /// ones having been committed (the coordinator: a task's dependent must
    /// not be assigned if the dependency's success was never stored).
    pub fn try_spawn_fail_stop(store: Arc<dyn Store>) -> Result<Writer, StoreError> {
        Self::start(store, true)
    }

    fn start(store: Arc<dyn Store>, fail_stop: bool) -> Result<Writer, StoreError> {
        // A number per writer for a helper's claim (`HELP`): unlike the
        // queue's address, which `WRITER_THREAD` keys on while its thread
        // lives, it is never reused by a later writer.
        static WRITERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let queue = Arc::new(Queue {
            id: WRITERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            ..Queue::default()
        });
        let helped =
            (store.lanes() <= 1 && store.quick_commits()).then(|| (store.clone(), fail_stop));
        let handle = thread::Builder::new()
            .name("taskgrid-store-writer".into())
            .spawn({
                let queue = queue.clone();
                move || run(&*store, &queue, fail_stop)
            })?;
        Ok(Writer {
            queue,
            thread: Mutex::new(Some(handle)),
            helped,
        })
    }

    /// Queues `changes` to be applied after everything submitted before them,
    /// without waiting. `done`, if given, is called with the result once they
    /// are committed.
    ///
    /// The changes of one call are applied all-or-nothing, and a failure of
    /// one batch fails only its own `done`. Fails with [`StoreError::Closed`]
    /// after [`shutdown`](Writer::shutdown) (and then `done` is dropped
    /// without being called).
    pub fn submit(&self, changes: Vec<Change>, done: Option<Done>) -> Result<(), StoreError> {
        self.submit_within(changes, done, Duration::ZERO)
    }

    /// Like [`submit`](Writer::submit), for changes that may wait up to
    /// `window` to share a commit: they are committed with the next batch
    /// that must go at once, or with everything submitted until the
    /// earliest pending window ends (or the queue holds [`BATCH_CAP`]
    /// changes). Order is kept either way. A zero `window` is
    /// [`submit`](Writer::submit); one over [`MAX_WINDOW`] counts as that.
    pub fn submit_within(
        &self,
        changes: Vec<Change>,
        done: Option<Done>,
        window: Duration,
    ) -> Result<(), StoreError> {
        let by = Instant::now() + window.min(MAX_WINDOW);
        let st = lock(&self.queue.state);
        if st.closed {
            return Err(StoreError::Closed);
        }
        self.enqueue(st, Job { changes, done, by });
        Ok(())
    }

    /// Queues `job` (under `st`, the queue's lock) and wakes the thread if
    /// it must start sooner than it would wake anyway.
    fn enqueue(&self, mut st: MutexGuard<'_, Pending>, job: Job) {
        let by = job.by;
        st.push(job);
        // A helping caller takes what queues while it helps, or wakes the
        // thread for it when done.
        let wake = st.helper == Helper::None
            && match st.thread {
                Thread::Busy => false,
                Thread::Idle => true,
                Thread::Until(at) => by < at || st.changes >= BATCH_CAP,
            };
        if wake {
            st.thread = Thread::Busy;
            drop(st);
            self.queue.wake.notify_one();
        }
    }

    /// Like [`submit`](Writer::submit), but where the writer thread sleeps
    /// with nothing queued, the batch is left for this thread to commit:
    /// the caller **must** call [`help`](Writer::help) on this thread soon
    /// (once it lets go of whatever lock orders its submissions), and
    /// must not wait for the commit before it has. Until then the batch,
    /// and any submitted after it, stay queued (a shutdown commits them
    /// without waiting for the caller).
    ///
    /// Otherwise (the thread busy or waiting for a window, batches queued,
    /// a store with several lanes or slow commits ([`Store::quick_commits`]),
    /// a next commit that would stall ([`Store::next_commit_stalls`]),
    /// a batch of over [`HELP_MAX_CHANGES`] changes, within [`HELP_PAUSE`]
    /// of a helped commit that had company, a call from a `done` callback, or one made before this
    /// thread helped with its last) it is [`submit`](Writer::submit).
    pub fn submit_then_help(
        &self,
        changes: Vec<Change>,
        done: Option<Done>,
    ) -> Result<(), StoreError> {
        if self.helped.is_none()
            || changes.len() > HELP_MAX_CHANGES
            || on_writer_thread(&self.queue)
            || HELP.with(|h| h.get() != 0)
            // Last: a call into the store (atomic loads in SQLite's).
            || self
                .helped
                .as_ref()
                .is_some_and(|(store, _)| store.next_commit_stalls())
        {
            return self.submit(changes, done);
        }
        let mut st = lock(&self.queue.state);
        if st.closed {
            return Err(StoreError::Closed);
        }
        let job = Job {
            changes,
            done,
            by: Instant::now(),
        };
        if st.helper != Helper::None
            || !matches!(st.thread, Thread::Idle)
            || !st.jobs.is_empty()
            || st.no_help_until.is_some_and(|t| job.by < t)
        {
            self.enqueue(st, job);
            return Ok(());
        }
        st.helper = Helper::Claimed;
        HELP.with(|h| h.set(self.queue.id));
        st.push(job);
        Ok(())
    }

    /// Commits, on this thread, the batch this thread left with
    /// [`submit_then_help`](Writer::submit_then_help) and whatever queued
    /// behind it (up to [`HELP_MAX_CHANGES`] in all, in one commit), then gives the
    /// rest to the writer thread. Does nothing if this thread left no
    /// batch, or if a shutdown already committed it.
    pub fn help(&self) {
        let mine = HELP.with(|h| {
            let mine = h.get() == self.queue.id;
            if mine {
                h.set(0);
            }
            mine
        });
        let (true, Some((store, fail_stop))) = (mine, &self.helped) else {
            return;
        };
        let path = Path {
            store: &**store,
            turn: &crate::Now,
            report_queued: true,
        };
        let mut st = lock(&self.queue.state);
        if st.helper != Helper::Claimed {
            return;
        }
        if thread::panicking() {
            // Unwinding (the caller's lock guard dropped by a panic): no
            // commit here, whose own panic would abort; the thread takes it.
            st.helper = Helper::None;
            st.thread = Thread::Busy;
            drop(st);
            self.queue.wake.notify_one();
            return;
        }
        st.helper = Helper::Helping;
        // Others submitted while this thread held its batch or committed:
        // batches come close together, and the writer thread, which
        // commits beside the callers' work, groups them better.
        let mut company = st.jobs.len() > 1;
        if !st.closed {
            // The claimed batch is due now: one commit, and the rest (if
            // any) is the thread's.
            let (jobs, total) = take_queued(&mut st, HELP_MAX_CHANGES);
            drop(st);
            let open = self.commit_helped(&path, *fail_stop, jobs, total);
            st = lock(&self.queue.state);
            company |= open && !st.jobs.is_empty();
        }
        st.helper = Helper::None;
        if company {
            st.no_help_until = Some(Instant::now() + HELP_PAUSE);
        }
        if st.due.is_some() || st.closed {
            st.thread = Thread::Busy;
            drop(st);
            self.queue.wake.notify_one();
        }
    }

    /// One commit of [`help`](Writer::help), on this thread marked as the
    /// writer's (so that a `done` callback's [`shutdown`](Writer::shutdown)
    /// does not wait for the thread, which waits for this commit). A store
    /// that panics stops the writer, as on its thread, and the panic stops
    /// here: it is the writer's, not the caller's. Returns whether the
    /// writer is still open.
    fn commit_helped(
        &self,
        path: &Path<'_>,
        fail_stop: bool,
        jobs: Vec<Job>,
        total: usize,
    ) -> bool {
        let before = WRITER_THREAD.with(|w| w.replace(std::ptr::from_ref(&*self.queue) as usize));
        let committed = std::panic::catch_unwind(AssertUnwindSafe(|| {
            commit_group(path, &self.queue, fail_stop, jobs, total)
        }));
        WRITER_THREAD.with(|w| w.set(before));
        committed.unwrap_or_else(|_| {
            tracing::error!("the store panicked in a commit; the writer stops");
            drop(Gone(&self.queue));
            false
        })
    }

    /// [`submit_within`](Writer::submit_within) [`LAZY_WINDOW`], for
    /// changes nothing waits on.
    pub fn submit_lazy(&self, changes: Vec<Change>, done: Option<Done>) -> Result<(), StoreError> {
        self.submit_within(changes, done, LAZY_WINDOW)
    }

    /// Blocks until everything submitted before this call is committed (or
    /// has failed; each batch's `done` has the result).
    ///
    /// Fails with [`StoreError::Closed`] after shutdown, if the writer
    /// thread died, or if it stopped (a failed commit under fail-stop, a
    /// panic) before this call's turn. Never call it from a `done`
    /// callback: that callback runs on the writer's thread (or a helping
    /// caller's, standing in for it), which would wait for itself.
    pub fn flush(&self) -> Result<(), StoreError> {
        // A batch this thread left must not wait for this very call.
        self.help();
        let (tx, rx) = mpsc::sync_channel(1);
        let done: Done = Box::new(move |result| {
            let _ = tx.send(result);
        });
        self.submit(Vec::new(), Some(done))?;
        rx.recv().map_err(|_| StoreError::Closed)?
    }

    /// Commits everything already submitted, then stops the thread and waits
    /// for it. Later submissions fail with [`StoreError::Closed`]. Calling it
    /// again does nothing.
    pub fn shutdown(&self) {
        // The thread commits what is queued, without waiting, then ends.
        lock(&self.queue.state).closed = true;
        self.queue.wake.notify_one();
        let Some(handle) = lock(&self.thread).take() else {
            return;
        };
        if handle.thread().id() == thread::current().id() || on_writer_thread(&self.queue) {
            // Called from a `done` callback (on the writer thread, one of
            // its lanes or a helping caller): the thread exits on its own.
            return;
        }
        if handle.join().is_err() {
            tracing::error!("the store writer thread panicked");
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

thread_local! {
    /// The writer (its queue's number) this thread left a batch with, for
    /// its [`Writer::help`]; 0 for none.
    static HELP: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };

    /// The queue of the writer this thread belongs to (its thread or a
    /// lane, or a caller while it helps: where `done` callbacks run), by
    /// address; 0 for others.
    static WRITER_THREAD: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Marks this thread as one of the writer of `queue`.
fn mark_writer_thread(queue: &Queue) {
    WRITER_THREAD.with(|w| w.set(std::ptr::from_ref(queue) as usize));
}

/// Whether this thread is one of the writer of `queue`: joining that
/// writer from here could wait for this very thread.
fn on_writer_thread(queue: &Queue) -> bool {
    WRITER_THREAD.with(|w| w.get() == std::ptr::from_ref(queue) as usize)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing is left half-done under these locks, so poisoning is harmless.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The writer thread: wait for batches, and once one is due (or the queue
/// holds [`BATCH_CAP`] changes, or the writer is shutting down) commit what
/// is queued, up to [`BATCH_CAP`] changes, and report; until shut down.
fn run(store: &dyn Store, queue: &Queue, fail_stop: bool) {
    // However the thread ends, submitters must not wait on it any more.
    let _gone = Gone(queue);
    mark_writer_thread(queue);
    let lanes = store.lanes().max(1);
    if lanes > 1 {
        lanes::run(store, queue, fail_stop, lanes);
        return;
    }
    let path = Path {
        store,
        turn: &crate::Now,
        report_queued: true,
    };
    while let Some((jobs, total)) = take(queue) {
        if !commit_group(&path, queue, fail_stop, jobs, total) {
            return;
        }
    }
}

/// Commits one taken group, fail-stop or not; returns whether the writer
/// is still open.
fn commit_group(
    path: &Path<'_>,
    queue: &Queue,
    fail_stop: bool,
    jobs: Vec<Job>,
    total: usize,
) -> bool {
    if fail_stop {
        commit_or_stop(path, queue, jobs, total)
    } else {
        commit(path, jobs, total);
        true
    }
}

/// How a taken group reaches the store: in one transaction
/// ([`Store::apply_when`]) that commits in the group's turn.
struct Path<'a> {
    store: &'a dyn Store,
    /// Waits until every group taken before this one is finished (its
    /// batches reported); fails if one of them stopped the writer. With
    /// one lane, every group's turn has come when it is taken.
    turn: &'a dyn Turn,
    /// Whether a failed group reports the batches still queued as closed
    /// itself (with lanes, the writer thread does, once every group in
    /// flight has reported: they were submitted before).
    report_queued: bool,
}

/// A taken group, applied in one transaction in its turn.
struct Applied {
    /// Its changes, in order.
    all: Vec<Change>,
    /// Each batch's `done`, with where its changes end in `all`.
    batches: Vec<(usize, Option<Done>)>,
    result: Result<(), StoreError>,
}

/// Applies `jobs` (holding `total` changes) in one transaction, then waits
/// for the group's turn; `None`, with every batch told
/// [`StoreError::Closed`], if an earlier group stopped the writer (this
/// one's transaction then rolled back).
fn apply_in_turn(path: &Path<'_>, jobs: Vec<Job>, total: usize) -> Option<Applied> {
    let mut all = Vec::with_capacity(total);
    let mut batches = Vec::with_capacity(jobs.len());
    for job in jobs {
        all.extend(job.changes);
        batches.push((all.len(), job.done));
    }
    let result = if all.is_empty() {
        Ok(())
    } else {
        path.store.apply_when(&all, path.turn)
    };
    if path.turn.wait().is_err() {
        for (_, done) in batches {
            report(done, Err(StoreError::Closed));
        }
        return None;
    }
    Some(Applied {
        all,
        batches,
        result,
    })
}

/// Applies `jobs` in one transaction and reports to each: all succeed or
/// all get the error. If they failed, the writer is closed first (so that
/// nobody told of the failure can still submit), every batch queued after
/// them fails with [`StoreError::Closed`] unapplied, and this returns
/// false.
fn commit_or_stop(path: &Path<'_>, queue: &Queue, jobs: Vec<Job>, total: usize) -> bool {
    // `None`: an earlier group failed and stopped the writer; this one is
    // refused like the batches queued after the failure.
    let Some(Applied {
        all,
        batches,
        result,
    }) = apply_in_turn(path, jobs, total)
    else {
        return false;
    };
    let dones = batches.into_iter().map(|(_, done)| done);
    match result {
        Ok(()) => {
            for done in dones {
                report(done, Ok(()));
            }
            true
        }
        Err(e) => {
            tracing::error!(error = %e, changes = all.len(), "a commit failed; the writer stops");
            let queued = if path.report_queued {
                close(queue)
            } else {
                refuse(queue);
                Vec::new()
            };
            let message = e.to_string();
            let mut first = Some(e);
            for done in dones {
                let err = first
                    .take()
                    .unwrap_or_else(|| StoreError::Io(std::io::Error::other(message.clone())));
                report(done, Err(err));
            }
            for job in queued {
                report(job.done, Err(StoreError::Closed));
            }
            false
        }
    }
}

/// Refuses new batches and takes the queued ones (fail-stop).
fn close(queue: &Queue) -> Vec<Job> {
    let jobs = {
        let mut st = lock(&queue.state);
        st.closed = true;
        st.changes = 0;
        st.due = None;
        st.jobs.drain(..).collect()
    };
    queue.wake.notify_all();
    jobs
}

/// Puts `jobs` (taken, in order) back at the head of the queue.
fn requeue(queue: &Queue, jobs: Vec<Job>) {
    if jobs.is_empty() {
        return;
    }
    let mut st = lock(&queue.state);
    for job in jobs.into_iter().rev() {
        st.changes += job.changes.len();
        st.due = Some(st.due.map_or(job.by, |d| d.min(job.by)));
        st.jobs.push_front(job);
    }
}

/// Refuses new batches, leaving the queued ones.
fn refuse(queue: &Queue) {
    lock(&queue.state).closed = true;
    queue.wake.notify_all();
}

/// Waits until a commit is due and takes its batches; `None` once shut
/// down with nothing left.
fn take(queue: &Queue) -> Option<(Vec<Job>, usize)> {
    let mut st = lock(&queue.state);
    loop {
        match st.helper {
            Helper::None => {}
            // Shutting down: the claimer may never help; take its batch.
            Helper::Claimed if st.closed => st.helper = Helper::None,
            Helper::Claimed | Helper::Helping => {
                st.thread = Thread::Idle;
                st = queue.wake.wait(st).unwrap_or_else(PoisonError::into_inner);
                continue;
            }
        }
        let Some(due) = st.due else {
            if st.closed {
                return None;
            }
            st.thread = Thread::Idle;
            st = queue.wake.wait(st).unwrap_or_else(PoisonError::into_inner);
            continue;
        };
        let now = Instant::now();
        if due > now && st.changes < BATCH_CAP && !st.closed {
            st.thread = Thread::Until(due);
            st = queue
                .wake
                .wait_timeout(st, due - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            continue;
        }
        st.thread = Thread::Busy;
        return Some(take_queued(&mut st, BATCH_CAP));
    }
}

/// Dropped as the writer thread ends, or as a helping caller's commit
/// panics ([`Writer::help`]): the writer stops — new batches are refused,
/// the queued ones dropped (their `done`s then tell their waiters: a
/// dropped callback reads as "closed") — and the thread, if it waits for
/// the helper, wakes to end.
struct Gone<'a>(&'a Queue);

impl Drop for Gone<'_> {
    fn drop(&mut self) {
        lock(&self.0.state).helper = Helper::None;
        // Dropped unlocked: a callback's drop may reach the writer again.
        drop(close(self.0));
    }
}

/// Takes the queued batches for one commit (up to `cap` changes, and at
/// least one batch), with their number of changes.
fn take_queued(st: &mut Pending, cap: usize) -> (Vec<Job>, usize) {
    let mut jobs = Vec::new();
    let mut total = 0;
    while let Some(next) = st.jobs.front() {
        if !jobs.is_empty() && total + next.changes.len() > cap {
            break;
        }
        total += next.changes.len();
        jobs.extend(st.jobs.pop_front());
    }
    st.changes -= total;
    st.due = st.jobs.iter().map(|j| j.by).min();
    (jobs, total)
}

/// Applies `jobs` (holding `total` changes) in one transaction and reports to
/// each; if that fails, applies them one by one so a bad batch fails alone.
fn commit(path: &Path<'_>, jobs: Vec<Job>, total: usize) {
    // `None`: only a lane that panicked stops a writer without fail-stop,
    // and nothing after it may commit.
    let Some(Applied {
        all,
        mut batches,
        result,
    }) = apply_in_turn(path, jobs, total)
    else {
        return;
    };
    match result {
        Ok(()) => {
            for (_, done) in batches {
                report(done, Ok(()));
            }
        }
        Err(e) if batches.len() == 1 => {
            tracing::error!(error = %e, changes = all.len(), "a batch of store changes failed");
            if let Some((_, done)) = batches.pop() {
                report(done, Err(e));
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, batches = batches.len(), "group commit failed; applying its batches one by one");
            let mut start = 0;
            for (end, done) in batches {
                let result = apply(path.store, &all[start..end]);
                report(done, result);
                start = end;
            }
        }
    }
}

/// Applies one submitted batch, logging a failure.
fn apply(store: &dyn Store, changes: &[Change]) -> Result<(), StoreError> {
    if changes.is_empty() {
        return Ok(());
    }
    let result = store.apply(changes);
    if let Err(e) = &result {
        tracing::error!(error = %e, changes = changes.len(), "a batch of store changes failed");
    }
    result
}

/// Calls `done`, surviving a panic in it so that one bad callback cannot
/// stop the writer.
fn report(done: Option<Done>, result: Result<(), StoreError>) {
    let Some(done) = done else { return };
    if std::panic::catch_unwind(AssertUnwindSafe(move || done(result))).is_err() {
        tracing::error!("a store writer callback panicked");
    }
}

mod lanes;

#[cfg(all(test, feature = "sqlite"))] // some of its tests need a file on disk
#[allow(clippy::unwrap_used)] // tests may panic on anything
mod tests;
