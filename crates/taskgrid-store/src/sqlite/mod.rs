//! [`SqliteStore`]: the durable [`Store`], one SQLite file in WAL mode.
//!
//! One connection writes (`apply`, normally called only by the
//! [`Writer`](crate::Writer) thread); a second one reads. WAL lets the reader
//! see the last committed state while a write transaction is open, so queries
//! never wait for a group commit. The schema and its migrations are in
//! `schema`, writes in `write`, queries and row decoding in `read`.

mod checkpoint;
mod lock;
mod read;
mod schema;
mod write;

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use taskgrid_core::{
    AttemptRecord, AuditEntry, Change, FireRecord, OutputChunk, ScheduleRecord, State, TaskId,
    TaskRecord, Timestamp,
};

use crate::{FinishedScan, Store, StoreError, TaskQuery};
use checkpoint::Checkpointer;

/// An error from SQLite, as a [`StoreError::Backend`] whose message says it
/// came from SQLite.
#[derive(Debug, thiserror::Error)]
#[error("sqlite: {0}")]
struct SqliteError(rusqlite::Error);

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::backend(SqliteError(e))
    }
}

/// How long a connection waits for another process's lock before failing
/// with "database is locked".
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Prepared statements kept per connection: the write path's handful plus
/// every combination of [`TaskQuery`] filters.
const STATEMENT_CACHE: usize = 128;

/// Page cache per connection, in KiB (SQLite's `cache_size` takes negative
/// numbers as KiB).
const CACHE_KIB: i64 = 16 * 1024;

/// Page cache of a connection while it reads what it reads once (the
/// opening's migrations and statistics, a start-up's schedules), in KiB.
const SCAN_CACHE_KIB: i64 = 1024;

/// WAL pages after which the WAL is copied back into the file (by the
/// checkpoint thread or by the commit, see `checkpoint`).
const WAL_CHECKPOINT_PAGES: u64 = 10_000;

/// Bytes a WAL is truncated to once copied back, if a long read let it grow.
const WAL_SIZE_LIMIT: i64 = 64 << 20;

/// What a commit survives.
///
/// Both modes use SQLite's write-ahead log; they differ in when it is
/// fsynced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// `synchronous=NORMAL` (the default). A commit is in the operating
    /// system's page cache before `apply` returns: it survives a crash or
    /// `kill -9` of the process, but the last commits before a power loss or
    /// kernel crash may be lost (the database itself stays consistent). The
    /// log is fsynced at checkpoints only, which makes commits cheap.
    #[default]
    Process,
    /// `synchronous=FULL`. The log is fsynced at every commit: a commit
    /// survives a power loss too, at the cost of one fsync per group commit.
    PowerLoss,
}

impl Durability {
    fn synchronous(self) -> &'static str {
        match self {
            Durability::Process => "NORMAL",
            Durability::PowerLoss => "FULL",
        }
    }
}

/// How [`SqliteStore::open`] sets up the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SqliteOptions {
    /// What a commit survives.
    pub durability: Durability,
}

/// A [`Store`] in one SQLite database file.
#[derive(Debug)]
pub struct SqliteStore {
    writer: Mutex<Connection>,
    /// The read connection; `None` for an in-memory database, whose single
    /// connection does both.
    reader: Option<Mutex<Connection>>,
    /// Commits are not synced to disk ([`Durability::Process`]).
    quick: bool,
    /// What the writer's WAL hook reads (the size of the recent commits)
    /// and counts (none in memory); kept apart from the thread, which may
    /// stop first.
    wal: Option<Arc<checkpoint::Progress>>,
    /// The thread that copies the WAL back when the writer is busy (none in
    /// memory); held for its `Drop`, which stops it.
    #[cfg_attr(not(test), allow(dead_code))]
    checkpointer: Option<Checkpointer>,
    /// The lock file, held for the store's life: one writer per database.
    /// Last, so that it is released only after every connection closed.
    _lock: Option<std::fs::File>,
}

