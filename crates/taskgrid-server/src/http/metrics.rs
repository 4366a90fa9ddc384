//! `GET /metrics`: the coordinator's figures in the Prometheus text
//! exposition format, version 0.0.4.
//!
//! Everything is rendered from the same [`MetricsSnapshot`] that
//! `GET /api/v1/metrics` returns as JSON, plus the queue and worker views,
//! so the two cannot disagree. Names follow Prometheus conventions:
//! counters end in `_total`, durations are histograms in seconds with
//! cumulative `_bucket{le}` lines at the fixed bounds of
//! [`taskgrid_core::LE_MICROS`], then `_sum` and `_count`. Label values
//! are escaped (backslash, double quote, newline).

use std::fmt::{Display, Write as _};

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use taskgrid_api::WorkerView;
use taskgrid_core::{HistogramSummary, MetricsSnapshot, QueueStats, SeriesSnapshot};

use super::AppState;

/// The content type of the text exposition format.
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `GET /metrics`.
pub(crate) async fn prometheus(State(s): State<AppState>) -> Response {
    let text = render(
        &s.system.metrics(),
        &s.system.queue_stats(),
        &s.system.workers(),
    );
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response()
}

/// The terminal states a task's end is counted under, with their label.
fn ends(s: &SeriesSnapshot) -> [(&'static str, u64); 5] {
    [
        ("succeeded", s.succeeded),
        ("failed", s.failed),
        ("timed_out", s.timed_out),
        ("cancelled", s.cancelled),
        ("expired", s.expired),
    ]
}

/// The whole exposition.
pub(crate) fn render(m: &MetricsSnapshot, queues: &[QueueStats], workers: &[WorkerView]) -> String {
    let mut x = Exposition::default();
    let pairs = &m.queue_kinds;
    let qk = |p: &taskgrid_core::QueueKindSnapshot| {
        [("queue", p.queue.clone()), ("kind", p.kind.clone())]
    };

    x.family(
        "taskgrid_tasks_submitted_total",
        "counter",
        "Tasks accepted, by queue and kind.",
    );
    for p in pairs {
        x.sample(
            "taskgrid_tasks_submitted_total",
            &qk(p),
            p.metrics.submitted,
        );
    }
    x.family(
        "taskgrid_tasks_finished_total",
        "counter",
        "Tasks that reached a terminal state, by queue, kind and state.",
    );
    for p in pairs {
        for (state, n) in ends(&p.metrics) {
            let [q, k] = qk(p);
            x.sample(
                "taskgrid_tasks_finished_total",
                &[q, k, ("state", state.to_owned())],
                n,
            );
        }
    }
    x.family(
        "taskgrid_tasks_retried_total",
        "counter",
        "Attempts that failed and were retried, by queue and kind.",
    );
    for p in pairs {
        x.sample("taskgrid_tasks_retried_total", &qk(p), p.metrics.retried);
    }
    x.family(
        "taskgrid_task_run_seconds",
        "histogram",
        "Time from an attempt's start to its end, by queue and kind.",
    );
    for p in pairs {
        x.histogram("taskgrid_task_run_seconds", &qk(p), &p.metrics.run_time);
    }
    x.family(
        "taskgrid_task_queue_wait_seconds",
        "histogram",
        "Time from entering the queue to being assigned, by queue and kind.",
    );
    for p in pairs {
        x.histogram(
            "taskgrid_task_queue_wait_seconds",
            &qk(p),
            &p.metrics.queue_wait,
        );
    }
    x.family(
        "taskgrid_tasks_finished_per_second",
        "gauge",
        "Tasks finished per second over a recent window.",
    );
    let t = &m.throughput;
    for (window, rate) in [("1m", t.last_1m), ("5m", t.last_5m), ("15m", t.last_15m)] {
        x.sample(
            "taskgrid_tasks_finished_per_second",
            &[("window", window.to_owned())],
            Float(rate),
        );
    }

    x.family(
        "taskgrid_queue_depth",
        "gauge",
        "Tasks waiting (pending, queued or retrying), by queue and priority.",
    );
    for q in queues {
        for (priority, n) in &q.waiting {
            let labels = [
                ("queue", q.name.clone()),
                ("priority", priority.to_string()),
            ];
            x.sample("taskgrid_queue_depth", &labels, n);
        }
    }
    x.family(
        "taskgrid_tasks_running",
        "gauge",
        "Tasks assigned or running, by queue.",
    );
    for q in queues {
        x.sample(
            "taskgrid_tasks_running",
            &[("queue", q.name.clone())],
            q.running,
        );
    }

    x.family(
        "taskgrid_workers_connected",
        "gauge",
        "Workers registered with the coordinator (the local executor included).",
    );
    x.sample("taskgrid_workers_connected", &[], workers.len());
    x.family("taskgrid_worker_slots", "gauge", "Slots of a worker.");
    for w in workers {
        x.sample(
            "taskgrid_worker_slots",
            &[("worker", w.id.to_string())],
            w.slots,
        );
    }
    x.family(
        "taskgrid_worker_slots_used",
        "gauge",
        "Slots of a worker taken by its assigned and running tasks (with a prefetch, held tasks too: it may exceed the slots).",
    );
    for w in workers {
        x.sample(
            "taskgrid_worker_slots_used",
            &[("worker", w.id.to_string())],
            w.used,
        );
    }
    x.family(
        "taskgrid_worker_attempts_total",
        "counter",
        "Attempts offered to a worker.",
    );
    for (w, s) in &m.workers {
        x.sample(
            "taskgrid_worker_attempts_total",
            &[("worker", w.clone())],
            s.submitted,
        );
    }
    x.family(
        "taskgrid_worker_tasks_finished_total",
        "counter",
        "Tasks whose last attempt ended on a worker, by worker and state.",
    );
    for (w, s) in &m.workers {
        for (state, n) in ends(s) {
            let labels = [("worker", w.clone()), ("state", state.to_owned())];
            x.sample("taskgrid_worker_tasks_finished_total", &labels, n);
        }
    }
    x.family(
        "taskgrid_worker_task_run_seconds",
        "histogram",
        "Time from an attempt's start to its end, by worker.",
    );
    for (w, s) in &m.workers {
        x.histogram(
            "taskgrid_worker_task_run_seconds",
            &[("worker", w.clone())],
            &s.run_time,
        );
    }
    x.out
}

/// A float sample value as Prometheus writes it.
struct Float(f64);

impl Display for Float {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = self.0;
        if v.is_nan() {
            f.write_str("NaN")
        } else if v.is_infinite() {
            f.write_str(if v > 0.0 { "+Inf" } else { "-Inf" })
        } else {
            write!(f, "{v}")
        }
    }
}

