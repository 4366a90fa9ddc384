//! [`MemoryStore`]: every task, attempt and output chunk, paused queue,
//! schedule and fire in one process's memory — for tests, benchmarks and
//! embedding without persistence.
//!
//! Tasks live in one ordered map keyed by id (so listing in id order and
//! cursors need no sorting), each boxed so the map's nodes stay small. There
//! are no secondary indexes: filters scan. Schedules are a map by name, and
//! each schedule's fires a map by scheduled time. `apply` is all-or-nothing
//! through an undo log that is replayed backwards when a change fails.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::{Mutex, MutexGuard, PoisonError};

use taskgrid_core::{
    AttemptOutcome, AttemptRecord, AuditEntry, AuditRecord, Change, FireRecord, OutputChunk,
    Progress, ScheduleRecord, State, Stream, TaskId, TaskRecord, TaskSpec, TaskStatus, Timestamp,
    WorkerId,
};

use crate::attempt::{AttemptOp, attempt_ops, duplicate_attempt};
use crate::schedule::duplicate_fire;
use crate::{
    FinishedScan, FinishedTask, Store, StoreError, TaskQuery, counts_in_order, finished_before_at,
    state_index,
};

/// A [`Store`] that keeps everything in memory and loses it when dropped.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    tasks: BTreeMap<TaskId, Box<Task>>,
    /// Tasks per state, indexed like [`State::ALL`].
    counts: [u64; State::ALL.len()],
    /// The sequence number of the last output chunk.
    last_seq: u64,
    /// Paused queues.
    paused: BTreeSet<String>,
    /// Meta entries.
    meta: BTreeMap<String, String>,
    /// The audit log, by number.
    audit: BTreeMap<u64, AuditRecord>,
    /// The last audit number given.
    audit_seq: u64,
    /// Schedules by name.
    schedules: BTreeMap<String, Box<ScheduleRecord>>,
    /// The fires of each schedule (the schedule's name, even if it was
    /// deleted since), by scheduled time; no schedule has an empty map.
    fires: BTreeMap<String, Fires>,
}

/// A schedule's fires by (scheduled time, manual).
type Fires = BTreeMap<(Timestamp, bool), Box<FireRecord>>;

/// A stored task: a [`TaskRecord`] without the id (it is the map's key) plus
/// its history.
#[derive(Debug)]
struct Task {
    spec: TaskSpec,
    created_at: Timestamp,
    status: TaskStatus,
    progress: Option<Progress>,
    checkpoint: Option<Box<str>>,
    attempts: Vec<Attempt>,
    output: Vec<Chunk>,
}

/// An [`AttemptRecord`] without the task id.
#[derive(Debug, Clone)]
struct Attempt {
    attempt: u32,
    worker: WorkerId,
    assigned_at: Timestamp,
    started_at: Option<Timestamp>,
    finished_at: Option<Timestamp>,
    outcome: Option<AttemptOutcome>,
    error: Option<Box<str>>,
    exit_code: Option<i32>,
    usage: Option<taskgrid_core::Usage>,
}

/// An [`OutputChunk`] without the task id, with its sequence number.
#[derive(Debug)]
struct Chunk {
    seq: u64,
    attempt: u32,
    stream: Stream,
    data: Box<str>,
}

/// How to take back one applied change.
enum Undo {
    /// Remove the inserted task.
    Insert(TaskId),
    /// Put back the status (and fix the counts), then the attempts.
    Status {
        id: TaskId,
        old: Box<TaskStatus>,
        attempts: Vec<AttemptUndo>,
    },
    /// Put back the progress.
    Progress(TaskId, Option<Progress>),
    /// Put back the checkpoint.
    Checkpoint(TaskId, Option<Box<str>>),
    /// Drop the appended chunk.
    Output(TaskId),
    /// Put back a queue's pause.
    Queue(String, bool),
    /// Put back the schedule this name had (remove it if none).
    Schedule(String, Option<Box<ScheduleRecord>>),
    /// Put back a deleted schedule and its fires.
    ScheduleDeleted(String, Option<Box<ScheduleRecord>>, Option<Fires>),
    /// Remove the inserted fire.
    Fire(String, (Timestamp, bool)),
    /// Put back a deleted task.
    Deleted(TaskId, Box<Task>),
    /// Put back a task's deleted output.
    OutputDeleted(TaskId, Vec<Chunk>),
    /// Put back a meta entry (remove it if none).
    Meta(String, Option<String>),
    /// Remove the appended audit entry.
    Audit(u64),
    /// Put back pruned audit entries.
    AuditPruned(BTreeMap<u64, AuditRecord>),
}

