//! Accepting tasks: validation, unique keys, dependencies, backpressure —
//! and rebuilding the engine from stored records after a restart.
//!
//! A batch is all or nothing: every check runs before anything changes, so a
//! refused submit leaves no trace.

use std::collections::HashMap;
use std::time::Duration;

use crate::{
    Change, Resources, ShellCommand, State, TaskId, TaskKind, TaskRecord, TaskSpec, TaskStatus,
    Timestamp,
};

use super::table::{IdMap, IdSet};
use super::{Engine, Entry, Outbox, SubmitError};

/// What a submit did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submitted {
    /// A new task with this id was accepted.
    Created(TaskId),
    /// A live task with the same unique key exists: this is its id.
    Existing(TaskId),
}

impl Submitted {
    /// The id of the task the submit refers to.
    pub fn id(self) -> TaskId {
        match self {
            Submitted::Created(id) | Submitted::Existing(id) => id,
        }
    }
}

const MAX_NAME: usize = super::CONCURRENCY_KEY_MAX;
pub(super) const MAX_TAGS: usize = 64;

fn invalid(field: &'static str, reason: impl Into<String>) -> SubmitError {
    SubmitError::Invalid {
        field,
        reason: reason.into(),
    }
}

fn check_name(field: &'static str, s: &str) -> Result<(), SubmitError> {
    if s.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if s.len() > MAX_NAME {
        return Err(invalid(field, format!("longer than {MAX_NAME} bytes")));
    }
    if s.chars().any(char::is_control) {
        return Err(invalid(field, "contains control characters"));
    }
    Ok(())
}

fn check_duration(
    field: &'static str,
    d: Option<Duration>,
    max: Duration,
) -> Result<(), SubmitError> {
    match d {
        Some(d) if d.is_zero() => Err(invalid(field, "must be positive")),
        Some(d) if d > max => Err(invalid(
            field,
            format!("{d:?} exceeds the limit of {max:?}"),
        )),
        _ => Ok(()),
    }
}

impl Engine {
    pub(super) fn validate(&self, spec: &TaskSpec, now: Timestamp) -> Result<(), SubmitError> {
        let cfg = &self.config;
        check_name("queue", &spec.queue)?;
        match &spec.kind {
            TaskKind::Handler { name, .. } => check_name("handler", name)?,
            TaskKind::Shell(s) => match &s.command {
                ShellCommand::Argv(a) if a.first().is_none_or(String::is_empty) => {
                    return Err(invalid("command", "argv must name a program"));
                }
                ShellCommand::Script(s) if s.trim().is_empty() => {
                    return Err(invalid("command", "script must not be empty"));
                }
                _ => {}
            },
            TaskKind::Container(c) => check_name("image", &c.image)?,
        }
        let size = spec.kind.payload_len();
        if size > cfg.max_payload_bytes {
            return Err(SubmitError::PayloadTooLarge {
                size,
                limit: cfg.max_payload_bytes,
            });
        }
        check_duration("timeout", spec.timeout, cfg.max_timeout)?;
        check_duration("dispatch_timeout", spec.dispatch_timeout, cfg.max_timeout)?;
        if spec.slots == 0 {
            return Err(invalid("slots", "must be at least 1"));
        }
        let r = &spec.retry;
        if r.max_retries > cfg.max_retries {
            return Err(invalid(
                "max_retries",
                format!("{} exceeds the limit of {}", r.max_retries, cfg.max_retries),
            ));
        }
        if !r.multiplier.is_finite() || r.multiplier < 1.0 {
            return Err(invalid("retry.multiplier", "must be a finite number >= 1"));
        }
        if !(0.0..=1.0).contains(&r.jitter) {
            return Err(invalid("retry.jitter", "must be between 0 and 1"));
        }
        if r.max_backoff > cfg.max_timeout {
            return Err(invalid(
                "retry.max_backoff",
                format!("exceeds the limit of {:?}", cfg.max_timeout),
            ));
        }
        if let Some(k) = &spec.concurrency_key {
            check_name("concurrency_key", k)?;
        }
        if spec.min_trust.is_some_and(|t| !(0.0..=1.0).contains(&t)) {
            return Err(invalid("min_trust", "must be between 0 and 1"));
        }
        let res = &spec.resources();
        if res
            .cpus
            .is_some_and(|c| !c.is_finite() || c <= 0.0 || c > Resources::CPUS_MAX)
        {
            return Err(invalid(
                "resources.cpus",
                format!("must be above 0 and at most {}", Resources::CPUS_MAX),
            ));
        }
        if res.memory_bytes.is_some_and(|m| m < Resources::MEMORY_MIN) {
            return Err(invalid("resources.memory_bytes", "must be at least 1 MiB"));
        }
        if let Some(stdin) = &spec.stdin {
            if !matches!(spec.kind, TaskKind::Shell(_)) {
                return Err(invalid("stdin", "only a shell task reads standard input"));
            }
            if stdin.len() > TaskSpec::STDIN_MAX {
                return Err(invalid(
                    "stdin",
                    format!(
                        "is {} bytes; the most is {}",
                        stdin.len(),
                        TaskSpec::STDIN_MAX
                    ),
                ));
            }
        }
        if let Some(exp) = spec.expires_at {
            if exp <= now {
                return Err(invalid("expires_at", "is already in the past"));
            }
            if spec.run_at.is_some_and(|r| r >= exp) {
                return Err(invalid(
                    "expires_at",
                    "is not after run_at: the task could never start",
                ));
            }
        }
        if spec.tags.len() > MAX_TAGS {
            return Err(invalid("tags", format!("more than {MAX_TAGS}")));
        }
        for t in &spec.tags {
            check_name("tags", t)?;
        }
        if let Some(k) = &spec.unique_key {
            check_name("unique_key", k)?;
        }
        if spec.after.len() > cfg.max_dependencies {
            return Err(invalid(
                "after",
                format!("more than {} dependencies", cfg.max_dependencies),
            ));
        }
        Ok(())
    }

