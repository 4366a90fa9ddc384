//! Durable storage for taskgrid: the record of every task, attempt and output
//! chunk, of paused queues, and of every schedule and its fires, from which
//! the engine is rebuilt at start-up.
//!
//! The engine emits an ordered list of [`Change`]s; a [`Store`] applies them
//! all-or-nothing, with compare-and-set on every state change, and answers the
//! queries the API and the start-up path need. Two backends implement it:
//!
//! - `SqliteStore` — the durable one: SQLite in WAL mode, versioned
//!   migrations, a separate read connection (feature `sqlite`, on by
//!   default).
//! - `PostgresStore` — the same on a PostgreSQL database (feature
//!   `postgres`), for coordinators that outgrow one machine's disk.
//! - [`MemoryStore`] — everything in one process's memory, for tests,
//!   benchmarks and embedding without persistence.
//!
//! [`StoreConfig`] names a backend as text (`memory`, `sqlite:PATH`) and
//! opens it: the one factory a coordinator chooses its store through.
//! Another backend implements [`Store`] in its own crate and proves itself
//! with the conformance suite (`conformance`, feature `testing`).
//!
//! This crate must never depend on the coordinator, the server or the
//! network: it is the record, not the service.
//!
//! A [`Writer`] sits in front of a store and group-commits: one background
//! thread applies whatever batches are queued in one transaction and then
//! tells each submitter its result (at light load, a caller may commit its
//! own small batch instead of waking it: [`Writer::submit_then_help`]).
//!
//! ```
//! use std::sync::Arc;
//! use taskgrid_core::{Change, State, TaskId, TaskKind, TaskRecord, TaskSpec, TaskStatus, Timestamp};
//! use taskgrid_store::{MemoryStore, Store, Writer};
//!
//! let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
//! let writer = Writer::spawn(store.clone());
//! let id = TaskId::from_u128(1);
//! let task = TaskRecord {
//!     id,
//!     spec: TaskSpec::new(TaskKind::handler("echo", "{}")),
//!     created_at: Timestamp::from_micros(1),
//!     status: TaskStatus::new(State::Queued),
//!     progress: None,
//!     checkpoint: None,
//! };
//! let (tx, rx) = std::sync::mpsc::channel();
//! let done = Box::new(move |result| tx.send(result).unwrap_or(()));
//! writer.submit(vec![Change::Submitted(Box::new(task))], Some(done))?;
//! rx.recv().expect("the writer reports")?; // committed: now acknowledge
//! assert_eq!(store.get(id)?.map(|t| t.status.state), Some(State::Queued));
//! # Ok::<(), taskgrid_store::StoreError>(())
//! ```

mod attempt;
mod error;
mod memory;
mod open;
#[cfg(feature = "postgres")]
mod postgres;
mod schedule;
#[cfg(feature = "sqlite")]
mod sqlite;
#[cfg(any(test, feature = "sqlite", feature = "postgres"))]
mod status;
mod writer;

#[cfg(any(test, feature = "testing"))]
pub mod conformance;

pub use error::StoreError;
pub use memory::MemoryStore;
pub use open::{BadStoreConfig, StoreConfig};
#[cfg(feature = "postgres")]
pub use postgres::{ClusterProbe, PostgresOptions, PostgresStore, read_cluster};
#[cfg(feature = "sqlite")]
pub use sqlite::{BUSY_TIMEOUT, Durability, SqliteOptions, SqliteStore};
pub use writer::{BATCH_CAP, Done, HELP_MAX_CHANGES, HELP_PAUSE, LAZY_WINDOW, MAX_WINDOW, Writer};

use taskgrid_core::{
    AttemptRecord, AuditEntry, Change, FireRecord, OutputChunk, ScheduleRecord, State, TaskId,
    TaskRecord, TaskStatus, Timestamp, WorkerId,
};

/// When a group commit may commit ([`Store::apply_when`]): in the order
/// its group was taken, after every earlier group in flight.
///
/// A closure is a turn that is never known to have come before it is
/// waited for.
pub trait Turn {
    /// Blocks until every earlier group in flight has committed (or
    /// failed and been reported); [`StoreError::Closed`] if one of them
    /// stopped the writer.
    fn wait(&self) -> Result<(), StoreError>;

