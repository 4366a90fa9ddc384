//! Routing and dispatch: which queued task goes to which worker.
//!
//! Queued tasks are grouped into *classes* — same queue, same executor
//! requirement, same labels and minimum trust — each an ordered set by
//! (priority desc, FIFO). A class knows the workers that could ever run it.
//! Dispatch merges the class heads in priority order and gives each head to
//! the capable worker with the most free slots, then the highest trust, so a
//! worker never receives a lower-priority task of a queue while a
//! higher-priority one it could run waits there.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashSet};
use std::ops::Bound;
use std::sync::Arc;
use std::time::Duration;

use crate::{
    Event, ExecRequirement, LabelReq, Priority, State, TaskId, TaskSpec, Timestamp, WorkerId,
};

use super::{Assignment, Engine, Outbox};

/// Index of a class in `Engine::classes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct ClassId(pub(super) u32);

/// What tasks of one class need from a worker.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct ClassKey {
    queue: Arc<str>,
    req: ExecRequirement,
    labels: Vec<LabelReq>,
    /// Minimum trust in millionths.
    min_trust: u32,
    /// Slots each task needs: a worker with fewer in all cannot run it.
    slots: u32,
    /// Memory each task asks for (0: none): a worker with less in all
    /// cannot run it.
    memory: u64,
}

impl ClassKey {
    fn of(spec: &TaskSpec) -> Self {
        let mut labels = spec.labels.clone();
        labels.sort();
        labels.dedup();
        ClassKey {
            queue: spec.queue.clone(),
            req: spec.kind.requirement(),
            labels,
            min_trust: (spec.min_trust.unwrap_or(0.0).clamp(0.0, 1.0) * 1e6) as u32,
            slots: spec.slots,
            memory: spec.resources().memory_bytes.unwrap_or(0),
        }
    }

    /// The requirement in words, for "no capable worker" and explain.
    pub(super) fn describe(&self) -> String {
        let mut parts = vec![match &self.req {
            ExecRequirement::Handler(h) => format!("no connected worker has handler {h:?}"),
            ExecRequirement::Shell => "no connected worker runs shell tasks".to_owned(),
            ExecRequirement::Container => "no connected worker runs container tasks".to_owned(),
        }];
        if !self.labels.is_empty() {
            let labels: Vec<String> = self.labels.iter().cloned().map(String::from).collect();
            parts.push(format!("with labels {}", labels.join(",")));
        }
        parts.push(format!("serving queue {:?}", &*self.queue));
        if self.slots > 1 {
            parts.push(format!("with at least {} slots", self.slots));
        }
        if self.memory > 0 {
            parts.push(format!(
                "with at least {} MiB of memory",
                self.memory.div_ceil(1 << 20)
            ));
        }
        parts.join(" ")
    }
}

/// The queued tasks of one class and the workers that could run them.
#[derive(Debug)]
pub(super) struct Class {
    pub(super) key: ClassKey,
    pub(super) ready: BTreeSet<(Reverse<Priority>, u64, TaskId)>,
    pub(super) capable: Vec<usize>,
    /// Its queue's cap on tasks out with workers, if any.
    pub(super) queue_cap: Option<u32>,
}

impl Class {
    pub(super) fn key_queue(&self) -> &str {
        &self.key.queue
    }
    fn after(
        &self,
        key: (Reverse<Priority>, u64, TaskId),
    ) -> Option<(Reverse<Priority>, u64, TaskId)> {
        self.ready
            .range((Bound::Excluded(key), Bound::Unbounded))
            .next()
            .copied()
    }
}

/// What a worker (or the embedded local executor) offers.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerInfo {
    /// Its stable id.
    pub id: WorkerId,
    /// Its labels (`key`, `value`; a bare label has an empty value).
    pub labels: Vec<(String, String)>,
    /// Handlers it has registered.
    pub handlers: Vec<String>,
    /// It runs shell tasks.
    pub shell: bool,
    /// It runs container tasks.
    pub container: bool,
    /// Tasks (by slots) it runs at once.
    pub slots: u32,
    /// Slots' worth of tasks it may hold beyond `slots`, ready to start the
    /// moment one finishes (they stay `assigned` until then). Saves a round
    /// trip per task for short tasks; costs fairness across workers.
    pub prefetch: u32,
    /// Queues it serves; all queues when empty.
    pub queues: Vec<String>,
    /// It is dropped when no heartbeat arrives for this long; never when `None`.
    pub heartbeat_timeout: Option<Duration>,
    /// Its memory in bytes, when it says: the memory its tasks ask for
    /// (`resources.memory_bytes`) never adds up to more.
    pub memory_bytes: Option<u64>,
    /// Its CPUs, when it says (shown; not used to place tasks).
    pub cpus: Option<f64>,
    /// Above this load per CPU of its host it is offered no new work.
    pub max_load: Option<f64>,
    /// What its last heartbeat said of its host (set by
    /// [`Engine::set_worker_health`]).
    pub health: Option<WorkerHealth>,
}