    /// Accepts one task. See [`Engine::submit_batch`].
    pub fn submit(
        &mut self,
        id: TaskId,
        spec: TaskSpec,
        now: Timestamp,
        out: &mut Outbox,
    ) -> Result<Submitted, SubmitError> {
        let mut done = self.submit_batch(vec![(id, spec)], now, out)?;
        Ok(done.pop().expect("one result per task"))
    }

    /// Accepts tasks, all or none. A task may depend on tasks the engine
    /// holds, on finished ones told through [`Engine::note_finished`], and on
    /// others in the same batch. A task whose unique key belongs to a live
    /// task is not created: its result is [`Submitted::Existing`].
    pub fn submit_batch(
        &mut self,
        items: Vec<(TaskId, TaskSpec)>,
        now: Timestamp,
        out: &mut Outbox,
    ) -> Result<Vec<Submitted>, SubmitError> {
        // 1. Check everything; change nothing.
        let mut results = Vec::with_capacity(items.len());
        let mut keys: HashMap<&str, TaskId> = HashMap::new();
        let mut new_ids = IdSet::with_capacity_and_hasher(items.len(), Default::default());
        let mut depth: HashMap<&str, usize> = HashMap::new();
        let batch = items.len() > 1;
        for (index, (id, spec)) in items.iter().enumerate() {
            self.validate(spec, now).map_err(|error| match batch {
                true => SubmitError::InBatch {
                    index,
                    error: Box::new(error),
                },
                false => error,
            })?;
            if self.tasks.contains_key(id) || !new_ids.insert(*id) {
                return Err(SubmitError::DuplicateId(*id));
            }
            if let Some(k) = spec.unique_key.as_deref() {
                if let Some(existing) = self.unique.get(k).or(keys.get(k)) {
                    new_ids.remove(id);
                    results.push(Submitted::Existing(*existing));
                    continue;
                }
                keys.insert(k, *id);
            }
            *depth.entry(&spec.queue).or_default() += 1;
            results.push(Submitted::Created(*id));
        }
        // Duplicates of a unique key stand for the task that holds the key.
        let alias: IdMap<TaskId> = items
            .iter()
            .zip(&results)
            .filter(|(_, r)| matches!(r, Submitted::Existing(_)))
            .map(|((id, _), r)| (*id, r.id()))
            .collect();
        let resolve = |d: &TaskId| *alias.get(d).unwrap_or(d);
        for (id, spec) in items.iter().filter(|(id, _)| new_ids.contains(id)) {
            for d in spec.after.iter().map(resolve) {
                if d == *id {
                    return Err(SubmitError::CyclicDependency(*id));
                }
                if !new_ids.contains(&d)
                    && !self.tasks.contains_key(&d)
                    && !self.external.contains_key(&d)
                {
                    return Err(SubmitError::UnknownDependency(d));
                }
            }
        }
        check_acyclic(&items, &new_ids, &resolve)?;
        for (queue, n) in depth {
            if let Some(limit) = self.queue_limit(queue) {
                let waiting = self.queues.get(queue).map_or(0, |q| q.waiting_total());
                if waiting + n > limit {
                    return Err(SubmitError::QueueFull {
                        queue: queue.to_owned(),
                        limit,
                    });
                }
            }
        }

        // 2. Insert every new task, so batch-internal dependencies resolve.
        let mut created = Vec::new();
        for (id, mut spec) in items {
            if !new_ids.contains(&id) {
                continue;
            }
            spec.after = spec.after.iter().map(resolve).collect();
            spec.after.sort();
            spec.after.dedup();
            if let Some(k) = &spec.unique_key {
                self.unique.insert(k.clone(), id);
            }
            let wake_at = spec.run_at.filter(|t| *t > now);
            let mut status = TaskStatus::new(State::Pending);
            status.wake_at = wake_at;
            let rec = TaskRecord {
                id,
                spec,
                created_at: now,
                status,
                progress: None,
                checkpoint: None,
            };
            self.insert_entry(rec);
            created.push(id);
        }
        // 3. Link dependencies, pick the first state, record the insert.
        let mut doomed = Vec::new();
        for id in created {
            let failed_dep = self.link_dependencies(id);
            let e = self.tasks.get_mut(&id).expect("inserted above");
            if e.waiting_on == 0 && e.rec.status.wake_at.is_none() && failed_dep.is_none() {
                e.rec.status.state = State::Queued;
                e.rec.status.queued_at = Some(now);
                e.seq = self.turns.enter(
                    &e.rec.spec.queue,
                    e.rec.spec.concurrency_key.as_ref(),
                    e.rec.spec.priority,
                );
            }
            out.changes.push(Change::Submitted(Box::new(e.rec.clone())));
            self.metrics.on_submit(e.class.0 as usize, &e.rec.spec);
            self.index_entry(id, now);
            if let Some((dep, state)) = failed_dep {
                doomed.push((id, dep, state));
            }
        }
        for (id, dep, state) in doomed {
            self.settle_dependency(id, dep, state, now, out);
        }
        Ok(results)
    }

