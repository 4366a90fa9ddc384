//! Counters, latency histograms and throughput the engine keeps as tasks
//! move: in total, per (queue, kind) pair, and per worker.
//!
//! A task's kind is its label `handler:NAME`, `shell` or `container`.
//! Per-queue and per-kind figures are sums over the (queue, kind) pairs,
//! made when a [`MetricsSnapshot`] is taken, so the engine records each
//! event into at most three series: the total, its pair and its worker.
//! The pair of a task is resolved once per engine class (tasks of a class
//! share queue and kind) and then found by index, so the hot path does
//! one hash lookup at most — for the worker.
//!
//! Memory is bounded: at most [`LABEL_VALUES_MAX`] distinct queues, kinds,
//! (queue, kind) pairs and workers are kept apart; later ones are counted
//! under the label value [`OTHER_LABEL`] (a queue, kind or worker really
//! named `other` shares that series). Every series is two [`Histogram`]s
//! whose buckets grow only as far as their largest sample.

mod histogram;
mod window;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::{ExecRequirement, State, TaskRecord, TaskSpec, Timestamp, WorkerId};

pub use histogram::{Bucket, Histogram, HistogramSummary, LE_MICROS};
pub use window::Throughput;
use window::Window;

/// Distinct values kept apart per label (queue, kind, worker) and distinct
/// (queue, kind) pairs; the rest are folded into [`OTHER_LABEL`].
pub const LABEL_VALUES_MAX: usize = 1000;

/// The label value that stands for every value beyond [`LABEL_VALUES_MAX`].
pub const OTHER_LABEL: &str = "other";

/// A pair not yet resolved for a class.
const UNRESOLVED: u32 = u32::MAX;

/// The kind label of a task: `handler:NAME`, `shell` or `container`.
pub fn kind_label(req: &ExecRequirement) -> String {
    match req {
        ExecRequirement::Handler(name) => format!("handler:{name}"),
        ExecRequirement::Shell => "shell".to_owned(),
        ExecRequirement::Container => "container".to_owned(),
    }
}

/// Task counters of one series: how many were submitted, ended in each
/// terminal state, and were retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TaskCounts {
    /// Tasks accepted.
    pub submitted: u64,
    /// Tasks that succeeded.
    pub succeeded: u64,
    /// Tasks that failed for good.
    pub failed: u64,
    /// Tasks whose last attempt ran out of time.
    pub timed_out: u64,
    /// Tasks cancelled.
    pub cancelled: u64,
    /// Tasks that expired before they ran.
    pub expired: u64,
    /// Attempts that failed and were scheduled again.
    pub retried: u64,
}

/// The counters and histograms of one slice of the tasks.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Series {
    counts: TaskCounts,
    run_time: Histogram,
    queue_wait: Histogram,
}

impl Series {
    fn record_terminal(&mut self, s: State) {
        let c = &mut self.counts;
        match s {
            State::Succeeded => c.succeeded += 1,
            State::Failed => c.failed += 1,
            State::TimedOut => c.timed_out += 1,
            State::Cancelled => c.cancelled += 1,
            State::Expired => c.expired += 1,
            _ => {}
        }
    }

    fn merge(&mut self, o: &Series) {
        let (c, d) = (&mut self.counts, &o.counts);
        c.submitted += d.submitted;
        c.succeeded += d.succeeded;
        c.failed += d.failed;
        c.timed_out += d.timed_out;
        c.cancelled += d.cancelled;
        c.expired += d.expired;
        c.retried += d.retried;
        self.run_time.merge(&o.run_time);
        self.queue_wait.merge(&o.queue_wait);
    }

    fn is_sane(&self) -> bool {
        self.run_time.is_sane() && self.queue_wait.is_sane()
    }

    fn snapshot(&self) -> SeriesSnapshot {
        let c = &self.counts;
        let done = c.succeeded + c.failed + c.timed_out;
        let rate = |n: u64| {
            if done == 0 {
                0.0
            } else {
                n as f64 / done as f64
            }
        };
        SeriesSnapshot {
            counts: *c,
            success_rate: rate(c.succeeded),
            failure_rate: rate(c.failed + c.timed_out),
            run_time: self.run_time.summary(),
            queue_wait: self.queue_wait.summary(),
        }
    }
}

