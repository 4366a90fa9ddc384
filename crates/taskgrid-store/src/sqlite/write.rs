//! The SQLite write path: one `apply` = one `BEGIN IMMEDIATE … COMMIT`, every
//! statement prepared once per call and reused for the whole batch.

use std::collections::HashMap;

use rusqlite::{CachedStatement, Connection, OptionalExtension, TransactionBehavior, params};
use serde::Serialize;
use taskgrid_core::{
    Change, FireRecord, OutputChunk, Progress, ScheduleRecord, State, TaskId, TaskRecord,
    TaskStatus, Timestamp,
};

use crate::StoreError;
use crate::attempt::{AttemptOp, attempt_ops, duplicate_attempt};
use crate::schedule::{duplicate_fire, to_json};

const INSERT_TASK: &str = "INSERT OR IGNORE INTO tasks \
    (id, queue, state, worker, parent, created_at, spec, status, progress, checkpoint) \
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)";
const INSERT_TAG: &str = "INSERT OR IGNORE INTO task_tags (tag, task_id) VALUES (?1, ?2)";
const UPDATE_STATUS: &str =
    "UPDATE tasks SET state = ?3, worker = ?4, status = ?5 WHERE id = ?1 AND state = ?2";
const TASK_EXISTS: &str = "SELECT EXISTS (SELECT 1 FROM tasks WHERE id = ?1)";
const INSERT_ATTEMPT: &str = "INSERT OR IGNORE INTO attempts (task_id, attempt, worker, assigned_at, started_at) \
    VALUES (?1, ?2, ?3, ?4, ?5)";
const START_ATTEMPT: &str =
    "UPDATE attempts SET started_at = ?3 WHERE task_id = ?1 AND attempt = ?2";
const FINISH_ATTEMPT: &str = "UPDATE attempts SET finished_at = ?3, outcome = ?4, error = ?5, exit_code = ?6, \
    cpu_seconds = ?7, peak_rss_bytes = ?8, signal = ?9, started_at = COALESCE(?10, started_at) \
    WHERE task_id = ?1 AND attempt = ?2";
const UPDATE_PROGRESS: &str = "UPDATE tasks SET progress = ?2 WHERE id = ?1";
const UPDATE_CHECKPOINT: &str = "UPDATE tasks SET checkpoint = ?2 WHERE id = ?1";
const INSERT_OUTPUT: &str = "INSERT INTO output (task_id, attempt, stream, data) \
    SELECT ?1, ?2, ?3, ?4 WHERE EXISTS (SELECT 1 FROM tasks WHERE id = ?1)";
const UPSERT_SCHEDULE: &str = "INSERT INTO schedules (name, record) VALUES (?1, ?2) \
    ON CONFLICT (name) DO UPDATE SET record = excluded.record";
const DELETE_SCHEDULE_FIRES: &str = "DELETE FROM schedule_fires WHERE schedule = ?1";
const DELETE_SCHEDULE: &str = "DELETE FROM schedules WHERE name = ?1";
// The key refuses a second fire at the same time: ignored here, then
// reported as `Invalid` from the row count.
const INSERT_FIRE: &str = "INSERT OR IGNORE INTO schedule_fires \
    (schedule, at, fired_at, outcome, task, record, manual) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";

/// Applies `changes` in one transaction; on any error nothing is written.
pub(super) fn apply(conn: &mut Connection, changes: &[Change]) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    Batch::new(&tx)?.apply_all(changes)?;
    // Dropping `tx` on the error path above rolls back.
    tx.commit()?;
    Ok(())
}

/// A timestamp as SQLite's integer: the same 64 bits, read back with
/// [`super::read`]'s inverse cast.
pub(super) fn micros(t: Timestamp) -> i64 {
    t.as_micros() as i64
}

/// The prepared statements of one `apply` call.
struct Batch<'c> {
    conn: &'c Connection,
    insert_task: CachedStatement<'c>,
    insert_tag: CachedStatement<'c>,
    update_status: CachedStatement<'c>,
    task_exists: CachedStatement<'c>,
    insert_attempt: CachedStatement<'c>,
    start_attempt: CachedStatement<'c>,
    finish_attempt: CachedStatement<'c>,
    update_progress: CachedStatement<'c>,
    update_checkpoint: CachedStatement<'c>,
    insert_output: CachedStatement<'c>,
}

