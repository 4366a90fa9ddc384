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
//! Several status changes of one task in one batch (a task assigned,
//! started and finished between two commits) are folded into one
//! compare-and-set from the first `from` to the last status, or, for a
//! task the batch submits, into its insert; a chain whose links do not
//! follow is a conflict, as it is on SQLite.
//!
//! The statements go out in one flight (`pipeline`). When the batch's
//! turn has come already, its `COMMIT` goes with them and the rows each
//! statement must touch are counted in the server (a miscount aborts the
//! transaction); should one miss, the batch is run again in two flights
//! to say which task and why. Otherwise the answers are checked in order
//! and the transaction commits, in its turn, only if all check out.
//!
//! Schedule changes are rare (a few per fire, not per task): they are kept
//! in batch order and written one statement each, in that order, after
//! the task groups. A duplicate fire fails the batch with `Invalid`.

use std::collections::HashMap;

use postgres::Row;
use postgres::types::ToSql;
use taskgrid_core::{Change, FireRecord, ScheduleRecord, State, TaskId, TaskRecord, TaskStatus};

use crate::attempt::{AttemptOp, attempt_ops, duplicate_attempt};
use crate::schedule::{duplicate_fire, to_json};
use crate::{StoreError, Turn};

use super::lease::{Lease, is_fenced};
use super::pipeline::{Op, WriteConn, is_miscounted};
use super::{json, micros};

/// Applies `changes` in one transaction on `conn`, fenced by `lease`:
/// `BEGIN`, the fence, every statement and `COMMIT` in one flight if it
/// is this batch's `turn` already; else all but the `COMMIT`, which
/// follows once every answer checks out and the turn has come, or
/// `ROLLBACK`.
pub(super) fn apply(
    conn: &mut WriteConn,
    lease: Option<&Lease>,
    changes: &[Change],
    turn: &dyn Turn,
) -> Result<(), StoreError> {
    let fence = lease.map(Lease::fence_op).transpose()?;
    let b = Groups::of(changes)?;
    // Grouping writes every insert first. A change to a task that comes
    // before the task's own `Submitted` in the batch would fail one by one
    // (the task is unknown, or, if it exists, its submit is a duplicate):
    // fail the same way rather than apply it.
    if let Some(id) = b.changed_before_submit(changes) {
        return Err(if stored(conn, id)? {
            StoreError::Duplicate(id)
        } else {
            StoreError::NotFound(id)
        });
    }
    let deleted_tags = b.deleted_tags(conn)?;
    let mut ops = Vec::new();
    let mut checks = Vec::new();
    if let Some(fence) = fence {
        ops.push(fence);
        checks.push(Check::Fence);
    }
    b.ops(&mut ops, &mut checks, deleted_tags)?;
    // The checks' forms are only worked out for a batch that can go in
    // one flight (most wait for their turn under load).
    if b.broken.is_none()
        && turn.now()
        && let Some(counted) = checks
            .iter()
            .map(Check::counted)
            .collect::<Option<Vec<bool>>>()
    {
        match conn.run_and_commit(&ops, &counted)?.failed()? {
            None => return Ok(()),
            Some((i, e)) if checks[i].fenced(&e) => return Err(fenced(lease)),
            // Rolled back: the two flights below find what was wrong and
            // say it as they always do.
            Some((i, e)) if counted[i] && is_miscounted(&e) => {}
            Some((_, e)) => return Err(e.into()),
        }
    }
    let answers = conn.run(&ops)?;
    match verify(&b, &checks, answers, lease).and_then(|()| Ok(turn.wait()?)) {
        Ok(()) => conn.commit(),
        Err(failed) => {
            let rolled_back = conn.rollback();
            let err = match failed {
                Failed::Error(e) => e,
                // Whether the task exists, as the transaction saw it at
                // that statement: committed (a task the batch inserts has
                // its changes folded into the insert, never a
                // compare-and-set).
                Failed::Cas { id, expected } => {
                    if stored(conn, id)? {
                        StoreError::Conflict { id, expected }
                    } else {
                        StoreError::NotFound(id)
                    }
                }
            };
            rolled_back?;
            Err(err)
        }
    }
}

