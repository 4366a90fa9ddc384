//! Property tests: random command sequences against the engine, with the
//! invariants checked after every step and a drain at the end.
//!
//! - every task reaches exactly one terminal state, and the change log
//!   replays consistently (each change starts from the state the previous
//!   one left — what the store's compare-and-set demands);
//! - no task is assigned to two workers at once; slot counts add up;
//! - a worker never receives a lower-priority task of a queue while a
//!   higher-priority one it could run waits there;
//! - no concurrency key has more tasks out than its limit, nor more starts
//!   in a period than its token bucket allows; no capped queue has more out
//!   than its cap; a key held back by a limit still gets every task run;
//! - after the drain no timer, slot, unique key, queue count or limit state
//!   is left.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use proptest::prelude::*;

use super::tests::{Harness, h};
use super::*;
use crate::{LabelReq, Outcome, RetryHint, RetryPolicy};

const HANDLERS: [&str; 2] = ["a", "b"];
const LABELS: [&str; 2] = ["gpu", "ssd"];
/// Concurrency keys: `c0` at most 1 out; `c1` at most 2 out and 3 starts
/// per second; `c2` (through `c*`) 2 starts per 500 ms; `free` unlimited.
const KEYS: [&str; 4] = ["c0", "c1", "c2", "free"];
/// Queue `q1` has at most this many tasks out.
const Q1_CAP: usize = 3;

fn limits() -> Vec<KeyLimit> {
    let rate = |starts, ms| {
        Some(Rate {
            starts,
            per: Duration::from_millis(ms),
        })
    };
    vec![
        KeyLimit {
            pattern: "c0".into(),
            concurrency: Some(1),
            rate: None,
        },
        KeyLimit {
            pattern: "c1".into(),
            concurrency: Some(2),
            rate: rate(3, 1000),
        },
        KeyLimit {
            pattern: "c*".into(),
            concurrency: None,
            rate: rate(2, 500),
        },
    ]
}

/// (most out at once, (starts, per)) of each key of [`KEYS`].
fn key_bounds(key: &str) -> (Option<usize>, Option<(usize, u64)>) {
    match key {
        "c0" => (Some(1), Some((2, 500))),
        "c1" => (Some(2), Some((3, 1000))),
        "c2" => (None, Some((2, 500))),
        _ => (None, None),
    }
}

#[derive(Debug, Clone)]
enum Cmd {
    Submit {
        prio: u8,
        queue: u8,
        handler: u8,
        label: Option<u8>,
        dep: Option<usize>,
        retries: u32,
        timeout_ms: Option<u64>,
        unique: Option<u8>,
        delay_ms: Option<u64>,
        expire_ms: Option<u64>,
        key: Option<u8>,
    },
    Register {
        worker: u8,
        slots: u32,
        prefetch: u32,
        handlers: u8,
        labels: u8,
        mortal: bool,
    },
    Remove(u8),
    Heartbeat(u8),
    Pause(u8, bool),
    PauseQueue(u8, bool),
    Reconnect(u8),
    Dispatch,
    Accept(usize),
    Reject(usize),
    Release(usize),
    Report(usize, u8),
    Cancel(usize),
    Tick(u64),
}

fn cmd() -> impl Strategy<Value = Cmd> {
    prop_oneof![
        4 => ((0..4u8, 0..2u8, 0..2u8, proptest::option::of(0..2u8), proptest::option::of(0..64usize), 0..3u32),
            (proptest::option::of(1..3000u64), proptest::option::weighted(0.2, 0..3u8),
            proptest::option::weighted(0.2, 1..2000u64), proptest::option::weighted(0.2, 1..5000u64),
            proptest::option::weighted(0.6, 0..KEYS.len() as u8)))
            .prop_map(|((prio, queue, handler, label, dep, retries), (timeout_ms, unique, delay_ms, expire_ms, key))| {
                Cmd::Submit { prio, queue, handler, label, dep, retries, timeout_ms, unique, delay_ms, expire_ms, key }
            }),
        1 => (0..3u8, 1..4u32, proptest::option::weighted(0.3, 1..3u32), 1..4u8, 0..4u8, any::<bool>())
            .prop_map(|(worker, slots, prefetch, handlers, labels, mortal)| {
                Cmd::Register { worker, slots, prefetch: prefetch.unwrap_or(0), handlers, labels, mortal }
            }),
        1 => (0..3u8).prop_map(Cmd::Remove),
        1 => (0..3u8).prop_map(Cmd::Heartbeat),
        1 => (0..3u8, any::<bool>()).prop_map(|(w, p)| Cmd::Pause(w, p)),
        1 => (0..2u8, any::<bool>()).prop_map(|(q, p)| Cmd::PauseQueue(q, p)),
        1 => (0..3u8).prop_map(Cmd::Reconnect),
        3 => Just(Cmd::Dispatch),
        3 => any::<usize>().prop_map(Cmd::Accept),
        1 => any::<usize>().prop_map(Cmd::Reject),
        1 => any::<usize>().prop_map(Cmd::Release),
        4 => (any::<usize>(), 0..5u8).prop_map(|(i, o)| Cmd::Report(i, o)),
        1 => any::<usize>().prop_map(Cmd::Cancel),
        2 => (0..4000u64).prop_map(Cmd::Tick),
    ]
}