impl<'c> Batch<'c> {
    fn new(conn: &'c Connection) -> Result<Self, StoreError> {
        Ok(Batch {
            conn,
            insert_task: conn.prepare_cached(INSERT_TASK)?,
            insert_tag: conn.prepare_cached(INSERT_TAG)?,
            update_status: conn.prepare_cached(UPDATE_STATUS)?,
            task_exists: conn.prepare_cached(TASK_EXISTS)?,
            insert_attempt: conn.prepare_cached(INSERT_ATTEMPT)?,
            start_attempt: conn.prepare_cached(START_ATTEMPT)?,
            finish_attempt: conn.prepare_cached(FINISH_ATTEMPT)?,
            update_progress: conn.prepare_cached(UPDATE_PROGRESS)?,
            update_checkpoint: conn.prepare_cached(UPDATE_CHECKPOINT)?,
            insert_output: conn.prepare_cached(INSERT_OUTPUT)?,
        })
    }

    fn apply_all(&mut self, changes: &[Change]) -> Result<(), StoreError> {
        let mut runs = runs_of(changes);
        for (i, change) in changes.iter().enumerate() {
            match change {
                Change::Submitted(rec) => self.submitted(rec)?,
                Change::Status {
                    id,
                    from,
                    at,
                    status,
                    attempt_outcome,
                } => {
                    let ops = attempt_ops(*id, *from, *at, status, *attempt_outcome)?;
                    let Some(run) = runs.get_mut(id) else {
                        self.status(*id, *from, status)?;
                        self.attempts(*id, ops.into_iter().flatten())?;
                        continue;
                    };
                    // One of several status changes of this task in this
                    // batch: its row is written once, at the last of them.
                    run.ops.extend(ops.into_iter().flatten());
                    if run.last == i {
                        let (first, ops) = (run.first, std::mem::take(&mut run.ops));
                        self.status(*id, first, status)?;
                        self.attempts(*id, ops.into_iter())?;
                    }
                }
                Change::Progress { id, progress } => self.progress(*id, progress)?,
                Change::Checkpoint { id, data } => {
                    let key = id.to_bytes();
                    if self.update_checkpoint.execute(params![&key[..], &**data])? == 0 {
                        return Err(StoreError::NotFound(*id));
                    }
                }
                Change::Output(chunk) => self.output(chunk)?,
                Change::Queue { name, paused } => {
                    let sql = if *paused {
                        "INSERT OR IGNORE INTO paused_queues (name) VALUES (?1)"
                    } else {
                        "DELETE FROM paused_queues WHERE name = ?1"
                    };
                    self.conn.prepare_cached(sql)?.execute(params![name])?;
                }
                Change::Schedule(rec) => self.schedule(rec)?,
                Change::ScheduleDeleted { name } => {
                    self.conn
                        .prepare_cached(DELETE_SCHEDULE_FIRES)?
                        .execute(params![name])?;
                    self.conn
                        .prepare_cached(DELETE_SCHEDULE)?
                        .execute(params![name])?;
                }
                Change::Fire(fire) => self.fire(fire)?,
                Change::Deleted { id } => self.delete(*id)?,
                Change::OutputDeleted { id } => {
                    let key = id.to_bytes();
                    self.conn
                        .prepare_cached("DELETE FROM output WHERE task_id = ?1")?
                        .execute(params![&key[..]])?;
                }
                Change::Meta { key, value } => {
                    self.conn
                        .prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)")?
                        .execute(params![key, value])?;
                }
                Change::Audit(rec) => {
                    let json = serde_json::to_string(&**rec)
                        .map_err(|e| StoreError::Invalid(format!("audit record: {e}")))?;
                    // The next number: after the last entry, and after the
                    // last one a prune deleted.
                    self.conn
                        .prepare_cached(
                            "INSERT INTO audit (seq, at, record) VALUES (1 + max( \
                             ifnull((SELECT max(seq) FROM audit), 0), \
                             ifnull((SELECT CAST(value AS INTEGER) FROM meta \
                             WHERE key = 'sqlite.audit_seq'), 0)), ?1, ?2)",
                        )?
                        .execute(params![micros(rec.at), json])?;
                }
                Change::AuditPruned { before } => {
                    // Before deleting, keep the highest number given, if
                    // above the one kept (entries' times need not follow
                    // their numbers: the clock may have been set back).
                    self.conn
                        .prepare_cached(
                            "INSERT INTO meta (key, value) \
                             SELECT 'sqlite.audit_seq', CAST(top AS TEXT) \
                             FROM (SELECT max(seq) AS top FROM audit) \
                             WHERE top > ifnull((SELECT CAST(value AS INTEGER) FROM meta \
                             WHERE key = 'sqlite.audit_seq'), 0) \
                             AND EXISTS (SELECT 1 FROM audit WHERE at < ?1) \
                             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        )?
                        .execute(params![micros(*before)])?;
                    self.conn
                        .prepare_cached("DELETE FROM audit WHERE at < ?1")?
                        .execute(params![micros(*before)])?;
                }
            }
        }
        Ok(())
    }

