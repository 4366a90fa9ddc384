//! What a benchmark run reports: one struct per mode, serialised as the
//! JSON line, and the same figures as a two-column table for people.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use super::coordinator::Target;
use super::stats::{Percentiles, bytes, thousands};
use super::usage::Sample;
use super::{BenchKind, Plan, StoreKind, WorkerMode};

/// The report of a run, tagged by `mode` in JSON.
#[derive(Debug, Serialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub(super) enum Report {
    /// Many tasks at once.
    Throughput(ThroughputReport),
    /// One task at a time.
    Latency(LatencyReport),
    /// Idle connected workers.
    IdleWorkers(IdleReport),
}

/// How the system under test was set up.
#[derive(Debug, Serialize)]
pub(super) struct Setup {
    /// What each task did.
    pub(super) kind: BenchKind,
    /// Payload bytes of handler tasks.
    pub(super) payload_bytes: usize,
    /// Workers.
    pub(super) workers: u32,
    /// Where they ran.
    pub(super) worker_mode: WorkerMode,
    /// Slots per worker.
    pub(super) slots: u32,
    /// Where the coordinator ran: `inprocess`, `process` or `external`.
    pub(super) coordinator: &'static str,
    /// Its store: `sqlite`, `memory`, or `unknown` for an existing one.
    pub(super) store: &'static str,
    /// Whether every commit was fsynced.
    pub(super) full_sync: bool,
    /// Concurrency keys the tasks were spread over (0: none).
    pub(super) keys: u32,
    /// The coordinator's key limits (`KEY=N`, `KEY=N/PERIOD_MS ms`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(super) limits: Vec<String>,
}

impl Setup {
    /// The setup of `plan` against `target`.
    pub(super) fn of(plan: &Plan, target: &Target) -> Setup {
        let store = match &plan.store {
            _ if target.is_external() => "unknown",
            StoreKind::Sqlite => "sqlite",
            StoreKind::Memory => "memory",
            StoreKind::Postgres(_) => "postgres",
        };
        Setup {
            kind: plan.kind,
            payload_bytes: plan.payload_bytes,
            workers: plan.workers,
            worker_mode: plan.worker_mode,
            slots: plan.slots,
            coordinator: target.placement(),
            store,
            full_sync: plan.full_sync,
            keys: plan.keys,
            limits: plan
                .concurrency_limits
                .iter()
                .map(|(k, n)| format!("{k}={n}"))
                .chain(
                    plan.rate_limits
                        .iter()
                        .map(|(k, r)| format!("{k}={}/{}ms", r.starts, r.per.as_millis())),
                )
                .collect(),
        }
    }

    /// Its rows of the table.
    fn rows(&self, t: &mut Table) {
        let kind = super::kind_name(self.kind);
        let payload = if self.payload_bytes > 0 {
            format!(", {} B payload", self.payload_bytes)
        } else {
            String::new()
        };
        t.row("tasks", format!("{kind}{payload}"));
        t.row(
            "workers",
            format!(
                "{} × {} slots ({})",
                self.workers,
                self.slots,
                match self.worker_mode {
                    WorkerMode::Inprocess => "in-process agents over gRPC",
                    WorkerMode::Process => "`taskgrid worker` processes",
                }
            ),
        );
        let sync = if self.full_sync {
            ", fsync per commit"
        } else {
            ""
        };
        t.row(
            "coordinator",
            format!("{}, store {}{sync}", self.coordinator, self.store),
        );
        if self.keys > 0 || !self.limits.is_empty() {
            let limits = if self.limits.is_empty() {
                "no limit".to_owned()
            } else {
                self.limits.join(", ")
            };
            t.row("concurrency keys", format!("{} ({limits})", self.keys));
        }
    }
}

/// CPU and memory of the process holding the coordinator during a run.
#[derive(Debug, Serialize)]
pub(super) struct Usage {
    /// What that process holds besides the coordinator.
    pub(super) scope: &'static str,
    /// CPU seconds (user + system) it used during the run.
    pub(super) cpu_secs: Option<f64>,
    /// Its peak resident memory (VmHWM) at the end of the run.
    pub(super) peak_rss_bytes: Option<u64>,
}

impl Usage {
    /// The use between two samples of the process `scope` describes.
    pub(super) fn between(
        scope: &'static str,
        before: Option<Sample>,
        after: Option<Sample>,
    ) -> Usage {
        Usage {
            scope,
            cpu_secs: before
                .zip(after)
                .map(|(b, a)| (a.cpu_secs - b.cpu_secs).max(0.0)),
            peak_rss_bytes: after.map(|a| a.peak_rss_bytes),
        }
    }

