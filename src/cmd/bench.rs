//! `taskgrid bench`: load tests of the whole system — a coordinator, workers
//! connected to it over real gRPC on the loopback, and clients submitting
//! over HTTP — in three modes:
//!
//! - **throughput** (the default): N tasks from K clients run by M workers;
//!   submit rate, end-to-end throughput, submit→start and submit→done
//!   latency percentiles, the coordinator's CPU seconds and peak memory,
//!   and the store's size on disk;
//! - **`--latency`**: one task at a time, submit → done as a client sees it
//!   and as the coordinator recorded it;
//! - **`--idle-workers N`**: N connected workers doing nothing but
//!   heartbeats; the coordinator's CPU and memory over a window.
//!
//! The coordinator is started here — in this process by default, or as a
//! child `taskgrid server` with `--coordinator-process` so its CPU and
//! memory are its own — or is an existing one (`--server`). Every mode
//! prints a table and one JSON line (`--json`: only the line).

mod coordinator;
mod fleet;
mod idle;
mod latency;
mod records;
mod report;
mod stats;
mod throughput;
mod usage;

use std::time::Duration;

use anyhow::bail;
use taskgrid_coordinator::http::ApiConfig;
use taskgrid_core::LabelReq;
use taskgrid_proto::api::SubmitRequest;

use super::client::parse_duration;
use report::Report;

/// Tasks of a throughput run unless `--tasks` says otherwise.
const THROUGHPUT_TASKS_DEFAULT: u64 = 100_000;
/// Tasks of a `--latency` run unless `--tasks` says otherwise.
const LATENCY_TASKS_DEFAULT: u64 = 2_000;
/// Slots per worker for handler tasks unless `--slots` says otherwise:
/// enough to keep a stream busy across its round trips.
const HANDLER_SLOTS_DEFAULT: u32 = 256;
/// Workers one coordinator accepts slots up to (the gateway's limit).
const MAX_SLOTS: u32 = 10_000;

/// Options of `taskgrid bench`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Args {
    /// Tasks to run [default: 100000; 2000 with --latency].
    #[arg(long)]
    tasks: Option<u64>,
    /// What each task does: `noop` (a Rust handler returning null), `echo`
    /// (a Rust handler returning its payload) or `true` (the program
    /// `true`, run by the shell executor).
    #[arg(long, value_enum, default_value_t = BenchKind::Noop)]
    kind: BenchKind,
    /// Payload of noop and echo tasks: a JSON string of this many bytes
    /// (0: `null`).
    #[arg(long, default_value_t = 0)]
    payload_bytes: usize,
    /// Workers running the tasks.
    #[arg(long, default_value_t = 1)]
    workers: u32,
    /// `inprocess`: worker agents in this process, connected over gRPC to
    /// 127.0.0.1. `process`: `taskgrid worker` child processes, which have
    /// no Rust handlers and so run only `--kind true`.
    #[arg(long, value_enum, default_value_t = WorkerMode::Inprocess)]
    worker_mode: WorkerMode,
    /// Slots per worker [default: 256 for noop and echo, the number of
    /// CPUs for true].
    #[arg(long)]
    slots: Option<u32>,
    /// Clients submitting at once, each over its own HTTP connection pool.
    #[arg(long, default_value_t = 4)]
    clients: u32,
    /// Tasks per submit request (1: one `POST /tasks` per task).
    #[arg(long, default_value_t = 1000)]
    batch: u32,
    /// Light-load latency: submit one task, wait for it to finish, repeat
    /// (after 10 unmeasured warm-up tasks).
    #[arg(long, conflicts_with = "idle_workers")]
    latency: bool,
    /// Connect this many idle simulated workers (heartbeats only) and
    /// measure the coordinator's CPU and memory over `--window`. The
    /// coordinator runs as a child process (or is `--server` with
    /// `--server-pid`).
    #[arg(long, value_name = "N")]
    idle_workers: Option<u32>,
    /// How long `--idle-workers` measures.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    window: Duration,
    /// Heartbeat interval of a coordinator started here, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    heartbeat_ms: u64,
    /// Store of a coordinator started here: `sqlite` (a file in a temporary
    /// directory) or `memory` (in-process coordinator only).
    #[arg(long, value_enum, default_value_t = StoreKind::Sqlite)]
    store: StoreKind,
    /// Fsync every commit (`taskgrid server --full-sync`).
    #[arg(long)]
    full_sync: bool,
    /// Run the coordinator as a child `taskgrid server` process, so the CPU
    /// and memory reported are the coordinator's alone.
    #[arg(long)]
    coordinator_process: bool,
    /// Use this running coordinator instead of starting one. Its other
    /// traffic and workers perturb the figures.
    #[arg(long, value_name = "URL")]
    server: Option<String>,
    /// Client token of `--server`.
    #[arg(long, hide_env_values = true)]
    token: Option<String>,
    /// Worker token of `--server`.
    #[arg(long, hide_env_values = true)]
    worker_token: Option<String>,
    /// Process id of `--server` when it runs on this machine: its CPU and
    /// memory are read from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Give up when the run has not finished after this long.
    #[arg(long, value_parser = parse_duration, default_value = "10m")]
    timeout: Duration,
    /// Print only the JSON line.
    #[arg(long)]
    json: bool,
}

