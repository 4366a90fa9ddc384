//! The PostgreSQL write path: one statement per kind of change per commit,
//! never one round trip per task. A batch's changes are grouped (tasks to
//! insert, status compare-and-sets, attempt rows, progress, checkpoints,
//! output) and each group is written with one statement over `UNNEST`ed
//! arrays; the rows each statement touched are checked against the group,
//! so a duplicate, a stale `from` state or an unknown task fails the whole
//! transaction exactly as the one-by-one path would.
//!
//! Where several problems are in one batch, the error reported may differ
//! from the one-by-one path's (inserts are checked first, then the status
//! changes, then the attempt rows): the batch fails and writes nothing
//! either way.
//!
//! Several status changes of one task in one batch (a task submitted,
//! assigned, started and finished between two commits) are folded into
//! one compare-and-set from the first `from` to the last status; a chain
//! whose links do not follow is a conflict, as it is on SQLite.
//!
//! Schedule changes are rare (a few per fire, not per task): they are kept
//! in batch order and written one statement each, in that order, after
//! the task groups. A duplicate fire fails the batch with `Invalid`.

use std::collections::HashMap;

use postgres::Transaction;
use postgres::types::ToSql;
use taskgrid_core::{Change, FireRecord, ScheduleRecord, State, TaskId, TaskRecord, TaskStatus};

use crate::StoreError;
use crate::attempt::{AttemptOp, attempt_ops, duplicate_attempt};
use crate::schedule::{duplicate_fire, to_json};

use super::{json, micros};

/// Applies `changes` inside `tx`.
pub(super) fn apply(tx: &mut Transaction<'_>, changes: &[Change]) -> Result<(), StoreError> {
    // Grouping writes every insert first. A change to a task that comes
    // before the task's own `Submitted` in the batch would fail one by one
    // (the task is unknown, or, if it exists, its submit is a duplicate):
    // fail the same way rather than apply it.
    let mut first_submit: HashMap<TaskId, usize> = HashMap::new();
    for (i, c) in changes.iter().enumerate() {
        if let Change::Submitted(rec) = c {
            first_submit.entry(rec.id).or_insert(i);
        }
    }
    if !first_submit.is_empty() {
        for (i, c) in changes.iter().enumerate() {
            let Some(id) = c.task_id() else { continue };
            if matches!(c, Change::Submitted(_)) || first_submit.get(&id).is_none_or(|&s| s < i) {
                continue;
            }
            let key = id.to_bytes().to_vec();
            let exists: bool = tx
                .query_one("SELECT EXISTS (SELECT 1 FROM tasks WHERE id = $1)", &[&key])?
                .try_get(0)?;
            return Err(if exists {
                StoreError::Duplicate(id)
            } else {
                StoreError::NotFound(id)
            });
        }
    }
    let mut b = Groups::default();
    for change in changes {
        b.add(change)?;
    }
    b.write(tx)
}

/// A status compare-and-set, folded over a task's changes in the batch.
struct Cas<'a> {
    id: TaskId,
    from: State,
    status: &'a TaskStatus,
}

