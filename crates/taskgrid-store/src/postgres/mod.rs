//! [`PostgresStore`]: the [`Store`] on a PostgreSQL database, for
//! coordinators that outgrow one machine's disk.
//!
//! Two connections write (`apply`, normally called only by the
//! [`Writer`](crate::Writer)'s lanes, each lent one), one reads; with
//! PostgreSQL's MVCC a read never waits for a group commit. Each `apply` is one transaction,
//! its statements pipelined (`pipeline`): one round trip a commit when its
//! turn has come already, else two (the `COMMIT` waits for the turn);
//! status changes are compare-and-set (`UPDATE … WHERE state = $from`), as
//! on SQLite. Commits are durable as the server is configured
//! (`synchronous_commit=on` by default: a commit survives a crash of the
//! database host).
//!
//! One writer at a time, and standbys: opening takes the schema's lease
//! (`lease`): a term number that rises at every change of leader, renewed
//! about every second and lost when not renewed for its length (3 s by
//! default). Every transaction first checks, holding a share lock on the
//! lease row, that the term is still this store's: an old leader that wakes
//! up after a pause can commit nothing once a standby took over. A second
//! store on the same schema fails with [`StoreError::Locked`] naming the
//! holder, or, with [`PostgresOptions::wait`], waits as a standby.
//!
//! Tables live in one schema (`public` unless the URL or
//! [`PostgresStore::open_in_schema`] names another), with versioned
//! migrations in `taskgrid_schema`, applied at open under a transaction-level
//! advisory lock.

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use postgres::types::ToSql;
use postgres::{Client, NoTls, Row};
use serde::Serialize;
use serde::de::DeserializeOwned;
use taskgrid_core::{
    AttemptRecord, AuditEntry, Change, FireRecord, OutputChunk, ScheduleRecord, State, Stream,
    TaskId, TaskRecord, Timestamp, WorkerId,
};

use crate::attempt::{parse_outcome, usage_of};
use crate::schedule;
use crate::{Store, StoreError, TaskQuery, Turn, counts_in_order, state_index};

/// An error from PostgreSQL, as a [`StoreError::Backend`] whose message says
/// where it came from.
#[derive(Debug, thiserror::Error)]
#[error("postgres: {0}")]
struct PostgresError(postgres::Error);

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> Self {
        StoreError::backend(PostgresError(e))
    }
}

