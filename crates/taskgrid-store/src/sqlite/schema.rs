//! The SQLite schema and its migrations, versioned with `PRAGMA user_version`.
//!
//! [`MIGRATIONS`] is append-only: step `n` (1-based) takes a database from
//! version `n - 1` to `n`. Opening applies the missing steps in order, in one
//! transaction with the version bump, so a crash mid-migration leaves the
//! previous version intact. A database from a newer build is refused.
//!
//! Tables:
//! - `tasks` — one row per task, keyed by the 16 big-endian bytes of its id
//!   (so the key order is id order). `spec` and `status` hold the JSON of the
//!   core types; `queue`, `state`, `worker` and `parent` are copies for
//!   filtering and for compare-and-set on `state`. `WITHOUT ROWID`: the row
//!   lives in the primary-key b-tree, so a lookup by id is one b-tree descent,
//!   and every secondary index ends with the id, which makes
//!   `WHERE state = ? AND id > ? ORDER BY id` an index range scan.
//!
//!   Indexes cost writes: every state change moves the task's entry in each
//!   index that contains `state`. So `state` has one index of its own, while
//!   `queue` and `parent`, which never change, get indexes that are written
//!   once per task. (A `(queue, state)` index cost about a fifth of the write
//!   throughput; a query on both columns walks one of the two indexes and
//!   filters on the other.) `worker` has no index: listing by worker scans.
//! - `task_tags` — `(tag, task_id)`, for listing by tag.
//! - `attempts` — one row per attempt, keyed by `(task_id, attempt)`.
//! - `output` — chunks under an `AUTOINCREMENT` sequence (never reused, so
//!   readers can follow it), indexed by task.
//! - `audit` — the audit log, numbered by rowid; `sqlite.audit_seq` in
//!   `meta` keeps the highest number a prune found, so that a number is
//!   never given twice even once every entry is gone. Indexed by `at`.
//! - `paused_queues` — the names of the paused queues.
//! - `schedules` — one row per schedule, keyed by name, `record` the JSON of
//!   its `ScheduleRecord`.
//! - `schedule_fires` — one row per fire, keyed by `(schedule, at, manual)` (so a
//!   second record of one fire is refused, and a schedule's fires are read
//!   newest first off the key), `record` the JSON of its `FireRecord`;
//!   `fired_at`, `outcome` and `task` are copies for ad-hoc queries. No
//!   foreign key: deleting a schedule deletes its fires explicitly.

use rusqlite::{Connection, TransactionBehavior};

use crate::StoreError;