/// The text being written.
#[derive(Default)]
struct Exposition {
    out: String,
}

impl Exposition {
    /// Starts a metric family: its `# HELP` and `# TYPE` lines.
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        self.out.push_str("# HELP ");
        self.out.push_str(name);
        self.out.push(' ');
        for c in help.chars() {
            match c {
                '\\' => self.out.push_str("\\\\"),
                '\n' => self.out.push_str("\\n"),
                c => self.out.push(c),
            }
        }
        let _ = writeln!(self.out, "\n# TYPE {name} {kind}");
    }

    /// One sample line.
    fn sample(&mut self, name: &str, labels: &[(&str, String)], value: impl Display) {
        self.out.push_str(name);
        self.labels(labels, None);
        let _ = writeln!(self.out, " {value}");
    }

    /// `{a="x",b="y"}` (nothing when there are no labels), with `le` last.
    fn labels(&mut self, labels: &[(&str, String)], le: Option<&str>) {
        if labels.is_empty() && le.is_none() {
            return;
        }
        self.out.push('{');
        let all = labels
            .iter()
            .map(|(k, v)| (*k, v.as_str()))
            .chain(le.map(|le| ("le", le)));
        for (i, (key, value)) in all.enumerate() {
            if i > 0 {
                self.out.push(',');
            }
            self.out.push_str(key);
            self.out.push_str("=\"");
            escape_label_value(value, &mut self.out);
            self.out.push('"');
        }
        self.out.push('}');
    }

    /// The `_bucket`, `_sum` and `_count` lines of one histogram.
    fn histogram(&mut self, name: &str, labels: &[(&str, String)], h: &HistogramSummary) {
        let bucket = format!("{name}_bucket");
        for b in &h.buckets {
            self.out.push_str(&bucket);
            self.labels(labels, Some(&Float(b.le).to_string()));
            let _ = writeln!(self.out, " {}", b.count);
        }
        self.out.push_str(&bucket);
        self.labels(labels, Some("+Inf"));
        let _ = writeln!(self.out, " {}", h.count);
        self.sample(&format!("{name}_sum"), labels, Float(h.sum.as_secs_f64()));
        self.sample(&format!("{name}_count"), labels, h.count);
    }
}