    /// Whether the turn has come already (every earlier group finished
    /// and none stopped the writer), so that [`wait`](Turn::wait) would
    /// return `Ok` at once. Once true it stays true until this commit
    /// ends.
    fn now(&self) -> bool {
        false
    }
}

impl<F: Fn() -> Result<(), StoreError>> Turn for F {
    fn wait(&self) -> Result<(), StoreError> {
        self()
    }
}

/// The turn of a commit that waits for none: it has always come.
#[derive(Debug, Clone, Copy, Default)]
pub struct Now;

impl Turn for Now {
    fn wait(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn now(&self) -> bool {
        true
    }
}

/// The durable record of tasks. Every method takes `&self`; implementations
/// synchronise internally, so one store is shared between the [`Writer`]
/// thread and any number of readers.
pub trait Store: Send + Sync + 'static {
    /// Applies `changes` in order, in one transaction: all of them or none.
    ///
    /// - [`Change::Submitted`] inserts the task; an id already stored fails
    ///   with [`StoreError::Duplicate`].
    /// - [`Change::Status`] writes the new status only if the stored state is
    ///   still `from` ([`StoreError::Conflict`] otherwise,
    ///   [`StoreError::NotFound`] for an unknown task). It also keeps the
    ///   attempt history: `queued → assigned` records a new attempt (its
    ///   worker must be set, its number must be new, else
    ///   [`StoreError::Invalid`]); `assigned → running` stamps its start; an
    ///   `attempt_outcome` stamps its end with the outcome, the error message
    ///   (for failed and timed-out attempts) and the exit code. Start and end
    ///   stamps for an attempt that was never recorded are ignored.
    /// - [`Change::Progress`] and [`Change::Checkpoint`] overwrite those fields
    ///   ([`StoreError::NotFound`] for an unknown task).
    /// - [`Change::Output`] appends the chunk under the next sequence number
    ///   ([`StoreError::NotFound`] for an unknown task).
    /// - [`Change::Queue`] records whether a queue is paused (see
    ///   [`Store::paused_queues`]).
    /// - [`Change::Schedule`] inserts or replaces a schedule by name;
    ///   [`Change::ScheduleDeleted`] removes one (and its fires; an unknown
    ///   name is no error); [`Change::Fire`] records a fire, and a second
    ///   record with the same (schedule, `at`) fails with
    ///   [`StoreError::Invalid`] (a fire needs no stored schedule). Schedule
    ///   changes apply in batch order.
    /// - [`Change::Meta`] stores a value under its key, replacing the last.
    /// - [`Change::Audit`] appends an entry to the audit log under the next
    ///   number; [`Change::AuditPruned`] deletes the entries older than its
    ///   time.
    /// - [`Change::Deleted`] deletes a task with its tags, attempts and
    ///   output (an unknown id is no error); [`Change::OutputDeleted`] only
    ///   its output.
    fn apply(&self, changes: &[Change]) -> Result<(), StoreError>;

    /// How many transactions this store can run at once. The [`Writer`]
    /// keeps up to this many group commits in flight when they touch
    /// different tasks, and commits them in submission order
    /// ([`apply_when`](Store::apply_when)). The default: one.
    fn lanes(&self) -> usize {
        1
    }

    /// Whether a commit is quick (no fsync, no network round trip), so
    /// that a caller may make it on its own thread instead of waking the
    /// [`Writer`]'s ([`Writer::submit_then_help`]). The default: no.
    fn quick_commits(&self) -> bool {
        false
    }

    /// Whether the next commit of a light load would stall where commits
    /// are otherwise quick (SQLite: it would copy the WAL back into the
    /// file, tens of milliseconds). A caller then leaves it to the
    /// [`Writer`]'s thread ([`Writer::submit_then_help`]) rather than hold
    /// its own (an async worker) for it. Read at each such submit: keep it
    /// cheap. The default: no.
    fn next_commit_stalls(&self) -> bool {
        false
    }