/// The series of one (queue, kind) pair.
#[derive(Debug, Clone)]
struct Pair {
    queue: Arc<str>,
    kind: Arc<str>,
    series: Series,
}

/// What [`Metrics::saved`] gives: the counters and histograms in total,
/// per (queue, kind) and per worker, as JSON for the store.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SavedMetrics {
    total: Series,
    pairs: Vec<(String, String, Series)>,
    workers: Vec<(WorkerId, Series)>,
}

/// Task counters, latency histograms and throughput since the engine
/// started. The engine records into it; [`Metrics::snapshot`] reads it.
#[derive(Debug, Clone)]
pub struct Metrics {
    cap: usize,
    total: Series,
    pairs: Vec<Pair>,
    pair_index: HashMap<(Arc<str>, Arc<str>), u32>,
    queue_names: HashSet<Arc<str>>,
    kind_names: HashSet<Arc<str>>,
    /// The pair of each engine class, by class id, once resolved.
    by_class: Vec<u32>,
    workers: Vec<(WorkerId, Series)>,
    /// Workers kept apart (not the `other` series).
    worker_index: HashMap<WorkerId, u32>,
    other_worker: Option<u32>,
    finished: Window,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::with_label_cap(LABEL_VALUES_MAX)
    }
}

/// `name` if it is known or there is room for it, else [`OTHER_LABEL`].
fn admit(set: &mut HashSet<Arc<str>>, name: &str, cap: usize) -> Arc<str> {
    if let Some(known) = set.get(name) {
        return known.clone();
    }
    if set.len() >= cap {
        return Arc::from(OTHER_LABEL);
    }
    let name: Arc<str> = Arc::from(name);
    set.insert(name.clone());
    name
}

impl Metrics {
    /// Empty metrics keeping at most `cap` values of each label apart.
    pub(crate) fn with_label_cap(cap: usize) -> Self {
        Metrics {
            cap: cap.max(1),
            total: Series::default(),
            pairs: Vec::new(),
            pair_index: HashMap::new(),
            queue_names: HashSet::new(),
            kind_names: HashSet::new(),
            by_class: Vec::new(),
            workers: Vec::new(),
            worker_index: HashMap::new(),
            other_worker: None,
            finished: Window::default(),
        }
    }

    /// A task was accepted. `class` is any small id the caller gives to
    /// tasks of the same queue and kind (the engine's class id).
    pub(crate) fn on_submit(&mut self, class: usize, spec: &TaskSpec) {
        let p = self.pair_of(class, spec);
        self.total.counts.submitted += 1;
        self.pairs[p].series.counts.submitted += 1;
    }

    /// Task `rec` moved from `from` to `to` at `now` (its status already
    /// updated): records queue wait on assignment, run time at the end of
    /// a run, retries and terminal states — in the total, the task's pair
    /// and the worker of the attempt.
    pub(crate) fn on_transition(
        &mut self,
        class: usize,
        rec: &TaskRecord,
        from: State,
        to: State,
        now: Timestamp,
    ) {
        let ran = from == State::Running;
        let assigned = to == State::Assigned;
        if !(ran || assigned || to == State::Retrying || to.is_terminal()) {
            return;
        }
        let st = &rec.status;
        let run_time = st.started_at.filter(|_| ran).map(|t| now.since(t));
        let queue_wait = st.queued_at.filter(|_| assigned).map(|t| now.since(t));
        let p = self.pair_of(class, &rec.spec);
        // The worker of the attempt that was offered, or that just ended.
        let attempt = assigned || matches!(from, State::Assigned | State::Running);
        let w = st
            .worker
            .as_ref()
            .filter(|_| attempt)
            .map(|w| self.worker_of(w));
        let apply = |s: &mut Series| {
            if let Some(d) = run_time {
                s.run_time.record(d);
            }
            if let Some(d) = queue_wait {
                s.queue_wait.record(d);
            }
            if to == State::Retrying {
                s.counts.retried += 1;
            }
            s.record_terminal(to);
        };
        apply(&mut self.total);
        apply(&mut self.pairs[p].series);
        if let Some(w) = w {
            let s = &mut self.workers[w].1;
            apply(s);
            if assigned {
                s.counts.submitted += 1;
            }
        }
        if to.is_terminal() {
            self.finished.record(now);
        }
    }