/// The migration steps, oldest first. Never edit a released step; add one.
const MIGRATIONS: &[&str] = &[
    // 1: the initial schema (the same tables as SQLite's, in PostgreSQL's
    // types; ids are the 16 big-endian bytes of the UUID, so bytea order is
    // id order). Free text from programs (output, checkpoints, error
    // messages) is UTF-8 in bytea: PostgreSQL's text refuses a NUL, which
    // a program may well print.
    "
    CREATE TABLE tasks (
        id          bytea   NOT NULL PRIMARY KEY,
        queue       text    NOT NULL,
        state       text    NOT NULL,
        worker      text,
        parent      bytea,
        created_at  bigint  NOT NULL,
        spec        text    NOT NULL,
        status      text    NOT NULL,
        progress    text,
        checkpoint  bytea
    );
    CREATE INDEX tasks_state ON tasks (state);
    CREATE INDEX tasks_queue ON tasks (queue);
    CREATE INDEX tasks_parent ON tasks (parent) WHERE parent IS NOT NULL;

    CREATE TABLE task_tags (
        tag      text  NOT NULL,
        task_id  bytea NOT NULL,
        PRIMARY KEY (tag, task_id)
    );

    CREATE TABLE attempts (
        task_id         bytea   NOT NULL,
        attempt         bigint  NOT NULL,
        worker          text    NOT NULL,
        assigned_at     bigint  NOT NULL,
        started_at      bigint,
        finished_at     bigint,
        outcome         text,
        error           bytea,
        exit_code       integer,
        cpu_seconds     double precision,
        peak_rss_bytes  bigint,
        signal          integer,
        PRIMARY KEY (task_id, attempt)
    );

    CREATE TABLE output (
        seq      bigserial PRIMARY KEY,
        task_id  bytea     NOT NULL,
        attempt  bigint    NOT NULL,
        stream   text      NOT NULL,
        data     bytea     NOT NULL
    );
    CREATE INDEX output_task ON output (task_id, seq);

    CREATE TABLE paused_queues (
        name text NOT NULL PRIMARY KEY
    );
    ",
    // 2: schedules and the record of their fires (as on SQLite: the whole
    // record as JSON, keyed by name, and fires keyed by (schedule, at)).
    "
    CREATE TABLE schedules (
        name    text NOT NULL PRIMARY KEY,
        record  text NOT NULL
    );

    CREATE TABLE schedule_fires (
        schedule  text   NOT NULL,
        at        bigint NOT NULL,
        fired_at  bigint NOT NULL,
        outcome   text   NOT NULL,
        task      bytea,
        record    text   NOT NULL,
        manual    boolean NOT NULL DEFAULT false,
        PRIMARY KEY (schedule, at, manual)
    );
    ",
    // 3: the coordinator's own state that outlives it (its metrics).
    "
    CREATE TABLE meta (
        key    text NOT NULL PRIMARY KEY,
        value  text NOT NULL
    );
    ",
    // 4: the audit log (who changed what, when, how it ended).
    "
    CREATE TABLE audit (
        seq     bigserial PRIMARY KEY,
        at      bigint NOT NULL,
        record  text   NOT NULL
    );
    CREATE INDEX audit_at ON audit (at);
    ",
    // 5: no change to the tables: a task's status and spec are written
    // without their empty and default fields from here on, which builds
    // before it cannot read; the version bump makes them refuse the
    // database (`NewerSchema`) instead of calling its rows corrupt.
    "-- the short status and spec JSON",
    // 6: one index serves listing by state and by queue (a query by queue
    // alone names every state): each version of a task's row (no status
    // change is HOT, `state` being indexed) costs one index entry fewer.
    "
    CREATE INDEX IF NOT EXISTS tasks_state_queue ON tasks (state, queue);
    DROP INDEX IF EXISTS tasks_state;
    DROP INDEX IF EXISTS tasks_queue;
    ",
];

/// The advisory lock that serialises migrations ("th").
const MIGRATION_LOCK: i32 = 0x7468;

/// The durable store on PostgreSQL.
pub struct PostgresStore {
    /// `None` only while dropping.
    conns: Option<Conns>,
    /// The leadership this store writes under; released on drop.
    lease: Option<Lease>,
    schema: String,
}

/// How many connections write ([`Store::lanes`]): while one group
/// commit runs in its server process, the next is written beside it in
/// another, on another core.
const WRITE_LANES: usize = 2;

/// The connections: [`WRITE_LANES`] write (pipelined), one reads.
struct Conns {
    writers: Writers,
    reader: Mutex<Client>,
}

/// The write connections, each lent to one `apply` at a time.
struct Writers {
    free: Mutex<Vec<pipeline::WriteConn>>,
    returned: Condvar,
    count: usize,
}

/// A write connection lent from [`Writers`], given back when dropped
/// (also while unwinding: a transaction a panic left open is rolled back
/// before its next batch, see `pipeline`).
struct Lent<'a> {
    writers: &'a Writers,
    conn: Option<pipeline::WriteConn>,
}

impl std::ops::Deref for Lent<'_> {
    type Target = pipeline::WriteConn;
    fn deref(&self) -> &pipeline::WriteConn {
        self.conn
            .as_ref()
            .unwrap_or_else(|| unreachable!("given back only on drop"))
    }
}

impl std::ops::DerefMut for Lent<'_> {
    fn deref_mut(&mut self) -> &mut pipeline::WriteConn {
        self.conn
            .as_mut()
            .unwrap_or_else(|| unreachable!("given back only on drop"))
    }
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.writers
                .free
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(conn);
            self.writers.returned.notify_one();
        }
    }
}