#[derive(Default)]
struct Groups<'a> {
    inserts: Vec<&'a TaskRecord>,
    cas: Vec<Cas<'a>>,
    cas_index: HashMap<TaskId, usize>,
    /// A chain in the batch whose link did not follow: the conflict to
    /// report (once the inserts are checked).
    broken: Option<StoreError>,
    assigns: Vec<(TaskId, u32, String, i64)>,
    starts: Vec<(TaskId, u32, i64)>,
    finishes: Vec<Finish>,
    progress: Vec<(TaskId, String)>,
    checkpoints: Vec<(TaskId, &'a str)>,
    output: Vec<(TaskId, u32, &'static str, &'a str)>,
    queues: Vec<(&'a str, bool)>,
    /// Schedule changes, in batch order.
    schedules: Vec<ScheduleWrite<'a>>,
    /// Finished tasks to delete (last: no other change of the batch can
    /// follow a task's deletion).
    deleted: Vec<Vec<u8>>,
    /// Tasks whose output to delete (after this batch's output).
    output_deleted: Vec<Vec<u8>>,
    /// Meta entries, the last of each key winning.
    meta: Vec<(&'a str, &'a str)>,
    /// Audit entries (time, JSON), in batch order.
    audit: Vec<(i64, String)>,
    /// Audit entries older than this go (the latest prune of the batch).
    audit_pruned: Option<i64>,
}

/// One schedule change, written by a statement of its own.
enum ScheduleWrite<'a> {
    /// Insert or replace a schedule.
    Upsert(&'a ScheduleRecord),
    /// Delete a schedule and its fires.
    Delete(&'a str),
    /// Record a fire.
    Fire(&'a FireRecord),
}

struct Finish {
    id: TaskId,
    attempt: u32,
    at: i64,
    outcome: &'static str,
    error: Option<String>,
    exit_code: Option<i32>,
    cpu_seconds: Option<f64>,
    peak_rss_bytes: Option<i64>,
    signal: Option<i32>,
}

impl<'a> Groups<'a> {
    fn add(&mut self, change: &'a Change) -> Result<(), StoreError> {
        match change {
            Change::Submitted(rec) => self.inserts.push(rec),
            Change::Status {
                id,
                from,
                at,
                status,
                attempt_outcome,
            } => {
                match self.cas_index.get(id) {
                    Some(&i) => {
                        let fold = &mut self.cas[i];
                        if fold.status.state != *from && self.broken.is_none() {
                            self.broken = Some(StoreError::Conflict {
                                id: *id,
                                expected: *from,
                            });
                        }
                        fold.status = status;
                    }
                    None => {
                        self.cas_index.insert(*id, self.cas.len());
                        self.cas.push(Cas {
                            id: *id,
                            from: *from,
                            status,
                        });
                    }
                }
                for op in attempt_ops(*id, *from, *at, status, *attempt_outcome)?
                    .into_iter()
                    .flatten()
                {
                    match op {
                        AttemptOp::Assign {
                            attempt,
                            worker,
                            at,
                        } => self.assigns.push((
                            *id,
                            attempt,
                            worker.as_str().to_owned(),
                            micros(at),
                        )),
                        AttemptOp::Start { attempt, at } => {
                            self.starts.push((*id, attempt, micros(at)));
                        }
                        AttemptOp::Finish {
                            attempt,
                            at,
                            outcome,
                            error,
                            exit_code,
                            usage,
                        } => self.finishes.push(Finish {
                            id: *id,
                            attempt,
                            at: micros(at),
                            outcome: outcome.as_str(),
                            error: error.map(str::to_owned),
                            exit_code,
                            cpu_seconds: usage.map(|u| u.cpu_seconds),
                            peak_rss_bytes: usage
                                .map(|u| i64::try_from(u.peak_rss_bytes).unwrap_or(i64::MAX)),
                            signal: usage.and_then(|u| u.signal),
                        }),
                    }
                }
            }
            Change::Progress { id, progress } => {
                self.progress.push((*id, json(*id, "progress", progress)?));
            }
            Change::Checkpoint { id, data } => self.checkpoints.push((*id, data)),
            Change::Output(chunk) => self.output.push((
                chunk.task,
                chunk.attempt,
                chunk.stream.as_str(),
                &chunk.data,
            )),
            Change::Queue { name, paused } => self.queues.push((name, *paused)),
            Change::Schedule(rec) => self.schedules.push(ScheduleWrite::Upsert(rec)),
            Change::ScheduleDeleted { name } => self.schedules.push(ScheduleWrite::Delete(name)),
            Change::Fire(fire) => self.schedules.push(ScheduleWrite::Fire(fire)),
            Change::Deleted { id } => self.deleted.push(id.to_bytes().to_vec()),
            Change::Meta { key, value } => self.meta.push((key, value)),
            Change::Audit(rec) => {
                let json = serde_json::to_string(&**rec)
                    .map_err(|e| StoreError::Invalid(format!("audit record: {e}")))?;
                self.audit.push((micros(rec.at), json));
            }
            Change::AuditPruned { before } => {
                let before = micros(*before);
                self.audit_pruned = Some(self.audit_pruned.map_or(before, |b| b.max(before)));
            }
            Change::OutputDeleted { id } => self.output_deleted.push(id.to_bytes().to_vec()),
        }
        Ok(())
    }

    fn write(self, tx: &mut Transaction<'_>) -> Result<(), StoreError> {
        self.write_inserts(tx)?;
        if let Some(conflict) = self.broken {
            return Err(conflict);
        }
        write_cas(tx, &self.cas)?;
        write_attempts(tx, &self.assigns, &self.starts, &self.finishes)?;
        write_fields(tx, "progress", "text", &self.progress, |v| v.to_owned())?;
        let checkpoints: Vec<(TaskId, String)> = self
            .checkpoints
            .iter()
            .map(|(id, d)| (*id, (*d).to_owned()))
            .collect();
        write_fields(tx, "checkpoint", "bytea", &checkpoints, |v| {
            v.as_bytes().to_vec()
        })?;
        write_output(tx, &self.output)?;
        for (name, paused) in self.queues {
            let sql = if paused {
                "INSERT INTO paused_queues (name) VALUES ($1) ON CONFLICT DO NOTHING"
            } else {
                "DELETE FROM paused_queues WHERE name = $1"
            };
            tx.execute(sql, &[&name])?;
        }
        write_schedules(tx, &self.schedules)?;
        for (key, value) in &self.meta {
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ($1, $2) \
                 ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                &[key, value],
            )?;
        }
        if !self.output_deleted.is_empty() {
            tx.execute(
                "DELETE FROM output WHERE task_id = ANY($1)",
                &[&self.output_deleted],
            )?;
        }
        if let Some(before) = self.audit_pruned {
            tx.execute("DELETE FROM audit WHERE at < $1", &[&before])?;
        }
        if !self.audit.is_empty() {
            let (at, records): (Vec<i64>, Vec<&str>) =
                self.audit.iter().map(|(a, r)| (*a, r.as_str())).unzip();
            // In batch order: the numbers follow it.
            tx.execute(
                "INSERT INTO audit (at, record) \
                 SELECT a, r FROM unnest($1::bigint[], $2::text[]) WITH ORDINALITY AS t(a, r, n) ORDER BY n",
                &[&at, &records],
            )?;
        }
        write_deleted(tx, &self.deleted)
    }

    fn write_inserts(&self, tx: &mut Transaction<'_>) -> Result<(), StoreError> {
        if self.inserts.is_empty() {
            return Ok(());
        }
        let n = self.inserts.len();
        let (mut ids, mut queues, mut states, mut workers, mut parents) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut created, mut specs, mut statuses, mut progress, mut checkpoints) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut tags, mut tag_ids) = (Vec::new(), Vec::new());
        for rec in &self.inserts {
            let key = rec.id.to_bytes().to_vec();
            for tag in &rec.spec.tags {
                tags.push(tag.clone());
                tag_ids.push(key.clone());
            }
            ids.push(key);
            queues.push(rec.spec.queue.to_string());
            states.push(rec.status.state.as_str());
            workers.push(rec.status.worker.as_ref().map(|w| w.as_str().to_owned()));
            parents.push(rec.spec.parent.map(|p| p.to_bytes().to_vec()));
            created.push(micros(rec.created_at));
            specs.push(json(rec.id, "spec", &rec.spec)?);
            statuses.push(crate::status::to_json(rec.id, &rec.status)?);
            progress.push(
                rec.progress
                    .as_ref()
                    .map(|p| json(rec.id, "progress", p))
                    .transpose()?,
            );
            checkpoints.push(rec.checkpoint.as_deref().map(|c| c.as_bytes().to_vec()));
        }
        let rows = tx.query(
            "INSERT INTO tasks (id, queue, state, worker, parent, created_at, spec, status, \
             progress, checkpoint) \
             SELECT * FROM UNNEST($1::bytea[], $2::text[], $3::text[], $4::text[], $5::bytea[], \
             $6::bigint[], $7::text[], $8::text[], $9::text[], $10::bytea[]) \
             ON CONFLICT DO NOTHING RETURNING id",
            &[
                &ids,
                &queues,
                &states,
                &workers,
                &parents,
                &created,
                &specs,
                &statuses,
                &progress,
                &checkpoints,
            ],
        )?;
        if rows.len() != n {
            let mut inserted: Vec<Vec<u8>> = rows
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, _>>()?;
            inserted.sort();
            // The first task of the batch that was not inserted: its id was
            // stored already, or came twice in the batch.
            let mut seen = std::collections::HashSet::new();
            for rec in &self.inserts {
                let key = rec.id.to_bytes().to_vec();
                if inserted.binary_search(&key).is_err() || !seen.insert(key) {
                    return Err(StoreError::Duplicate(rec.id));
                }
            }
        }
        if !tags.is_empty() {
            tx.execute(
                "INSERT INTO task_tags (tag, task_id) \
                 SELECT * FROM UNNEST($1::text[], $2::bytea[]) ON CONFLICT DO NOTHING",
                &[&tags, &tag_ids],
            )?;
        }
        Ok(())
    }
}