/// What each benchmark task does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum BenchKind {
    /// A Rust handler that returns `null`.
    Noop,
    /// A Rust handler that returns its payload.
    Echo,
    /// The program `true`, through the shell executor.
    True,
}

/// Where the workers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum WorkerMode {
    /// `taskgrid_worker::Worker` agents in this process.
    Inprocess,
    /// `taskgrid worker` child processes.
    Process,
}

/// The store of a coordinator started here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum StoreKind {
    /// A SQLite file in a temporary directory.
    Sqlite,
    /// The in-memory store.
    Memory,
}

/// Where the coordinator under test runs.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Placement {
    /// Started in this process.
    InProcess,
    /// Started as a child `taskgrid server`.
    Child,
    /// Already running at `url`.
    External {
        /// Its base URL.
        url: String,
        /// Its process id on this machine, if known.
        pid: Option<u32>,
    },
}

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Many tasks at once.
    Throughput {
        /// How many.
        tasks: u64,
    },
    /// One task at a time.
    Latency {
        /// How many.
        tasks: u64,
    },
    /// Idle connected workers.
    IdleWorkers {
        /// How many.
        workers: u32,
    },
}

/// Validated options: what [`run`] does.
#[derive(Debug, Clone)]
struct Plan {
    mode: Mode,
    kind: BenchKind,
    payload_bytes: usize,
    workers: u32,
    worker_mode: WorkerMode,
    slots: u32,
    clients: u32,
    batch: u32,
    window: Duration,
    heartbeat_ms: u64,
    store: StoreKind,
    full_sync: bool,
    placement: Placement,
    token: Option<String>,
    worker_token: Option<String>,
    timeout: Duration,
}

impl Args {
    /// Checks the options against each other; every refusal says which
    /// flag to change.
    fn plan(&self) -> anyhow::Result<Plan> {
        let at_least_one = |name: &str, v: u64| -> anyhow::Result<()> {
            if v == 0 {
                bail!("{name} must be at least 1");
            }
            Ok(())
        };
        if let Some(t) = self.tasks {
            at_least_one("--tasks", t)?;
        }
        at_least_one("--batch", self.batch.into())?;
        at_least_one("--clients", self.clients.into())?;
        at_least_one("--workers", self.workers.into())?;
        if let Some(s) = self.slots {
            at_least_one("--slots", s.into())?;
            if s > MAX_SLOTS {
                bail!("--slots must be at most {MAX_SLOTS} (the coordinator's limit per worker)");
            }
        }
        if self.batch as usize > ApiConfig::MAX_BATCH_DEFAULT {
            bail!(
                "--batch must be at most {} (the coordinator's batch limit)",
                ApiConfig::MAX_BATCH_DEFAULT
            );
        }
        if self.heartbeat_ms < 100 {
            bail!("--heartbeat-ms must be at least 100 (workers beat no faster)");
        }
        if self.window.is_zero() {
            bail!("--window must be longer than 0");
        }
        if self.timeout.is_zero() {
            bail!("--timeout must be longer than 0");
        }
        if self.kind == BenchKind::True && self.payload_bytes > 0 {
            bail!("--payload-bytes applies to --kind noop and echo, not true");
        }
        if self.worker_mode == WorkerMode::Process && self.kind != BenchKind::True {
            bail!(
                "--worker-mode process runs `taskgrid worker` children, which have no Rust \
                 handlers: use --kind true with it, or --worker-mode inprocess for --kind {}",
                kind_name(self.kind)
            );
        }
        let mode = match (self.latency, self.idle_workers) {
            (_, Some(0)) => bail!("--idle-workers must be at least 1"),
            (_, Some(n)) => Mode::IdleWorkers { workers: n },
            (true, None) => Mode::Latency {
                tasks: self.tasks.unwrap_or(LATENCY_TASKS_DEFAULT),
            },
            (false, None) => Mode::Throughput {
                tasks: self.tasks.unwrap_or(THROUGHPUT_TASKS_DEFAULT),
            },
        };
        let placement = match &self.server {
            Some(url) => {
                if self.coordinator_process {
                    bail!(
                        "--coordinator-process starts a coordinator; --server uses one: pick one"
                    );
                }
                if self.store != StoreKind::Sqlite || self.full_sync {
                    bail!(
                        "--store and --full-sync configure a coordinator started here, not --server"
                    );
                }
                if matches!(mode, Mode::IdleWorkers { .. }) && self.server_pid.is_none() {
                    bail!(
                        "--idle-workers measures the coordinator's own CPU and memory: with --server, \
                         give its process id with --server-pid"
                    );
                }
                Placement::External {
                    url: url.trim_end_matches('/').to_owned(),
                    pid: self.server_pid,
                }
            }
            None => {
                if self.token.is_some() || self.worker_token.is_some() || self.server_pid.is_some()
                {
                    bail!(
                        "--token, --worker-token and --server-pid apply to --server; a coordinator \
                         started here needs none"
                    );
                }
                let child = self.coordinator_process || matches!(mode, Mode::IdleWorkers { .. });
                if child && self.store == StoreKind::Memory {
                    bail!(
                        "--store memory needs the in-process coordinator (`taskgrid server` always \
                         uses SQLite); drop --coordinator-process (not possible with --idle-workers)"
                    );
                }
                if child {
                    Placement::Child
                } else {
                    Placement::InProcess
                }
            }
        };
        let slots = self.slots.unwrap_or(match self.kind {
            BenchKind::Noop | BenchKind::Echo => HANDLER_SLOTS_DEFAULT,
            BenchKind::True => std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
        });
        let plan = Plan {
            mode,
            kind: self.kind,
            payload_bytes: self.payload_bytes,
            workers: self.workers,
            worker_mode: self.worker_mode,
            slots,
            clients: self.clients,
            batch: self.batch,
            window: self.window,
            heartbeat_ms: self.heartbeat_ms,
            store: self.store,
            full_sync: self.full_sync,
            placement,
            token: self.token.clone(),
            worker_token: self.worker_token.clone(),
            timeout: self.timeout,
        };
        plan.check_request_size()?;
        Ok(plan)
    }
}