    /// Deletes a task with its tags (read from its spec: the tag table is
    /// keyed by tag), attempts and output.
    fn delete(&mut self, id: TaskId) -> Result<(), StoreError> {
        let key = id.to_bytes();
        let spec: Option<String> = self
            .conn
            .prepare_cached("SELECT spec FROM tasks WHERE id = ?1")?
            .query_row(params![&key[..]], |r| r.get(0))
            .optional()?;
        let Some(spec) = spec else {
            return Ok(());
        };
        let mut untag = self
            .conn
            .prepare_cached("DELETE FROM task_tags WHERE tag = ?1 AND task_id = ?2")?;
        for tag in &crate::tags_of(&spec) {
            untag.execute(params![tag, &key[..]])?;
        }
        for sql in [
            "DELETE FROM output WHERE task_id = ?1",
            "DELETE FROM attempts WHERE task_id = ?1",
            "DELETE FROM tasks WHERE id = ?1",
        ] {
            self.conn.prepare_cached(sql)?.execute(params![&key[..]])?;
        }
        Ok(())
    }

    /// Inserts or replaces a schedule (schedule changes are rare: their
    /// statements are prepared when first needed).
    fn schedule(&mut self, rec: &ScheduleRecord) -> Result<(), StoreError> {
        let record = to_json(&rec.name, "schedule", rec)?;
        self.conn
            .prepare_cached(UPSERT_SCHEDULE)?
            .execute(params![rec.name, record])?;
        Ok(())
    }

    /// Records a fire; a second one at the same time is `Invalid`.
    fn fire(&mut self, fire: &FireRecord) -> Result<(), StoreError> {
        let record = to_json(&fire.schedule, "fire", fire)?;
        let task = fire.task.map(TaskId::to_bytes);
        let inserted = self.conn.prepare_cached(INSERT_FIRE)?.execute(params![
            fire.schedule,
            micros(fire.at),
            micros(fire.fired_at),
            fire.outcome.as_str(),
            task.as_ref().map(|t| &t[..]),
            record,
            fire.manual,
        ])?;
        if inserted == 0 {
            return Err(duplicate_fire(&fire.schedule, fire.at));
        }
        Ok(())
    }

    fn submitted(&mut self, rec: &TaskRecord) -> Result<(), StoreError> {
        let key = rec.id.to_bytes();
        let parent = rec.spec.parent.map(TaskId::to_bytes);
        let progress = rec
            .progress
            .as_ref()
            .map(|p| json(rec.id, "progress", p))
            .transpose()?;
        let inserted = self.insert_task.execute(params![
            &key[..],
            &*rec.spec.queue,
            rec.status.state.as_str(),
            rec.status.worker.as_ref().map(|w| w.as_str()),
            parent.as_ref().map(|p| &p[..]),
            micros(rec.created_at),
            json(rec.id, "spec", &rec.spec)?,
            crate::status::to_json(rec.id, &rec.status)?,
            progress,
            rec.checkpoint.as_deref(),
        ])?;
        if inserted == 0 {
            return Err(StoreError::Duplicate(rec.id));
        }
        for tag in &rec.spec.tags {
            self.insert_tag.execute(params![tag, &key[..]])?;
        }
        Ok(())
    }

    /// Compare-and-set of the task's status.
    fn status(&mut self, id: TaskId, from: State, status: &TaskStatus) -> Result<(), StoreError> {
        let key = id.to_bytes();
        let updated = self.update_status.execute(params![
            &key[..],
            from.as_str(),
            status.state.as_str(),
            status.worker.as_ref().map(|w| w.as_str()),
            crate::status::to_json(id, status)?,
        ])?;
        if updated == 0 {
            let exists: bool = self
                .task_exists
                .query_row(params![&key[..]], |r| r.get(0))?;
            return Err(if exists {
                StoreError::Conflict { id, expected: from }
            } else {
                StoreError::NotFound(id)
            });
        }
        Ok(())
    }