enum AttemptUndo {
    /// Drop the pushed attempt.
    Pushed,
    /// Put back the attempt at this index.
    Replaced(usize, Box<Attempt>),
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The lock. `apply` only panics on a bug (and then loses at most its own
    /// batch's consistency), so a poisoned lock is taken as is rather than
    /// failing every later call.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Inner {
    fn task_mut(&mut self, id: TaskId) -> Result<&mut Task, StoreError> {
        self.tasks
            .get_mut(&id)
            .map(|t| &mut **t)
            .ok_or(StoreError::NotFound(id))
    }

    fn apply_one(&mut self, change: &Change, undo: &mut Vec<Undo>) -> Result<(), StoreError> {
        match change {
            Change::Submitted(rec) => {
                if self.tasks.contains_key(&rec.id) {
                    return Err(StoreError::Duplicate(rec.id));
                }
                self.tasks.insert(rec.id, Box::new(Task::from_record(rec)));
                self.counts[state_index(rec.status.state)] += 1;
                undo.push(Undo::Insert(rec.id));
            }
            Change::Status {
                id,
                from,
                at,
                status,
                attempt_outcome,
            } => {
                let task = self.task_mut(*id)?;
                if task.status.state != *from {
                    return Err(StoreError::Conflict {
                        id: *id,
                        expected: *from,
                    });
                }
                let ops = attempt_ops(*id, *from, *at, status, *attempt_outcome)?;
                let attempts = task.apply_attempt_ops(*id, ops)?;
                let old = Box::new(std::mem::replace(
                    &mut task.status,
                    TaskStatus::clone(status),
                ));
                self.counts[state_index(*from)] -= 1;
                self.counts[state_index(status.state)] += 1;
                undo.push(Undo::Status {
                    id: *id,
                    old,
                    attempts,
                });
            }
            Change::Progress { id, progress } => {
                let old = self.task_mut(*id)?.progress.replace(progress.clone());
                undo.push(Undo::Progress(*id, old));
            }
            Change::Checkpoint { id, data } => {
                let old = self.task_mut(*id)?.checkpoint.replace(data.clone());
                undo.push(Undo::Checkpoint(*id, old));
            }
            Change::Output(chunk) => {
                let seq = self.last_seq + 1;
                self.task_mut(chunk.task)?.output.push(Chunk {
                    seq,
                    attempt: chunk.attempt,
                    stream: chunk.stream,
                    data: chunk.data.as_str().into(),
                });
                self.last_seq = seq;
                undo.push(Undo::Output(chunk.task));
            }
            Change::Queue { name, paused } => {
                let was = if *paused {
                    !self.paused.insert(name.clone())
                } else {
                    self.paused.remove(name)
                };
                undo.push(Undo::Queue(name.clone(), was));
            }
            Change::Schedule(rec) => {
                let old = self.schedules.insert(rec.name.clone(), rec.clone());
                undo.push(Undo::Schedule(rec.name.clone(), old));
            }
            Change::ScheduleDeleted { name } => {
                let old = self.schedules.remove(name);
                let fires = self.fires.remove(name);
                undo.push(Undo::ScheduleDeleted(name.clone(), old, fires));
            }
            Change::Fire(fire) => {
                let fires = self.fires.entry(fire.schedule.clone()).or_default();
                let key = (fire.at, fire.manual);
                if fires.contains_key(&key) {
                    return Err(duplicate_fire(&fire.schedule, fire.at));
                }
                fires.insert(key, fire.clone());
                undo.push(Undo::Fire(fire.schedule.clone(), key));
            }
            Change::OutputDeleted { id } => {
                if let Some(t) = self.tasks.get_mut(id) {
                    let old = std::mem::take(&mut t.output);
                    undo.push(Undo::OutputDeleted(*id, old));
                }
            }
            Change::Meta { key, value } => {
                let old = self.meta.insert(key.clone(), value.clone());
                undo.push(Undo::Meta(key.clone(), old));
            }
            Change::Audit(rec) => {
                self.audit_seq += 1;
                self.audit.insert(self.audit_seq, (**rec).clone());
                undo.push(Undo::Audit(self.audit_seq));
            }
            Change::AuditPruned { before } => {
                let (old, kept): (BTreeMap<_, _>, BTreeMap<_, _>) = std::mem::take(&mut self.audit)
                    .into_iter()
                    .partition(|(_, r)| r.at < *before);
                self.audit = kept;
                undo.push(Undo::AuditPruned(old));
            }
            Change::Deleted { id } => {
                if let Some(t) = self.tasks.remove(id) {
                    self.counts[state_index(t.status.state)] -= 1;
                    undo.push(Undo::Deleted(*id, t));
                }
            }
        }
        Ok(())
    }

    /// Takes back one change; the task it names exists, since the change
    /// applied.
    fn undo(&mut self, u: Undo) {
        match u {
            Undo::Insert(id) => {
                if let Some(t) = self.tasks.remove(&id) {
                    self.counts[state_index(t.status.state)] -= 1;
                }
            }
            Undo::OutputDeleted(id, chunks) => {
                if let Some(t) = self.tasks.get_mut(&id) {
                    t.output = chunks;
                }
            }
            Undo::Audit(seq) => {
                // The number stays used: a number is never given twice.
                self.audit.remove(&seq);
            }
            Undo::AuditPruned(old) => self.audit.extend(old),
            Undo::Meta(key, old) => match old {
                Some(v) => {
                    self.meta.insert(key, v);
                }
                None => {
                    self.meta.remove(&key);
                }
            },
            Undo::Deleted(id, t) => {
                self.counts[state_index(t.status.state)] += 1;
                self.tasks.insert(id, t);
            }
            Undo::Status { id, old, attempts } => {
                let Some(task) = self.tasks.get_mut(&id) else {
                    return;
                };
                self.counts[state_index(task.status.state)] -= 1;
                self.counts[state_index(old.state)] += 1;
                task.status = *old;
                for a in attempts.into_iter().rev() {
                    match a {
                        AttemptUndo::Pushed => {
                            task.attempts.pop();
                        }
                        AttemptUndo::Replaced(i, old) => task.attempts[i] = *old,
                    }
                }
            }
            Undo::Progress(id, old) => {
                if let Some(t) = self.tasks.get_mut(&id) {
                    t.progress = old;
                }
            }
            Undo::Checkpoint(id, old) => {
                if let Some(t) = self.tasks.get_mut(&id) {
                    t.checkpoint = old;
                }
            }
            Undo::Output(id) => {
                if let Some(t) = self.tasks.get_mut(&id) {
                    t.output.pop();
                }
                self.last_seq -= 1;
            }
            Undo::Queue(name, was) => {
                if was {
                    self.paused.insert(name);
                } else {
                    self.paused.remove(&name);
                }
            }
            Undo::Schedule(name, old) => match old {
                Some(rec) => {
                    self.schedules.insert(name, rec);
                }
                None => {
                    self.schedules.remove(&name);
                }
            },
            Undo::ScheduleDeleted(name, old, fires) => {
                if let Some(rec) = old {
                    self.schedules.insert(name.clone(), rec);
                }
                if let Some(fires) = fires {
                    self.fires.insert(name, fires);
                }
            }
            Undo::Fire(name, at) => {
                if let Some(fires) = self.fires.get_mut(&name) {
                    fires.remove(&at);
                    if fires.is_empty() {
                        self.fires.remove(&name);
                    }
                }
            }
        }
    }
}

impl Task {
    fn from_record(rec: &TaskRecord) -> Self {
        Task {
            spec: rec.spec.clone(),
            created_at: rec.created_at,
            status: rec.status.clone(),
            progress: rec.progress.clone(),
            checkpoint: rec.checkpoint.clone(),
            attempts: Vec::new(),
            output: Vec::new(),
        }
    }