    /// The pair series of `class`, resolved from `spec` on first use.
    fn pair_of(&mut self, class: usize, spec: &TaskSpec) -> usize {
        if let Some(&p) = self.by_class.get(class)
            && p != UNRESOLVED
        {
            return p as usize;
        }
        let p = self.resolve_pair(&spec.queue, &kind_label(&spec.kind.requirement()));
        if self.by_class.len() <= class {
            self.by_class.resize(class + 1, UNRESOLVED);
        }
        self.by_class[class] = p as u32;
        p
    }

    /// The series of (queue, kind), created if there is room, else the
    /// folded one.
    fn resolve_pair(&mut self, queue: &str, kind: &str) -> usize {
        let q = admit(&mut self.queue_names, queue, self.cap);
        let k = admit(&mut self.kind_names, kind, self.cap);
        let mut key = (q, k);
        if !self.pair_index.contains_key(&key) && self.pairs.len() >= self.cap {
            key = (Arc::from(OTHER_LABEL), Arc::from(OTHER_LABEL));
        }
        if let Some(&p) = self.pair_index.get(&key) {
            return p as usize;
        }
        let p = self.pairs.len();
        self.pairs.push(Pair {
            queue: key.0.clone(),
            kind: key.1.clone(),
            series: Series::default(),
        });
        self.pair_index.insert(key, p as u32);
        p
    }

    /// The series of worker `w`, created if there is room, else `other`.
    fn worker_of(&mut self, w: &WorkerId) -> usize {
        if let Some(&i) = self.worker_index.get(w) {
            return i as usize;
        }
        if self.worker_index.len() < self.cap {
            let i = self.workers.len();
            self.workers.push((w.clone(), Series::default()));
            self.worker_index.insert(w.clone(), i as u32);
            return i;
        }
        if let Some(i) = self.other_worker {
            return i as usize;
        }
        let i = self.workers.len();
        self.workers
            .push((WorkerId::new(OTHER_LABEL), Series::default()));
        self.other_worker = Some(i as u32);
        i
    }

    /// The counters and histograms, to store and give back to
    /// [`Metrics::restore`] after a restart (throughput windows excepted).
    pub fn saved(&self) -> SavedMetrics {
        SavedMetrics {
            total: self.total.clone(),
            pairs: self
                .pairs
                .iter()
                .map(|p| (p.queue.to_string(), p.kind.to_string(), p.series.clone()))
                .collect(),
            workers: self.workers.clone(),
        }
    }

    /// Adds what [`Metrics::saved`] gave (before a restart) to these
    /// metrics. Series whose histograms could not have been recorded are
    /// left out; returns whether all were taken.
    pub fn restore(&mut self, saved: &SavedMetrics) -> bool {
        let mut all = true;
        if saved.total.is_sane() {
            self.total.merge(&saved.total);
        } else {
            all = false;
        }
        for (queue, kind, series) in &saved.pairs {
            if series.is_sane() {
                let p = self.resolve_pair(queue, kind);
                self.pairs[p].series.merge(series);
            } else {
                all = false;
            }
        }
        for (worker, series) in &saved.workers {
            if series.is_sane() {
                let w = self.worker_of(worker);
                self.workers[w].1.merge(series);
            } else {
                all = false;
            }
        }
        all
    }

    /// The counters over every task, without the histograms: cheap to read.
    pub fn totals(&self) -> TaskCounts {
        self.total.counts
    }

    /// Every figure at `now`: totals, rates, latency summaries, throughput,
    /// and the breakdowns by queue, kind, (queue, kind) and worker.
    pub fn snapshot(&self, now: Timestamp) -> MetricsSnapshot {
        let mut queues: BTreeMap<&str, Series> = BTreeMap::new();
        let mut kinds: BTreeMap<&str, Series> = BTreeMap::new();
        for p in &self.pairs {
            queues.entry(&p.queue).or_default().merge(&p.series);
            kinds.entry(&p.kind).or_default().merge(&p.series);
        }
        let named = |m: BTreeMap<&str, Series>| {
            m.into_iter()
                .map(|(k, s)| (k.to_owned(), s.snapshot()))
                .collect()
        };
        let mut queue_kinds: Vec<QueueKindSnapshot> = self
            .pairs
            .iter()
            .map(|p| QueueKindSnapshot {
                queue: p.queue.to_string(),
                kind: p.kind.to_string(),
                metrics: p.series.snapshot(),
            })
            .collect();
        queue_kinds.sort_by(|a, b| (&a.queue, &a.kind).cmp(&(&b.queue, &b.kind)));
        let workers = self
            .workers
            .iter()
            .map(|(w, s)| (w.to_string(), s.snapshot()))
            .collect();
        MetricsSnapshot {
            total: self.total.snapshot(),
            throughput: self.finished.throughput(now),
            queues: named(queues),
            kinds: named(kinds),
            workers,
            queue_kinds,
        }
    }
}