/// The keys of `ids` not among `touched`, first one first: the rows a bulk
/// statement missed.
fn first_missing(ids: &[TaskId], touched: &[Vec<u8>]) -> Option<TaskId> {
    let mut touched: Vec<&Vec<u8>> = touched.iter().collect();
    touched.sort();
    ids.iter()
        .copied()
        .find(|id| touched.binary_search(&&id.to_bytes().to_vec()).is_err())
}

fn write_cas(tx: &mut Transaction<'_>, cas: &[Cas<'_>]) -> Result<(), StoreError> {
    if cas.is_empty() {
        return Ok(());
    }
    let ids: Vec<Vec<u8>> = cas.iter().map(|c| c.id.to_bytes().to_vec()).collect();
    let from: Vec<&str> = cas.iter().map(|c| c.from.as_str()).collect();
    let to: Vec<&str> = cas.iter().map(|c| c.status.state.as_str()).collect();
    let workers: Vec<Option<&str>> = cas
        .iter()
        .map(|c| c.status.worker.as_ref().map(|w| w.as_str()))
        .collect();
    let statuses = cas
        .iter()
        .map(|c| crate::status::to_json(c.id, c.status))
        .collect::<Result<Vec<String>, _>>()?;
    let rows = tx.query(
        "UPDATE tasks AS t SET state = v.to_state, worker = v.worker, status = v.status \
         FROM UNNEST($1::bytea[], $2::text[], $3::text[], $4::text[], $5::text[]) \
         AS v(id, from_state, to_state, worker, status) \
         WHERE t.id = v.id AND t.state = v.from_state RETURNING t.id",
        &[&ids, &from, &to, &workers, &statuses],
    )?;
    if rows.len() == cas.len() {
        return Ok(());
    }
    let touched: Vec<Vec<u8>> = rows
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?;
    let all: Vec<TaskId> = cas.iter().map(|c| c.id).collect();
    let Some(id) = first_missing(&all, &touched) else {
        return Ok(());
    };
    let key = id.to_bytes().to_vec();
    let exists: bool = tx
        .query_one("SELECT EXISTS (SELECT 1 FROM tasks WHERE id = $1)", &[&key])?
        .try_get(0)?;
    let expected = cas
        .iter()
        .find(|c| c.id == id)
        .map_or(State::Queued, |c| c.from);
    Err(if exists {
        StoreError::Conflict { id, expected }
    } else {
        StoreError::NotFound(id)
    })
}

