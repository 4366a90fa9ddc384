//! What a run will do: the options checked against each other, with the
//! defaults that depend on the mode and the kind of task filled in.

use std::time::Duration;

use anyhow::bail;
use taskgrid_api::SubmitRequest;
use taskgrid_core::LabelReq;
use taskgrid_server::http::ApiConfig;

use super::fleet;
use super::options::{Args, BenchKind, StoreKind, WorkerMode};

/// Tasks of a throughput run unless `--tasks` says otherwise.
const THROUGHPUT_TASKS_DEFAULT: u64 = 100_000;
/// Tasks of a `--latency` run unless `--tasks` says otherwise.
const LATENCY_TASKS_DEFAULT: u64 = 2_000;
/// Slots per worker for handler tasks unless `--slots` says otherwise:
/// enough to keep a stream busy across its round trips.
pub(super) const HANDLER_SLOTS_DEFAULT: u32 = 256;
/// Most slots one worker may register (the gateway's limit).
const MAX_SLOTS: u32 = 10_000;

/// Where the coordinator under test runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Placement {
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
pub(super) enum Mode {
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

/// Validated options: what [`super::run`] does.
#[derive(Debug, Clone)]
pub(super) struct Plan {
    /// What to measure.
    pub(super) mode: Mode,
    /// What each task does.
    pub(super) kind: BenchKind,
    /// Payload bytes of handler tasks.
    pub(super) payload_bytes: usize,
    /// Workers running the tasks.
    pub(super) workers: u32,
    /// Where they run.
    pub(super) worker_mode: WorkerMode,
    /// Slots per worker.
    pub(super) slots: u32,
    /// Tasks each worker holds beyond its slots.
    pub(super) prefetch: u32,
    /// Every shell task in a cgroup of its own.
    pub(super) cgroup_every_task: bool,
    /// Clients submitting at once.
    pub(super) clients: u32,
    /// Tasks per submit request.
    pub(super) batch: u32,
    /// How long `--idle-workers` measures.
    pub(super) window: Duration,
    /// Heartbeat interval of a coordinator started here.
    pub(super) heartbeat_ms: u64,
    /// Store of a coordinator started here.
    pub(super) store: StoreKind,
    /// Fsync every commit of a coordinator started here.
    pub(super) full_sync: bool,
    /// Where the coordinator runs.
    pub(super) placement: Placement,
    /// Client token of `--server`.
    pub(super) token: Option<String>,
    /// Worker token of `--server`.
    pub(super) worker_token: Option<String>,
    /// When to give up.
    pub(super) timeout: Duration,
    /// Concurrency keys the tasks are spread over (0: none).
    pub(super) keys: u32,
    /// `--concurrency-limit`s of a coordinator started here.
    pub(super) concurrency_limits: Vec<(String, u32)>,
    /// `--rate-limit`s of a coordinator started here.
    pub(super) rate_limits: Vec<(String, taskgrid_core::Rate)>,
}

impl Args {
    /// Checks the options against each other; every refusal says which
    /// flag to change.
    pub(super) fn plan(&self) -> anyhow::Result<Plan> {
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
        if self.prefetch.is_some_and(|p| p > MAX_SLOTS) {
            bail!("--prefetch must be at most {MAX_SLOTS} (the coordinator's limit per worker)");
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
                if !self.concurrency_limits.is_empty() || !self.rate_limits.is_empty() {
                    bail!(
                        "--concurrency-limit and --rate-limit configure a coordinator started \
                         here, not --server (start it with them)"
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
            prefetch: crate::cmd::worker::prefetch_or_default(self.prefetch, slots),
            cgroup_every_task: self.cgroup_every_task,
            clients: self.clients,
            batch: self.batch,
            window: self.window,
            heartbeat_ms: self.heartbeat_ms,
            store: self.store.clone(),
            full_sync: self.full_sync,
            placement,
            token: self.token.clone(),
            worker_token: self.worker_token.clone(),
            timeout: self.timeout,
            keys: self.keys,
            concurrency_limits: self.concurrency_limits.clone(),
            rate_limits: self.rate_limits.clone(),
        };
        plan.check_request_size()?;
        Ok(plan)
    }
}

/// The name a [`BenchKind`] has on the command line.
pub(super) fn kind_name(kind: BenchKind) -> &'static str {
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
    pub(super) fn request(&self, route: Option<&str>) -> SubmitRequest {
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