    /// Its rows of the table, per task where that helps.
    fn rows(&self, t: &mut Table, tasks: u64) {
        match self.cpu_secs {
            Some(cpu) => t.row(
                "coordinator CPU",
                format!(
                    "{cpu:.2} s ({:.1} µs per task)",
                    cpu * 1e6 / tasks.max(1) as f64
                ),
            ),
            None => t.row("coordinator CPU", "not measured".to_owned()),
        }
        if let Some(peak) = self.peak_rss_bytes {
            t.row("coordinator peak RSS", bytes(peak));
        }
        t.row("  measured", self.scope.to_owned());
    }
}

/// The figures of a throughput run.
#[derive(Debug, Serialize)]
pub(super) struct ThroughputReport {
    /// The setup.
    #[serde(flatten)]
    pub(super) setup: Setup,
    /// Tasks submitted.
    pub(super) tasks: u64,
    /// Submitting clients.
    pub(super) clients: u32,
    /// Tasks per submit request.
    pub(super) batch: u32,
    /// Tasks that succeeded.
    pub(super) succeeded: usize,
    /// Tasks per final state.
    pub(super) states: BTreeMap<&'static str, usize>,
    /// First submit sent → last submit acknowledged (this process's clock).
    pub(super) submit_secs: f64,
    /// Tasks acknowledged per second.
    pub(super) submit_per_sec: f64,
    /// First task accepted → last task finished (the coordinator's clock).
    pub(super) e2e_secs: f64,
    /// Tasks per second end to end.
    pub(super) e2e_per_sec: f64,
    /// First submit sent → the end seen in the coordinator's counters
    /// (this process's clock; its summary stream reports them every 500 ms,
    /// so this runs up to half a second long).
    pub(super) wall_secs: f64,
    /// Accepted → started running, per task.
    pub(super) submit_to_start: Option<Percentiles>,
    /// Accepted → finished, per task.
    pub(super) submit_to_done: Option<Percentiles>,
    /// The coordinator's CPU and memory.
    pub(super) coordinator: Usage,
    /// Bytes of the SQLite file, WAL and index at the end.
    pub(super) store_bytes: Option<u64>,
}

/// The figures of a `--latency` run.
#[derive(Debug, Serialize)]
pub(super) struct LatencyReport {
    /// The setup.
    #[serde(flatten)]
    pub(super) setup: Setup,
    /// Tasks measured (after the warm-up).
    pub(super) tasks: u64,
    /// Unmeasured warm-up tasks run first.
    pub(super) warmup: u64,
    /// Tasks per final state (measured tasks only).
    pub(super) states: BTreeMap<&'static str, usize>,
    /// Submit sent → its terminal event received on `/api/v1/events`
    /// (this process's clock).
    pub(super) client_submit_to_done: Option<Percentiles>,
    /// Submit sent → acknowledged (committed).
    pub(super) client_submit_ack: Option<Percentiles>,
    /// Accepted → started running (the coordinator's records).
    pub(super) submit_to_start: Option<Percentiles>,
    /// Accepted → finished (the coordinator's records).
    pub(super) submit_to_done: Option<Percentiles>,
    /// Length of the measured part of the run.
    pub(super) wall_secs: f64,
}

/// The figures of an `--idle-workers` run.
#[derive(Debug, Serialize)]
pub(super) struct IdleReport {
    /// Whose CPU and memory were measured.
    pub(super) scope: &'static str,
    /// Workers asked for.
    pub(super) workers: u32,
    /// Workers that registered.
    pub(super) connected: usize,
    /// Workers whose stream ended during the window (should be 0).
    pub(super) dropped: usize,
    /// Workers the coordinator lists at the end of the window.
    pub(super) listed: usize,
    /// The heartbeat interval the coordinator gave, in milliseconds.
    pub(super) heartbeat_ms: u64,
    /// Heartbeats per second the coordinator received, on average.
    pub(super) heartbeats_per_sec: f64,
    /// Length of the window.
    pub(super) window_secs: f64,
    /// The coordinator's CPU seconds in the window.
    pub(super) cpu_secs: f64,
    /// The same as a share of one core, in percent.
    pub(super) cpu_percent: f64,
    /// Its resident memory before the workers connected.
    pub(super) rss_before_bytes: u64,
    /// Its resident memory at the end of the window.
    pub(super) rss_bytes: u64,
    /// The most resident memory seen in the window (sampled each second).
    pub(super) rss_max_bytes: u64,
    /// Its peak resident memory (VmHWM) at the end.
    pub(super) peak_rss_bytes: u64,
    /// (RSS at the end − RSS before) / connected workers.
    pub(super) rss_per_worker_bytes: f64,
    /// This process's CPU (the simulated workers) in the window, in
    /// percent of one core.
    pub(super) workers_cpu_percent: f64,
}