    fn to_record(&self, id: TaskId) -> TaskRecord {
        TaskRecord {
            id,
            spec: self.spec.clone(),
            created_at: self.created_at,
            status: self.status.clone(),
            progress: self.progress.clone(),
            checkpoint: self.checkpoint.clone(),
        }
    }

    fn matches(&self, q: &TaskQuery) -> bool {
        q.state.is_none_or(|s| s == self.status.state)
            && q.queue.as_deref().is_none_or(|qu| qu == &*self.spec.queue)
            && q.tag
                .as_ref()
                .is_none_or(|tag| self.spec.tags.contains(tag))
            && q.parent.is_none_or(|p| self.spec.parent == Some(p))
            && q.worker.as_ref().is_none_or(|w| {
                self.attempts
                    .iter()
                    .any(|a| a.worker == *w && a.outcome != Some(AttemptOutcome::Rejected))
            })
    }

    /// Applies attempt writes, all checked before any is made, and returns how
    /// to take them back.
    fn apply_attempt_ops(
        &mut self,
        id: TaskId,
        ops: [Option<AttemptOp<'_>>; 2],
    ) -> Result<Vec<AttemptUndo>, StoreError> {
        for op in ops.iter().flatten() {
            if let AttemptOp::Assign { attempt, .. } = op
                && self.find_attempt(*attempt).is_some()
            {
                return Err(duplicate_attempt(id, *attempt));
            }
        }
        let mut undo = Vec::new();
        for op in ops.into_iter().flatten() {
            match op {
                AttemptOp::Assign {
                    attempt,
                    worker,
                    at,
                } => {
                    // Exact growth: most tasks have one attempt, and a
                    // default-grown Vec would reserve four.
                    self.attempts.reserve_exact(1);
                    self.attempts.push(Attempt {
                        attempt,
                        worker: worker.clone(),
                        assigned_at: at,
                        started_at: None,
                        finished_at: None,
                        outcome: None,
                        error: None,
                        exit_code: None,
                        usage: None,
                    });
                    undo.push(AttemptUndo::Pushed);
                }
                AttemptOp::Start { attempt, at } => {
                    if let Some(i) = self.find_attempt(attempt) {
                        undo.push(AttemptUndo::Replaced(i, Box::new(self.attempts[i].clone())));
                        self.attempts[i].started_at = Some(at);
                    }
                }
                AttemptOp::Finish {
                    attempt,
                    at,
                    outcome,
                    error,
                    exit_code,
                    usage,
                } => {
                    if let Some(i) = self.find_attempt(attempt) {
                        undo.push(AttemptUndo::Replaced(i, Box::new(self.attempts[i].clone())));
                        let a = &mut self.attempts[i];
                        a.finished_at = Some(at);
                        a.outcome = Some(outcome);
                        a.error = error.map(Box::from);
                        a.exit_code = exit_code;
                        a.usage = usage;
                    }
                }
            }
        }
        Ok(undo)
    }

    fn find_attempt(&self, attempt: u32) -> Option<usize> {
        self.attempts.iter().rposition(|a| a.attempt == attempt)
    }
}

impl Store for MemoryStore {
    fn quick_commits(&self) -> bool {
        true
    }