    /// A task's attempt writes, in order; an attempt's start is folded
    /// into the write before it (its row's insert) or after it (its end)
    /// where that write is in the same run.
    fn attempts<'a>(
        &mut self,
        id: TaskId,
        ops: impl Iterator<Item = AttemptOp<'a>>,
    ) -> Result<(), StoreError> {
        let mut ops = ops.peekable();
        while let Some(op) = ops.next() {
            let started = match (op, ops.peek()) {
                (AttemptOp::Assign { attempt, .. }, Some(&AttemptOp::Start { attempt: a, at }))
                    if a == attempt =>
                {
                    ops.next();
                    Some(at)
                }
                (AttemptOp::Start { attempt, at }, Some(AttemptOp::Finish { attempt: a, .. }))
                    if *a == attempt =>
                {
                    // The finish writes the start too.
                    let Some(finish) = ops.next() else { break };
                    self.attempt(id, finish, Some(at))?;
                    continue;
                }
                _ => None,
            };
            self.attempt(id, op, started)?;
        }
        Ok(())
    }

    /// One attempt write; `started` also sets the attempt's start.
    fn attempt(
        &mut self,
        id: TaskId,
        op: AttemptOp<'_>,
        started: Option<Timestamp>,
    ) -> Result<(), StoreError> {
        let key = id.to_bytes();
        let started = started.map(micros);
        match op {
            AttemptOp::Assign {
                attempt,
                worker,
                at,
            } => {
                let inserted = self.insert_attempt.execute(params![
                    &key[..],
                    attempt,
                    worker.as_str(),
                    micros(at),
                    started,
                ])?;
                if inserted == 0 {
                    return Err(duplicate_attempt(id, attempt));
                }
            }
            AttemptOp::Start { attempt, at } => {
                self.start_attempt
                    .execute(params![&key[..], attempt, micros(at)])?;
            }
            AttemptOp::Finish {
                attempt,
                at,
                outcome,
                error,
                exit_code,
                usage,
            } => {
                self.finish_attempt.execute(params![
                    &key[..],
                    attempt,
                    micros(at),
                    outcome.as_str(),
                    error,
                    exit_code,
                    usage.map(|u| u.cpu_seconds),
                    usage.map(|u| i64::try_from(u.peak_rss_bytes).unwrap_or(i64::MAX)),
                    usage.and_then(|u| u.signal),
                    started,
                ])?;
            }
        }
        Ok(())
    }

    fn progress(&mut self, id: TaskId, progress: &Progress) -> Result<(), StoreError> {
        let key = id.to_bytes();
        if self
            .update_progress
            .execute(params![&key[..], json(id, "progress", progress)?])?
            == 0
        {
            return Err(StoreError::NotFound(id));
        }
        Ok(())
    }

    fn output(&mut self, chunk: &OutputChunk) -> Result<(), StoreError> {
        let key = chunk.task.to_bytes();
        let inserted = self.insert_output.execute(params![
            &key[..],
            chunk.attempt,
            chunk.stream.as_str(),
            chunk.data
        ])?;
        if inserted == 0 {
            return Err(StoreError::NotFound(chunk.task));
        }
        Ok(())
    }
}

/// A task with more than one status change in a batch, chained: the
/// state it starts from, the index of its last change, and the attempt
/// writes of the changes before that one.
struct Run<'a> {
    first: State,
    last: usize,
    /// The state its last change so far leads into.
    state: State,
    count: u32,
    /// Whether each change so far is out of the state the one before led
    /// into.
    chained: bool,
    ops: Vec<AttemptOp<'a>>,
}

/// The [`Run`]s of a batch (a task whose changes do not chain is left out,
/// so each of its changes is checked on its own).
fn runs_of(changes: &[Change]) -> HashMap<TaskId, Run<'_>> {
    let mut runs: HashMap<TaskId, Run<'_>> = HashMap::new();
    for (i, c) in changes.iter().enumerate() {
        if let Change::Status {
            id, from, status, ..
        } = c
        {
            runs.entry(*id)
                .and_modify(|r| {
                    r.chained &= r.state == *from;
                    r.last = i;
                    r.state = status.state;
                    r.count += 1;
                })
                .or_insert(Run {
                    first: *from,
                    last: i,
                    state: status.state,
                    count: 1,
                    chained: true,
                    ops: Vec::new(),
                });
        }
    }
    runs.retain(|_, r| r.count > 1 && r.chained);
    runs
}

/// `value` as JSON text.
fn json<T: Serialize>(id: TaskId, what: &str, value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value)
        .map_err(|e| StoreError::Invalid(format!("task {id}: cannot encode {what}: {e}")))
}