fn write_attempts(
    tx: &mut Transaction<'_>,
    assigns: &[(TaskId, u32, String, i64)],
    starts: &[(TaskId, u32, i64)],
    finishes: &[Finish],
) -> Result<(), StoreError> {
    if !assigns.is_empty() {
        let ids: Vec<Vec<u8>> = assigns.iter().map(|a| a.0.to_bytes().to_vec()).collect();
        let attempts: Vec<i64> = assigns.iter().map(|a| i64::from(a.1)).collect();
        let workers: Vec<&str> = assigns.iter().map(|a| a.2.as_str()).collect();
        let at: Vec<i64> = assigns.iter().map(|a| a.3).collect();
        let rows = tx.query(
            "INSERT INTO attempts (task_id, attempt, worker, assigned_at) \
             SELECT * FROM UNNEST($1::bytea[], $2::bigint[], $3::text[], $4::bigint[]) \
             ON CONFLICT DO NOTHING RETURNING task_id, attempt",
            &[&ids, &attempts, &workers, &at],
        )?;
        if rows.len() != assigns.len() {
            let mut done: Vec<(Vec<u8>, i64)> = rows
                .iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                .collect::<Result<_, postgres::Error>>()?;
            done.sort();
            let mut seen = std::collections::HashSet::new();
            for (id, attempt, _, _) in assigns {
                let key = (id.to_bytes().to_vec(), i64::from(*attempt));
                if done.binary_search(&key).is_err() || !seen.insert(key) {
                    return Err(duplicate_attempt(*id, *attempt));
                }
            }
        }
    }
    // A later stamp of the same attempt wins, as applied in order.
    let mut started: HashMap<(TaskId, u32), i64> = HashMap::new();
    for (id, attempt, at) in starts {
        started.insert((*id, *attempt), *at);
    }
    let mut ended: HashMap<(TaskId, u32), &Finish> = HashMap::new();
    for f in finishes {
        ended.insert((f.id, f.attempt), f);
    }
    // An attempt that starts and ends in this batch gets both stamps in one
    // row write (its end's), not two.
    let mut last = HashMap::new();
    let mut folded: HashMap<(TaskId, u32), i64> = HashMap::new();
    for (key, at) in started {
        if ended.contains_key(&key) {
            folded.insert(key, at);
        } else {
            last.insert(key, at);
        }
    }
    if !last.is_empty() {
        let ids: Vec<Vec<u8>> = last.keys().map(|k| k.0.to_bytes().to_vec()).collect();
        let attempts: Vec<i64> = last.keys().map(|k| i64::from(k.1)).collect();
        let at: Vec<i64> = last.values().copied().collect();
        tx.execute(
            "UPDATE attempts AS a SET started_at = v.at \
             FROM UNNEST($1::bytea[], $2::bigint[], $3::bigint[]) AS v(task_id, attempt, at) \
             WHERE a.task_id = v.task_id AND a.attempt = v.attempt",
            &[&ids, &attempts, &at],
        )?;
    }
    if !ended.is_empty() {
        let fs: Vec<&Finish> = ended.into_values().collect();
        let starts: Vec<Option<i64>> = fs
            .iter()
            .map(|f| folded.get(&(f.id, f.attempt)).copied())
            .collect();
        let ids: Vec<Vec<u8>> = fs.iter().map(|f| f.id.to_bytes().to_vec()).collect();
        let attempts: Vec<i64> = fs.iter().map(|f| i64::from(f.attempt)).collect();
        let at: Vec<i64> = fs.iter().map(|f| f.at).collect();
        let outcomes: Vec<&str> = fs.iter().map(|f| f.outcome).collect();
        let errors: Vec<Option<&[u8]>> = fs
            .iter()
            .map(|f| f.error.as_deref().map(str::as_bytes))
            .collect();
        let codes: Vec<Option<i32>> = fs.iter().map(|f| f.exit_code).collect();
        let cpu: Vec<Option<f64>> = fs.iter().map(|f| f.cpu_seconds).collect();
        let rss: Vec<Option<i64>> = fs.iter().map(|f| f.peak_rss_bytes).collect();
        let signals: Vec<Option<i32>> = fs.iter().map(|f| f.signal).collect();
        let params: [&(dyn ToSql + Sync); 10] = [
            &ids, &attempts, &at, &outcomes, &errors, &codes, &cpu, &rss, &signals, &starts,
        ];
        tx.execute(
            "UPDATE attempts AS a SET finished_at = v.at, outcome = v.outcome, error = v.error, \
             exit_code = v.exit_code, cpu_seconds = v.cpu, peak_rss_bytes = v.rss, \
             signal = v.signal, started_at = COALESCE(v.started, a.started_at) \
             FROM UNNEST($1::bytea[], $2::bigint[], $3::bigint[], $4::text[], $5::bytea[], \
             $6::integer[], $7::float8[], $8::bigint[], $9::integer[], $10::bigint[]) \
             AS v(task_id, attempt, at, outcome, error, exit_code, cpu, rss, signal, started) \
             WHERE a.task_id = v.task_id AND a.attempt = v.attempt",
            &params,
        )?;
    }
    Ok(())
}