    fn apply(&self, changes: &[Change]) -> Result<(), StoreError> {
        let mut inner = self.lock();
        let mut undo = Vec::with_capacity(changes.len());
        for change in changes {
            if let Err(e) = inner.apply_one(change, &mut undo) {
                for u in undo.into_iter().rev() {
                    inner.undo(u);
                }
                return Err(e);
            }
        }
        Ok(())
    }

    fn load_active(&self) -> Result<Vec<TaskRecord>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .tasks
            .iter()
            .filter(|(_, t)| !t.status.state.is_terminal())
            .map(|(id, t)| t.to_record(*id))
            .collect())
    }

    fn get(&self, id: TaskId) -> Result<Option<TaskRecord>, StoreError> {
        Ok(self.lock().tasks.get(&id).map(|t| t.to_record(id)))
    }

    fn list(&self, q: &TaskQuery) -> Result<Vec<TaskRecord>, StoreError> {
        let inner = self.lock();
        let cursor = q.after.map_or(Bound::Unbounded, Bound::Excluded);
        Ok(if q.newest_first {
            let range = inner.tasks.range((Bound::Unbounded, cursor)).rev();
            range
                .filter(|(_, t)| t.matches(q))
                .take(q.limit)
                .map(|(id, t)| t.to_record(*id))
                .collect()
        } else {
            let range = inner.tasks.range((cursor, Bound::Unbounded));
            range
                .filter(|(_, t)| t.matches(q))
                .take(q.limit)
                .map(|(id, t)| t.to_record(*id))
                .collect()
        })
    }

