//! Copying the WAL back into the database file off the writer's path when
//! the writer is busy.
//!
//! SQLite's own automatic checkpoint runs inside the commit that crosses
//! the mark, so that commit (and every batch queued behind it) waits for
//! the WAL to be copied back and the file fsynced: 0.1–0.17 s every ~31
//! batches of 5,000 submits on a 2-vCPU VM, and ~8 % of the writer
//! thread's time under a flood of no-op tasks (8.6 % under sixteen clients
//! posting one task at a time). Here the writer's WAL hook decides, after
//! each commit made while the WAL is at or past the mark, by the size of
//! the writer's recent commits (the largest, fading by a sixteenth per
//! commit: [`Progress::committing`]):
//! - a busy writer (recent commits of at least [`BUSY_CHANGES`] changes:
//!   a backlog) only asks a thread of its own, on a connection of its own,
//!   to run a passive checkpoint, which never blocks the writer;
//! - otherwise (a light load: one client's commits hold 2–16 changes) the
//!   commit copies the WAL back itself, as SQLite would: one commit in
//!   ~1,000 waits tens of milliseconds, where a copy running beside the
//!   commits would slow many of them a little (light-load p99 0.5–0.7 ms
//!   became 0.7–1.4 ms when the thread took every copy).
//!
//! The WAL starts over only once a copy has caught up with the last
//! commit. Should it still reach four times the mark (the thread's copies
//! overlapping ever more commits), the writer copies it back itself, as
//! soon as the thread is not copying at that moment; under the benches'
//! floods it peaked at 1.1–1.3 times the mark (BENCHMARKS.md). A checkpoint that fails in
//! the hook (another one is running) is left for a later commit: the
//! commit itself has happened, and an error from the hook would report it
//! as failed.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;

use rusqlite::wal::CheckpointMode;
use rusqlite::{Connection, OpenFlags};

use crate::StoreError;

/// The writer copies the WAL back itself past this many times the mark.
const SELF_MARK_FACTOR: u64 = 4;

/// The writer counts as busy while its recent commits reach this many
/// changes (see [`Progress::committing`]). One client posting one task at
/// a time makes commits of at most 16 changes (nearly all 2–8); sixteen
/// such clients, commits of 1–128 (a sixth above 32); a flood, hundreds.
pub(crate) const BUSY_CHANGES: usize = 24;

/// What the writer's WAL hook and the checkpoint thread share: the size of
/// the writer's recent commits and the WAL's (which decide who copies), and
/// counts of what each has done, which only the tests read (a few atomic
/// adds per copy, not per commit).
#[derive(Debug, Default)]
pub(crate) struct Progress {
    /// Checkpoints the thread ran.
    runs: Mutex<u64>,
    done: Condvar,
    /// The WAL's frames after the writer's last commit.
    pub(crate) frames: AtomicU64,
    /// The writer's last commit copied the whole WAL back (the next one
    /// starts it over).
    copied: AtomicBool,
    /// The mark: WAL frames past which it is copied back.
    mark: u64,
    /// The size of the writer's recent commits: the largest, fading by a
    /// sixteenth with each commit after it (set before a commit, read by
    /// the hook).
    recent: AtomicUsize,
    /// Wakes the hook handed the thread (each is one run).
    sent: AtomicU64,
    /// Checkpoints the writer tried itself (a light load, the WAL at four
    /// times the mark, or the thread stopped), including any that found
    /// the thread copying (BUSY) and were left for a later commit.
    pub(crate) inline: AtomicU64,
}

impl Progress {
    /// Notes the size of the commit about to be made.
    ///
    /// The writer is busy while this fading maximum reaches
    /// [`BUSY_CHANGES`]: one commit of 64 changes keeps it so for the next
    /// 13, so a backlog's small commits between its large ones leave the
    /// copy to the thread too.
    pub(crate) fn committing(&self, changes: usize) {
        // Only the writer (under its lock) writes it: no lost update.
        let faded = self.recent.load(Ordering::Relaxed);
        let faded = faded - faded.div_ceil(16);
        self.recent.store(changes.max(faded), Ordering::Relaxed);
    }

    /// Whether the writer's recent commits make it busy.
    pub(crate) fn busy(&self) -> bool {
        self.recent.load(Ordering::Relaxed) >= BUSY_CHANGES
    }

    /// Whether a commit that leaves the WAL at `frames` copies it back
    /// itself: at or past the mark while the writer is not busy, or at
    /// four times the mark.
    fn copies_itself(&self, frames: u64) -> bool {
        let mark = self.mark;
        frames >= mark && (!self.busy() || frames >= mark.saturating_mul(SELF_MARK_FACTOR))
    }

    /// Whether the next commit, if the writer stays as it is, copies the
    /// WAL back itself (the WAL is past the mark already, and the last
    /// commit did not copy all of it back).
    pub(crate) fn copy_due(&self) -> bool {
        !self.copied.load(Ordering::Relaxed)
            && self.copies_itself(self.frames.load(Ordering::Relaxed))
    }