impl Drop for PostgresStore {
    /// Closing a connection blocks on the client's own runtime, which must
    /// not happen on a thread that drives async tasks: the connections are
    /// closed on a thread of their own (and waited for, so the one-writer
    /// lock is released when this returns).
    fn drop(&mut self) {
        let lease = self.lease.take();
        if let Some(conns) = self.conns.take()
            && let Ok(closing) = std::thread::Builder::new()
                .name("taskgrid-pg-close".to_owned())
                .spawn(move || {
                    // Hand over at once: a standby takes the lease at its
                    // next try instead of waiting for it to expire.
                    if let Some(lease) = lease {
                        lease.release();
                    }
                    drop(conns);
                })
        {
            let _ = closing.join();
        }
    }
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://user@host:port/db`),
    /// brings the schema up to date and takes the leader's lease, in schema
    /// `public`, with the default [`PostgresOptions`] (failing with
    /// [`StoreError::Locked`] while another store leads).
    pub fn open(url: &str) -> Result<Self, StoreError> {
        Self::open_with(url, "public", PostgresOptions::default())
    }

    /// Like [`open`](Self::open), in schema `schema` (created if missing).
    pub fn open_in_schema(url: &str, schema: &str) -> Result<Self, StoreError> {
        Self::open_with(url, schema, PostgresOptions::default())
    }

    /// Like [`open`](Self::open), in schema `schema`, with `options`: with
    /// `options.wait` a second store waits as a standby until it can take
    /// the lease, instead of failing.
    pub fn open_with(
        url: &str,
        schema: &str,
        options: PostgresOptions,
    ) -> Result<Self, StoreError> {
        if schema.is_empty()
            || !schema
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(StoreError::Invalid(format!(
                "schema name {schema:?}: use letters, digits and underscores"
            )));
        }
        let mut writer = connect(url, schema)?;
        writer.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))?;
        // Lead first, then migrate under the lease: a standby running a
        // newer build must not change the schema under a live leader.
        let lease = Lease::take(&mut writer, url, schema, &options)?;
        // The blocking connection took the lease and migrated; from here
        // on it reads, and pipelined ones write.
        let opened = migrate(&mut writer, &lease).and_then(|()| {
            let config = config(url)?;
            (0..WRITE_LANES)
                .map(|_| pipeline::WriteConn::connect(&config, schema))
                .collect::<Result<Vec<_>, _>>()
        });
        let (writers, reader) = match opened {
            Ok(pipelined) => (
                Writers {
                    count: pipelined.len(),
                    free: Mutex::new(pipelined),
                    returned: Condvar::new(),
                },
                writer,
            ),
            Err(e) => {
                // A standby need not wait out the lease of a store that
                // never opened.
                lease.release();
                return Err(e);
            }
        };
        Ok(PostgresStore {
            conns: Some(Conns {
                writers,
                reader: Mutex::new(reader),
            }),
            lease: Some(lease),
            schema: schema.to_owned(),
        })
    }

    /// Stops renewing the lease without letting go: as if this process were
    /// paused.
    #[cfg(test)]
    fn stop_renewing(&mut self) {
        if let Some(lease) = &mut self.lease {
            lease.stop_renewing();
        }
    }

    /// The term of this store's lease: it rises by one at every change of
    /// leader.
    pub fn term(&self) -> u64 {
        self.lease.as_ref().map_or(0, Lease::term)
    }

    /// The schema version this build writes.
    pub fn schema_version() -> u32 {
        u32::try_from(MIGRATIONS.len()).unwrap_or(u32::MAX)
    }

    fn conns(&self) -> Result<&Conns, StoreError> {
        self.conns.as_ref().ok_or(StoreError::Closed)
    }

    /// The round trips the write connections not lent out have made.
    #[cfg(test)]
    fn flights(&self) -> usize {
        self.conns().map_or(0, |c| {
            let free = c
                .writers
                .free
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            free.iter().map(|w| w.flights).sum()
        })
    }

    /// A write connection no one is using (waiting for one if need be).
    fn write_conn(&self) -> Result<Lent<'_>, StoreError> {
        let writers = &self.conns()?.writers;
        let mut free = writers.free.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(conn) = free.pop() {
                return Ok(Lent {
                    writers,
                    conn: Some(conn),
                });
            }
            free = writers
                .returned
                .wait(free)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn read_conn(&self) -> Result<MutexGuard<'_, Client>, StoreError> {
        Ok(self
            .conns()?
            .reader
            .lock()
            .unwrap_or_else(PoisonError::into_inner))
    }
}