/// Appends `v` escaped for a label value: `\` `"` and newline.
fn escape_label_value(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use taskgrid_core::{Bucket, QueueKindSnapshot, WorkerId};

    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let mut out = String::new();
        escape_label_value("a\\b\"c\nd", &mut out);
        assert_eq!(out, r#"a\\b\"c\nd"#);
    }

    #[test]
    fn floats_are_written_as_prometheus_reads_them() {
        let f = |v: f64| Float(v).to_string();
        assert_eq!(f(0.0001), "0.0001");
        assert_eq!(f(1.0), "1");
        assert_eq!(f(2.5), "2.5");
        assert_eq!(f(f64::INFINITY), "+Inf");
        assert_eq!(f(f64::NEG_INFINITY), "-Inf");
        assert_eq!(f(f64::NAN), "NaN");
    }

    #[test]
    fn a_snapshot_renders_families_with_help_type_and_samples() {
        let run_time = HistogramSummary {
            count: 3,
            sum: Duration::from_millis(1500),
            buckets: vec![Bucket { le: 0.5, count: 1 }, Bucket { le: 1.0, count: 2 }],
            ..HistogramSummary::default()
        };
        let series = SeriesSnapshot {
            counts: taskgrid_core::TaskCounts {
                submitted: 4,
                succeeded: 2,
                failed: 1,
                ..taskgrid_core::TaskCounts::default()
            },
            run_time,
            ..SeriesSnapshot::default()
        };
        let m = MetricsSnapshot {
            queue_kinds: vec![QueueKindSnapshot {
                queue: "q\"1".to_owned(),
                kind: "handler:x".to_owned(),
                metrics: series.clone(),
            }],
            workers: [("w\n1".to_owned(), series)].into_iter().collect(),
            ..MetricsSnapshot::default()
        };
        let worker = WorkerView {
            id: WorkerId::new("w\n1"),
            labels: Vec::new(),
            handlers: Vec::new(),
            shell: true,
            container: false,
            slots: 4,
            prefetch: 0,
            used: 1,
            trust: 0.5,
            running: Vec::new(),
            memory_bytes: None,
            cpus: None,
            max_load: None,
            health: None,
        };
        let text = render(&m, &[], &[worker]);
        for line in [
            "# TYPE taskgrid_tasks_submitted_total counter",
            r#"taskgrid_tasks_submitted_total{queue="q\"1",kind="handler:x"} 4"#,
            r#"taskgrid_tasks_finished_total{queue="q\"1",kind="handler:x",state="failed"} 1"#,
            "# TYPE taskgrid_task_run_seconds histogram",
            r#"taskgrid_task_run_seconds_bucket{queue="q\"1",kind="handler:x",le="0.5"} 1"#,
            r#"taskgrid_task_run_seconds_bucket{queue="q\"1",kind="handler:x",le="+Inf"} 3"#,
            r#"taskgrid_task_run_seconds_sum{queue="q\"1",kind="handler:x"} 1.5"#,
            r#"taskgrid_task_run_seconds_count{queue="q\"1",kind="handler:x"} 3"#,
            "taskgrid_workers_connected 1",
            r#"taskgrid_worker_slots{worker="w\n1"} 4"#,
            r#"taskgrid_worker_tasks_finished_total{worker="w\n1",state="succeeded"} 2"#,
            r#"taskgrid_tasks_finished_per_second{window="5m"} 0"#,
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        // Every family has HELP then TYPE, and every sample follows its TYPE.
        let mut family = String::new();
        for l in text.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                family = rest.split(' ').next().unwrap_or_default().to_owned();
            } else if !l.starts_with('#') {
                assert!(l.starts_with(&family), "{l:?} outside family {family}");
            }
        }
    }
}
