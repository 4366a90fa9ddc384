//! The [`Engine`]: every task the coordinator knows, its queues, its workers
//! and its timers, changed only through commands that take `now`.
//!
//! Every state change goes through [`Engine::apply_event`], which asks
//! [`crate::transition`] for the new state and then brings the derived
//! indexes along — queue membership, timers, per-queue counters, metrics,
//! dependency bookkeeping — by comparing what they should be before and after.
//! Nothing else writes `status.state`, so the indexes cannot drift.

mod dispatch;
mod explain;
mod limits;
mod report;
mod schedules;
mod submit;
mod table;
mod timers;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use crate::{
    AttemptOutcome, Change, Event, FailureCode, Metrics, Priority, State, TaskFailure, TaskId,
    TaskKind, TaskRecord, TaskStatus, Timestamp, TransitionError, WorkerId, transition,
};

pub use dispatch::{WorkerHealth, WorkerInfo};
pub use explain::{Explanation, Gate};
pub use limits::{CONCURRENCY_KEY_MAX, KeyLimit, KeyLimitView, Rate};
pub use report::{CancelOutcome, ReportAck};
pub use schedules::{BACKFILL_MAX, BUFFER_MAX, ScheduleError, ScheduleGate, ScheduleView};
pub use submit::Submitted;

use dispatch::{ClassId, Worker};
use timers::TimerKind;

/// Tuning and limits of an [`Engine`]; `Default` gives values that work.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Largest payload (handler payload, argv, env…) a task may carry.
    pub max_payload_bytes: usize,
    /// Longest timeout or dispatch timeout a task may ask for.
    pub max_timeout: Duration,
    /// Most retries a task may ask for.
    pub max_retries: u32,
    /// Most dependencies a task may list.
    pub max_dependencies: usize,
    /// Waiting tasks (pending, queued, retrying) a queue may hold before
    /// submit fails with [`SubmitError::QueueFull`]; per-queue overrides in
    /// `queue_limits`. `None`: unbounded.
    pub max_queue_depth: Option<usize>,
    /// Per-queue depth limits, overriding `max_queue_depth`.
    pub queue_limits: HashMap<String, usize>,
    /// Most tasks of a queue out with workers (assigned or running) at
    /// once; its other tasks wait.
    pub queue_concurrency: HashMap<String, u32>,
    /// Concurrency and rate limits on the tasks of concurrency keys (see
    /// [`KeyLimit`]); each must pass [`KeyLimit::check`].
    pub key_limits: Vec<KeyLimit>,
    /// Finished tasks kept in memory (the store keeps them until its
    /// retention deletes them).
    pub retain_finished: usize,
    /// Seed of the generator behind retry jitter.
    pub seed: u64,
}

impl EngineConfig {
    /// Default payload limit: 1 MiB.
    pub const MAX_PAYLOAD_BYTES_DEFAULT: usize = 1 << 20;
    /// Default longest timeout: 7 days.
    pub const MAX_TIMEOUT_DEFAULT: Duration = Duration::from_secs(7 * 24 * 3600);
    /// Default retry limit: 1,000.
    pub const MAX_RETRIES_DEFAULT: u32 = 1000;
    /// Default dependency limit: 1,000.
    pub const MAX_DEPENDENCIES_DEFAULT: usize = 1000;
    /// Default number of finished tasks kept in memory: 10,000.
    pub const RETAIN_FINISHED_DEFAULT: usize = 10_000;
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_payload_bytes: Self::MAX_PAYLOAD_BYTES_DEFAULT,
            max_timeout: Self::MAX_TIMEOUT_DEFAULT,
            max_retries: Self::MAX_RETRIES_DEFAULT,
            max_dependencies: Self::MAX_DEPENDENCIES_DEFAULT,
            max_queue_depth: None,
            queue_limits: HashMap::new(),
            queue_concurrency: HashMap::new(),
            key_limits: Vec::new(),
            retain_finished: Self::RETAIN_FINISHED_DEFAULT,
            seed: 0x5eed,
        }
    }
}