/// The plans of the statements `changes` would run (`EXPLAIN`, on the
/// write connection), in order.
#[cfg(test)]
pub(super) fn explain(conn: &mut WriteConn, changes: &[Change]) -> Result<Vec<String>, StoreError> {
    let b = Groups::of(changes)?;
    let (mut ops, mut checks) = (Vec::new(), Vec::new());
    b.ops(&mut ops, &mut checks, Vec::new())?;
    ops.iter().map(|op| conn.explain(op)).collect()
}

/// Whether task `id` is stored (committed).
fn stored(conn: &mut WriteConn, id: TaskId) -> Result<bool, StoreError> {
    let key = id.to_bytes().to_vec();
    let rows = conn.query("SELECT EXISTS (SELECT 1 FROM tasks WHERE id = $1)", &[&key])?;
    Ok(rows
        .first()
        .map(|r| r.try_get(0))
        .transpose()?
        .unwrap_or(false))
}

/// What an answer of the flight must be for the batch to commit.
enum Check {
    /// Any answer.
    Any,
    /// No error: this store still leads.
    Fence,
    /// A row for each insert (`RETURNING id`); else the first task not
    /// inserted is a duplicate. Then the batch's broken chain, if any.
    Inserts,
    /// A row for each compare-and-set (`RETURNING t.id`).
    Cas,
    /// A row for each new attempt (`RETURNING task_id, attempt`).
    Assigns,
    /// A row for each of these tasks (`RETURNING` its id); else the first
    /// one missing is not found.
    Found(Vec<TaskId>),
    /// One row: the fire was recorded; none: it was a duplicate.
    Fire(usize),
}

impl Check {
    /// Whether `e`, this statement's error, says the fence found the
    /// term moved on.
    fn fenced(&self, e: &postgres::Error) -> bool {
        matches!(self, Check::Fence) && is_fenced(e)
    }

    /// Whether the statement is sent counted (`pipeline::counted`) when the
    /// batch commits in one flight: those whose rows must each be
    /// touched, one per element of their first array. `None` for a check
    /// the server cannot make (the batch then takes two flights).
    fn counted(&self) -> Option<bool> {
        match self {
            Check::Any | Check::Fence => Some(false),
            Check::Inserts | Check::Cas | Check::Assigns | Check::Found(_) => Some(true),
            Check::Fire(_) => None,
        }
    }
}

/// The error of a batch whose fence failed: `lease` is lost.
fn fenced(lease: Option<&Lease>) -> StoreError {
    lease.map_or(StoreError::Fenced { term: 0 }, Lease::lose)
}

/// Why a batch does not commit.
enum Failed {
    Error(StoreError),
    /// A compare-and-set missed task `id`: a conflict if the task exists,
    /// else not found (asked after the rollback).
    Cas {
        id: TaskId,
        expected: State,
    },
}

impl From<StoreError> for Failed {
    fn from(e: StoreError) -> Self {
        Failed::Error(e)
    }
}

impl From<postgres::Error> for Failed {
    fn from(e: postgres::Error) -> Self {
        Failed::Error(e.into())
    }
}

/// Checks the answers in order; the first that is wrong decides.
fn verify(
    b: &Groups<'_>,
    checks: &[Check],
    answers: Vec<Result<Vec<Row>, postgres::Error>>,
    lease: Option<&Lease>,
) -> Result<(), Failed> {
    // A broken chain of status changes fails the batch once the fence and
    // the inserts before it are checked (so a duplicate insert is the error
    // reported, as one by one).
    let gate = checks
        .iter()
        .position(|c| matches!(c, Check::Inserts))
        .or_else(|| checks.iter().position(|c| matches!(c, Check::Fence)));
    if gate.is_none()
        && let Some(chain) = b.broken
    {
        return Err(broken(chain));
    }
    for (i, (check, answer)) in checks.iter().zip(answers).enumerate() {
        let rows = match answer {
            Err(e) if check.fenced(&e) => return Err(Failed::Error(fenced(lease))),
            answer => answer?,
        };
        match check {
            Check::Any | Check::Fence => {}
            Check::Inserts => b.check_inserts(&rows)?,
            Check::Cas => {
                if rows.len() != b.cas.len() {
                    let touched = ids_of(&rows)?;
                    let all: Vec<TaskId> = b.cas.iter().map(|c| c.id).collect();
                    if let Some(id) = first_missing(&all, &touched) {
                        let expected = b
                            .cas
                            .iter()
                            .find(|c| c.id == id)
                            .map_or(State::Queued, |c| c.from);
                        return Err(Failed::Cas { id, expected });
                    }
                }
            }
            Check::Assigns => {
                if rows.len() != b.assigns.len() {
                    let mut done: Vec<(Vec<u8>, i64)> = rows
                        .iter()
                        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                        .collect::<Result<_, postgres::Error>>()?;
                    done.sort();
                    let mut seen = std::collections::HashSet::new();
                    for (id, attempt, _, _) in &b.assigns {
                        let key = (id.to_bytes().to_vec(), i64::from(*attempt));
                        if done.binary_search(&key).is_err() || !seen.insert(key) {
                            return Err(Failed::Error(duplicate_attempt(*id, *attempt)));
                        }
                    }
                }
            }
            Check::Found(ids) => {
                if rows.len() != ids.len()
                    && let Some(id) = first_missing(ids, &ids_of(&rows)?)
                {
                    return Err(Failed::Error(StoreError::NotFound(id)));
                }
            }
            Check::Fire(i) => {
                if rows.is_empty()
                    && let Some(ScheduleWrite::Fire(fire)) = b.schedules.get(*i)
                {
                    return Err(Failed::Error(duplicate_fire(&fire.schedule, fire.at)));
                }
            }
        }
        if gate == Some(i)
            && let Some(chain) = b.broken
        {
            return Err(broken(chain));
        }
    }
    Ok(())
}