/// Two columns: a label and a value.
#[derive(Default)]
struct Table(String);

impl Table {
    /// Adds a row.
    fn row(&mut self, label: &str, value: String) {
        let _ = writeln!(self.0, "  {label:<24} {value}");
    }

    /// Adds a row of percentiles.
    fn latency(&mut self, label: &str, p: Option<&Percentiles>) {
        match p {
            Some(p) => self.row(label, p.describe()),
            None => self.row(label, "no samples".to_owned()),
        }
    }
}

impl Report {
    /// The figures as a table for people.
    pub(super) fn table(&self) -> String {
        let mut t = Table::default();
        match self {
            Report::Throughput(r) => {
                let _ = writeln!(t.0, "taskgrid bench — throughput");
                r.setup.rows(&mut t);
                t.row(
                    "submitted",
                    format!(
                        "{} by {} client(s) in batches of {}",
                        thousands(r.tasks as f64),
                        r.clients,
                        r.batch
                    ),
                );
                t.row("outcome", states(&r.states));
                t.row(
                    "submit rate",
                    format!(
                        "{} tasks/s ({:.2} s)",
                        thousands(r.submit_per_sec),
                        r.submit_secs
                    ),
                );
                t.row(
                    "end to end",
                    format!(
                        "{} tasks/s ({:.2} s first accepted → last finished; {:.2} s wall)",
                        thousands(r.e2e_per_sec),
                        r.e2e_secs,
                        r.wall_secs
                    ),
                );
                t.latency("submit → start", r.submit_to_start.as_ref());
                t.latency("submit → done", r.submit_to_done.as_ref());
                r.coordinator.rows(&mut t, r.tasks);
                if let Some(b) = r.store_bytes {
                    t.row("store on disk", bytes(b));
                }
            }
            Report::Latency(r) => {
                let _ = writeln!(t.0, "taskgrid bench — latency, one task at a time");
                r.setup.rows(&mut t);
                t.row(
                    "measured",
                    format!("{} tasks after {} warm-up", r.tasks, r.warmup),
                );
                t.row("outcome", states(&r.states));
                t.latency("client: submit → done", r.client_submit_to_done.as_ref());
                t.latency("client: submit ack", r.client_submit_ack.as_ref());
                t.latency("records: submit → start", r.submit_to_start.as_ref());
                t.latency("records: submit → done", r.submit_to_done.as_ref());
                t.row("wall", format!("{:.2} s", r.wall_secs));
            }
            Report::IdleWorkers(r) => {
                let _ = writeln!(t.0, "taskgrid bench — idle workers");
                t.row(
                    "workers",
                    format!(
                        "{} connected of {} ({} listed, {} dropped)",
                        r.connected, r.workers, r.listed, r.dropped
                    ),
                );
                t.row(
                    "heartbeats",
                    format!(
                        "every {} ms ({:.0}/s in all)",
                        r.heartbeat_ms, r.heartbeats_per_sec
                    ),
                );
                t.row(
                    "coordinator CPU",
                    format!(
                        "{:.2} s in {:.0} s = {:.2} % of one core (/proc resolution 10 ms)",
                        r.cpu_secs, r.window_secs, r.cpu_percent
                    ),
                );
                t.row(
                    "coordinator RSS",
                    format!(
                        "{} (before workers {}, window max {}, peak {}; {} per worker)",
                        bytes(r.rss_bytes),
                        bytes(r.rss_before_bytes),
                        bytes(r.rss_max_bytes),
                        bytes(r.peak_rss_bytes),
                        bytes(r.rss_per_worker_bytes.max(0.0) as u64)
                    ),
                );
                t.row(
                    "simulated workers CPU",
                    format!("{:.2} % of one core (this process)", r.workers_cpu_percent),
                );
                t.row("  measured", r.scope.to_owned());
            }
        }
        t.0
    }
}

/// `100,000 succeeded` or `99,990 succeeded, 10 failed`.
fn states(states: &BTreeMap<&'static str, usize>) -> String {
    let mut parts: Vec<String> = states
        .iter()
        .map(|(s, n)| format!("{} {s}", thousands(*n as f64)))
        .collect();
    if parts.is_empty() {
        parts.push("no tasks".to_owned());
    }
    parts.join(", ")
}