impl WorkerInfo {
    /// A worker with `slots` slots that runs these handlers, serves every
    /// queue and never times out (the embedded local executor).
    pub fn local(
        id: impl AsRef<str>,
        slots: u32,
        handlers: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        WorkerInfo {
            id: WorkerId::new(id),
            labels: Vec::new(),
            handlers: handlers.into_iter().map(Into::into).collect(),
            shell: false,
            container: false,
            slots,
            prefetch: 0,
            queues: Vec::new(),
            heartbeat_timeout: None,
            memory_bytes: None,
            cpus: None,
            max_load: None,
            health: None,
        }
    }
}

/// What a worker said of its host in its last heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WorkerHealth {
    /// The host's 1-minute load average per CPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<f64>,
    /// Memory available on the host, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_available_bytes: Option<u64>,
    /// Free disk where the worker runs tasks, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_free_bytes: Option<u64>,
    /// When it said so.
    pub at: Timestamp,
}

#[derive(Debug)]
pub(super) struct Worker {
    pub(super) info: WorkerInfo,
    handlers: HashSet<Arc<str>>,
    pub(super) used: u32,
    /// Disconnected or draining: offered nothing until resumed.
    paused: bool,
    /// Attempts it holds slots for: (task, attempt) → slots.
    pub(super) attempts: std::collections::HashMap<(TaskId, u32), u32>,
    /// Memory asked for by the attempts it holds that ask for some.
    memory: std::collections::HashMap<(TaskId, u32), u64>,
    /// The sum of `memory`.
    memory_used: u64,
    last_seen: Timestamp,
    /// Exponentially decayed counts of recent successes and failures.
    pub(super) ok: f64,
    pub(super) bad: f64,
}

impl Worker {
    pub(super) fn free(&self) -> u32 {
        if self.paused || self.overloaded() {
            return 0;
        }
        (self.info.slots + self.info.prefetch).saturating_sub(self.used)
    }
    /// Whether `bytes` more of requested memory fit in what it said it has.
    /// Whether its host's load is over the threshold it declared.
    pub(super) fn overloaded(&self) -> bool {
        match (self.info.max_load, self.info.health.and_then(|h| h.load)) {
            (Some(max), Some(load)) => load > max,
            _ => false,
        }
    }
    /// Its host's load per CPU, 0 when unknown (for ranking).
    fn load(&self) -> f64 {
        self.info.health.and_then(|h| h.load).unwrap_or(0.0)
    }
    fn has_memory(&self, bytes: u64) -> bool {
        bytes == 0
            || self
                .info
                .memory_bytes
                .is_none_or(|total| self.memory_used.saturating_add(bytes) <= total)
    }
    /// Free slots proper: what it could start now, without holding.
    pub(super) fn idle(&self) -> u32 {
        self.info.slots.saturating_sub(self.used)
    }
    /// Recent success rate with a neutral prior: 0.5 for a new worker.
    pub(super) fn trust(&self) -> f64 {
        (self.ok + 1.0) / (self.ok + self.bad + 2.0)
    }
    pub(super) fn can_run(&self, key: &ClassKey) -> bool {
        let serves =
            self.info.queues.is_empty() || self.info.queues.iter().any(|q| **q == *key.queue);
        let exec = match &key.req {
            ExecRequirement::Handler(h) => self.handlers.contains(h),
            ExecRequirement::Shell => self.info.shell,
            ExecRequirement::Container => self.info.container,
        };
        serves
            && exec
            && self.info.slots >= key.slots
            && self.info.memory_bytes.is_none_or(|m| m >= key.memory)
            && key.labels.iter().all(|l| l.matches(&self.info.labels))
    }
    pub(super) fn record(&mut self, success: bool) {
        const DECAY: f64 = 0.95;
        self.ok = self.ok * DECAY + f64::from(u8::from(success));
        self.bad = self.bad * DECAY + f64::from(u8::from(!success));
    }
}