/// A chain of one task's changes in the batch whose links do not follow.
fn broken((id, expected): (TaskId, State)) -> Failed {
    Failed::Error(StoreError::Conflict { id, expected })
}

/// The ids a `RETURNING id` statement answered.
fn ids_of(rows: &[Row]) -> Result<Vec<Vec<u8>>, postgres::Error> {
    rows.iter().map(|r| r.try_get(0)).collect()
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
    /// Each insert's status as the batch leaves it: a task's status
    /// changes in the batch that submits it are folded into its insert
    /// (one row version, not one more per commit).
    insert_status: Vec<&'a TaskStatus>,
    /// Where each task of `inserts` is (its first insert), and where its
    /// `Submitted` is in the batch.
    insert_index: HashMap<TaskId, (usize, usize)>,
    cas: Vec<Cas<'a>>,
    cas_index: HashMap<TaskId, usize>,
    /// A chain in the batch whose link did not follow: the conflict to
    /// report (once the inserts are checked).
    broken: Option<(TaskId, State)>,
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
    /// The batch `changes`, grouped.
    fn of(changes: &'a [Change]) -> Result<Groups<'a>, StoreError> {
        let mut b = Groups::default();
        for (at, change) in changes.iter().enumerate() {
            b.add(at, change)?;
        }
        Ok(b)
    }

    /// The first task with a change that comes before its own `Submitted`
    /// in the batch.
    fn changed_before_submit(&self, changes: &[Change]) -> Option<TaskId> {
        if self.insert_index.is_empty() {
            return None;
        }
        changes.iter().enumerate().find_map(|(at, c)| {
            let id = c.task_id()?;
            let &(_, submitted) = self.insert_index.get(&id)?;
            (at < submitted).then_some(id)
        })
    }

    /// The tags of the tasks to delete, from their specs (the tag table is
    /// keyed by tag, and a spec need not be valid `jsonb`): read before
    /// the flight (this is the only writer, so what is committed is what
    /// the transaction would see), plus those of tasks the batch inserts.
    fn deleted_tags(&self, conn: &mut WriteConn) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        if self.deleted.is_empty() {
            return Ok(Vec::new());
        }
        let rows = conn.query(
            "SELECT id, spec FROM tasks WHERE id = ANY($1)",
            &[&self.deleted],
        )?;
        let mut tags = Vec::new();
        for row in &rows {
            let (id, spec): (Vec<u8>, String) = (row.try_get(0)?, row.try_get(1)?);
            for tag in crate::tags_of(&spec) {
                tags.push((tag, id.clone()));
            }
        }
        for rec in &self.inserts {
            let key = rec.id.to_bytes().to_vec();
            if self.deleted.contains(&key) {
                tags.extend(rec.spec.tags.iter().map(|t| (t.clone(), key.clone())));
            }
        }
        Ok(tags)
    }

    fn add(&mut self, at: usize, change: &'a Change) -> Result<(), StoreError> {
        match change {
            Change::Submitted(rec) => {
                self.insert_index
                    .entry(rec.id)
                    .or_insert((self.inserts.len(), at));
                self.inserts.push(rec);
                self.insert_status.push(&rec.status);
            }
            Change::Status {
                id,
                from,
                at,
                status,
                attempt_outcome,
            } => {
                let folded = match (self.insert_index.get(id), self.cas_index.get(id)) {
                    (Some(&(i, _)), _) => Some(&mut self.insert_status[i]),
                    (None, Some(&i)) => Some(&mut self.cas[i].status),
                    (None, None) => None,
                };
                match folded {
                    Some(last) => {
                        if last.state != *from && self.broken.is_none() {
                            self.broken = Some((*id, *from));
                        }
                        *last = status;
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

    /// The batch's statements, in the order they run, each with what its
    /// answer must be.
    fn ops<'s>(
        &'s self,
        ops: &mut Vec<Op<'s>>,
        checks: &mut Vec<Check>,
        deleted_tags: Vec<(String, Vec<u8>)>,
    ) -> Result<(), StoreError> {
        let mut push = |op: Op<'s>, check: Check| {
            ops.push(op);
            checks.push(check);
        };
        self.insert_ops(&mut push)?;
        if !self.cas.is_empty() {
            push(self.cas_op()?, Check::Cas);
        }
        self.attempt_ops(&mut push);
        if let Some((op, ids)) = fields_op(PROGRESS, &self.progress, |v| v.to_owned()) {
            push(op, Check::Found(ids));
        }
        if let Some((op, ids)) = fields_op(CHECKPOINT, &self.checkpoints, |v| v.as_bytes().to_vec())
        {
            push(op, Check::Found(ids));
        }
        if !self.output.is_empty() {
            let o = &self.output;
            let ids: Vec<TaskId> = o.iter().map(|o| o.0).collect();
            push(
                Op::new(
                    "INSERT INTO output (task_id, attempt, stream, data) \
                     SELECT v.task_id, v.attempt, v.stream, v.data \
                     FROM UNNEST($1::bytea[], $2::bigint[], $3::text[], $4::bytea[]) \
                     WITH ORDINALITY AS v(task_id, attempt, stream, data, n) \
                     WHERE EXISTS (SELECT 1 FROM tasks WHERE id = v.task_id) ORDER BY v.n \
                     RETURNING task_id",
                    vec![
                        Box::new(keys(&ids)),
                        Box::new(o.iter().map(|o| i64::from(o.1)).collect::<Vec<i64>>()),
                        Box::new(o.iter().map(|o| o.2).collect::<Vec<&str>>()),
                        Box::new(o.iter().map(|o| o.3.as_bytes()).collect::<Vec<&[u8]>>()),
                    ],
                ),
                Check::Found(ids),
            );
        }
        for (name, paused) in &self.queues {
            let sql = if *paused {
                "INSERT INTO paused_queues (name) VALUES ($1) ON CONFLICT DO NOTHING"
            } else {
                "DELETE FROM paused_queues WHERE name = $1"
            };
            push(Op::new(sql, vec![Box::new(*name)]), Check::Any);
        }
        for (i, w) in self.schedules.iter().enumerate() {
            match w {
                ScheduleWrite::Upsert(rec) => push(
                    Op::new(
                        "INSERT INTO schedules (name, record) VALUES ($1, $2) \
                         ON CONFLICT (name) DO UPDATE SET record = EXCLUDED.record",
                        vec![
                            Box::new(rec.name.as_str()),
                            Box::new(to_json(&rec.name, "schedule", rec)?),
                        ],
                    ),
                    Check::Any,
                ),
                ScheduleWrite::Delete(name) => {
                    push(
                        Op::new(
                            "DELETE FROM schedule_fires WHERE schedule = $1",
                            vec![Box::new(*name)],
                        ),
                        Check::Any,
                    );
                    push(
                        Op::new(
                            "DELETE FROM schedules WHERE name = $1",
                            vec![Box::new(*name)],
                        ),
                        Check::Any,
                    );
                }
                ScheduleWrite::Fire(fire) => push(
                    Op::new(
                        "INSERT INTO schedule_fires \
                         (schedule, at, fired_at, outcome, task, record, manual) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING RETURNING 1",
                        vec![
                            Box::new(fire.schedule.as_str()),
                            Box::new(micros(fire.at)),
                            Box::new(micros(fire.fired_at)),
                            Box::new(fire.outcome.as_str()),
                            Box::new(fire.task.map(|t| t.to_bytes().to_vec())),
                            Box::new(to_json(&fire.schedule, "fire", fire)?),
                            Box::new(fire.manual),
                        ],
                    ),
                    Check::Fire(i),
                ),
            }
        }
        for (key, value) in &self.meta {
            push(
                Op::new(
                    "INSERT INTO meta (key, value) VALUES ($1, $2) \
                     ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                    vec![Box::new(*key), Box::new(*value)],
                ),
                Check::Any,
            );
        }
        if !self.output_deleted.is_empty() {
            push(
                Op::new(
                    "DELETE FROM output WHERE task_id = ANY($1)",
                    vec![Box::new(self.output_deleted.clone())],
                ),
                Check::Any,
            );
        }
        if let Some(before) = self.audit_pruned {
            push(
                Op::new("DELETE FROM audit WHERE at < $1", vec![Box::new(before)]),
                Check::Any,
            );
        }
        if !self.audit.is_empty() {
            let (at, records): (Vec<i64>, Vec<&str>) =
                self.audit.iter().map(|(a, r)| (*a, r.as_str())).unzip();
            // In batch order: the numbers follow it.
            push(
                Op::new(
                    "INSERT INTO audit (at, record) \
                     SELECT a, r FROM unnest($1::bigint[], $2::text[]) \
                     WITH ORDINALITY AS t(a, r, n) ORDER BY n",
                    vec![Box::new(at), Box::new(records)],
                ),
                Check::Any,
            );
        }
        // Last: no other change of the batch can follow a task's deletion.
        // Tags first (the tag table is keyed by tag, and a spec need not be
        // valid `jsonb`, so they were read from the specs in Rust), then
        // output, attempts and the tasks.
        if !self.deleted.is_empty() {
            if !deleted_tags.is_empty() {
                let (tags, owners): (Vec<String>, Vec<Vec<u8>>) = deleted_tags.into_iter().unzip();
                push(
                    Op::new(
                        "DELETE FROM task_tags WHERE (tag, task_id) IN \
                         (SELECT * FROM unnest($1::text[], $2::bytea[]))",
                        vec![Box::new(tags), Box::new(owners)],
                    ),
                    Check::Any,
                );
            }
            for sql in [
                "DELETE FROM output WHERE task_id = ANY($1)",
                "DELETE FROM attempts WHERE task_id = ANY($1)",
                "DELETE FROM tasks WHERE id = ANY($1)",
            ] {
                push(
                    Op::new(sql, vec![Box::new(self.deleted.clone())]),
                    Check::Any,
                );
            }
        }
        Ok(())
    }

    /// The inserts of new tasks and of their tags.
    fn insert_ops<'s>(&'s self, push: &mut impl FnMut(Op<'s>, Check)) -> Result<(), StoreError> {
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
        for (rec, status) in self.inserts.iter().zip(&self.insert_status) {
            let key = rec.id.to_bytes().to_vec();
            for tag in &rec.spec.tags {
                tags.push(tag.as_str());
                tag_ids.push(key.clone());
            }
            ids.push(key);
            queues.push(&*rec.spec.queue);
            states.push(status.state.as_str());
            workers.push(status.worker.as_ref().map(|w| w.as_str()));
            parents.push(rec.spec.parent.map(|p| p.to_bytes().to_vec()));
            created.push(micros(rec.created_at));
            specs.push(json(rec.id, "spec", &rec.spec)?);
            statuses.push(crate::status::to_json(rec.id, status)?);
            progress.push(
                rec.progress
                    .as_ref()
                    .map(|p| json(rec.id, "progress", p))
                    .transpose()?,
            );
            checkpoints.push(rec.checkpoint.as_deref().map(str::as_bytes));
        }
        push(
            Op::new(
                "INSERT INTO tasks (id, queue, state, worker, parent, created_at, spec, status, \
                 progress, checkpoint) \
                 SELECT * FROM UNNEST($1::bytea[], $2::text[], $3::text[], $4::text[], \
                 $5::bytea[], $6::bigint[], $7::text[], $8::text[], $9::text[], $10::bytea[]) \
                 ON CONFLICT DO NOTHING RETURNING id",
                vec![
                    Box::new(ids),
                    Box::new(queues),
                    Box::new(states),
                    Box::new(workers),
                    Box::new(parents),
                    Box::new(created),
                    Box::new(specs),
                    Box::new(statuses),
                    Box::new(progress),
                    Box::new(checkpoints),
                ],
            ),
            Check::Inserts,
        );
        if !tags.is_empty() {
            push(
                Op::new(
                    "INSERT INTO task_tags (tag, task_id) \
                     SELECT * FROM UNNEST($1::text[], $2::bytea[]) ON CONFLICT DO NOTHING",
                    vec![Box::new(tags), Box::new(tag_ids)],
                ),
                Check::Any,
            );
        }
        Ok(())
    }

    /// The inserts are all in unless `rows` (their `RETURNING id`) miss
    /// one: the first task not inserted was stored already, or came twice.
    fn check_inserts(&self, rows: &[Row]) -> Result<(), Failed> {
        if rows.len() == self.inserts.len() {
            return Ok(());
        }
        let mut inserted = ids_of(rows)?;
        inserted.sort();
        let mut seen = std::collections::HashSet::new();
        for rec in &self.inserts {
            let key = rec.id.to_bytes().to_vec();
            if inserted.binary_search(&key).is_err() || !seen.insert(key) {
                return Err(Failed::Error(StoreError::Duplicate(rec.id)));
            }
        }
        Ok(())
    }

    /// The status compare-and-sets, one row each.
    fn cas_op<'s>(&'s self) -> Result<Op<'s>, StoreError> {
        let cas = &self.cas;
        let statuses = cas
            .iter()
            .map(|c| crate::status::to_json(c.id, c.status))
            .collect::<Result<Vec<String>, _>>()?;
        Ok(Op::new(
            "UPDATE tasks AS t SET state = v.to_state, worker = v.worker, status = v.status \
             FROM UNNEST($1::bytea[], $2::text[], $3::text[], $4::text[], $5::text[]) \
             AS v(id, from_state, to_state, worker, status) \
             WHERE t.id = v.id AND t.state = v.from_state RETURNING t.id",
            vec![
                Box::new(keys(&cas.iter().map(|c| c.id).collect::<Vec<_>>())),
                Box::new(cas.iter().map(|c| c.from.as_str()).collect::<Vec<&str>>()),
                Box::new(
                    cas.iter()
                        .map(|c| c.status.state.as_str())
                        .collect::<Vec<&str>>(),
                ),
                Box::new(
                    cas.iter()
                        .map(|c| c.status.worker.as_ref().map(|w| w.as_str()))
                        .collect::<Vec<Option<&str>>>(),
                ),
                Box::new(statuses),
            ],
        ))
    }

    /// The attempt rows: new ones, then start stamps, then ends (an
    /// attempt that starts and ends in this batch gets both stamps in one
    /// row write, its end's).
    fn attempt_ops<'s>(&'s self, push: &mut impl FnMut(Op<'s>, Check)) {
        let assigns = &self.assigns;
        if !assigns.is_empty() {
            push(
                Op::new(
                    "INSERT INTO attempts (task_id, attempt, worker, assigned_at) \
                     SELECT * FROM UNNEST($1::bytea[], $2::bigint[], $3::text[], $4::bigint[]) \
                     ON CONFLICT DO NOTHING RETURNING task_id, attempt",
                    vec![
                        Box::new(keys(&assigns.iter().map(|a| a.0).collect::<Vec<_>>())),
                        Box::new(assigns.iter().map(|a| i64::from(a.1)).collect::<Vec<i64>>()),
                        Box::new(assigns.iter().map(|a| a.2.clone()).collect::<Vec<String>>()),
                        Box::new(assigns.iter().map(|a| a.3).collect::<Vec<i64>>()),
                    ],
                ),
                Check::Assigns,
            );
        }
        // A later stamp of the same attempt wins, as applied in order.
        let mut started: HashMap<(TaskId, u32), i64> = HashMap::new();
        for (id, attempt, at) in &self.starts {
            started.insert((*id, *attempt), *at);
        }
        let mut ended: HashMap<(TaskId, u32), &Finish> = HashMap::new();
        for f in &self.finishes {
            ended.insert((f.id, f.attempt), f);
        }
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
            let (keys_, at): (Vec<(TaskId, u32)>, Vec<i64>) = last.into_iter().unzip();
            push(
                Op::new(
                    "UPDATE attempts AS a SET started_at = v.at \
                     FROM UNNEST($1::bytea[], $2::bigint[], $3::bigint[]) \
                     AS v(task_id, attempt, at) \
                     WHERE a.task_id = v.task_id AND a.attempt = v.attempt",
                    vec![
                        Box::new(keys(&keys_.iter().map(|k| k.0).collect::<Vec<_>>())),
                        Box::new(keys_.iter().map(|k| i64::from(k.1)).collect::<Vec<i64>>()),
                        Box::new(at),
                    ],
                ),
                Check::Any,
            );
        }
        if !ended.is_empty() {
            let fs: Vec<&Finish> = ended.into_values().collect();
            push(
                Op::new(
                    "UPDATE attempts AS a SET finished_at = v.at, outcome = v.outcome, \
                     error = v.error, exit_code = v.exit_code, cpu_seconds = v.cpu, \
                     peak_rss_bytes = v.rss, signal = v.signal, \
                     started_at = COALESCE(v.started, a.started_at) \
                     FROM UNNEST($1::bytea[], $2::bigint[], $3::bigint[], $4::text[], \
                     $5::bytea[], $6::integer[], $7::float8[], $8::bigint[], $9::integer[], \
                     $10::bigint[]) \
                     AS v(task_id, attempt, at, outcome, error, exit_code, cpu, rss, signal, \
                     started) \
                     WHERE a.task_id = v.task_id AND a.attempt = v.attempt",
                    vec![
                        Box::new(keys(&fs.iter().map(|f| f.id).collect::<Vec<_>>())),
                        Box::new(
                            fs.iter()
                                .map(|f| i64::from(f.attempt))
                                .collect::<Vec<i64>>(),
                        ),
                        Box::new(fs.iter().map(|f| f.at).collect::<Vec<i64>>()),
                        Box::new(fs.iter().map(|f| f.outcome).collect::<Vec<&str>>()),
                        Box::new(
                            fs.iter()
                                .map(|f| f.error.clone().map(String::into_bytes))
                                .collect::<Vec<Option<Vec<u8>>>>(),
                        ),
                        Box::new(fs.iter().map(|f| f.exit_code).collect::<Vec<Option<i32>>>()),
                        Box::new(
                            fs.iter()
                                .map(|f| f.cpu_seconds)
                                .collect::<Vec<Option<f64>>>(),
                        ),
                        Box::new(
                            fs.iter()
                                .map(|f| f.peak_rss_bytes)
                                .collect::<Vec<Option<i64>>>(),
                        ),
                        Box::new(fs.iter().map(|f| f.signal).collect::<Vec<Option<i32>>>()),
                        Box::new(
                            fs.iter()
                                .map(|f| folded.get(&(f.id, f.attempt)).copied())
                                .collect::<Vec<Option<i64>>>(),
                        ),
                    ],
                ),
                Check::Any,
            );
        }
    }
}

