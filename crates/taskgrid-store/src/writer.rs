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
//! arrived meanwhile. So changes that may wait (a worker's accept, progress
//! and output: [`Writer::submit_lazy`], up to [`LAZY_WINDOW`]; or one of
//! several results expected close together) ride in a shared commit instead
//! of paying for one of their own.
//!
//! Batches are applied in submission order. Each batch's `done` callback is
//! called once its changes are committed (or have failed), in submission
//! order, on the writer thread: keep callbacks short (send on a channel, wake
//! a task) and never call [`Writer::flush`] from one.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use taskgrid_core::Change;

use crate::{Store, StoreError};

/// Called with the result of a submitted batch once it is committed (or
/// failed).
pub type Done = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// The most changes one group commit takes (a single larger batch is still
/// applied whole, on its own).
pub const BATCH_CAP: usize = 65_536;

/// How long a commit of nothing but lazy batches waits for another batch.
pub const LAZY_WINDOW: Duration = Duration::from_millis(10);

/// The group-commit writer: a handle to the background thread.
///
/// Dropping it (or calling [`shutdown`](Writer::shutdown)) commits
/// everything already submitted, then stops the thread.
#[derive(Debug)]
pub struct Writer {
    queue: Mutex<Option<Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// One submitted batch.
struct Job {
    changes: Vec<Change>,
    done: Option<Done>,
    /// The latest its commit may start; `None`: at once.
    by: Option<Instant>,
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
        let (tx, rx) = mpsc::channel();
        let handle = thread::Builder::new()
            .name("taskgrid-store-writer".into())
            .spawn(move || run(&*store, &rx))?;
        Ok(Writer {
            queue: Mutex::new(Some(tx)),
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
        self.send(Job {
            changes,
            done,
            by: None,
        })
    }

    /// Like [`submit`](Writer::submit), for changes that may wait up to
    /// `window` to share a commit: they are committed with the next batch
    /// that must go at once, or with everything submitted until the
    /// earliest pending window ends. Order is kept either way. A zero
    /// `window` is [`submit`](Writer::submit).
    pub fn submit_within(
        &self,
        changes: Vec<Change>,
        done: Option<Done>,
        window: Duration,
    ) -> Result<(), StoreError> {
        self.send(Job {
            changes,
            done,
            by: (!window.is_zero()).then(|| Instant::now() + window),
        })
    }

    /// [`submit_within`](Writer::submit_within) [`LAZY_WINDOW`], for
    /// changes nothing waits on.
    pub fn submit_lazy(&self, changes: Vec<Change>, done: Option<Done>) -> Result<(), StoreError> {
        self.submit_within(changes, done, LAZY_WINDOW)
    }

    fn send(&self, job: Job) -> Result<(), StoreError> {
        let queue = lock(&self.queue);
        let tx = queue.as_ref().ok_or(StoreError::Closed)?;
        tx.send(job).map_err(|_| StoreError::Closed)
    }

    /// Blocks until everything submitted before this call is committed (or
    /// has failed; each batch's `done` has the result).
    ///
    /// Fails with [`StoreError::Closed`] after shutdown or if the writer
    /// thread died. Never call it from a `done` callback: that callback runs
    /// on the writer thread, which would wait for itself.
    pub fn flush(&self) -> Result<(), StoreError> {
        let (tx, rx) = mpsc::sync_channel(1);
        let done: Done = Box::new(move |_| {
            let _ = tx.send(());
        });
        self.submit(Vec::new(), Some(done))?;
        rx.recv().map_err(|_| StoreError::Closed)
    }

    /// Commits everything already submitted, then stops the thread and waits
    /// for it. Later submissions fail with [`StoreError::Closed`]. Calling it
    /// again does nothing.
    pub fn shutdown(&self) {
        // Dropping the sender ends the thread's loop once the queue is empty.
        drop(lock(&self.queue).take());
        let Some(handle) = lock(&self.thread).take() else {
            return;
        };
        if handle.thread().id() == thread::current().id() {
            // Called from a `done` callback: the thread exits on its own.
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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing is left half-done under these locks, so poisoning is harmless.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The writer thread: wait for a batch, take whatever else is queued (up to
/// [`BATCH_CAP`] changes; when every batch has a window, waiting for more
/// until the earliest window ends), commit, report; until every sender is
/// gone.
fn run(store: &dyn Store, rx: &Receiver<Job>) {
    let mut carried: Option<Job> = None;
    loop {
        let first = match carried.take() {
            Some(job) => job,
            None => match rx.recv() {
                Ok(job) => job,
                Err(_) => return,
            },
        };
        let mut deadline = first.by;
        let mut total = first.changes.len();
        let mut jobs = vec![first];
        while total < BATCH_CAP {
            let next = match deadline {
                None => rx.try_recv().ok(),
                Some(at) => rx
                    .recv_timeout(at.saturating_duration_since(Instant::now()))
                    .ok(),
            };
            let Some(job) = next else { break };
            deadline = deadline.zip(job.by).map(|(a, b)| a.min(b));
            if total + job.changes.len() > BATCH_CAP {
                carried = Some(job);
                break;
            }
            total += job.changes.len();
            jobs.push(job);
        }
        commit(store, jobs, total);
    }
}

/// Applies `jobs` (holding `total` changes) in one transaction and reports to
/// each; if that fails, applies them one by one so a bad batch fails alone.
fn commit(store: &dyn Store, jobs: Vec<Job>, total: usize) {
    if jobs.len() == 1 {
        for job in jobs {
            let result = apply(store, &job.changes);
            report(job.done, result);
        }
        return;
    }
    let mut all = Vec::with_capacity(total);
    let mut batches = Vec::with_capacity(jobs.len());
    for job in jobs {
        all.extend(job.changes);
        batches.push((all.len(), job.done));
    }
    match store.apply(&all) {
        Ok(()) => {
            for (_, done) in batches {
                report(done, Ok(()));
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, batches = batches.len(), "group commit failed; applying its batches one by one");
            let mut start = 0;
            for (end, done) in batches {
                let result = apply(store, &all[start..end]);
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

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may panic on anything
mod tests;