    fn insert_entry(&mut self, rec: TaskRecord) {
        let class = self.class_for(&rec.spec);
        let id = rec.id;
        self.tasks.insert(
            id,
            Entry {
                rec,
                class,
                seq: 0,
                waiting_on: 0,
                passed_by: None,
                dispatch_deadline: None,
            },
        );
    }

    /// Counts unfinished dependencies of a pending task and registers it as
    /// their dependent; returns a dependency that already ended unsuccessfully.
    fn link_dependencies(&mut self, id: TaskId) -> Option<(TaskId, State)> {
        let deps = self
            .tasks
            .get(&id)
            .map(|e| e.rec.spec.after.clone())
            .unwrap_or_default();
        let mut waiting = 0;
        let mut failed = None;
        for d in deps {
            let state = self
                .tasks
                .get(&d)
                .map(|e| e.rec.status.state)
                .or_else(|| self.external.get(&d).copied())
                .unwrap_or(State::Cancelled);
            match state {
                State::Succeeded => {}
                s if s.is_terminal() => failed = failed.or(Some((d, s))),
                _ => {
                    waiting += 1;
                    self.dependents.entry(d).or_default().push(id);
                }
            }
        }
        if let Some(e) = self.tasks.get_mut(&id) {
            e.waiting_on = waiting;
        }
        failed
    }

    /// Adds a freshly inserted entry to the indexes its state calls for.
    fn index_entry(&mut self, id: TaskId, now: Timestamp) {
        let e = self.tasks.get(&id).expect("indexed tasks exist");
        let (state, class, prio, seq) = (e.rec.status.state, e.class, e.rec.spec.priority, e.seq);
        let queue = e.rec.spec.queue.clone();
        let key = e.rec.spec.concurrency_key.clone();
        let timers = super::timers::of(e);
        self.retime(id, &Default::default(), &timers);
        self.count(state, 1);
        let q = self.queue_mut(&queue);
        super::adjust(&mut q.waiting, prio, false, state.is_waiting());
        q.ready += usize::from(state == State::Queued);
        q.running += usize::from(matches!(state, State::Assigned | State::Running));
        if state == State::Queued {
            self.make_ready(class, (std::cmp::Reverse(prio), seq, id), key.as_ref(), now);
            self.on_queued(id, now);
        }
        if let Some(k) = &key
            && matches!(state, State::Assigned | State::Running)
        {
            // Its start spent a token before the restart; buckets start
            // full after one.
            self.key_out(k, true, false, now);
        }
        if let Some(k) = &key {
            self.settle_key(k, now);
        }
    }