/// Overwrites column `column` (`progress` or `checkpoint`) of each task; the
/// last value of a task in the batch wins. An unknown task is `NotFound`.
fn write_fields<T: ToSql + Sync>(
    tx: &mut Transaction<'_>,
    column: &str,
    sql_type: &str,
    values: &[(TaskId, String)],
    encode: impl Fn(&str) -> T,
) -> Result<(), StoreError> {
    if values.is_empty() {
        return Ok(());
    }
    let mut last: HashMap<TaskId, &str> = HashMap::new();
    let mut order = Vec::new();
    for (id, v) in values {
        if last.insert(*id, v).is_none() {
            order.push(*id);
        }
    }
    let ids: Vec<Vec<u8>> = order.iter().map(|id| id.to_bytes().to_vec()).collect();
    let vals: Vec<T> = order
        .iter()
        .map(|id| encode(last.get(id).copied().unwrap_or_default()))
        .collect();
    let rows = tx.query(
        &format!(
            "UPDATE tasks AS t SET {column} = v.val \
             FROM UNNEST($1::bytea[], $2::{sql_type}[]) AS v(id, val) WHERE t.id = v.id RETURNING t.id"
        ),
        &[&ids, &vals],
    )?;
    if rows.len() != order.len() {
        let touched: Vec<Vec<u8>> = rows
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?;
        if let Some(id) = first_missing(&order, &touched) {
            return Err(StoreError::NotFound(id));
        }
    }
    Ok(())
}