/// How every connection of a store connects to the database at `url`.
fn config(url: &str) -> Result<tokio_postgres::Config, StoreError> {
    let mut config: tokio_postgres::Config = url
        .parse()
        .map_err(|e| StoreError::Invalid(format!("database URL: {e}")))?;
    config.application_name("taskgrid");
    // A dead server or a cut network must fail calls, not hang them: the
    // lease's renewals and a standby's tries depend on it.
    config.connect_timeout(std::time::Duration::from_secs(5));
    config.keepalives(true);
    config.keepalives_idle(std::time::Duration::from_secs(5));
    Ok(config)
}

/// A connection whose `search_path` is `schema`.
pub(super) fn connect(url: &str, schema: &str) -> Result<Client, StoreError> {
    let mut client = postgres::Config::from(config(url)?).connect(NoTls)?;
    client.batch_execute(&format!("SET search_path TO {schema}"))?;
    Ok(client)
}

/// The URL without its password
/// (`user:password@` and any `password=` parameter).
pub(crate) fn redact(url: &str) -> String {
    let url = match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{}:***{}", &url[..s + 3], user, &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    };
    let mut out = String::with_capacity(url.len());
    let mut rest = url.as_str();
    while let Some(i) = rest.find("password=") {
        let (head, tail) = rest.split_at(i + "password=".len());
        out.push_str(head);
        out.push_str("***");
        rest = tail
            .find(|c: char| c == '&' || c.is_whitespace())
            .map_or("", |end| &tail[end..]);
    }
    out.push_str(rest);
    out
}

/// Brings the schema up to date under a transaction-level advisory lock, or
/// refuses a newer one.
fn migrate(client: &mut Client, lease: &Lease) -> Result<(), StoreError> {
    let supported = PostgresStore::schema_version();
    let mut tx = client.transaction()?;
    lease.fence(&mut tx)?;
    tx.execute("SELECT pg_advisory_xact_lock($1, 0)", &[&MIGRATION_LOCK])?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS taskgrid_schema (version integer NOT NULL)")?;
    let found = match tx.query_opt("SELECT version FROM taskgrid_schema", &[])? {
        Some(r) => col::<i32>(&r, 0)?,
        None => 0,
    };
    let found = u32::try_from(found)
        .map_err(|_| StoreError::Corrupt(format!("negative schema version {found}")))?;
    if found > supported {
        return Err(StoreError::NewerSchema { found, supported });
    }
    for (i, step) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        tx.batch_execute(step)?;
        tracing::info!(version = i + 1, "migrated the PostgreSQL store's schema");
    }
    let v = i32::try_from(supported).unwrap_or(i32::MAX);
    if found == 0 {
        tx.execute("INSERT INTO taskgrid_schema (version) VALUES ($1)", &[&v])?;
    } else {
        tx.execute("UPDATE taskgrid_schema SET version = $1", &[&v])?;
    }
    tx.commit()?;
    Ok(())
}

pub(super) fn micros(t: Timestamp) -> i64 {
    t.as_micros() as i64
}

fn timestamp(v: i64) -> Timestamp {
    Timestamp::from_micros(v as u64)
}