    fn attempts(&self, id: TaskId) -> Result<Vec<AttemptRecord>, StoreError> {
        let inner = self.lock();
        let Some(task) = inner.tasks.get(&id) else {
            return Ok(Vec::new());
        };
        let mut out: Vec<AttemptRecord> = task
            .attempts
            .iter()
            .map(|a| AttemptRecord {
                task: id,
                attempt: a.attempt,
                worker: a.worker.clone(),
                assigned_at: a.assigned_at,
                started_at: a.started_at,
                finished_at: a.finished_at,
                outcome: a.outcome,
                error: a.error.as_deref().map(String::from),
                exit_code: a.exit_code,
                usage: a.usage,
            })
            .collect();
        out.sort_by_key(|a| a.attempt);
        Ok(out)
    }

    fn output(
        &self,
        id: TaskId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<(u64, OutputChunk)>, StoreError> {
        let inner = self.lock();
        let Some(task) = inner.tasks.get(&id) else {
            return Ok(Vec::new());
        };
        let start = task.output.partition_point(|c| c.seq <= after_seq);
        Ok(task.output[start..]
            .iter()
            .take(limit)
            .map(|c| {
                let chunk = OutputChunk {
                    task: id,
                    attempt: c.attempt,
                    stream: c.stream,
                    data: String::from(&*c.data),
                };
                (c.seq, chunk)
            })
            .collect())
    }

    fn count_by_state(&self) -> Result<Vec<(State, u64)>, StoreError> {
        Ok(counts_in_order(&self.lock().counts))
    }

    fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self.lock().meta.get(key).cloned())
    }

    fn audit(&self, before: Option<u64>, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .audit
            .range(..before.unwrap_or(u64::MAX))
            .rev()
            .take(limit)
            .map(|(seq, record)| AuditEntry {
                seq: *seq,
                record: record.clone(),
            })
            .collect())
    }

    fn finished_before(
        &self,
        cutoff: Timestamp,
        after: Option<TaskId>,
        limit: usize,
    ) -> Result<FinishedScan, StoreError> {
        let inner = self.lock();
        let bound = TaskId::created_before(cutoff);
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut scan = FinishedScan::default();
        for (id, t) in inner
            .tasks
            .range((lower, Bound::Excluded(bound)))
            .take(limit)
        {
            scan.last = Some(*id);
            if let Some(finished_at) = finished_before_at(&t.status, cutoff) {
                scan.finished.push(FinishedTask {
                    id: *id,
                    queue: t.spec.queue.to_string(),
                    finished_at,
                });
            }
        }
        Ok(scan)
    }

    fn paused_queues(&self) -> Result<Vec<String>, StoreError> {
        Ok(self.lock().paused.iter().cloned().collect())
    }

    fn schedules(&self) -> Result<Vec<ScheduleRecord>, StoreError> {
        Ok(self
            .lock()
            .schedules
            .values()
            .map(|r| ScheduleRecord::clone(r))
            .collect())
    }

    fn schedules_after(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ScheduleRecord>, StoreError> {
        let inner = self.lock();
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        Ok(inner
            .schedules
            .range::<str, _>((from, Bound::Unbounded))
            .take(limit)
            .map(|(_, r)| ScheduleRecord::clone(r))
            .collect())
    }

    fn fires(
        &self,
        schedule: &str,
        from: Option<Timestamp>,
        to: Option<Timestamp>,
        limit: usize,
    ) -> Result<Vec<FireRecord>, StoreError> {
        let inner = self.lock();
        let Some(fires) = inner.fires.get(schedule) else {
            return Ok(Vec::new());
        };
        if let (Some(from), Some(to)) = (from, to)
            && from > to
        {
            // An empty range (`BTreeMap::range` refuses a reversed one).
            return Ok(Vec::new());
        }
        let lower = from.map_or(Bound::Unbounded, |t| Bound::Included((t, false)));
        let upper = to.map_or(Bound::Unbounded, |t| Bound::Included((t, true)));
        Ok(fires
            .range((lower, upper))
            .rev()
            .take(limit)
            .map(|(_, f)| FireRecord::clone(f))
            .collect())
    }
}