/// The name a [`BenchKind`] has on the command line.
fn kind_name(kind: BenchKind) -> &'static str {
    match kind {
        BenchKind::Noop => "noop",
        BenchKind::Echo => "echo",
        BenchKind::True => "true",
    }
}

impl Plan {
    /// The request every benchmark task is submitted with. Against an
    /// existing coordinator tasks require the label `route` so that only
    /// this run's workers take them.
    fn request(&self, route: Option<&str>) -> SubmitRequest {
        let payload = if self.payload_bytes == 0 {
            serde_json::Value::Null
        } else {
            serde_json::Value::String("x".repeat(self.payload_bytes))
        };
        let mut req = match self.kind {
            BenchKind::Noop => SubmitRequest::handler(fleet::NOOP, payload),
            BenchKind::Echo => SubmitRequest::handler(fleet::ECHO, payload),
            BenchKind::True => SubmitRequest::shell(["true"]),
        };
        if let Some(value) = route {
            req.labels.push(LabelReq {
                key: fleet::ROUTE_LABEL.to_owned(),
                value: Some(value.to_owned()),
            });
        }
        req
    }

    /// Refuses a batch that would exceed the coordinator's request body
    /// limit, before anything starts.
    fn check_request_size(&self) -> anyhow::Result<()> {
        if !matches!(self.mode, Mode::Throughput { .. }) {
            return Ok(());
        }
        let one =
            serde_json::to_vec(&self.request(Some("0123456789abcdef"))).map_or(0, |v| v.len() + 1);
        let body = one.saturating_mul(self.batch as usize) + 16;
        if body > ApiConfig::MAX_BODY_BYTES_DEFAULT {
            bail!(
                "a batch of {} tasks of {} bytes each is a {} KiB request, over the coordinator's \
                 {} KiB limit: lower --batch or --payload-bytes",
                self.batch,
                one,
                body / 1024,
                ApiConfig::MAX_BODY_BYTES_DEFAULT / 1024
            );
        }
        Ok(())
    }
}

/// Runs the benchmark and prints its report.
pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let plan = args.plan()?;
    let report = match plan.mode {
        Mode::Throughput { tasks } => Report::Throughput(throughput::run(&plan, tasks).await?),
        Mode::Latency { tasks } => Report::Latency(latency::run(&plan, tasks).await?),
        Mode::IdleWorkers { workers } => Report::IdleWorkers(idle::run(&plan, workers).await?),
    };
    if !args.json {
        print!("{}", report.table());
    }
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// The value of the label that ties this run's tasks to its workers, for
/// an existing coordinator whose other workers must not take them; none
/// for a coordinator started here (labels cost a little routing work).
fn route(target: &coordinator::Target) -> Option<String> {
    target.is_external().then(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        format!("{}-{nanos}", std::process::id())
    })
}

/// Progress for people, on stderr (stdout carries the report).
fn note(msg: impl std::fmt::Display) {
    eprintln!("taskgrid bench: {msg}");
}

#[cfg(test)]
mod tests;
