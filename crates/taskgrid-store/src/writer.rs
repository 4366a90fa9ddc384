//! [`Writer`]: group commit. One background thread owns writing to a
//! [`Store`]; callers hand it batches of changes without blocking, and it
//! commits everything that queued up while the previous commit ran in one
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
//! Batches are committed in submission order (a store with several lanes
//! writes groups of other tasks beside the one committing, see `lanes`).
//! Each batch's `done` callback is called once its changes are committed
//! (or have failed), in submission order, on the writer's thread or one of
//! its lanes: keep callbacks short (send on a channel, wake a task) and
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

/// The longest window a batch gets; longer ones are cut to it.
pub const MAX_WINDOW: Duration = Duration::from_secs(3600);

/// The group-commit writer: a handle to the background thread.
///
/// Dropping it (or calling [`shutdown`](Writer::shutdown)) commits
/// everything already submitted, then stops the thread.
#[derive(Debug)]
pub struct Writer {
    queue: Arc<Queue>,
    thread: Mutex<Option<JoinHandle<()>>>,
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
        let queue = Arc::new(Queue::default());
        let handle = thread::Builder::new()
            .name("taskgrid-store-writer".into())
            .spawn({
                let queue = queue.clone();
                move || run(&*store, &queue, fail_stop)
            })?;
        Ok(Writer {
            queue,
            thread: Mutex::new(Some(handle)),
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
        let mut st = lock(&self.queue.state);
        if st.closed {
            return Err(StoreError::Closed);
        }
        st.changes += changes.len();
        let wake = match st.thread {
            Thread::Busy => false,
            Thread::Idle => true,
            Thread::Until(at) => by < at || st.changes >= BATCH_CAP,
        };
        st.due = Some(st.due.map_or(by, |d| d.min(by)));
        st.jobs.push_back(Job { changes, done, by });
        if wake {
            st.thread = Thread::Busy;
            drop(st);
            self.queue.wake.notify_one();
        }
        Ok(())
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
    /// callback: that callback runs on the writer's thread, which would
    /// wait for itself.
    pub fn flush(&self) -> Result<(), StoreError> {
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
            // Called from a `done` callback (on the writer thread or one
            // of its lanes): the thread exits on its own.
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
    /// The queue of the writer this thread belongs to (its thread or a
    /// lane, where `done` callbacks run), by address; 0 for others.
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
    // However the thread ends, submitters must not wait on it any more:
    // refuse new batches and drop the queued ones, whose `done`s then tell
    // their waiters (a dropped callback reads as "closed").
    struct Gone<'a>(&'a Queue);
    impl Drop for Gone<'_> {
        fn drop(&mut self) {
            let jobs = {
                let mut st = lock(&self.0.state);
                st.closed = true;
                std::mem::take(&mut st.jobs)
            };
            // Dropped unlocked: a callback's drop may reach the writer again.
            drop(jobs);
        }
    }
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
        if fail_stop {
            if !commit_or_stop(&path, queue, jobs, total) {
                return;
            }
        } else {
            commit(&path, jobs, total);
        }
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
        let mut jobs = Vec::new();
        let mut total = 0;
        while let Some(next) = st.jobs.front() {
            if !jobs.is_empty() && total + next.changes.len() > BATCH_CAP {
                break;
            }
            total += next.changes.len();
            jobs.extend(st.jobs.pop_front());
        }
        st.changes -= total;
        st.due = st.jobs.iter().map(|j| j.by).min();
        return Some((jobs, total));
    }
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