/// The migration steps, oldest first. Never edit a released step; add one.
pub(crate) const MIGRATIONS: &[&str] = &[
    // 1: the initial schema.
    "
    CREATE TABLE tasks (
        id          BLOB    NOT NULL PRIMARY KEY,
        queue       TEXT    NOT NULL,
        state       TEXT    NOT NULL,
        worker      TEXT,
        parent      BLOB,
        created_at  INTEGER NOT NULL,
        spec        TEXT    NOT NULL,
        status      TEXT    NOT NULL,
        progress    TEXT,
        checkpoint  TEXT
    ) WITHOUT ROWID;
    CREATE INDEX tasks_state ON tasks (state);
    CREATE INDEX tasks_queue ON tasks (queue);
    CREATE INDEX tasks_parent ON tasks (parent) WHERE parent IS NOT NULL;

    CREATE TABLE task_tags (
        tag      TEXT NOT NULL,
        task_id  BLOB NOT NULL,
        PRIMARY KEY (tag, task_id)
    ) WITHOUT ROWID;

    CREATE TABLE attempts (
        task_id      BLOB    NOT NULL,
        attempt      INTEGER NOT NULL,
        worker       TEXT    NOT NULL,
        assigned_at  INTEGER NOT NULL,
        started_at   INTEGER,
        finished_at  INTEGER,
        outcome      TEXT,
        error        TEXT,
        exit_code    INTEGER,
        PRIMARY KEY (task_id, attempt)
    ) WITHOUT ROWID;

    CREATE TABLE output (
        seq      INTEGER PRIMARY KEY AUTOINCREMENT,
        task_id  BLOB    NOT NULL,
        attempt  INTEGER NOT NULL,
        stream   TEXT    NOT NULL,
        data     TEXT    NOT NULL
    );
    CREATE INDEX output_task ON output (task_id);
    ",
    // 2: what each attempt cost (CPU seconds, peak memory, killing signal).
    "
    ALTER TABLE attempts ADD COLUMN cpu_seconds REAL;
    ALTER TABLE attempts ADD COLUMN peak_rss_bytes INTEGER;
    ALTER TABLE attempts ADD COLUMN signal INTEGER;
    ",
    // 3: queues paused by an operator (a restart keeps them paused).
    "
    CREATE TABLE paused_queues (
        name TEXT NOT NULL PRIMARY KEY
    ) WITHOUT ROWID;
    ",
    // 4: schedules and the record of their fires.
    "
    CREATE TABLE schedules (
        name    TEXT NOT NULL PRIMARY KEY,
        record  TEXT NOT NULL
    ) WITHOUT ROWID;

    CREATE TABLE schedule_fires (
        schedule  TEXT    NOT NULL,
        at        INTEGER NOT NULL,
        fired_at  INTEGER NOT NULL,
        outcome   TEXT    NOT NULL,
        task      BLOB,
        record    TEXT    NOT NULL,
        manual    INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (schedule, at, manual)
    ) WITHOUT ROWID;
    ",
    // 5: the coordinator's own state that outlives it (its metrics).
    "
    CREATE TABLE meta (
        key    TEXT NOT NULL PRIMARY KEY,
        value  TEXT NOT NULL
    ) WITHOUT ROWID;
    ",
    // 6: the audit log (who changed what, when, how it ended).
    "
    CREATE TABLE audit (
        seq     INTEGER PRIMARY KEY AUTOINCREMENT,
        at      INTEGER NOT NULL,
        record  TEXT    NOT NULL
    );
    CREATE INDEX audit_at ON audit (at);
    ",
    // 7: no change to the tables: a task's status and spec are written
    // without their empty and default fields from here on, which builds
    // before it cannot read; the version bump makes them refuse the file
    // (`NewerSchema`) instead of calling its rows corrupt.
    "-- the short status and spec JSON",
    // 8: audit entries numbered by their rowid, without AUTOINCREMENT
    // (which rewrote sqlite_sequence's page in every commit that held an
    // entry); the highest number given before a prune that deletes is
    // kept in `meta` (`sqlite.audit_seq`), so that numbers never go back.
    "
    CREATE TABLE audit_rowid (
        seq     INTEGER PRIMARY KEY,
        at      INTEGER NOT NULL,
        record  TEXT    NOT NULL
    );
    INSERT INTO audit_rowid (seq, at, record) SELECT seq, at, record FROM audit;
    INSERT OR REPLACE INTO meta (key, value)
        SELECT 'sqlite.audit_seq', CAST(seq AS TEXT) FROM sqlite_sequence WHERE name = 'audit';
    DROP TABLE audit;
    ALTER TABLE audit_rowid RENAME TO audit;
    CREATE INDEX audit_at ON audit (at);
    ",
];

/// The schema version this build writes.
pub(crate) fn supported_version() -> u32 {
    u32::try_from(MIGRATIONS.len()).unwrap_or(u32::MAX)
}

/// The database's schema version.
pub(crate) fn user_version(conn: &Connection) -> Result<u32, StoreError> {
    let v: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    u32::try_from(v).map_err(|_| StoreError::Corrupt(format!("negative schema version {v}")))
}

/// Brings the database up to [`supported_version`], or refuses one that is
/// newer. Re-running it on an up-to-date database changes nothing.
pub(crate) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let supported = supported_version();
    // Take the write lock first, so that two processes opening the same new
    // file cannot both run step 1.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let found = user_version(&tx)?;
    if found > supported {
        return Err(StoreError::NewerSchema { found, supported });
    }
    if found == supported {
        return Ok(());
    }
    for (i, step) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        tx.execute_batch(step)?;
        tracing::info!(version = i + 1, "migrated the store's schema");
    }
    tx.pragma_update(None, "user_version", supported)?;
    tx.commit()?;
    Ok(())
}