impl SqliteStore {
    /// Opens (creating if needed, with its parent directories) the database
    /// at `path` and brings its schema up to date.
    ///
    /// Only one store (in any process) may have a database open at a time:
    /// opening takes an exclusive lock on `PATH.lock` beside it, held until
    /// the store is dropped (or the process dies), and fails with
    /// [`StoreError::Locked`] while another holds it.
    ///
    /// Fails with [`StoreError::NewerSchema`] if a newer taskgrid wrote it.
    pub fn open(path: impl AsRef<Path>, options: SqliteOptions) -> Result<Self, StoreError> {
        Self::open_marked(path.as_ref(), options, WAL_CHECKPOINT_PAGES)
    }

    /// [`SqliteStore::open`] with the WAL copied back every `mark` pages.
    fn open_marked(path: &Path, options: SqliteOptions, mark: u64) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let lock = lock::take(path)?;
        let mut writer = Connection::open(path)?;
        configure(&writer)?;
        // WAL is a property of the file: set once, it stays.
        let mode: String =
            writer.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            // E.g. a network file system without shared memory.
            return Err(StoreError::Io(std::io::Error::other(format!(
                "{}: SQLite cannot use write-ahead logging here (journal_mode is {mode})",
                path.display()
            ))));
        }
        writer.pragma_update(None, "synchronous", options.durability.synchronous())?;
        // The WAL is copied back into the file every 10,000 pages (~40 MiB):
        // at SQLite's default 1,000, a no-op task's hot pages (the b-trees'
        // tails, the state index) were written back over and over — p99
        // latency 3.6 ms at light load against 0.3–0.5 ms, and 10,000 gave
        // 13 % more throughput (BENCHMARKS.md, "The commit discipline"). When the
        // writer is busy the copy is made by a thread of its own, not in a
        // commit (`checkpoint`). The size limit truncates a WAL that grew
        // past it, once it is copied back.
        writer.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)?;
        // The opening's one-off work (migrations, statistics) reads pages
        // once: through a small cache, or it would leave up to 16 MiB of
        // them behind (20 MB measured with 100,000 schedules in the file).
        writer.pragma_update(None, "cache_size", -SCAN_CACHE_KIB)?;
        schema::migrate(&mut writer)?;
        // Refresh the planner's statistics where they are stale, within a
        // bounded amount of work (SQLite's advice for long-lived connections).
        writer.execute_batch("PRAGMA analysis_limit = 1000; PRAGMA optimize = 0x10002;")?;
        writer.pragma_update(None, "cache_size", -CACHE_KIB)?;

        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI;
        let reader = Connection::open_with_flags(path, flags)?;
        configure(&reader)?;
        reader.pragma_update(None, "query_only", true)?;
        // From here the WAL hook decides when the WAL is copied back; the
        // opening's migrations and statistics above ran with SQLite's own
        // copy every 1,000 pages.
        let checkpointer = Checkpointer::start(path, &mut writer, mark, configure)?;
        let wal = Some(checkpointer.progress.clone());
        Ok(SqliteStore {
            writer: Mutex::new(writer),
            reader: Some(Mutex::new(reader)),
            quick: options.durability == Durability::Process,
            wal,
            checkpointer: Some(checkpointer),
            _lock: Some(lock),
        })
    }

    /// A private in-memory database, gone when the store is dropped. One
    /// connection serves reads and writes. For tests.
    pub fn open_in_memory() -> Result<Self, StoreError> {
        let mut conn = Connection::open_in_memory()?;
        configure(&conn)?;
        schema::migrate(&mut conn)?;
        Ok(SqliteStore {
            writer: Mutex::new(conn),
            reader: None,
            quick: true,
            wal: None,
            checkpointer: None,
            _lock: None,
        })
    }

    /// The schema version this build writes (the database's
    /// `PRAGMA user_version` after opening).
    pub fn schema_version() -> u32 {
        schema::supported_version()
    }

    fn write_conn(&self) -> MutexGuard<'_, Connection> {
        // A panic mid-transaction drops the transaction, which rolls back:
        // the connection is fine to reuse.
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn read_conn(&self) -> MutexGuard<'_, Connection> {
        self.reader
            .as_ref()
            .unwrap_or(&self.writer)
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Settings every connection gets.
fn configure(conn: &Connection) -> Result<(), StoreError> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    conn.pragma_update(None, "cache_size", -CACHE_KIB)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    Ok(())
}

