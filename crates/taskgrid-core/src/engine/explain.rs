//! Why a task is not running yet: every gate between it and a worker,
//! named. Users of other task systems ask this constantly and rarely get an
//! answer.

use std::cmp::Reverse;

use serde::{Deserialize, Serialize};

use crate::{LabelReq, Priority, State, TaskId, Timestamp, WorkerId};

use super::Engine;

/// One reason a task is not running.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "gate", rename_all = "snake_case")]
pub enum Gate {
    /// It may not start before this time.
    RunAt {
        /// When it may start.
        at: Timestamp,
    },
    /// It waits for a dependency to succeed.
    Dependency {
        /// The dependency.
        task: TaskId,
        /// Its state now.
        state: Option<State>,
    },
    /// It waits for its retry backoff.
    Backoff {
        /// When it is queued again.
        until: Timestamp,
    },
    /// Dispatch from its queue is paused.
    QueuePaused {
        /// The queue.
        queue: String,
    },
    /// No connected worker has what it needs.
    NoCapableWorker {
        /// Its executor requirement (`handler:NAME`, `shell`, `container`).
        requirement: String,
        /// Labels it requires.
        labels: Vec<LabelReq>,
        /// The whole requirement in words.
        detail: String,
    },
    /// Every capable worker is busy.
    WorkersBusy {
        /// Capable workers: (id, used slots, slots).
        workers: Vec<(WorkerId, u32, u32)>,
        /// Slots the task needs.
        needs: u32,
    },
    /// Capable workers that take no new work while their host's load is
    /// over the `--max-load` they declared.
    Overloaded {
        /// (worker, its host's load per CPU, its max load).
        workers: Vec<(WorkerId, f64, f64)>,
    },
    /// Tasks ahead of it in its queue.
    Position {
        /// Its queue.
        queue: String,
        /// Its priority.
        priority: Priority,
        /// Queued tasks dispatched before it (higher priority, or same and earlier).
        ahead: usize,
    },
    /// Its queue has as many tasks out with workers as its cap allows.
    QueueConcurrency {
        /// The queue.
        queue: String,
        /// Its tasks out with workers.
        running: usize,
        /// Its cap.
        limit: u32,
    },
    /// Its concurrency key has as many tasks out (or about to go out) as
    /// its limit allows.
    ConcurrencyLimit {
        /// The key.
        key: String,
        /// Tasks of the key out with workers.
        running: u32,
        /// The limit.
        limit: u32,
        /// Tasks of the key let through ahead of it, waiting for a worker.
        ahead: usize,
    },
    /// Its concurrency key has started as many tasks as its rate (a token
    /// bucket) allows for now.
    RateLimit {
        /// The key.
        key: String,
        /// Starts allowed per period.
        starts: u32,
        /// The period, milliseconds.
        per_ms: u64,
        /// When the key's next start is due (the task starts then if it is
        /// next in line among the key's tasks).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next_at: Option<Timestamp>,
    },
    /// Capable workers exist but it needs more trust than they have.
    Trust {
        /// Its minimum trust.
        min_trust: f64,
        /// The best trust among capable workers.
        best: f64,
    },
}

/// Where a task stands and what holds it back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Explanation {
    /// The task.
    pub task: TaskId,
    /// Its state.
    pub state: State,
    /// The worker of its current attempt while assigned or running, or of
    /// its last attempt once it has finished (none if it never ran).
    pub worker: Option<WorkerId>,
    /// What holds it back (empty when running or finished).
    pub gates: Vec<Gate>,
}