/// The id keys (16 bytes each) of `ids`.
fn keys(ids: &[TaskId]) -> Vec<Vec<u8>> {
    ids.iter().map(|id| id.to_bytes().to_vec()).collect()
}

/// Overwrites the progress of each task.
const PROGRESS: &str = "UPDATE tasks AS t SET progress = v.val \
     FROM UNNEST($1::bytea[], $2::text[]) AS v(id, val) WHERE t.id = v.id RETURNING t.id";
/// Overwrites the checkpoint of each task.
const CHECKPOINT: &str = "UPDATE tasks AS t SET checkpoint = v.val \
     FROM UNNEST($1::bytea[], $2::bytea[]) AS v(id, val) WHERE t.id = v.id RETURNING t.id";

/// Overwrites a column of each task (`sql`: [`PROGRESS`] or
/// [`CHECKPOINT`]), the last value of a task in the batch winning; with
/// the tasks whose row must be found.
fn fields_op<'a, V: AsRef<str>, T: ToSql + Sync + 'a>(
    sql: &'static str,
    values: &[(TaskId, V)],
    encode: impl Fn(&str) -> T,
) -> Option<(Op<'a>, Vec<TaskId>)> {
    if values.is_empty() {
        return None;
    }
    let mut last: HashMap<TaskId, &str> = HashMap::new();
    let mut order = Vec::new();
    for (id, v) in values {
        if last.insert(*id, v.as_ref()).is_none() {
            order.push(*id);
        }
    }
    let vals: Vec<T> = order
        .iter()
        .map(|id| encode(last.get(id).copied().unwrap_or_default()))
        .collect();
    Some((
        Op::new(sql, vec![Box::new(keys(&order)), Box::new(vals)]),
        order,
    ))
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