pub(super) fn json<T: Serialize>(id: TaskId, what: &str, value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value)
        .map_err(|e| StoreError::Invalid(format!("task {id}: cannot encode {what}: {e}")))
}

fn from_json<T: DeserializeOwned>(id: TaskId, what: &str, text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text)
        .map_err(|e| StoreError::Corrupt(format!("task {id}: bad {what} JSON: {e}")))
}

/// Column `i` of `row`; a value of the wrong type is corrupt data.
fn col<'a, T: postgres::types::FromSql<'a>>(row: &'a Row, i: usize) -> Result<T, StoreError> {
    row.try_get(i)
        .map_err(|e| StoreError::Corrupt(format!("column {i}: {e}")))
}

const TASK_COLUMNS: &str = "id, created_at, spec, status, progress, checkpoint";

/// A row of [`TASK_COLUMNS`] as a record.
fn task_row(row: &Row) -> Result<TaskRecord, StoreError> {
    let key: Vec<u8> = col(row, 0)?;
    let key: [u8; 16] = key.try_into().map_err(|k: Vec<u8>| {
        StoreError::Corrupt(format!("task id of {} bytes, not 16", k.len()))
    })?;
    let id = TaskId::from_bytes(key);
    Ok(TaskRecord {
        id,
        created_at: timestamp(col(row, 1)?),
        spec: from_json(id, "spec", col::<&str>(row, 2)?)?,
        status: from_json(id, "status", col::<&str>(row, 3)?)?,
        progress: col::<Option<&str>>(row, 4)?
            .map(|p| from_json(id, "progress", p))
            .transpose()?,
        checkpoint: col::<Option<Vec<u8>>>(row, 5)?
            .map(|b| text(id, "checkpoint", b).map(String::into_boxed_str))
            .transpose()?,
    })
}

/// UTF-8 text stored as bytea.
fn text(id: TaskId, what: &str, bytes: Vec<u8>) -> Result<String, StoreError> {
    String::from_utf8(bytes)
        .map_err(|e| StoreError::Corrupt(format!("task {id}: {what} is not UTF-8: {e}")))
}

fn attempt_number(id: TaskId, v: i64) -> Result<u32, StoreError> {
    u32::try_from(v).map_err(|_| StoreError::Corrupt(format!("task {id}: attempt number {v}")))
}