    /// Like [`apply`](Store::apply), but commits only in `turn`: once the
    /// changes are written and checked it calls [`Turn::wait`] just before
    /// committing, and commits only if it returns `Ok`; otherwise nothing
    /// is applied and its error is returned. Where [`Turn::now`] says the
    /// turn has come already, a store may commit without asking again
    /// (PostgreSQL then sends its `COMMIT` with the statements). The
    /// [`Writer`] runs several at once (on disjoint tasks, up to
    /// [`lanes`](Store::lanes)) and blocks in `wait` until every earlier
    /// one has committed. The default waits first, then
    /// [`apply`](Store::apply)s.
    fn apply_when(&self, changes: &[Change], turn: &dyn Turn) -> Result<(), StoreError> {
        turn.wait()?;
        self.apply(changes)
    }

    /// Every task not in a terminal state, in id order: what the engine needs
    /// to rebuild itself after a restart.
    fn load_active(&self) -> Result<Vec<TaskRecord>, StoreError>;

    /// One task, or `None` if no task has this id.
    fn get(&self, id: TaskId) -> Result<Option<TaskRecord>, StoreError>;

    /// The tasks matching every filter set in `q`, in ascending id order, at
    /// most `q.limit` of them.
    fn list(&self, q: &TaskQuery) -> Result<Vec<TaskRecord>, StoreError>;

    /// The attempts of a task in attempt order (empty for an unknown task).
    fn attempts(&self, id: TaskId) -> Result<Vec<AttemptRecord>, StoreError>;

    /// Up to `limit` output chunks of a task with a sequence number greater
    /// than `after_seq`, in sequence order, each with its sequence number.
    /// Pass the last number seen to read on; 0 reads from the start.
    fn output(
        &self,
        id: TaskId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<(u64, OutputChunk)>, StoreError>;

    /// The number of tasks in each state: every state of [`State::ALL`], in
    /// that order, zeros included.
    fn count_by_state(&self) -> Result<Vec<(State, u64)>, StoreError>;

    /// The queues whose last [`Change::Queue`] paused them, in name order.
    fn paused_queues(&self) -> Result<Vec<String>, StoreError>;

    /// Every schedule ([`Change::Schedule`] inserts or replaces one by
    /// name, [`Change::ScheduleDeleted`] removes it), in name order.
    fn schedules(&self) -> Result<Vec<ScheduleRecord>, StoreError>;

    /// [`Store::schedules`] a page at a time: those whose names come after
    /// `after` (all when `None`), in name order, at most `limit` — what a
    /// restart reads, so that a hundred thousand schedules are never all
    /// decoded at once. The default reads them all and pages in memory.
    fn schedules_after(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ScheduleRecord>, StoreError> {
        Ok(self
            .schedules()?
            .into_iter()
            .filter(|r| after.is_none_or(|a| r.name.as_str() > a))
            .take(limit)
            .collect())
    }

    /// The fires of `schedule` ([`Change::Fire`]) whose scheduled time `at`
    /// is within `from..=to` (an absent bound does not limit), newest
    /// (greatest `at`) first, at most `limit` of them.
    fn fires(
        &self,
        schedule: &str,
        from: Option<Timestamp>,
        to: Option<Timestamp>,
        limit: usize,
    ) -> Result<Vec<FireRecord>, StoreError>;

    /// The value last stored under `key` by [`Change::Meta`], if any.
    fn meta(&self, key: &str) -> Result<Option<String>, StoreError>;

    /// Audit log entries ([`Change::Audit`]) numbered below `before` (all
    /// when `None`), newest first, at most `limit`.
    fn audit(&self, before: Option<u64>, limit: usize) -> Result<Vec<AuditEntry>, StoreError>;

    /// Gives back memory the store holds only to be faster (caches of
    /// pages read), after a bulk read that will not be repeated soon: the
    /// start-up calls it once the engine is restored. The default does
    /// nothing.
    fn release_memory(&self) {}

    /// One step of a sweep for finished tasks that ended before `cutoff`
    /// (what retention deletes): reads up to `limit` tasks created before
    /// `cutoff` (ids are UUIDv7, so by id), in id order after `after`, and
    /// returns those that are terminal with `finished_at < cutoff`, and the
    /// last id read (`None` once there is nothing more to read). Pass that
    /// id as `after` to read on.
    fn finished_before(
        &self,
        cutoff: Timestamp,
        after: Option<TaskId>,
        limit: usize,
    ) -> Result<FinishedScan, StoreError>;

    /// Who leads this store and who stands by, for a store that several
    /// coordinators share (PostgreSQL); `None` for one that only its own
    /// process opens (memory, SQLite).
    fn cluster(&self) -> Result<Option<Cluster>, StoreError> {
        Ok(None)
    }
}

/// What one step of [`Store::finished_before`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FinishedScan {
    /// The tasks that finished before the cutoff, in id order.
    pub finished: Vec<FinishedTask>,
    /// The last id read; `None` when nothing was left to read.
    pub last: Option<TaskId>,
}

/// A task [`Store::finished_before`] found: enough to apply a retention
/// per queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinishedTask {
    /// The task.
    pub id: TaskId,
    /// Its queue.
    pub queue: String,
    /// When it finished.
    pub finished_at: Timestamp,
}