    /// Rebuilds the engine from the store's live tasks after a restart.
    /// Attempts that were assigned or running died with the old process:
    /// their tasks go back to the queue as a new attempt (or end `cancelled`
    /// if a cancel was pending). Dependencies on finished tasks must have been
    /// told through [`Engine::note_finished`] first.
    pub fn restore(&mut self, records: Vec<TaskRecord>, now: Timestamp, out: &mut Outbox) {
        let mut ids = Vec::with_capacity(records.len());
        let mut records: Vec<TaskRecord> = records
            .into_iter()
            .filter(|r| !r.status.state.is_terminal())
            .collect();
        records.sort_by_key(|r| (r.status.queued_at, r.id));
        for rec in records {
            if let Some(k) = &rec.spec.unique_key {
                self.unique.insert(k.clone(), rec.id);
            }
            ids.push(rec.id);
            self.insert_entry(rec);
        }
        let mut doomed = Vec::new();
        for &id in &ids {
            let Some(e) = self.tasks.get_mut(&id) else {
                continue;
            };
            if e.rec.status.state == State::Queued {
                e.seq = self.turns.enter(
                    &e.rec.spec.queue,
                    e.rec.spec.concurrency_key.as_ref(),
                    e.rec.spec.priority,
                );
            }
            if e.rec.status.state == State::Pending
                && let Some((dep, state)) = self.link_dependencies(id)
            {
                doomed.push((id, dep, state));
            }
            self.index_entry(id, now);
        }
        // Tasks whose dependency already failed end first, so none of them
        // is released to run.
        for (id, dep, state) in doomed {
            self.settle_dependency(id, dep, state, now, out);
        }
        for &id in &ids {
            let Some(e) = self.tasks.get(&id) else {
                continue;
            };
            match e.rec.status.state {
                State::Assigned | State::Running => self.lose_attempt(id, now, out),
                State::Pending => self.release_if_ready(id, now, out),
                _ => {}
            }
        }
    }
}

/// Refuses dependency cycles among the new tasks of a batch (tasks already
/// accepted cannot depend on new ones, so cycles can only be among these).
fn check_acyclic(
    items: &[(TaskId, TaskSpec)],
    new_ids: &IdSet,
    resolve: &impl Fn(&TaskId) -> TaskId,
) -> Result<(), SubmitError> {
    // Only a task that depends on another new one can be on a cycle; a new
    // task without such a dependency has no edge (a dead end below). A
    // batch without any (the usual one) is done here.
    let edges: IdMap<Vec<TaskId>> = items
        .iter()
        .filter(|(id, s)| !s.after.is_empty() && new_ids.contains(id))
        .filter_map(|(id, s)| {
            let within: Vec<TaskId> = s
                .after
                .iter()
                .map(resolve)
                .filter(|d| new_ids.contains(d))
                .collect();
            (!within.is_empty()).then_some((*id, within))
        })
        .collect();
    // 0 = unseen, 1 = on the current path, 2 = done.
    let mut mark: IdMap<u8> = IdMap::default();
    for &start in edges.keys() {
        if mark.get(&start).copied().unwrap_or(0) != 0 {
            continue;
        }
        let mut stack = vec![(start, 0usize)];
        mark.insert(start, 1);
        while let Some((node, i)) = stack.pop() {
            let next = edges.get(&node).and_then(|v| v.get(i)).copied();
            match next {
                Some(d) => {
                    stack.push((node, i + 1));
                    match mark.get(&d).copied().unwrap_or(0) {
                        1 => return Err(SubmitError::CyclicDependency(d)),
                        0 => {
                            mark.insert(d, 1);
                            stack.push((d, 0));
                        }
                        _ => {}
                    }
                }
                None => {
                    mark.insert(node, 2);
                }
            }
        }
    }
    Ok(())
}