/// Counters, rates and latency summaries of one slice of the tasks (a
/// queue, a kind, a worker, a (queue, kind) pair).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct SeriesSnapshot {
    /// The counters, as fields of this object in JSON (`s.submitted` reads
    /// `s.counts.submitted`). For a worker, `submitted` counts attempts
    /// offered to it, the terminal counts tasks that ended on it, and
    /// `expired` stays 0 (they did not start).
    #[serde(flatten)]
    pub counts: TaskCounts,
    /// succeeded / (succeeded + failed + timed out); 0 before any finished.
    pub success_rate: f64,
    /// (failed + timed out) / (succeeded + failed + timed out).
    pub failure_rate: f64,
    /// Time from an attempt's start to its end.
    pub run_time: HistogramSummary,
    /// Time from entering `queued` to being assigned.
    pub queue_wait: HistogramSummary,
}

/// The figures of one (queue, kind) pair.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct QueueKindSnapshot {
    /// The queue (or `other`).
    pub queue: String,
    /// The kind: `handler:NAME`, `shell`, `container` (or `other`).
    pub kind: String,
    /// Its figures.
    pub metrics: SeriesSnapshot,
}

/// Task counters, rates, latency summaries and throughput at one moment,
/// in total and broken down.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct MetricsSnapshot {
    /// The totals over every task; its fields read directly on the
    /// snapshot (`snapshot.succeeded`), and sit at the top level in JSON.
    #[serde(flatten)]
    pub total: SeriesSnapshot,
    /// Tasks finished per second over the last 1, 5 and 15 minutes.
    #[serde(default)]
    pub throughput: Throughput,
    /// By queue name.
    #[serde(default)]
    pub queues: BTreeMap<String, SeriesSnapshot>,
    /// By kind: `handler:NAME`, `shell`, `container`.
    #[serde(default)]
    pub kinds: BTreeMap<String, SeriesSnapshot>,
    /// By worker id (every worker seen since start, connected or not).
    #[serde(default)]
    pub workers: BTreeMap<String, SeriesSnapshot>,
    /// By (queue, kind) pair, sorted.
    #[serde(default)]
    pub queue_kinds: Vec<QueueKindSnapshot>,
}

impl std::ops::Deref for SeriesSnapshot {
    type Target = TaskCounts;
    /// The counters: `series.succeeded` reads `series.counts.succeeded`.
    fn deref(&self) -> &TaskCounts {
        &self.counts
    }
}