struct Model {
    t: Harness,
    ids: Vec<TaskId>,
    /// Assignments handed out and not yet reported or refused.
    outstanding: Vec<Assignment>,
    /// State of each task according to the change log.
    log_state: HashMap<TaskId, State>,
    terminal_entries: HashMap<TaskId, u32>,
    checked_changes: usize,
    /// Start times (assignments) of each key, the recent ones.
    starts: HashMap<String, VecDeque<Timestamp>>,
}

impl Model {
    fn new() -> Self {
        let mut config = EngineConfig {
            key_limits: limits(),
            ..EngineConfig::default()
        };
        config.queue_concurrency.insert("q1".into(), Q1_CAP as u32);
        Model {
            starts: HashMap::new(),
            t: Harness::with(config),
            ids: Vec::new(),
            outstanding: Vec::new(),
            log_state: HashMap::new(),
            terminal_entries: HashMap::new(),
            checked_changes: 0,
        }
    }

    fn pick(outstanding: &[Assignment], i: usize) -> Option<usize> {
        (!outstanding.is_empty()).then(|| i % outstanding.len())
    }

    fn run(&mut self, c: Cmd) {
        let t = &mut self.t;
        match c {
            Cmd::Submit {
                prio,
                queue,
                handler,
                label,
                dep,
                retries,
                timeout_ms,
                unique,
                delay_ms,
                expire_ms,
                key,
            } => {
                let mut s = h(HANDLERS[handler as usize]);
                s.priority = [
                    Priority::LOW,
                    Priority::NORMAL,
                    Priority::HIGH,
                    Priority::CRITICAL,
                ][prio as usize];
                s.queue = ["q0", "q1"][queue as usize].into();
                s.labels = label
                    .map(|l| LABELS[l as usize].parse::<LabelReq>().unwrap())
                    .into_iter()
                    .collect();
                s.after = dep
                    .filter(|_| !self.ids.is_empty())
                    .map(|d| self.ids[d % self.ids.len()])
                    .into_iter()
                    .collect();
                s.retry = RetryPolicy {
                    initial_backoff: Duration::from_millis(50),
                    ..RetryPolicy::retries(retries)
                };
                s.timeout = timeout_ms.map(Duration::from_millis);
                s.unique_key = unique.map(|u| format!("k{u}"));
                s.concurrency_key = key.map(|k| KEYS[k as usize].into());
                s.run_at = delay_ms.map(|d| t.now.plus(Duration::from_millis(d)));
                s.expires_at =
                    expire_ms.map(|d| t.now.plus(Duration::from_millis(d + delay_ms.unwrap_or(0))));
                let id = t.id();
                let r = t
                    .engine
                    .submit(id, s, t.now, &mut t.out)
                    .expect("valid submit");
                if let Submitted::Created(id) = r {
                    self.ids.push(id);
                }
            }
            Cmd::Register {
                worker,
                slots,
                prefetch,
                handlers,
                labels,
                mortal,
            } => {
                let mut info = WorkerInfo::local(format!("w{worker}"), slots, Vec::<String>::new());
                info.prefetch = prefetch;
                info.handlers = HANDLERS
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| handlers & (1 << i) != 0)
                    .map(|(_, h)| h.to_string())
                    .collect();
                info.labels = LABELS
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| labels & (1 << i) != 0)
                    .map(|(_, l)| (l.to_string(), String::new()))
                    .collect();
                info.heartbeat_timeout = mortal.then_some(Duration::from_secs(5));
                t.engine.register_worker(info, t.now);
            }
            Cmd::Remove(w) => {
                t.engine
                    .remove_worker(&WorkerId::new(format!("w{w}")), t.now, &mut t.out);
            }
            Cmd::Heartbeat(w) => {
                let _ = t.engine.heartbeat(&WorkerId::new(format!("w{w}")), t.now);
            }
            Cmd::Pause(w, p) => {
                let _ = t
                    .engine
                    .set_worker_paused(&WorkerId::new(format!("w{w}")), p);
            }
            Cmd::PauseQueue(q, p) => {
                t.engine
                    .set_queue_paused(["q0", "q1"][q as usize], p, &mut t.out);
            }
            Cmd::Reconnect(w) => {
                // The worker comes back remembering half of what it ran.
                let id = WorkerId::new(format!("w{w}"));
                let mine: Vec<(TaskId, u32)> = self
                    .outstanding
                    .iter()
                    .filter(|a| a.worker == id)
                    .map(|a| (a.id, a.attempt))
                    .collect();
                let kept: Vec<(TaskId, u32)> = mine.iter().copied().step_by(2).collect();
                let stop = t.engine.reconcile_worker(&id, &kept, t.now, &mut t.out);
                // Attempts that ended meanwhile (timed out, cancelled) are
                // stopped on the worker and never reported.
                self.outstanding.retain(|a| {
                    a.worker != id
                        || (kept.contains(&(a.id, a.attempt)) && !stop.contains(&(a.id, a.attempt)))
                });
            }
            Cmd::Dispatch => {
                let used: HashMap<WorkerId, u32> =
                    t.engine.workers().map(|w| (w.0.id.clone(), w.1)).collect();
                let a = t.dispatch();
                let held = self.held(&a, used);
                self.check_priority(&a, &held);
                self.check_holding(&a, &held);
                self.outstanding.extend(a);
            }
            Cmd::Accept(i) => {
                if let Some(i) = Self::pick(&self.outstanding, i) {
                    let a = &self.outstanding[i];
                    let _ = t
                        .engine
                        .accept(&a.worker, a.id, a.attempt, t.now, &mut t.out);
                }
            }
            Cmd::Reject(i) | Cmd::Release(i) => {
                if let Some(i) = Self::pick(&self.outstanding, i) {
                    let a = self.outstanding.swap_remove(i);
                    let r = if matches!(c, Cmd::Reject(_)) {
                        t.engine
                            .reject(&a.worker, a.id, a.attempt, "no", t.now, &mut t.out)
                    } else {
                        t.engine
                            .release(&a.worker, a.id, a.attempt, t.now, &mut t.out)
                    };
                    // Refusing a running attempt is refused: it keeps running.
                    if matches!(r, Err(CommandError::Stale { current, state: State::Running, .. }) if current == a.attempt)
                    {
                        self.outstanding.push(a);
                    }
                }
            }
            Cmd::Report(i, o) => {
                if let Some(i) = Self::pick(&self.outstanding, i) {
                    let a = self.outstanding.swap_remove(i);
                    let outcome = match o {
                        0 | 1 => Outcome::ok(),
                        2 => Outcome::failed("x"),
                        3 => Outcome::Failed {
                            message: "y".into(),
                            retry: RetryHint::Never,
                            exit_code: Some(1),
                        },
                        _ => Outcome::TimedOut,
                    };
                    let _ = t.report(&a, outcome);
                }
            }
            Cmd::Cancel(i) => {
                if !self.ids.is_empty() {
                    let id = self.ids[i % self.ids.len()];
                    let _ = t.engine.cancel(id, t.now, &mut t.out);
                }
            }
            Cmd::Tick(ms) => t.advance(Duration::from_millis(ms)),
        }
        // Executors forget attempts their worker lost along with the worker.
        let live: Vec<WorkerId> = self.t.engine.workers().map(|w| w.0.id.clone()).collect();
        self.outstanding.retain(|a| live.contains(&a.worker));
        self.t.out.stops.clear();
        self.check();
    }

    /// A worker given a task to hold (beyond its slots) in a round of
    /// dispatch was not passed over, earlier in that round, for a task that
    /// was handed back and still waits for a free slot. `held` says which
    /// assignments went beyond the slots (see [`Model::held`]).
    fn check_holding(&self, assigned: &[Assignment], held: &[bool]) {
        let e = &self.t.engine;
        for (a, _) in assigned.iter().zip(held).filter(|(_, h)| **h) {
            let Some(w) = e.workers.iter().flatten().find(|w| w.info.id == a.worker) else {
                continue;
            };
            let got = e.tasks.get(&a.id).expect("assigned task exists");
            let got_turn = (std::cmp::Reverse(got.rec.spec.priority), got.seq);
            for r in e.tasks.values() {
                if r.rec.status.state != State::Queued || !r.released() {
                    continue;
                }
                let class = &e.classes[r.class.0 as usize];
                let place = (std::cmp::Reverse(r.rec.spec.priority), r.seq, r.rec.id);
                // Dispatch reached it before the held task: first in its
                // class now, so all before it left this round, in a queue
                // neither paused nor at its cap, and earlier in turn.
                let reached = class.ready.first() == Some(&place)
                    && !e.queues.get(&r.rec.spec.queue).is_some_and(|q| q.paused)
                    && !e.at_queue_cap(class)
                    && (place.0, place.1) < got_turn;
                let could = w.can_run(&class.key) && !r.refused(&w.info.id);
                assert!(
                    !(reached && could),
                    "{} held task {} while task {}, handed back, waited for a free slot",
                    a.worker,
                    a.id,
                    r.rec.id
                );
            }
        }
    }

    /// Which of a round's assignments went beyond the worker's slots (to be
    /// held), given what each worker had taken before the round.
    fn held(&self, assigned: &[Assignment], mut used: HashMap<WorkerId, u32>) -> Vec<bool> {
        let e = &self.t.engine;
        assigned
            .iter()
            .map(|a| {
                let slots = e
                    .workers
                    .iter()
                    .flatten()
                    .find(|w| w.info.id == a.worker)
                    .map_or(u32::MAX, |w| w.info.slots);
                let u = used.entry(a.worker.clone()).or_insert(0);
                let held = *u + a.slots > slots;
                *u += a.slots;
                held
            })
            .collect()
    }

    /// A worker that got a task of priority p must not have been able to run
    /// a task of higher priority left queued in the same queue (unless it
    /// only held it and the other was handed back: that one waits for a
    /// free slot).
    fn check_priority(&mut self, assigned: &[Assignment], held: &[bool]) {
        let e = &self.t.engine;
        for (a, &held) in assigned.iter().zip(held) {
            let got = e.tasks.get(&a.id).unwrap();
            // A key's starts within any period stay within its bucket:
            // `starts` at once, then one per interval.
            if let Some(k) = &got.rec.spec.concurrency_key
                && let (_, Some((n, per))) = key_bounds(k)
            {
                let seen = self.starts.entry(k.to_string()).or_default();
                seen.push_back(self.t.now);
                let window = Duration::from_millis(per);
                while seen.front().is_some_and(|t| self.t.now.since(*t) >= window) {
                    seen.pop_front();
                }
                // In any window of one period: the burst plus what refills in it.
                assert!(
                    seen.len() <= 2 * n,
                    "key {k}: {} starts within {per} ms",
                    seen.len()
                );
            }
            let w = e
                .workers
                .iter()
                .flatten()
                .find(|w| w.info.id == a.worker)
                .expect("worker");
            assert!(
                w.used <= w.info.slots + w.info.prefetch,
                "dispatch overfilled {}",
                w.info.id
            );
            for other in e.tasks.values() {
                let st = &other.rec.status;
                if st.state != State::Queued || other.rec.spec.queue != got.rec.spec.queue {
                    continue;
                }
                // A task its key's limit holds back is not competing.
                let place = (
                    std::cmp::Reverse(other.rec.spec.priority),
                    other.seq,
                    other.rec.id,
                );
                if !e.classes[other.class.0 as usize].ready.contains(&place) {
                    continue;
                }
                let key = &e.classes[other.class.0 as usize].key;
                // (One handed back waits for a free slot: it may pass a
                // worker that could only hold it.)
                let could =
                    w.can_run(key) && !other.refused(&w.info.id) && !(held && other.released());
                assert!(
                    !(could && other.rec.spec.priority > got.rec.spec.priority),
                    "{} got {:?} task {} while {:?} task {} it could run waited",
                    a.worker,
                    got.rec.spec.priority,
                    a.id,
                    other.rec.spec.priority,
                    other.rec.id
                );
            }
        }
    }

    fn check(&mut self) {
        let e = &self.t.engine;
        // The change log replays: every change starts where the last one left.
        for c in &self.t.out.changes[self.checked_changes..] {
            match c {
                Change::Submitted(r) => {
                    assert!(
                        self.log_state.insert(r.id, r.status.state).is_none(),
                        "{} inserted twice",
                        r.id
                    );
                }
                Change::Status {
                    id, from, status, ..
                } => {
                    let last = self.log_state.get(id).copied();
                    assert_eq!(last, Some(*from), "change log for {id} does not replay");
                    assert!(!from.is_terminal(), "{id} left terminal state {from}");
                    if status.state.is_terminal() {
                        *self.terminal_entries.entry(*id).or_default() += 1;
                    }
                    self.log_state.insert(*id, status.state);
                }
                _ => {}
            }
        }
        self.checked_changes = self.t.out.changes.len();
        // Slots and attempts add up; no task is held by two workers.
        let mut holders: HashMap<TaskId, u32> = HashMap::new();
        let mut free = 0u64;
        for w in e.workers.iter().flatten() {
            let used: u32 = w.attempts.values().sum();
            assert_eq!(used, w.used, "worker {} slot count", w.info.id);
            free += u64::from(w.free());
            for &(id, attempt) in w.attempts.keys() {
                let st = &e.tasks.get(&id).unwrap().rec.status;
                if st.attempt == attempt && matches!(st.state, State::Assigned | State::Running) {
                    *holders.entry(id).or_default() += 1;
                    assert_eq!(st.worker.as_ref(), Some(&w.info.id));
                }
            }
        }
        assert_eq!(free, e.free_slots);
        let mut out = 0;
        for (id, entry) in e.tasks.iter() {
            let active = matches!(entry.rec.status.state, State::Assigned | State::Running);
            out += usize::from(active);
            assert_eq!(
                holders.get(id).copied().unwrap_or(0),
                u32::from(active),
                "task {id} holders"
            );
            assert_eq!(self.log_state.get(id), Some(&entry.rec.status.state));
        }
        assert_eq!(e.attempts_out(), out, "attempts out");
        // Limits hold: per key and per capped queue.
        let mut per_key: HashMap<&str, usize> = HashMap::new();
        let mut q1 = 0;
        for (_, entry) in e.tasks.iter() {
            if matches!(entry.rec.status.state, State::Assigned | State::Running) {
                if let Some(k) = &entry.rec.spec.concurrency_key {
                    *per_key.entry(k).or_default() += 1;
                }
                q1 += usize::from(&*entry.rec.spec.queue == "q1");
            }
        }
        for (k, n) in &per_key {
            if let (Some(max), _) = key_bounds(k) {
                assert!(*n <= max, "key {k} has {n} out, limit {max}");
            }
        }
        assert!(q1 <= Q1_CAP, "queue q1 has {q1} out, cap {Q1_CAP}");
        for v in e.key_limits(self.t.now) {
            assert_eq!(
                v.running as usize,
                per_key.get(&*v.key).copied().unwrap_or(0)
            );
        }
        let live = e.live_tasks();
        assert!(
            e.timer_count() <= live * 4,
            "{} timers for {live} live tasks",
            e.timer_count()
        );
    }

    /// Runs everything to the end with a worker that can run anything.
    fn drain(&mut self) {
        let mut info = WorkerInfo::local("drain", 8, HANDLERS);
        info.labels = LABELS
            .iter()
            .map(|l| (l.to_string(), String::new()))
            .collect();
        info.queues = vec![];
        self.t.engine.register_worker(info, self.t.now);
        for q in ["q0", "q1"] {
            self.t.engine.set_queue_paused(q, false, &mut self.t.out);
        }
        for _ in 0..10_000 {
            if self.t.engine.live_tasks() == 0 && self.outstanding.is_empty() {
                break;
            }
            for a in std::mem::take(&mut self.outstanding) {
                let _ = self.t.report(&a, Outcome::ok());
            }
            self.run(Cmd::Tick(3_600_000));
            self.run(Cmd::Dispatch);
            self.check();
        }
        // Buckets refill after the last start; then the keys are forgotten.
        self.run(Cmd::Tick(3_600_000));
        let e = &self.t.engine;
        assert_eq!(e.live_tasks(), 0, "tasks left: {:?}", e.state_counts());
        for id in &self.ids {
            assert_eq!(
                self.terminal_entries.get(id),
                Some(&1),
                "task {id} terminal entries"
            );
        }
        assert_eq!(e.timer_count(), 0, "timers leaked");
        assert!(e.unique.is_empty(), "unique keys leaked");
        assert!(e.dependents.is_empty(), "dependents leaked");
        for w in e.workers.iter().flatten() {
            assert_eq!(w.used, 0, "worker {} slots leaked", w.info.id);
        }
        for q in e.queues.values() {
            assert_eq!((q.waiting_total(), q.ready, q.running), (0, 0, 0));
        }
        assert!(e.classes.iter().all(|c| c.ready.is_empty()));
        assert_eq!(e.limit_state_sizes(), (0, 0), "limit state leaked");
        assert!(e.limit_timers.is_empty(), "limit timers leaked");
    }
}

proptest! {
    // 256 cases by default; PROPTEST_CASES=N for a longer run.
    #[test]
    fn random_command_sequences_keep_every_invariant(cmds in proptest::collection::vec(cmd(), 1..120)) {
        let mut m = Model::new();
        for c in cmds {
            m.run(c);
        }
        m.drain();
    }
}