/// A submit the engine refused; nothing was changed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError {
    /// A field has a value the engine does not accept.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The offending field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The payload is larger than the limit.
    #[error("payload of {size} bytes exceeds the limit of {limit} bytes")]
    PayloadTooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A dependency names a task that does not exist.
    #[error("unknown dependency {0}")]
    UnknownDependency(TaskId),
    /// The dependencies form a cycle through this task.
    #[error("dependency cycle through task {0}")]
    CyclicDependency(TaskId),
    /// The queue holds as many waiting tasks as it may.
    #[error("queue {queue:?} is full ({limit} waiting tasks)")]
    QueueFull {
        /// The queue.
        queue: String,
        /// Its depth limit.
        limit: usize,
    },
    /// A task with this id exists already.
    #[error("task {0} already exists")]
    DuplicateId(TaskId),
    /// A task of a batch (of more than one) was refused: which one, and why.
    #[error("tasks[{index}]: {error}")]
    InBatch {
        /// Its place in the batch, from 0.
        index: usize,
        /// Why it was refused.
        error: Box<SubmitError>,
    },
}

impl SubmitError {
    /// Whether it is about one task's own fields (what a batch names by
    /// the task's place), not about the batch or the queue as a whole.
    pub fn is_field_error(&self) -> bool {
        matches!(
            self,
            SubmitError::Invalid { .. } | SubmitError::PayloadTooLarge { .. }
        )
    }
}

/// A command about an existing task or attempt that the engine refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// The engine holds no such task (it may have finished long ago: ask the store).
    #[error("no task {0} in the engine")]
    NotFound(TaskId),
    /// The report names an attempt that is no longer the task's current one
    /// (the task was re-queued, timed out or cancelled since): ignored.
    #[error("stale report for task {task} attempt {attempt} (current attempt {current}, {state})")]
    Stale {
        /// The task.
        task: TaskId,
        /// The attempt the report named.
        attempt: u32,
        /// The task's current attempt.
        current: u32,
        /// The task's state.
        state: State,
    },
    /// No worker is registered under this id.
    #[error("unknown worker {0}")]
    UnknownWorker(WorkerId),
    /// The event does not apply to the task's state.
    #[error(transparent)]
    Transition(#[from] TransitionError),
}

/// Workers whose trust the engine remembers after they went away.
pub const TRUST_REMEMBERED_MAX: usize = 10_000;

/// A task offered to a worker: everything the executor needs to run it.
#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    /// The task.
    pub id: TaskId,
    /// The attempt number; every report about this run must carry it.
    pub attempt: u32,
    /// The worker it is offered to.
    pub worker: WorkerId,
    /// The work.
    pub kind: TaskKind,
    /// Longest this attempt may run.
    pub timeout: Option<Duration>,
    /// The last checkpoint saved by an earlier attempt.
    pub checkpoint: Option<Box<str>>,
    /// Slots it takes.
    pub slots: u32,
    /// Its CPU and memory limits.
    pub resources: crate::Resources,
    /// What its program reads on standard input.
    pub stdin: Option<std::sync::Arc<String>>,
}

/// Why an executor must stop an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// A client cancelled the task.
    Cancel,
    /// The attempt ran past its timeout.
    Timeout,
}

/// An attempt an executor must stop.
#[derive(Debug, Clone, PartialEq)]
pub struct StopAttempt {
    /// The task.
    pub id: TaskId,
    /// The attempt.
    pub attempt: u32,
    /// The worker running it.
    pub worker: WorkerId,
    /// Why.
    pub reason: StopReason,
}

/// What commands decided, for the shell to carry out: durable changes (in
/// order), assignments to hand to executors, attempts to stop.
#[derive(Debug, Default)]
pub struct Outbox {
    /// Changes to persist and then publish, in order.
    pub changes: Vec<Change>,
    /// Tasks to hand to executors.
    pub assignments: Vec<Assignment>,
    /// Attempts executors must stop.
    pub stops: Vec<StopAttempt>,
}