impl std::ops::Deref for MetricsSnapshot {
    type Target = SeriesSnapshot;
    /// The totals: `snapshot.succeeded` reads `snapshot.total.succeeded`.
    fn deref(&self) -> &SeriesSnapshot {
        &self.total
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{TaskId, TaskKind, TaskStatus};

    fn spec(queue: &str, handler: &str) -> TaskSpec {
        let mut s = TaskSpec::new(TaskKind::Handler {
            name: Arc::from(handler),
            payload: "null".into(),
        });
        s.queue = Arc::from(queue);
        s
    }

    fn record(spec: TaskSpec, state: State, worker: Option<&str>, started: u64) -> TaskRecord {
        let mut status = TaskStatus::new(state);
        status.worker = worker.map(WorkerId::new);
        status.started_at = Some(Timestamp::from_micros(started));
        status.queued_at = Some(Timestamp::from_micros(started / 2));
        TaskRecord {
            id: TaskId::from_u128(1),
            spec,
            created_at: Timestamp::ZERO,
            status,
            progress: None,
            checkpoint: None,
        }
    }

    #[test]
    fn kind_labels_name_the_executor() {
        assert_eq!(
            kind_label(&ExecRequirement::Handler(Arc::from("resize"))),
            "handler:resize"
        );
        assert_eq!(kind_label(&ExecRequirement::Shell), "shell");
        assert_eq!(kind_label(&ExecRequirement::Container), "container");
    }

    #[test]
    fn labels_beyond_the_cap_fold_into_other() {
        let mut m = Metrics::with_label_cap(2);
        // Classes 0–4: five queues of one handler; only two are kept apart.
        for (class, q) in ["a", "b", "c", "d", "e"].into_iter().enumerate() {
            m.on_submit(class, &spec(q, "h"));
            m.on_submit(class, &spec(q, "h"));
        }
        // A new kind on a known queue: no room for another pair either.
        m.on_submit(5, &spec("a", "g"));
        let s = m.snapshot(Timestamp::ZERO);
        assert_eq!(s.submitted, 11);
        let names: Vec<&str> = s.queues.keys().map(String::as_str).collect();
        assert_eq!(names, ["a", "b", OTHER_LABEL]);
        assert_eq!(s.queues["a"].submitted, 2);
        assert_eq!(s.queues[OTHER_LABEL].submitted, 7);
        assert_eq!(s.kinds["handler:h"].submitted, 4);
        assert_eq!(s.kinds[OTHER_LABEL].submitted, 7);
        assert_eq!(s.queue_kinds.len(), 3, "the cap plus the folded pair");
        let total: u64 = s.queue_kinds.iter().map(|p| p.metrics.submitted).sum();
        assert_eq!(total, 11, "folding loses no count");
    }

    #[test]
    fn workers_beyond_the_cap_fold_into_other() {
        let mut m = Metrics::with_label_cap(2);
        for w in ["w1", "w2", "w3", "w4", "w1"] {
            let r = record(spec("q", "h"), State::Succeeded, Some(w), 10);
            m.on_transition(
                0,
                &r,
                State::Running,
                State::Succeeded,
                Timestamp::from_micros(30),
            );
        }
        let s = m.snapshot(Timestamp::from_micros(30));
        let names: Vec<&str> = s.workers.keys().map(String::as_str).collect();
        assert_eq!(names, [OTHER_LABEL, "w1", "w2"]);
        assert_eq!(s.workers["w1"].succeeded, 2);
        assert_eq!(s.workers[OTHER_LABEL].succeeded, 2);
        assert_eq!(s.workers[OTHER_LABEL].run_time.count, 2);
        assert_eq!(s.succeeded, 5);
    }

    #[test]
    fn transitions_record_latencies_retries_and_ends_once_per_series() {
        let mut m = Metrics::default();
        let now = Timestamp::from_micros(5_000_000);
        // Assigned to w after waiting since 1 s: queue wait 4 s, one offer.
        let r = record(spec("q", "h"), State::Assigned, Some("w"), 2_000_000);
        m.on_transition(0, &r, State::Queued, State::Assigned, now);
        // Accepting records nothing.
        m.on_transition(0, &r, State::Assigned, State::Running, now);
        // Ran 3 s, failed, retried.
        m.on_transition(0, &r, State::Running, State::Retrying, now);
        // Cancelled while waiting to retry: not the worker's doing.
        m.on_transition(0, &r, State::Retrying, State::Cancelled, now);
        let s = m.snapshot(now);
        for (name, x) in [
            ("total", s.queues["q"].clone()),
            ("kind", s.kinds["handler:h"].clone()),
        ] {
            assert_eq!((x.retried, x.cancelled), (1, 1), "{name}");
            assert_eq!(x.queue_wait.count, 1, "{name}");
            assert_eq!(x.queue_wait.max, Duration::from_secs(4), "{name}");
            assert_eq!(x.run_time.max, Duration::from_secs(3), "{name}");
        }
        assert_eq!((s.retried, s.cancelled, s.run_time.count), (1, 1, 1));
        let w = &s.workers["w"];
        assert_eq!((w.submitted, w.retried, w.cancelled), (1, 1, 0));
        assert_eq!((w.run_time.count, w.queue_wait.count), (1, 1));
        // One task finished in the last minute, the first second seen.
        assert_eq!(s.throughput.last_1m, 1.0);
    }
}