impl Store for PostgresStore {
    fn apply(&self, changes: &[Change]) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        self.apply_when(changes, &crate::Now)
    }

    fn lanes(&self) -> usize {
        self.conns.as_ref().map_or(1, |c| c.writers.count)
    }

    fn apply_when(&self, changes: &[Change], turn: &dyn Turn) -> Result<(), StoreError> {
        if changes.is_empty() {
            return turn.wait();
        }
        bulk::apply(&mut *self.write_conn()?, self.lease.as_ref(), changes, turn)
    }

    fn finished_before(
        &self,
        cutoff: Timestamp,
        after: Option<TaskId>,
        limit: usize,
    ) -> Result<crate::FinishedScan, StoreError> {
        let from = after.map_or([0u8; 16], TaskId::to_bytes).to_vec();
        let bound = TaskId::created_before(cutoff).to_bytes().to_vec();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self.read_conn()?.query(
            "SELECT id, status, queue FROM tasks WHERE id > $1 AND id < $2 ORDER BY id LIMIT $3",
            &[&from, &bound, &limit],
        )?;
        let mut scan = crate::FinishedScan::default();
        for row in &rows {
            let key: Vec<u8> = row.try_get(0)?;
            let key: [u8; 16] = key.try_into().map_err(|k: Vec<u8>| {
                StoreError::Corrupt(format!("task id of {} bytes, not 16", k.len()))
            })?;
            let id = TaskId::from_bytes(key);
            let status: String = row.try_get(1)?;
            let status: taskgrid_core::TaskStatus = serde_json::from_str(&status)
                .map_err(|e| StoreError::Corrupt(format!("task {id}: status: {e}")))?;
            scan.last = Some(id);
            if let Some(finished_at) = crate::finished_before_at(&status, cutoff) {
                scan.finished.push(crate::FinishedTask {
                    id,
                    queue: row.try_get(2)?,
                    finished_at,
                });
            }
        }
        Ok(scan)
    }

    fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        let row = self
            .read_conn()?
            .query_opt("SELECT value FROM meta WHERE key = $1", &[&key])?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    fn audit(&self, before: Option<u64>, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let before = before.map_or(i64::MAX, |b| i64::try_from(b).unwrap_or(i64::MAX));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self.read_conn()?.query(
            "SELECT seq, record FROM audit WHERE seq < $1 ORDER BY seq DESC LIMIT $2",
            &[&before, &limit],
        )?;
        rows.iter()
            .map(|row| {
                let seq: i64 = row.try_get(0)?;
                let json: String = row.try_get(1)?;
                let record = serde_json::from_str(&json)
                    .map_err(|e| StoreError::Corrupt(format!("audit entry {seq}: {e}")))?;
                Ok(AuditEntry {
                    seq: seq as u64,
                    record,
                })
            })
            .collect()
    }

    fn load_active(&self) -> Result<Vec<TaskRecord>, StoreError> {
        let live: Vec<&str> = State::ALL
            .iter()
            .filter(|s| !s.is_terminal())
            .map(|s| s.as_str())
            .collect();
        let rows = self.read_conn()?.query(
            &format!("SELECT {TASK_COLUMNS} FROM tasks WHERE state = ANY($1) ORDER BY id"),
            &[&live],
        )?;
        rows.iter().map(task_row).collect()
    }

    fn get(&self, id: TaskId) -> Result<Option<TaskRecord>, StoreError> {
        let key = id.to_bytes().to_vec();
        let row = self.read_conn()?.query_opt(
            &format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1"),
            &[&key],
        )?;
        row.as_ref().map(task_row).transpose()
    }

    fn list(&self, q: &TaskQuery) -> Result<Vec<TaskRecord>, StoreError> {
        let mut sql = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE true");
        let mut args: Vec<Box<dyn ToSql + Sync>> = Vec::new();
        let mut arg = |sql: &mut String, clause: &str, v: Box<dyn ToSql + Sync>| {
            args.push(v);
            sql.push_str(&clause.replace('?', &format!("${}", args.len())));
        };
        match (q.state, &q.queue) {
            (Some(s), _) => arg(&mut sql, " AND state = ?", Box::new(s.as_str().to_owned())),
            // Every state: the index on (state, queue) finds a queue's
            // tasks one state at a time.
            (None, Some(_)) => arg(
                &mut sql,
                " AND state = ANY(?)",
                Box::new(
                    State::ALL
                        .iter()
                        .map(|s| s.as_str().to_owned())
                        .collect::<Vec<String>>(),
                ),
            ),
            (None, None) => {}
        }
        if let Some(queue) = &q.queue {
            arg(&mut sql, " AND queue = ?", Box::new(queue.clone()));
        }
        if let Some(parent) = q.parent {
            arg(
                &mut sql,
                " AND parent = ?",
                Box::new(parent.to_bytes().to_vec()),
            );
        }
        if let Some(worker) = &q.worker {
            arg(
                &mut sql,
                " AND id IN (SELECT task_id FROM attempts WHERE worker = ? \
                 AND (outcome IS NULL OR outcome <> 'rejected'))",
                Box::new(worker.as_str().to_owned()),
            );
        }
        if let Some(tag) = &q.tag {
            arg(
                &mut sql,
                " AND id IN (SELECT task_id FROM task_tags WHERE tag = ?)",
                Box::new(tag.clone()),
            );
        }
        if let Some(after) = q.after {
            let clause = if q.newest_first {
                " AND id < ?"
            } else {
                " AND id > ?"
            };
            arg(&mut sql, clause, Box::new(after.to_bytes().to_vec()));
        }
        let order = if q.newest_first {
            " ORDER BY id DESC LIMIT ?"
        } else {
            " ORDER BY id LIMIT ?"
        };
        arg(
            &mut sql,
            order,
            Box::new(i64::try_from(q.limit).unwrap_or(i64::MAX)),
        );
        let params: Vec<&(dyn ToSql + Sync)> = args.iter().map(|a| &**a).collect();
        let rows = self.read_conn()?.query(&sql, &params)?;
        rows.iter().map(task_row).collect()
    }

    fn attempts(&self, id: TaskId) -> Result<Vec<AttemptRecord>, StoreError> {
        let key = id.to_bytes().to_vec();
        let rows = self.read_conn()?.query(
            "SELECT attempt, worker, assigned_at, started_at, finished_at, outcome, error, \
             exit_code, cpu_seconds, peak_rss_bytes, signal FROM attempts WHERE task_id = $1 \
             ORDER BY attempt",
            &[&key],
        )?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let outcome = match col::<Option<&str>>(row, 5)? {
                None => None,
                Some(s) => Some(parse_outcome(s).ok_or_else(|| {
                    StoreError::Corrupt(format!("task {id}: unknown attempt outcome {s:?}"))
                })?),
            };
            out.push(AttemptRecord {
                task: id,
                attempt: attempt_number(id, col(row, 0)?)?,
                worker: WorkerId::new(col::<&str>(row, 1)?),
                assigned_at: timestamp(col(row, 2)?),
                started_at: col::<Option<i64>>(row, 3)?.map(timestamp),
                finished_at: col::<Option<i64>>(row, 4)?.map(timestamp),
                outcome,
                error: col::<Option<Vec<u8>>>(row, 6)?
                    .map(|b| text(id, "attempt error", b))
                    .transpose()?,
                exit_code: col(row, 7)?,
                usage: usage_of(col(row, 8)?, col(row, 9)?, col(row, 10)?),
            });
        }
        Ok(out)
    }

    fn output(
        &self,
        id: TaskId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<(u64, OutputChunk)>, StoreError> {
        let key = id.to_bytes().to_vec();
        let after = i64::try_from(after_seq).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self.read_conn()?.query(
            "SELECT seq, attempt, stream, data FROM output WHERE task_id = $1 AND seq > $2 \
             ORDER BY seq LIMIT $3",
            &[&key, &after, &limit],
        )?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let seq: i64 = col(row, 0)?;
            let seq = u64::try_from(seq)
                .map_err(|_| StoreError::Corrupt(format!("task {id}: output sequence {seq}")))?;
            let stream = match col::<&str>(row, 2)? {
                "stdout" => Stream::Stdout,
                "stderr" => Stream::Stderr,
                "log" => Stream::Log,
                other => {
                    return Err(StoreError::Corrupt(format!(
                        "task {id}: unknown output stream {other:?}"
                    )));
                }
            };
            let chunk = OutputChunk {
                task: id,
                attempt: attempt_number(id, col(row, 1)?)?,
                stream,
                data: text(id, "output", col(row, 3)?)?,
            };
            out.push((seq, chunk));
        }
        Ok(out)
    }

    fn count_by_state(&self) -> Result<Vec<(State, u64)>, StoreError> {
        let rows = self
            .read_conn()?
            .query("SELECT state, COUNT(*) FROM tasks GROUP BY state", &[])?;
        let mut counts = [0u64; State::ALL.len()];
        for row in &rows {
            let name: &str = col(row, 0)?;
            let state: State = name
                .parse()
                .map_err(|_| StoreError::Corrupt(format!("unknown task state {name:?}")))?;
            let n: i64 = col(row, 1)?;
            counts[state_index(state)] = u64::try_from(n).unwrap_or(0);
        }
        Ok(counts_in_order(&counts))
    }

    fn paused_queues(&self) -> Result<Vec<String>, StoreError> {
        let rows = self.read_conn()?.query(
            "SELECT name FROM paused_queues ORDER BY name COLLATE \"C\"",
            &[],
        )?;
        rows.iter().map(|r| col(r, 0)).collect()
    }

    fn schedules(&self) -> Result<Vec<ScheduleRecord>, StoreError> {
        self.schedules_after(None, usize::MAX)
    }

    fn schedules_after(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ScheduleRecord>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self.read_conn()?.query(
            "SELECT name, record FROM schedules WHERE name COLLATE \"C\" > $1 \
             ORDER BY name COLLATE \"C\" LIMIT $2",
            &[&after.unwrap_or(""), &limit],
        )?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let name: &str = col(row, 0)?;
            let rec: ScheduleRecord = schedule::from_json(name, "schedule", col(row, 1)?)?;
            if rec.name != name {
                return Err(StoreError::Corrupt(format!(
                    "schedule {name:?}: its record is named {:?}",
                    rec.name
                )));
            }
            out.push(rec);
        }
        Ok(out)
    }

    fn fires(
        &self,
        schedule: &str,
        from: Option<Timestamp>,
        to: Option<Timestamp>,
        limit: usize,
    ) -> Result<Vec<FireRecord>, StoreError> {
        // The bounds as the column stores times (`micros`).
        let from = from.map_or(i64::MIN, micros);
        let to = to.map_or(i64::MAX, micros);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self.read_conn()?.query(
            "SELECT record FROM schedule_fires WHERE schedule = $1 AND at >= $2 AND at <= $3 \
             ORDER BY at DESC, manual DESC LIMIT $4",
            &[&schedule, &from, &to, &limit],
        )?;
        rows.iter()
            .map(|row| schedule::from_json(schedule, "fire", col(row, 0)?))
            .collect()
    }

    fn cluster(&self) -> Result<Option<Cluster>, StoreError> {
        lease::cluster(&mut *self.read_conn()?).map(Some)
    }
}