enum Pick {
    Worker(usize),
    /// A capable worker is free but refused this task before: try the next.
    Skip,
    /// No capable worker has room: the class waits.
    Blocked,
}

impl Engine {
    /// The class of `spec`, created on first use.
    pub(super) fn class_for(&mut self, spec: &TaskSpec) -> ClassId {
        let key = ClassKey::of(spec);
        if let Some(c) = self.class_index.get(&key) {
            return *c;
        }
        let capable = self
            .workers
            .iter()
            .enumerate()
            .filter_map(|(i, w)| w.as_ref().filter(|w| w.can_run(&key)).map(|_| i))
            .collect();
        let id = ClassId(self.classes.len() as u32);
        let queue_cap = self.config.queue_concurrency.get(&*key.queue).copied();
        self.classes.push(Class {
            key: key.clone(),
            ready: BTreeSet::new(),
            capable,
            queue_cap,
        });
        self.class_index.insert(key, id);
        id
    }

    /// Adds a worker, or updates one that registers again (keeping the
    /// attempts it holds).
    pub fn register_worker(&mut self, info: WorkerInfo, now: Timestamp) {
        let handlers = info
            .handlers
            .iter()
            .map(|h| Arc::from(h.as_str()))
            .collect();
        let idx = match self.worker_index.get(&info.id) {
            Some(&i) => {
                let w = self.workers[i].as_mut().expect("indexed workers exist");
                self.free_slots -= u64::from(w.free());
                w.info = info;
                w.handlers = handlers;
                w.last_seen = now;
                w.paused = false;
                self.free_slots += u64::from(w.free());
                i
            }
            None => {
                let w = Worker {
                    info,
                    handlers,
                    used: 0,
                    paused: false,
                    attempts: Default::default(),
                    memory: Default::default(),
                    memory_used: 0,
                    last_seen: now,
                    ok: 0.0,
                    bad: 0.0,
                };
                let mut w = w;
                if let Some((ok, bad)) = self.trust_seen.remove(&w.info.id) {
                    (w.ok, w.bad) = (ok, bad);
                }
                self.free_slots += u64::from(w.free());
                let i = match self.workers.iter().position(Option::is_none) {
                    Some(i) => i,
                    None => {
                        self.workers.push(None);
                        self.workers.len() - 1
                    }
                };
                self.worker_index.insert(w.info.id.clone(), i);
                self.workers[i] = Some(w);
                i
            }
        };
        let w = self.workers[idx].as_ref().expect("just set");
        for c in &mut self.classes {
            c.capable.retain(|&i| i != idx);
            if w.can_run(&c.key) {
                c.capable.push(idx);
            }
        }
        self.recheck_keys(now);
        self.schedule_liveness(now);
    }

    /// Records a heartbeat from `worker`.
    pub fn heartbeat(
        &mut self,
        worker: &WorkerId,
        now: Timestamp,
    ) -> Result<(), super::CommandError> {
        let i = *self
            .worker_index
            .get(worker)
            .ok_or_else(|| super::CommandError::UnknownWorker(worker.clone()))?;
        if let Some(w) = self.workers[i].as_mut() {
            w.last_seen = now;
        }
        Ok(())
    }

    /// Removes a worker: every task it was offered or running goes back to
    /// its queue as a new attempt, and later reports from it are stale.
    pub fn remove_worker(&mut self, worker: &WorkerId, now: Timestamp, out: &mut Outbox) -> bool {
        let Some(idx) = self.worker_index.remove(worker) else {
            return false;
        };
        let Some(w) = self.workers[idx].take() else {
            return false;
        };
        if self.trust_seen.len() < super::TRUST_REMEMBERED_MAX {
            self.trust_seen.insert(worker.clone(), (w.ok, w.bad));
        }
        self.free_slots -= u64::from(w.free());
        for c in &mut self.classes {
            c.capable.retain(|&i| i != idx);
        }
        for (id, attempt) in w.attempts.into_keys() {
            let current = self.tasks.get(&id).is_some_and(|e| {
                e.rec.status.attempt == attempt
                    && matches!(e.rec.status.state, State::Assigned | State::Running)
            });
            if current {
                self.lose_attempt(id, now, out);
            }
        }
        // Tasks that now have no capable worker start their dispatch timeout.
        let mut orphaned: Vec<TaskId> = self
            .classes
            .iter()
            .filter(|c| c.capable.is_empty())
            .flat_map(|c| c.ready.iter().map(|k| k.2))
            .collect();
        // And those a key's limit holds outside the classes.
        orphaned.extend(self.held_without_worker());
        for id in orphaned {
            self.on_queued(id, now);
        }
        self.recheck_keys(now);
        self.schedule_liveness(now);
        true
    }