    /// Checkpoints run by the thread so far.
    #[cfg(test)]
    pub(crate) fn runs(&self) -> u64 {
        *self.runs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until the thread has answered every wake handed to it so far
    /// (or `limit` passes).
    #[cfg(test)]
    pub(crate) fn wait_idle(&self, limit: std::time::Duration) {
        let sent = self.sent.load(Ordering::Relaxed);
        if sent > 0 {
            self.wait_past(sent - 1, limit);
        }
    }

    /// Waits until the thread has run more than `seen` checkpoints, or
    /// `limit` passes; the number run.
    #[cfg(test)]
    pub(crate) fn wait_past(&self, seen: u64, limit: std::time::Duration) -> u64 {
        let runs = self.runs.lock().unwrap_or_else(PoisonError::into_inner);
        let (runs, _) = self
            .done
            .wait_timeout_while(runs, limit, |r| *r <= seen)
            .unwrap_or_else(PoisonError::into_inner);
        *runs
    }
}

/// The checkpoint thread; dropping it stops the thread and waits for it
/// (the writer then checkpoints itself, should it commit again).
#[derive(Debug)]
pub(crate) struct Checkpointer {
    thread: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    wake: SyncSender<()>,
    pub(crate) progress: Arc<Progress>,
}

impl Checkpointer {
    /// Starts the thread on a connection of its own to `path` and hooks
    /// `writer`'s commits: past `mark` WAL frames a commit wakes the thread
    /// while the writer is busy ([`Progress::busy`]) and checkpoints itself
    /// otherwise; past four times `mark` every commit checkpoints itself.
    pub(crate) fn start(
        path: &Path,
        writer: &mut Connection,
        mark: u64,
        configure: impl Fn(&Connection) -> Result<(), StoreError>,
    ) -> Result<Self, StoreError> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI;
        let conn = Connection::open_with_flags(path, flags)?;
        configure(&conn)?;
        let progress = Arc::new(Progress {
            mark,
            ..Progress::default()
        });
        // One pending wake is enough: a run copies everything committed.
        let (wake, woken) = sync_channel::<()>(1);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let progress = progress.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("taskgrid-checkpoint".into())
                .spawn(move || {
                    while woken.recv().is_ok() && !stop.load(Ordering::SeqCst) {
                        if let Err(e) =
                            conn.wal_checkpoint_v2(None::<&str>, CheckpointMode::PASSIVE)
                        {
                            tracing::warn!(error = %e, "checkpoint failed");
                        }
                        let mut runs = progress.runs.lock().unwrap_or_else(PoisonError::into_inner);
                        *runs += 1;
                        progress.done.notify_all();
                    }
                })?
        };
        let checkpointer = Checkpointer {
            thread: Some(thread),
            stop,
            wake: wake.clone(),
            progress: progress.clone(),
        };
        // On failure the checkpointer is dropped: its thread stops.
        writer.wal_hook(Some(hook(wake, progress)))?;
        Ok(checkpointer)
    }
}

/// The writer's WAL hook: after every commit, with the WAL's frames.
fn hook(
    wake: SyncSender<()>,
    progress: Arc<Progress>,
) -> impl FnMut(&mut rusqlite::hooks::Wal, i32) -> rusqlite::Result<()> + Send + 'static {
    move |wal, frames| {
        let frames = u64::try_from(frames).unwrap_or(0);
        progress.frames.store(frames, Ordering::Relaxed);
        progress.copied.store(false, Ordering::Relaxed);
        // The common case, before `copies_itself` looks at the writer.
        if frames < progress.mark {
            return Ok(());
        }
        if !progress.copies_itself(frames) {
            match wake.try_send(()) {
                Ok(()) => {
                    progress.sent.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                Err(TrySendError::Full(())) => return Ok(()),
                // The thread has stopped (it panicked, or a test stopped
                // it): copy here rather than let the WAL grow.
                Err(TrySendError::Disconnected(())) => {}
            }
        }
        progress.inline.fetch_add(1, Ordering::Relaxed);
        match wal.checkpoint_v2(CheckpointMode::PASSIVE) {
            // All of it copied back: the next commit starts the WAL over,
            // so no copy is due until it fills again.
            Ok((log, copied)) if log == copied => progress.copied.store(true, Ordering::Relaxed),
            // Some of it kept for a reader: the next commit tries again.
            Ok(_) => {}
            // The commit has happened: an error here would report it as
            // failed. The next commit past the mark tries again.
            Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy) => {
                tracing::debug!(
                    frames,
                    "the thread is copying the WAL back: the writer leaves it"
                );
            }
            Err(e) => {
                tracing::warn!(frames, error = %e, "the writer could not copy the WAL back");
            }
        }
        Ok(())
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Full means a wake is pending already, which the thread will see.
        let _ = self.wake.try_send(());
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::warn!("the checkpoint thread panicked");
        }
    }
}