impl Store for SqliteStore {
    fn quick_commits(&self) -> bool {
        self.quick
    }

    fn next_commit_stalls(&self) -> bool {
        self.wal.as_ref().is_some_and(|w| w.copy_due())
    }

    fn apply(&self, changes: &[Change]) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut conn = self.write_conn();
        if let Some(wal) = &self.wal {
            wal.committing(changes.len());
        }
        write::apply(&mut conn, changes)
    }

    fn load_active(&self) -> Result<Vec<TaskRecord>, StoreError> {
        read::load_active(&self.read_conn())
    }

    fn get(&self, id: TaskId) -> Result<Option<TaskRecord>, StoreError> {
        read::get(&self.read_conn(), id)
    }

    fn list(&self, q: &TaskQuery) -> Result<Vec<TaskRecord>, StoreError> {
        read::list(&self.read_conn(), q)
    }

    fn attempts(&self, id: TaskId) -> Result<Vec<AttemptRecord>, StoreError> {
        read::attempts(&self.read_conn(), id)
    }

    fn output(
        &self,
        id: TaskId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<(u64, OutputChunk)>, StoreError> {
        read::output(&self.read_conn(), id, after_seq, limit)
    }

    fn count_by_state(&self) -> Result<Vec<(State, u64)>, StoreError> {
        read::count_by_state(&self.read_conn())
    }

    fn paused_queues(&self) -> Result<Vec<String>, StoreError> {
        read::paused_queues(&self.read_conn())
    }

    fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        read::meta(&self.read_conn(), key)
    }

    fn audit(&self, before: Option<u64>, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        read::audit(&self.read_conn(), before, limit)
    }

    fn release_memory(&self) {
        // `shrink_memory` frees the connection's unused cache pages; it
        // cannot fail in a way that matters (the cache just stays).
        for conn in [Some(&self.writer), self.reader.as_ref()]
            .into_iter()
            .flatten()
        {
            let conn = conn.lock().unwrap_or_else(PoisonError::into_inner);
            if let Err(e) = conn.execute_batch("PRAGMA shrink_memory") {
                tracing::debug!(error = %e, "shrink_memory failed");
            }
        }
    }

    fn finished_before(
        &self,
        cutoff: Timestamp,
        after: Option<TaskId>,
        limit: usize,
    ) -> Result<FinishedScan, StoreError> {
        read::finished_before(&self.read_conn(), cutoff, after, limit)
    }

    fn schedules(&self) -> Result<Vec<ScheduleRecord>, StoreError> {
        read::schedules(&self.read_conn(), None, usize::MAX)
    }

    fn schedules_after(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ScheduleRecord>, StoreError> {
        // What a start-up reads once, page after page, and does not read
        // again: through a small cache, so the scan neither fills the
        // connection's 16 MiB with pages nobody reads again nor leaves
        // that memory to the allocator (a hundred thousand schedules are
        // 60 MB of rows). The usual size is back for the next read.
        let conn = self.read_conn();
        conn.pragma_update(None, "cache_size", -SCAN_CACHE_KIB)?;
        let page = read::schedules(&conn, after, limit);
        conn.pragma_update(None, "cache_size", -CACHE_KIB)?;
        page
    }

    fn fires(
        &self,
        schedule: &str,
        from: Option<Timestamp>,
        to: Option<Timestamp>,
        limit: usize,
    ) -> Result<Vec<FireRecord>, StoreError> {
        read::fires(&self.read_conn(), schedule, from, to, limit)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may panic on anything
mod tests;