    /// Stops (or resumes) offering work to a worker — while it is
    /// disconnected and may come back, or draining. Its attempts stay its own.
    pub fn set_worker_paused(
        &mut self,
        worker: &WorkerId,
        paused: bool,
    ) -> Result<(), super::CommandError> {
        self.change_worker(worker, |w| w.paused = paused)
            .map(|_| ())
    }

    /// Applies `f` to a worker, keeping the count of free slots right;
    /// whether it has more free slots than before.
    fn change_worker(
        &mut self,
        worker: &WorkerId,
        f: impl FnOnce(&mut Worker),
    ) -> Result<bool, super::CommandError> {
        let i = *self
            .worker_index
            .get(worker)
            .ok_or_else(|| super::CommandError::UnknownWorker(worker.clone()))?;
        let w = self.workers[i].as_mut().expect("indexed workers exist");
        let before = w.free();
        f(w);
        let after = w.free();
        self.free_slots = self.free_slots + u64::from(after) - u64::from(before);
        Ok(after > before)
    }

    /// Records what a worker's heartbeat said of its host. Of equally free
    /// capable workers, dispatch prefers the least loaded; a worker whose
    /// load is over its `max_load` is offered nothing until it is under
    /// again. Returns whether that gave it free slots (dispatch has
    /// something new to offer it).
    pub fn set_worker_health(
        &mut self,
        worker: &WorkerId,
        health: WorkerHealth,
    ) -> Result<bool, super::CommandError> {
        self.change_worker(worker, |w| w.info.health = Some(health))
    }

    /// Reconciles what a (re)connecting worker says it runs with what the
    /// engine thinks it holds. Attempts it runs that are still current stay
    /// its own; the others are returned for the worker to stop. Attempts the
    /// engine gave it that it no longer runs go back to the queue.
    pub fn reconcile_worker(
        &mut self,
        worker: &WorkerId,
        running: &[(TaskId, u32)],
        now: Timestamp,
        out: &mut Outbox,
    ) -> Vec<(TaskId, u32)> {
        let held: Vec<(TaskId, u32)> = self
            .worker_index
            .get(worker)
            .and_then(|&i| self.workers[i].as_ref())
            .map(|w| w.attempts.keys().copied().collect())
            .unwrap_or_default();
        let is_current = |e: &Self, id: TaskId, attempt: u32| {
            e.tasks.get(&id).is_some_and(|t| {
                t.rec.status.attempt == attempt
                    && matches!(t.rec.status.state, State::Assigned | State::Running)
                    && t.rec.status.worker.as_ref() == Some(worker)
            })
        };
        let stop: Vec<(TaskId, u32)> = running
            .iter()
            .copied()
            .filter(|&(id, a)| !held.contains(&(id, a)) || !is_current(self, id, a))
            .collect();
        for (id, attempt) in held {
            if running.contains(&(id, attempt)) && is_current(self, id, attempt) {
                continue;
            }
            self.release_slots(worker, id, attempt);
            if is_current(self, id, attempt) {
                self.lose_attempt(id, now, out);
            }
        }
        stop
    }

    /// Whether a worker with this id is registered.
    pub fn has_worker(&self, worker: &WorkerId) -> bool {
        self.worker_index.contains_key(worker)
    }

    /// Whether `worker` is paused (draining or disconnected).
    pub fn worker_paused(&self, worker: &WorkerId) -> bool {
        self.worker_index
            .get(worker)
            .and_then(|&i| self.workers[i].as_ref())
            .is_some_and(|w| w.paused)
    }

    /// Number of connected workers.
    pub fn worker_count(&self) -> usize {
        self.worker_index.len()
    }

    /// Free slots over all workers.
    pub fn free_slots(&self) -> u64 {
        self.free_slots
    }

    pub(super) fn check_liveness(&mut self, now: Timestamp, out: &mut Outbox) {
        let dead: Vec<WorkerId> = self
            .workers
            .iter()
            .flatten()
            .filter(|w| {
                w.info
                    .heartbeat_timeout
                    .is_some_and(|t| w.last_seen.plus(t) <= now)
            })
            .map(|w| w.info.id.clone())
            .collect();
        for id in dead {
            self.remove_worker(&id, now, out);
        }
        self.schedule_liveness(now);
    }