impl Outbox {
    /// Whether there is nothing to carry out.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty() && self.assignments.is_empty() && self.stops.is_empty()
    }
}

/// Depth and activity of one queue.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct QueueStats {
    /// The queue's name.
    pub name: String,
    /// Waiting tasks (pending, queued, retrying) per priority, highest first.
    pub waiting: Vec<(Priority, usize)>,
    /// Tasks in `queued` (ready to run now).
    pub ready: usize,
    /// Tasks assigned or running.
    pub running: usize,
    /// Dispatch is paused.
    pub paused: bool,
    /// The depth limit, if any.
    pub limit: Option<usize>,
    /// Most tasks out with workers at once, if capped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
}

#[derive(Debug, Default)]
struct QueueState {
    waiting: BTreeMap<Priority, usize>,
    ready: usize,
    running: usize,
    paused: bool,
}

impl QueueState {
    fn waiting_total(&self) -> usize {
        self.waiting.values().sum()
    }
}

/// The engine's own bookkeeping around a record.
#[derive(Debug)]
struct Entry {
    rec: TaskRecord,
    class: ClassId,
    /// Its turn while `queued` (see [`limits`]): its place in its class
    /// after priority.
    seq: u64,
    /// Dependencies that have not succeeded yet.
    waiting_on: u32,
    /// Workers that refused this task or handed it back (rare: boxed to
    /// keep entries small).
    passed_by: Option<Box<Passed>>,
    /// While queued with no capable worker: when to give up.
    dispatch_deadline: Option<Timestamp>,
}

/// The workers that passed a task on.
#[derive(Debug, Default)]
struct Passed {
    /// Refused it: not capable. Never offered it again.
    refused: Vec<WorkerId>,
    /// A worker held it beyond its slots (prefetch) and handed it back
    /// unstarted: from then on it is offered only into a free slot.
    released: bool,
}

impl Entry {
    fn refused(&self, w: &WorkerId) -> bool {
        self.passed_by
            .as_ref()
            .is_some_and(|p| p.refused.contains(w))
    }
    fn released(&self) -> bool {
        self.passed_by.as_ref().is_some_and(|p| p.released)
    }
    /// Notes that `w` refused this task.
    fn refused_by(&mut self, w: &WorkerId) {
        let p = self.passed_by.get_or_insert_with(Box::default);
        if !p.refused.contains(w) {
            p.refused.push(w.clone());
        }
    }
    /// Notes that a worker handed this task back unstarted.
    fn handed_back(&mut self) {
        self.passed_by.get_or_insert_with(Box::default).released = true;
    }
}

/// The pure task engine. See the [crate docs](crate).
#[derive(Debug)]
pub struct Engine {
    config: EngineConfig,
    tasks: table::Table,
    queues: HashMap<Arc<str>, QueueState>,
    classes: Vec<dispatch::Class>,
    class_index: HashMap<dispatch::ClassKey, ClassId>,
    workers: Vec<Option<Worker>>,
    worker_index: HashMap<WorkerId, usize>,
    /// The recent successes and failures of workers that went away (or
    /// were saved before a restart), given back when they register again:
    /// trust survives a reconnect and a restart. At most
    /// [`TRUST_REMEMBERED_MAX`] are kept.
    trust_seen: HashMap<WorkerId, (f64, f64)>,
    free_slots: u64,
    timers: BTreeSet<(Timestamp, TimerKind, TaskId)>,
    /// Boxed: a map node holds many entries, most of them empty slots.
    schedules: BTreeMap<String, schedules::Sched>,
    schedule_timers: BTreeSet<(Timestamp, String)>,
    /// Manual-fire bookkeeping of the schedules that had one.
    schedule_manual: HashMap<String, schedules::Manual>,
    /// Live tasks a schedule submitted → the schedule.
    schedule_of: HashMap<TaskId, String>,
    /// One copy of each queue and handler name that schedule templates
    /// use, shared by all of them (see `Engine::intern_template`).
    template_names: HashSet<Arc<str>>,
    next_liveness_check: Option<Timestamp>,
    unique: HashMap<String, TaskId>,
    dependents: table::IdMap<Vec<TaskId>>,
    /// Terminal states of finished tasks no longer in memory, told by the shell.
    external: table::IdMap<State>,
    finished: VecDeque<TaskId>,
    state_counts: [usize; State::ALL.len()],
    /// Turns of the (queue, concurrency key) groups.
    turns: limits::Turns,
    /// Limited concurrency keys with tasks waiting or out.
    keys: HashMap<Arc<str>, limits::KeyState>,
    /// When a limited key next needs a look: a token due, a bucket full.
    limit_timers: BTreeSet<(Timestamp, Arc<str>)>,
    /// The latest `now` the limits saw (for commands that take none).
    limits_now: Timestamp,
    rng: u64,
    metrics: Metrics,
}