/// Appends output chunks in batch order (their sequence numbers follow it).
fn write_output(
    tx: &mut Transaction<'_>,
    output: &[(TaskId, u32, &str, &str)],
) -> Result<(), StoreError> {
    if output.is_empty() {
        return Ok(());
    }
    let ids: Vec<Vec<u8>> = output.iter().map(|o| o.0.to_bytes().to_vec()).collect();
    let attempts: Vec<i64> = output.iter().map(|o| i64::from(o.1)).collect();
    let streams: Vec<&str> = output.iter().map(|o| o.2).collect();
    let data: Vec<&[u8]> = output.iter().map(|o| o.3.as_bytes()).collect();
    let rows = tx.query(
        "INSERT INTO output (task_id, attempt, stream, data) \
         SELECT v.task_id, v.attempt, v.stream, v.data \
         FROM UNNEST($1::bytea[], $2::bigint[], $3::text[], $4::bytea[]) \
         WITH ORDINALITY AS v(task_id, attempt, stream, data, n) \
         WHERE EXISTS (SELECT 1 FROM tasks WHERE id = v.task_id) ORDER BY v.n \
         RETURNING task_id",
        &[&ids, &attempts, &streams, &data],
    )?;
    if rows.len() != output.len() {
        let touched: Vec<Vec<u8>> = rows
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?;
        let all: Vec<TaskId> = output.iter().map(|o| o.0).collect();
        if let Some(id) = first_missing(&all, &touched) {
            return Err(StoreError::NotFound(id));
        }
    }
    Ok(())
}

/// Writes schedule changes one by one, in batch order; a second fire of a
/// schedule at one time is `Invalid` (and the caller's transaction rolls
/// back).
/// Deletes tasks with their tags (read from their specs in Rust: the tag
/// table is keyed by tag, and a spec need not be valid `jsonb`), attempts
/// and output.
fn write_deleted(tx: &mut Transaction<'_>, ids: &[Vec<u8>]) -> Result<(), StoreError> {
    if ids.is_empty() {
        return Ok(());
    }
    let mut tags: Vec<String> = Vec::new();
    let mut owners: Vec<&[u8]> = Vec::new();
    let rows = tx.query("SELECT id, spec FROM tasks WHERE id = ANY($1)", &[&ids])?;
    let specs: Vec<(Vec<u8>, String)> = rows
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect::<Result<_, postgres::Error>>()?;
    for (id, spec) in &specs {
        for tag in crate::tags_of(spec) {
            tags.push(tag);
            owners.push(id);
        }
    }
    if !tags.is_empty() {
        tx.execute(
            "DELETE FROM task_tags WHERE (tag, task_id) IN \
             (SELECT * FROM unnest($1::text[], $2::bytea[]))",
            &[&tags, &owners],
        )?;
    }
    for sql in [
        "DELETE FROM output WHERE task_id = ANY($1)",
        "DELETE FROM attempts WHERE task_id = ANY($1)",
        "DELETE FROM tasks WHERE id = ANY($1)",
    ] {
        tx.execute(sql, &[&ids])?;
    }
    Ok(())
}

fn write_schedules(
    tx: &mut Transaction<'_>,
    writes: &[ScheduleWrite<'_>],
) -> Result<(), StoreError> {
    for w in writes {
        match w {
            ScheduleWrite::Upsert(rec) => {
                let record = to_json(&rec.name, "schedule", rec)?;
                tx.execute(
                    "INSERT INTO schedules (name, record) VALUES ($1, $2) \
                     ON CONFLICT (name) DO UPDATE SET record = EXCLUDED.record",
                    &[&rec.name, &record],
                )?;
            }
            ScheduleWrite::Delete(name) => {
                tx.execute("DELETE FROM schedule_fires WHERE schedule = $1", &[name])?;
                tx.execute("DELETE FROM schedules WHERE name = $1", &[name])?;
            }
            ScheduleWrite::Fire(fire) => {
                let record = to_json(&fire.schedule, "fire", fire)?;
                let task = fire.task.map(|t| t.to_bytes().to_vec());
                let inserted = tx.execute(
                    "INSERT INTO schedule_fires (schedule, at, fired_at, outcome, task, record, manual) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
                    &[
                        &fire.schedule,
                        &micros(fire.at),
                        &micros(fire.fired_at),
                        &fire.outcome.as_str(),
                        &task,
                        &record,
                        &fire.manual,
                    ],
                )?;
                if inserted == 0 {
                    return Err(duplicate_fire(&fire.schedule, fire.at));
                }
            }
        }
    }
    Ok(())
}