    fn schedule_liveness(&mut self, _now: Timestamp) {
        self.next_liveness_check = self
            .workers
            .iter()
            .flatten()
            .filter_map(|w| w.info.heartbeat_timeout.map(|t| w.last_seen.plus(t)))
            .min();
    }

    /// A task entered `queued`: if no connected worker could ever run it and
    /// it has a dispatch timeout, start counting.
    pub(super) fn on_queued(&mut self, id: TaskId, now: Timestamp) {
        let Some(e) = self.tasks.get_mut(&id) else {
            return;
        };
        let Some(limit) = e.rec.spec.dispatch_timeout else {
            return;
        };
        if e.dispatch_deadline.is_none() && self.classes[e.class.0 as usize].capable.is_empty() {
            let before = super::timers::of(e);
            e.dispatch_deadline = Some(now.plus(limit));
            let after = super::timers::of(e);
            self.retime(id, &before, &after);
        }
    }

    /// Offers queued tasks to workers with free slots, highest priority
    /// first, FIFO within a priority. Assignments go to `out.assignments`.
    pub fn dispatch(&mut self, now: Timestamp, out: &mut Outbox) {
        self.dispatch_up_to(now, out, usize::MAX);
    }

    /// [`dispatch`](Engine::dispatch), making at most `limit` assignments
    /// (the most urgent ones: the first `limit` a full dispatch would make).
    /// Returns how many it made.
    pub fn dispatch_up_to(&mut self, now: Timestamp, out: &mut Outbox, limit: usize) -> usize {
        let first = out.assignments.len();
        if self.free_slots == 0 || limit == 0 {
            return 0;
        }
        let mut heads = BinaryHeap::new();
        for (ci, c) in self.classes.iter().enumerate() {
            if c.capable.is_empty() || self.queues.get(&c.key.queue).is_some_and(|q| q.paused) {
                continue;
            }
            if self.at_queue_cap(c) {
                continue;
            }
            if let Some(&(Reverse(p), seq, id)) = c.ready.first() {
                heads.push((p, Reverse(seq), ci, id));
            }
        }
        // Workers passed over for a task that was handed back (see
        // `pick_worker`): they hold nothing more this round, so that work
        // behind it cannot keep their slots full while it waits.
        let mut no_hold = Vec::new();
        while self.free_slots > 0 && out.assignments.len() - first < limit {
            let Some((p, Reverse(seq), ci, id)) = heads.pop() else {
                break;
            };
            if self.at_queue_cap(&self.classes[ci]) {
                continue;
            }
            match self.pick_worker(ci, id, &mut no_hold) {
                Pick::Worker(wi) => self.assign(id, wi, now, out),
                Pick::Skip => {}
                Pick::Blocked => continue,
            }
            if let Some((Reverse(p), seq, id)) = self.classes[ci].after((Reverse(p), seq, id)) {
                heads.push((p, Reverse(seq), ci, id));
            }
        }
        out.assignments.len() - first
    }

    /// Whether `c`'s queue has as many tasks out as its cap allows.
    pub(super) fn at_queue_cap(&self, c: &Class) -> bool {
        c.queue_cap.is_some_and(|cap| {
            self.queues
                .get(&c.key.queue)
                .is_some_and(|q| q.running >= cap as usize)
        })
    }

    /// The worker for `id`, of those able to run its class. A worker in
    /// `no_hold` gets it only into free slots; so does every worker once
    /// the task was handed back unstarted, and those passed over for it
    /// join `no_hold` if it then waits.
    fn pick_worker(&self, ci: usize, id: TaskId, no_hold: &mut Vec<usize>) -> Pick {
        let Some(e) = self.tasks.get(&id) else {
            return Pick::Skip;
        };
        let need = e.rec.spec.slots;
        let memory = e.rec.spec.resources().memory_bytes.unwrap_or(0);
        let min_trust = e.rec.spec.min_trust.unwrap_or(0.0);
        // Idle slots first, so a task goes to a worker that can start it
        // rather than to one that would hold it (prefetch); then room,
        // then the less loaded host, then trust.
        let mut best: Option<((u32, u32, f64, f64), usize)> = None;
        let mut refused = false;
        let mut passed_over = Vec::new();
        let released = e.released();
        for &wi in &self.classes[ci].capable {
            let Some(w) = self.workers[wi].as_ref() else {
                continue;
            };
            let (free, trust) = (w.free(), w.trust());
            let rank = (w.idle(), free, -w.load(), trust);
            if free < need || trust < min_trust || !w.has_memory(memory) {
                continue;
            }
            if w.idle() < need {
                if no_hold.contains(&wi) {
                    continue;
                }
                if released {
                    passed_over.push(wi);
                    continue;
                }
            }
            if e.refused(&w.info.id) {
                refused = true;
                continue;
            }
            if best.is_none_or(|(b, _)| rank > b) {
                best = Some((rank, wi));
            }
        }
        if best.is_none() {
            no_hold.extend(passed_over);
        }
        match best {
            Some((_, wi)) => Pick::Worker(wi),
            None if refused => Pick::Skip,
            None => Pick::Blocked,
        }
    }

