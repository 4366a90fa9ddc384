//! [`StoreError`]: everything that can go wrong when reading or writing the
//! durable record, for every backend.

use taskgrid_core::{State, TaskId};

/// An error from a [`Store`](crate::Store) or the [`Writer`](crate::Writer).
///
/// A failed [`Store::apply`](crate::Store::apply) has changed nothing,
/// whatever the variant.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The backend reported an error (IO, a full disk, a locked database,
    /// a lost connection…). Which backend it was is in the message: the
    /// SQLite backend's errors read `sqlite: …`.
    #[error("{0}")]
    Backend(Box<dyn std::error::Error + Send + Sync + 'static>),
    /// Compare-and-set failed: the stored task is no longer in the state the
    /// change expected to move it out of. Someone else wrote it, or the
    /// engine's view and the store's have diverged.
    #[error("task {id} is no longer {expected} in the store")]
    Conflict {
        /// The task.
        id: TaskId,
        /// The state the change expected the stored task to be in.
        expected: State,
    },
    /// A task with this id is already stored.
    #[error("task {0} already exists in the store")]
    Duplicate(TaskId),
    /// No task with this id is stored.
    #[error("task {0} not found in the store")]
    NotFound(TaskId),
    /// A change that cannot be applied as given, such as an assignment without
    /// a worker or a second assignment of the same attempt number.
    #[error("invalid change: {0}")]
    Invalid(String),
    /// Stored data could not be read back: bad JSON in a row, a column of the
    /// wrong type, an unknown state name.
    #[error("corrupt store data: {0}")]
    Corrupt(String),
    /// The database was written by a newer taskgrid whose schema this build
    /// does not know; refusing to touch it.
    #[error(
        "database schema version {found} is newer than this build supports ({supported}); upgrade taskgrid"
    )]
    NewerSchema {
        /// The schema version found in the database.
        found: u32,
        /// The newest schema version this build knows.
        supported: u32,
    },
    /// Another process (or another store in this one) has the database
    /// open: one writer at a time.
    #[error("{dir} is in use by another taskgrid coordinator ({}; it holds {lock_file}): stop it, or use another data dir", pid.map_or_else(|| "pid unknown".to_owned(), |p| format!("pid {p}")))]
    Locked {
        /// The directory of the database.
        dir: String,
        /// The lock file.
        lock_file: String,
        /// The holder's process id, when it could be read.
        pid: Option<u32>,
    },
    /// Another coordinator took over the store (a PostgreSQL store's lease
    /// passed to a newer term): this one may write nothing more.
    #[error(
        "another coordinator took over the store (this one's term {term} ended): it writes nothing more"
    )]
    Fenced {
        /// The term this store held.
        term: u64,
    },
    /// The [`Writer`](crate::Writer) has shut down (or its thread died, or
    /// the store panicked in a commit).
    #[error("the store writer is closed")]
    Closed,
    /// An operating-system error (creating the data directory, spawning the
    /// writer thread).
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

impl StoreError {
    /// A [`Backend`](Self::Backend) error from any error a backend reports.
    pub fn backend(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        StoreError::Backend(Box::new(e))
    }

    /// Whether the store refused the change because it disagrees with the
    /// caller about a task ([`Conflict`](Self::Conflict) or
    /// [`Duplicate`](Self::Duplicate)): the store is fine, the caller's view
    /// of it is stale.
    pub fn is_conflict(&self) -> bool {
        matches!(self, StoreError::Conflict { .. } | StoreError::Duplicate(_))
    }
}