impl Engine {
    /// An empty engine.
    pub fn new(config: EngineConfig) -> Self {
        let rng = config.seed | 1;
        Engine {
            config,
            tasks: table::Table::default(),
            queues: HashMap::new(),
            classes: Vec::new(),
            class_index: HashMap::new(),
            workers: Vec::new(),
            worker_index: HashMap::new(),
            trust_seen: HashMap::new(),
            free_slots: 0,
            timers: BTreeSet::new(),
            schedules: BTreeMap::new(),
            schedule_timers: BTreeSet::new(),
            schedule_manual: HashMap::new(),
            schedule_of: HashMap::new(),
            template_names: HashSet::new(),
            next_liveness_check: None,
            unique: HashMap::new(),
            dependents: Default::default(),
            external: Default::default(),
            finished: VecDeque::new(),
            state_counts: [0; State::ALL.len()],
            turns: limits::Turns::default(),
            keys: HashMap::new(),
            limit_timers: BTreeSet::new(),
            limits_now: Timestamp::ZERO,
            rng,
            metrics: Metrics::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// A task the engine holds (every live task, and recently finished ones).
    pub fn get(&self, id: TaskId) -> Option<&TaskRecord> {
        self.tasks.get(&id).map(|e| &e.rec)
    }

    /// Number of tasks held in each state, in [`State::ALL`] order.
    pub fn state_counts(&self) -> [(State, usize); State::ALL.len()] {
        let mut out = [(State::Pending, 0); State::ALL.len()];
        for (i, s) in State::ALL.into_iter().enumerate() {
            out[i] = (s, self.state_counts[i]);
        }
        out
    }

    /// Attempts out with an executor: tasks assigned or running.
    pub fn attempts_out(&self) -> usize {
        self.state_counts[State::Assigned as usize] + self.state_counts[State::Running as usize]
    }

    /// Tasks that are not terminal.
    pub fn live_tasks(&self) -> usize {
        State::ALL
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.is_terminal())
            .map(|(i, _)| self.state_counts[i])
            .sum()
    }

    /// Counters and latency histograms since start.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Every worker's recent successes and failures (decayed counts, the
    /// basis of its trust): the connected ones and those remembered, for
    /// [`Engine::restore_trust`] after a restart.
    pub fn worker_trust(&self) -> Vec<(WorkerId, f64, f64)> {
        let mut all: Vec<(WorkerId, f64, f64)> = self
            .trust_seen
            .iter()
            .filter(|(id, _)| !self.worker_index.contains_key(*id))
            .map(|(id, &(ok, bad))| (id.clone(), ok, bad))
            .collect();
        all.extend(
            self.workers
                .iter()
                .flatten()
                .map(|w| (w.info.id.clone(), w.ok, w.bad)),
        );
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Remembers trust saved before a restart ([`Engine::worker_trust`]):
    /// a worker that registers again starts from it. Values that are not
    /// finite non-negative counts are ignored.
    pub fn restore_trust(&mut self, saved: &[(WorkerId, f64, f64)]) {
        for (id, ok, bad) in saved {
            let sane = |v: f64| v.is_finite() && v >= 0.0;
            if sane(*ok) && sane(*bad) && self.trust_seen.len() < TRUST_REMEMBERED_MAX {
                self.trust_seen.insert(id.clone(), (*ok, *bad));
            }
        }
    }

    /// Adds the metrics saved before a restart (see [`Metrics::saved`]);
    /// returns whether every series was taken.
    pub fn restore_metrics(&mut self, saved: &crate::SavedMetrics) -> bool {
        self.metrics.restore(saved)
    }

    /// Depth and activity of every queue that has held a task.
    pub fn queue_stats(&self) -> Vec<QueueStats> {
        let mut out: Vec<QueueStats> = self
            .queues
            .iter()
            .map(|(name, q)| QueueStats {
                name: name.to_string(),
                waiting: q
                    .waiting
                    .iter()
                    .rev()
                    .filter(|(_, n)| **n > 0)
                    .map(|(p, n)| (*p, *n))
                    .collect(),
                ready: q.ready,
                running: q.running,
                paused: q.paused,
                limit: self.queue_limit(name),
                concurrency: self.config.queue_concurrency.get(&**name).copied(),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Stops (or resumes) dispatching from `queue`; tasks are still
    /// accepted. The change is recorded so that a restart keeps it.
    pub fn set_queue_paused(&mut self, queue: &str, paused: bool, out: &mut Outbox) {
        self.queue_mut(queue).paused = paused;
        out.changes.push(Change::Queue {
            name: queue.to_owned(),
            paused,
        });
        self.recheck_keys(self.limits_now);
    }

    /// Restores a queue's pause from the store after a restart (nothing to
    /// record: the store has it).
    pub fn restore_queue_paused(&mut self, queue: &str) {
        self.queue_mut(queue).paused = true;
        self.recheck_keys(self.limits_now);
    }

    /// Tells the engine the final state of a task it no longer holds (read
    /// from the store), so tasks may depend on it.
    pub fn note_finished(&mut self, id: TaskId, state: State) {
        if state.is_terminal() && !self.tasks.contains_key(&id) {
            self.external.insert(id, state);
        }
    }

    /// Dependencies of `after` the engine cannot resolve on its own: the
    /// shell should look them up in the store and pass them to
    /// [`Engine::note_finished`].
    pub fn unresolved_dependencies<'a>(
        &'a self,
        after: &'a [TaskId],
    ) -> impl Iterator<Item = TaskId> + 'a {
        after
            .iter()
            .copied()
            .filter(|d| !self.tasks.contains_key(d) && !self.external.contains_key(d))
    }

    fn queue_limit(&self, queue: &str) -> Option<usize> {
        self.config
            .queue_limits
            .get(queue)
            .copied()
            .or(self.config.max_queue_depth)
    }

    fn queue_mut(&mut self, queue: &str) -> &mut QueueState {
        if !self.queues.contains_key(queue) {
            self.queues.insert(Arc::from(queue), QueueState::default());
        }
        self.queues.get_mut(queue).expect("inserted above")
    }

    /// A uniform number in [0, 1) from the engine's own generator (splitmix64).
    fn next_unit(&mut self) -> f64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Moves task `id` by `event`, lets `edit` adjust the rest of its status,
    /// and brings every derived index along. Records the change.
    fn apply_event(
        &mut self,
        id: TaskId,
        event: Event,
        now: Timestamp,
        attempt_outcome: Option<AttemptOutcome>,
        out: &mut Outbox,
        edit: impl FnOnce(&mut TaskStatus),
    ) -> Result<State, CommandError> {
        let Some(entry) = self.tasks.get_mut(&id) else {
            return Err(CommandError::NotFound(id));
        };
        let from = entry.rec.status.state;
        let to = transition(from, event)?;
        let before = timers::of(entry);
        let before_class =
            (from == State::Queued).then_some((entry.class, entry.rec.spec.priority, entry.seq));

        let status = &mut entry.rec.status;
        status.state = to;
        match to {
            State::Queued => {
                status.queued_at = Some(now);
                status.wake_at = None;
                let (queue, key) = (
                    &entry.rec.spec.queue,
                    entry.rec.spec.concurrency_key.as_ref(),
                );
                if from == State::Assigned {
                    // An offer that never started (refused, handed back,
                    // its worker gone): the task keeps its place in line.
                    self.turns
                        .reenter(queue, key, entry.rec.spec.priority, entry.seq);
                } else {
                    entry.seq = self.turns.enter(queue, key, entry.rec.spec.priority);
                }
            }
            State::Assigned => {
                status.attempt += 1;
                status.started_at = None;
                status.exit_code = None;
                status.usage = None;
            }
            State::Running => status.started_at = Some(now),
            _ => {}
        }
        if to.is_terminal() {
            status.finished_at = Some(now);
        }
        edit(status);
        self.metrics
            .on_transition(entry.class.0 as usize, &entry.rec, from, to, now);
        if to != State::Queued {
            entry.dispatch_deadline = None;
        }
        let after = timers::of(entry);
        let after_class =
            (to == State::Queued).then_some((entry.class, entry.rec.spec.priority, entry.seq));
        let priority = entry.rec.spec.priority;
        let queue = entry.rec.spec.queue.clone();
        let key = entry.rec.spec.concurrency_key.clone();
        let status = Box::new(entry.rec.status.clone());

        self.retime(id, &before, &after);
        let active = |s: State| matches!(s, State::Assigned | State::Running);
        if let Some((class, p, turn)) = before_class {
            let place = (std::cmp::Reverse(p), turn, id);
            self.unready(class, place, key.as_ref());
            self.turns
                .leave(&queue, key.as_ref(), &place, to == State::Assigned);
        }
        if let Some(k) = &key
            && active(from) != active(to)
        {
            self.key_out(k, active(to), true, now);
        }
        if let Some((class, p, turn)) = after_class {
            self.make_ready(class, (std::cmp::Reverse(p), turn, id), key.as_ref(), now);
        }
        if let Some(k) = &key {
            self.settle_key(k, now);
        }
        self.count(from, -1);
        self.count(to, 1);
        let q = self.queue_mut(&queue);
        adjust(&mut q.waiting, priority, from.is_waiting(), to.is_waiting());
        q.ready = q.ready + usize::from(to == State::Queued) - usize::from(from == State::Queued);
        q.running = q.running + usize::from(active(to)) - usize::from(active(from));
        out.changes.push(Change::Status {
            id,
            from,
            at: now,
            status,
            attempt_outcome,
        });
        if to == State::Queued {
            self.on_queued(id, now);
        }
        if to.is_terminal() {
            self.on_finished(id, to, now, out);
        }
        Ok(to)
    }

    /// Persists a status edit that does not change the state.
    fn touch(
        &mut self,
        id: TaskId,
        now: Timestamp,
        out: &mut Outbox,
        edit: impl FnOnce(&mut TaskStatus),
    ) {
        if let Some(e) = self.tasks.get_mut(&id) {
            edit(&mut e.rec.status);
            out.changes.push(Change::Status {
                id,
                from: e.rec.status.state,
                at: now,
                status: Box::new(e.rec.status.clone()),
                attempt_outcome: None,
            });
        }
    }

    fn count(&mut self, s: State, delta: isize) {
        let i = s as usize;
        self.state_counts[i] = self.state_counts[i].wrapping_add_signed(delta);
    }

    /// A task reached a terminal state (`apply_event` counted it): release
    /// its unique key, settle its dependents, and queue it for forgetting.
    fn on_finished(&mut self, id: TaskId, state: State, now: Timestamp, out: &mut Outbox) {
        if let Some(key) = self
            .tasks
            .get(&id)
            .and_then(|e| e.rec.spec.unique_key.as_ref())
            && self.unique.get(key) == Some(&id)
        {
            self.unique.remove(key);
        }
        for dep in self.dependents.remove(&id).unwrap_or_default() {
            self.settle_dependency(dep, id, state, now, out);
        }
        self.finished.push_back(id);
        if !self.schedule_of.is_empty() {
            self.on_schedule_task_finished(id, now, out);
        }
    }

    /// Deletes finished tasks: forgets those the engine still holds (or
    /// was told of through [`Engine::note_finished`]) and
    /// has the store delete each (with its attempts and output). A task the
    /// engine holds live is left alone; one it does not hold is finished
    /// or unknown (the engine holds every live task), and its deletion is
    /// no error. Returns the ids it deleted, in the order given.
    pub fn delete_finished(&mut self, ids: &[TaskId], out: &mut Outbox) -> Vec<TaskId> {
        let mut deleted = Vec::with_capacity(ids.len());
        for &id in ids {
            match self.tasks.get(&id).map(|e| e.rec.status.state) {
                Some(state) if !state.is_terminal() => continue,
                Some(state) => {
                    // `finished` still lists it: trim_finished skips ids
                    // that are gone.
                    self.tasks.remove(&id);
                    self.count(state, -1);
                }
                None => {}
            }
            // No longer a dependency a new task may name.
            self.external.remove(&id);
            out.changes.push(Change::Deleted { id });
            deleted.push(id);
        }
        deleted
    }

    /// Forgets the oldest finished tasks beyond `retain_finished`. Runs at
    /// the start of [`Engine::tick`], so a shell can still look up a task
    /// that finished during its current step.
    fn trim_finished(&mut self) {
        while self.finished.len() > self.config.retain_finished {
            if let Some(old) = self.finished.pop_front()
                && let Some(e) = self.tasks.remove(&old)
            {
                self.count(e.rec.status.state, -1);
            }
        }
    }

    /// Ends the current attempt of `id` as lost (its worker or the whole
    /// coordinator went away): back to the queue as a new attempt, or
    /// `cancelled` if a cancel was pending.
    fn lose_attempt(&mut self, id: TaskId, now: Timestamp, out: &mut Outbox) {
        let lost = Some(AttemptOutcome::Lost);
        if self
            .tasks
            .get(&id)
            .is_some_and(|e| e.rec.status.cancel_requested)
        {
            let failure = TaskFailure::new(FailureCode::Cancelled, "cancelled while running");
            let _ = self.apply_event(id, Event::Cancel, now, lost, out, |s| {
                s.error = Some(failure)
            });
        } else {
            let _ = self.apply_event(id, Event::Requeue, now, lost, out, |_| {});
        }
    }

    /// Dependency `dep_of` of task `id` ended in `state`.
    fn settle_dependency(
        &mut self,
        id: TaskId,
        dep_of: TaskId,
        state: State,
        now: Timestamp,
        out: &mut Outbox,
    ) {
        let Some(e) = self.tasks.get_mut(&id) else {
            return;
        };
        if e.rec.status.state != State::Pending {
            return;
        }
        if state == State::Succeeded {
            e.waiting_on = e.waiting_on.saturating_sub(1);
            self.release_if_ready(id, now, out);
        } else {
            let failure = TaskFailure::new(
                FailureCode::DependencyFailed,
                format!("dependency {dep_of} ended {state}"),
            );
            let _ = self.apply_event(id, Event::Cancel, now, None, out, |s| {
                s.error = Some(failure)
            });
        }
    }

    /// Moves a pending task to `queued` once its time has come and its
    /// dependencies have succeeded.
    fn release_if_ready(&mut self, id: TaskId, now: Timestamp, out: &mut Outbox) {
        let Some(e) = self.tasks.get(&id) else { return };
        let due = e.rec.status.wake_at.is_none_or(|t| t <= now);
        if e.rec.status.state == State::Pending && e.waiting_on == 0 && due {
            let _ = self.apply_event(id, Event::Release, now, None, out, |_| {});
        }
    }
}

fn adjust(map: &mut BTreeMap<Priority, usize>, p: Priority, was: bool, is: bool) {
    if was && !is {
        if let Some(n) = map.get_mut(&p) {
            *n -= 1;
            if *n == 0 {
                map.remove(&p);
            }
        }
    } else if is && !was {
        *map.entry(p).or_default() += 1;
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod limit_tests;

#[cfg(test)]
mod schedule_tests;