/// The tags of a stored spec (JSON), read leniently: only `tags` is
/// looked at, so a spec an older or newer build wrote still gives them;
/// one that is not JSON at all gives none (its tag rows are then left
/// behind, which no query sees without the task).
pub(crate) fn tags_of(spec: &str) -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct Tags {
        #[serde(default)]
        tags: Vec<String>,
    }
    serde_json::from_str::<Tags>(spec).map_or_else(|_| Vec::new(), |t| t.tags)
}

/// When the task of `status` finished, if it is terminal and did so
/// before `cutoff`.
pub(crate) fn finished_before_at(status: &TaskStatus, cutoff: Timestamp) -> Option<Timestamp> {
    status
        .finished_at
        .filter(|f| status.state.is_terminal() && *f < cutoff)
}

/// The default page size of a [`TaskQuery`].
pub const QUERY_LIMIT_DEFAULT: usize = 100;

/// Which tasks [`Store::list`] returns. Every filter that is set must match;
/// results come in ascending id order, or descending with `newest_first`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskQuery {
    /// Only tasks in this state.
    pub state: Option<State>,
    /// Only tasks of this queue.
    pub queue: Option<String>,
    /// Only tasks carrying this tag.
    pub tag: Option<String>,
    /// Only subtasks of this task.
    pub parent: Option<TaskId>,
    /// Only tasks that ran, or are running, on this worker: one of their
    /// attempts was assigned to it and not refused by it. A task that moved
    /// on to another worker is still listed; one the worker refused is not.
    pub worker: Option<WorkerId>,
    /// Cursor: only ids strictly greater than this one (strictly smaller,
    /// with `newest_first`). Pass the last id of the previous page to read
    /// the next.
    pub after: Option<TaskId>,
    /// Newest first: descending id order, and `after` pages on to older
    /// tasks.
    pub newest_first: bool,
    /// At most this many tasks.
    pub limit: usize,
}

impl Default for TaskQuery {
    fn default() -> Self {
        TaskQuery {
            state: None,
            queue: None,
            tag: None,
            parent: None,
            worker: None,
            after: None,
            newest_first: false,
            limit: QUERY_LIMIT_DEFAULT,
        }
    }
}

/// The counts of [`Store::count_by_state`] from a per-state array indexed by
/// the state's position in [`State::ALL`].
pub(crate) fn counts_in_order(counts: &[u64; State::ALL.len()]) -> Vec<(State, u64)> {
    State::ALL.into_iter().zip(counts.iter().copied()).collect()
}

/// The position of `s` in [`State::ALL`].
pub(crate) fn state_index(s: State) -> usize {
    State::ALL.iter().position(|x| *x == s).unwrap_or(0)
}

/// The coordinators on one shared store: the leader, which holds the lease
/// and alone writes, and the standbys waiting to take it over.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cluster {
    /// The lease's term: it rises by one at every change of leader.
    pub term: u64,
    /// The holder of a current lease; `None` between a leader's end and its
    /// successor's start.
    pub leader: Option<Member>,
    /// The coordinators waiting for the lease, in name order.
    pub standbys: Vec<Member>,
}

/// One coordinator of a [`Cluster`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Which process: `pid N on HOST`.
    pub holder: String,
    /// Where clients and workers reach it (`http://HOST:PORT`); empty if it
    /// did not say.
    pub address: String,
}