impl Engine {
    /// Explains why task `id` is not running, or `None` if the engine does
    /// not hold it.
    pub fn explain(&self, id: TaskId, now: Timestamp) -> Option<Explanation> {
        let e = self.tasks.get(&id)?;
        let st = &e.rec.status;
        let spec = &e.rec.spec;
        let mut gates = Vec::new();
        let worker = (matches!(st.state, State::Assigned | State::Running)
            || st.state.is_terminal())
        .then(|| st.worker.clone())
        .flatten();
        if st.state.is_waiting() {
            if st.state == State::Pending {
                if let Some(at) = st.wake_at.filter(|t| *t > now) {
                    gates.push(Gate::RunAt { at });
                }
                for d in &spec.after {
                    let state = self
                        .tasks
                        .get(d)
                        .map(|t| t.rec.status.state)
                        .or(self.external.get(d).copied());
                    if state != Some(State::Succeeded) {
                        gates.push(Gate::Dependency { task: *d, state });
                    }
                }
            }
            if st.state == State::Retrying
                && let Some(until) = st.wake_at
            {
                gates.push(Gate::Backoff { until });
            }
            if self.queues.get(&spec.queue).is_some_and(|q| q.paused) {
                gates.push(Gate::QueuePaused {
                    queue: spec.queue.to_string(),
                });
            }
            if st.state == State::Queued {
                let class = &self.classes[e.class.0 as usize];
                if self.at_queue_cap(class) {
                    gates.push(Gate::QueueConcurrency {
                        queue: spec.queue.to_string(),
                        running: self.queues.get(&spec.queue).map_or(0, |q| q.running),
                        limit: class.queue_cap.unwrap_or(0),
                    });
                }
                if let Some(k) = &spec.concurrency_key {
                    let place = (Reverse(spec.priority), e.seq, id);
                    self.key_gates(k, &place, now, &mut gates);
                }
            }
            self.routing_gates(e, &mut gates);
            if st.state == State::Queued {
                gates.push(Gate::Position {
                    queue: spec.queue.to_string(),
                    priority: spec.priority,
                    ahead: self.ahead_of(e),
                });
            }
        }
        Some(Explanation {
            task: id,
            state: st.state,
            worker,
            gates,
        })
    }

    fn routing_gates(&self, e: &super::Entry, gates: &mut Vec<Gate>) {
        let class = &self.classes[e.class.0 as usize];
        if class.capable.is_empty() {
            let requirement = match e.rec.spec.kind.requirement() {
                crate::ExecRequirement::Handler(h) => format!("handler:{h}"),
                crate::ExecRequirement::Shell => "shell".into(),
                crate::ExecRequirement::Container => "container".into(),
            };
            gates.push(Gate::NoCapableWorker {
                requirement,
                labels: e.rec.spec.labels.clone(),
                detail: class.key.describe(),
            });
            return;
        }
        let capable: Vec<&super::dispatch::Worker> = class
            .capable
            .iter()
            .filter_map(|&i| self.workers[i].as_ref())
            .collect();
        let min_trust = e.rec.spec.min_trust.unwrap_or(0.0);
        let best = capable.iter().map(|w| w.trust()).fold(0.0, f64::max);
        if best < min_trust {
            gates.push(Gate::Trust { min_trust, best });
        }
        let needs = e.rec.spec.slots;
        let over: Vec<(WorkerId, f64, f64)> = capable
            .iter()
            .filter(|w| w.overloaded())
            .filter_map(|w| {
                let load = w.info.health.and_then(|h| h.load)?;
                Some((w.info.id.clone(), load, w.info.max_load?))
            })
            .collect();
        if !over.is_empty() && capable.iter().all(|w| w.free() < needs) {
            gates.push(Gate::Overloaded { workers: over });
        }
        // A task handed back waits for a free slot, not for room to be held.
        let released = e.released();
        let room = |w: &super::dispatch::Worker| if released { w.idle() } else { w.free() };
        if capable.iter().all(|w| room(w) < needs) {
            gates.push(Gate::WorkersBusy {
                workers: capable
                    .iter()
                    .map(|w| (w.info.id.clone(), w.used, w.info.slots))
                    .collect(),
                needs,
            });
        }
    }

    /// Queued tasks of the same queue that compete for the same workers
    /// and are dispatched before `e`.
    fn ahead_of(&self, e: &super::Entry) -> usize {
        let key = (Reverse(e.rec.spec.priority), e.seq, e.rec.id);
        let mine = &self.classes[e.class.0 as usize].capable;
        self.classes
            .iter()
            .filter(|c| {
                c.key_queue() == &*e.rec.spec.queue && c.capable.iter().any(|w| mine.contains(w))
            })
            .map(|c| c.ready.range(..key).count())
            .sum()
    }
}