    fn assign(&mut self, id: TaskId, wi: usize, now: Timestamp, out: &mut Outbox) {
        let Some(w) = self.workers[wi].as_ref() else {
            return;
        };
        let worker = w.info.id.clone();
        let wid = worker.clone();
        if self
            .apply_event(id, Event::Assign, now, None, out, |s| s.worker = Some(wid))
            .is_err()
        {
            return;
        }
        let e = self.tasks.get(&id).expect("assigned task exists");
        let (attempt, slots) = (e.rec.status.attempt, e.rec.spec.slots);
        let e_memory = e.rec.spec.resources().memory_bytes;
        out.assignments.push(Assignment {
            id,
            attempt,
            worker,
            kind: e.rec.spec.kind.clone(),
            timeout: e.rec.spec.timeout,
            checkpoint: e.rec.checkpoint.clone(),
            slots,
            resources: e.rec.spec.resources(),
            stdin: e.rec.spec.stdin.clone(),
        });
        let w = self.workers[wi].as_mut().expect("checked above");
        let before = w.free();
        w.used += slots;
        w.attempts.insert((id, attempt), slots);
        if let Some(m) = e_memory.filter(|m| *m > 0) {
            w.memory.insert((id, attempt), m);
            w.memory_used += m;
        }
        self.free_slots -= u64::from(before - w.free());
    }

    /// Frees the slots `worker` holds for `(id, attempt)`.
    pub(super) fn release_slots(&mut self, worker: &WorkerId, id: TaskId, attempt: u32) {
        let Some(&wi) = self.worker_index.get(worker) else {
            return;
        };
        let Some(w) = self.workers[wi].as_mut() else {
            return;
        };
        if let Some(slots) = w.attempts.remove(&(id, attempt)) {
            // A worker that re-registered with fewer slots may be over
            // capacity: only what becomes free counts.
            let before = w.free();
            w.used -= slots;
            self.free_slots += u64::from(w.free() - before);
        }
        if let Some(m) = w.memory.remove(&(id, attempt)) {
            w.memory_used -= m;
        }
    }

    pub(super) fn worker_mut(&mut self, worker: &WorkerId) -> Option<&mut Worker> {
        let wi = *self.worker_index.get(worker)?;
        self.workers[wi].as_mut()
    }

    /// Whether every connected worker able to run `id`'s class has refused it.
    pub(super) fn all_capable_refused(&self, id: TaskId) -> bool {
        let Some(e) = self.tasks.get(&id) else {
            return false;
        };
        let capable = &self.classes[e.class.0 as usize].capable;
        capable.iter().all(|&wi| {
            self.workers[wi]
                .as_ref()
                .is_none_or(|w| e.refused(&w.info.id))
        })
    }

    /// Connected workers, their slots in total, and the slots in use
    /// (tasks a worker holds beyond its slots, its prefetch, use none).
    pub fn worker_load(&self) -> (usize, u32, u32) {
        self.workers
            .iter()
            .flatten()
            .fold((0, 0, 0), |(n, slots, used), w| {
                (n + 1, slots + w.info.slots, used + w.used.min(w.info.slots))
            })
    }

    /// Workers, with used slots, trust and the attempts they hold (for tests
    /// and stats).
    pub fn workers(&self) -> impl Iterator<Item = (&WorkerInfo, u32, f64, Vec<(TaskId, u32)>)> {
        self.workers.iter().flatten().map(|w| {
            (
                &w.info,
                w.used,
                w.trust(),
                w.attempts.keys().copied().collect(),
            )
        })
    }
}
