//! The command line of `taskgrid bench`: its flags and their values,
//! unchecked (see [`super::plan`] for what may go with what).

use std::time::Duration;

use crate::cmd::submit::parse_duration;

/// Options of `taskgrid bench`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Args {
    /// Tasks to run [default: 100000; 2000 with --latency].
    #[arg(long)]
    pub(super) tasks: Option<u64>,
    /// What each task does: `noop` (a Rust handler returning null), `echo`
    /// (a Rust handler returning its payload) or `true` (the program
    /// `true`, run by the shell executor).
    #[arg(long, value_enum, default_value_t = BenchKind::Noop)]
    pub(super) kind: BenchKind,
    /// Payload of noop and echo tasks: a JSON string of this many bytes
    /// (0: `null`).
    #[arg(long, default_value_t = 0)]
    pub(super) payload_bytes: usize,
    /// Workers running the tasks.
    #[arg(long, default_value_t = 1)]
    pub(super) workers: u32,
    /// `inprocess`: worker agents in this process, connected over gRPC to
    /// 127.0.0.1. `process`: `taskgrid worker` child processes, which have
    /// no Rust handlers and so run only `--kind true`.
    #[arg(long, value_enum, default_value_t = WorkerMode::Inprocess)]
    pub(super) worker_mode: WorkerMode,
    /// Slots per worker [default: 256 for noop and echo, the number of
    /// CPUs for true].
    #[arg(long)]
    pub(super) slots: Option<u32>,
    /// Tasks each worker holds ready beyond its slots (`taskgrid worker
    /// --prefetch`) [default: as many as its slots, as `taskgrid worker`].
    #[arg(long)]
    pub(super) prefetch: Option<u32>,
    /// Workers run every shell task in a cgroup of its own (`taskgrid
    /// worker --cgroup-every-task`), to measure what that costs.
    #[arg(long)]
    pub(super) cgroup_every_task: bool,
    /// Clients submitting at once, each over its own HTTP connection pool.
    #[arg(long, default_value_t = 4)]
    pub(super) clients: u32,
    /// Tasks per submit request (1: one `POST /tasks` per task).
    #[arg(long, default_value_t = 1000)]
    pub(super) batch: u32,
    /// Light-load latency: submit one task, wait for it to finish, repeat
    /// (after 10 unmeasured warm-up tasks).
    #[arg(long, conflicts_with = "idle_workers")]
    pub(super) latency: bool,
    /// Connect this many idle simulated workers (heartbeats only) and
    /// measure the coordinator's CPU and memory over `--window`. The
    /// coordinator runs as a child process (or is `--server` with
    /// `--server-pid`).
    #[arg(long, value_name = "N")]
    pub(super) idle_workers: Option<u32>,
    /// How long `--idle-workers` measures.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub(super) window: Duration,
    /// Heartbeat interval of a coordinator started here, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    pub(super) heartbeat_ms: u64,
    /// Store of a coordinator started here: `sqlite` (a file in a temporary
    /// directory), `memory`, or a PostgreSQL URL (`postgres://…`; give it an
    /// empty database: what is there is loaded at start).
    #[arg(long, value_parser = parse_store, default_value = "sqlite")]
    pub(super) store: StoreKind,
    /// Fsync every commit (`taskgrid server --full-sync`).
    #[arg(long)]
    pub(super) full_sync: bool,
    /// Run the coordinator as a child `taskgrid server` process, so the CPU
    /// and memory reported are the coordinator's alone.
    #[arg(long)]
    pub(super) coordinator_process: bool,
    /// Use this running coordinator instead of starting one. Its other
    /// traffic and workers perturb the figures.
    #[arg(long, value_name = "URL")]
    pub(super) server: Option<String>,
    /// Client token of `--server`.
    #[arg(long)]
    pub(super) token: Option<String>,
    /// Worker token of `--server`.
    #[arg(long)]
    pub(super) worker_token: Option<String>,
    /// Process id of `--server` when it runs on this machine: its CPU and
    /// memory are read from /proc.
    #[arg(long)]
    pub(super) server_pid: Option<u32>,
    /// Give up when the run has not finished after this long.
    #[arg(long, value_parser = parse_duration, default_value = "10m")]
    pub(super) timeout: Duration,
    /// Print only the JSON line.
    #[arg(long)]
    pub(super) json: bool,
    /// Spread the tasks over this many concurrency keys (`k0`, `k1`, …,
    /// in turn); 0: no key.
    #[arg(long, default_value_t = 0)]
    pub(super) keys: u32,
    /// A concurrency limit of the coordinator started here, as KEY=N or
    /// PREFIX*=N (`taskgrid server --concurrency-limit`).
    #[arg(long = "concurrency-limit", value_name = "KEY=N", value_parser = crate::cmd::server::concurrency_limit)]
    pub(super) concurrency_limits: Vec<(String, u32)>,
    /// A rate limit of the coordinator started here, as KEY=N/PERIOD
    /// (`taskgrid server --rate-limit`).
    #[arg(long = "rate-limit", value_name = "KEY=N/PERIOD", value_parser = crate::cmd::server::rate_limit)]
    pub(super) rate_limits: Vec<(String, taskgrid_core::Rate)>,
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StoreKind {
    /// A SQLite file in a temporary directory.
    Sqlite,
    /// The in-memory store.
    Memory,
    /// The PostgreSQL database at this URL.
    Postgres(String),
}

/// `--store`: `sqlite`, `memory` or a PostgreSQL URL.
fn parse_store(s: &str) -> Result<StoreKind, String> {
    match s {
        "sqlite" => Ok(StoreKind::Sqlite),
        "memory" => Ok(StoreKind::Memory),
        url if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            Ok(StoreKind::Postgres(url.to_owned()))
        }
        other => Err(format!(
            "unknown store `{other}`: expected `sqlite`, `memory` or `postgres://USER@HOST:PORT/DB`"
        )),
    }
}