/// Reads who leads the taskgrid store in `schema` of the database at
/// `url`, and who stands by, on a connection of its own (made at the first
/// read, made again after a failure): what a standby, which has no store
/// open yet, tells its clients. Blocking; not for async threads.
pub struct ClusterProbe {
    url: String,
    schema: String,
    client: Option<Client>,
    /// The lease tables were seen: no need to look for them again.
    found: bool,
}

impl ClusterProbe {
    /// A probe of `schema` in the database at `url`; connects at the
    /// first [`read`](Self::read).
    pub fn new(url: &str, schema: &str) -> ClusterProbe {
        ClusterProbe {
            url: url.to_owned(),
            schema: schema.to_owned(),
            client: None,
            found: false,
        }
    }

    /// The coordinators now; an empty [`Cluster`] if no store was ever
    /// opened there.
    pub fn read(&mut self) -> Result<Cluster, StoreError> {
        let client = match &mut self.client {
            Some(c) => c,
            None => self.client.insert(connect(&self.url, &self.schema)?),
        };
        let found = &mut self.found;
        let read = (|| {
            let has_lease = *found
                || client
                    .query_opt(
                        "SELECT 1 FROM information_schema.tables \
                     WHERE table_schema = $1 AND table_name = 'taskgrid_lease_expiry'",
                        &[&self.schema],
                    )?
                    .is_some();
            if !has_lease {
                return Ok(Cluster::default());
            }
            *found = true;
            lease::cluster(client)
        })();
        if read.is_err() {
            self.client = None;
        }
        read
    }
}

/// [`ClusterProbe::read`] once.
pub fn read_cluster(url: &str, schema: &str) -> Result<Cluster, StoreError> {
    ClusterProbe::new(url, schema).read()
}

mod bulk;
mod lease;
mod pipeline;

use lease::Lease;
pub use lease::PostgresOptions;

use crate::Cluster;

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may panic on anything
mod tests;
