//! `taskgrid worker`: an agent that connects out to a coordinator and runs
//! shell and container tasks (SIGTERM or Ctrl-C drains it).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use taskgrid_worker::{
    ContainerRuntime, ShellPolicy, Worker, WorkerConfig, WorkerError, WorkerTls,
};

/// Options of `taskgrid worker` (and the worker half of `taskgrid up`).
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Args {
    /// The coordinator's address, or a comma-separated list of the
    /// coordinators of a grid on PostgreSQL (the worker finds the leader),
    /// or `auto` (the first coordinator found over mDNS) or `auto:NAME`
    /// (the one advertised as NAME).
    #[arg(long, env = "TASKGRID_SERVER", default_value = "http://127.0.0.1:7070")]
    pub(crate) server: String,
    /// Worker token.
    #[arg(long, env = "TASKGRID_WORKER_TOKEN", hide_env_values = true, value_parser = super::token)]
    pub(crate) worker_token: Option<String>,
    /// Label tasks may require: `key=value` or `key`; repeatable.
    #[arg(long = "label", value_name = "KEY[=VALUE]")]
    pub(crate) labels: Vec<String>,
    /// Tasks run at once (default: number of CPUs).
    #[arg(long)]
    pub(crate) slots: Option<u32>,
    /// Tasks held ready beyond the slots, each started the moment a slot
    /// frees: hides the round trip to the coordinator between short tasks
    /// (default: as many as the slots; 0: none).
    #[arg(long)]
    pub(crate) prefetch: Option<u32>,
    /// Longest a held task waits here for a slot before it is handed back
    /// for a worker with a free slot (ms): what the prefetch may cost long
    /// tasks.
    #[arg(long, default_value_t = PREFETCH_HOLD_MS_DEFAULT, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) prefetch_hold_ms: u64,
    /// Run every shell task in a cgroup of its own, not only those with
    /// --cpus/--memory limits: exact peak memory and CPU seconds of all a
    /// task's processes, at about a millisecond of kernel work per task
    /// (otherwise a task's figures are its main process's and the children
    /// it waited for, with a peak of at least ~7 MiB, the size of the
    /// helper that starts it).
    #[arg(long)]
    pub(crate) cgroup_every_task: bool,
    /// Display name (default: host name).
    #[arg(long)]
    pub(crate) name: Option<String>,
    /// Stable worker id (default: the name). A worker whose id another
    /// connected worker has exits with an error.
    #[arg(long)]
    pub(crate) id: Option<String>,
    /// Only these programs may run as shell tasks; repeatable.
    #[arg(long = "allow", value_name = "PROGRAM")]
    pub(crate) allow: Vec<String>,
    /// Run no shell tasks at all.
    #[arg(long, conflicts_with = "allow")]
    pub(crate) no_shell: bool,
    /// Run container tasks with this runtime CLI (`docker`, `podman` or a
    /// path), if `RUNTIME version` works at start-up.
    #[arg(long)]
    pub(crate) container_runtime: Option<String>,
    /// Serve only these queues; repeatable (default: all).
    #[arg(long = "queue")]
    pub(crate) queues: Vec<String>,
    /// Most output bytes kept per task.
    #[arg(long, default_value_t = 1 << 20)]
    pub(crate) max_output_bytes: usize,
    /// On SIGTERM, how long running tasks may finish before they are handed back (ms).
    #[arg(long, default_value_t = 30_000)]
    pub(crate) drain_grace_ms: u64,
    /// Take no new work while the host's 1-minute load average per CPU is
    /// above this (e.g. 1.5); the coordinator offers it none until the
    /// load is under again.
    #[arg(long, value_name = "LOAD", value_parser = max_load)]
    pub(crate) max_load: Option<f64>,
    /// CA certificate (PEM) that signed an https:// coordinator's
    /// certificate, trusted besides the system's roots.
    #[arg(long, env = "TASKGRID_CA", value_name = "PEM")]
    pub(crate) ca: Option<PathBuf>,
    /// This worker's client certificate, for a coordinator started with
    /// --worker-ca.
    #[command(flatten)]
    pub(crate) tls: super::server::Identity,
}

/// `--max-load`: a positive load per CPU.
fn max_load(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!(
            "{s:?} is no load: give the 1-minute load average per CPU above which to take no work, e.g. 1.5"
        )),
    }
}

impl Args {
    pub(crate) fn config(&self) -> anyhow::Result<WorkerConfig> {
        let mut c = WorkerConfig::new(self.server.clone());
        c.token = self.worker_token.clone();
        if let Some(n) = &self.name {
            c.name = n.clone();
        }
        c.id = self.id.clone().unwrap_or_else(|| c.name.clone());
        if let Some(s) = self.slots {
            anyhow::ensure!(s > 0, "--slots must be at least 1");
            c.slots = s;
        }
        c.prefetch = prefetch_or_default(self.prefetch, c.slots);
        c.prefetch_hold = Duration::from_millis(self.prefetch_hold_ms);
        c.cgroup_every_task = self.cgroup_every_task;
        c.spawner = spawner();
        for l in &self.labels {
            let (k, v) = l.split_once('=').unwrap_or((l, ""));
            anyhow::ensure!(
                !k.trim().is_empty(),
                "invalid --label {l:?}: expected key or key=value"
            );
            c.labels.push((k.trim().to_owned(), v.trim().to_owned()));
        }
        c.shell = if self.no_shell {
            ShellPolicy::Disabled
        } else if self.allow.is_empty() {
            ShellPolicy::Any
        } else {
            ShellPolicy::AllowList(self.allow.clone())
        };
        c.container = self.container_runtime.as_ref().map(|r| match r.as_str() {
            "docker" => ContainerRuntime::docker(),
            "podman" => ContainerRuntime::podman(),
            path => ContainerRuntime::new(path),
        });
        c.queues = self.queues.clone();
        c.limits.max_output_bytes = self.max_output_bytes;
        c.drain_grace = Duration::from_millis(self.drain_grace_ms);
        c.max_load = self.max_load;
        let read = |flag: &str, path: &PathBuf| {
            std::fs::read(path)
                .with_context(|| format!("{flag} {}: cannot read it", path.display()))
        };
        c.tls = WorkerTls {
            ca_pem: self.ca.as_ref().map(|p| read("--ca", p)).transpose()?,
            identity_pem: match (&self.tls.tls_cert, &self.tls.tls_key) {
                (Some(cert), Some(key)) => {
                    Some((read("--tls-cert", cert)?, read("--tls-key", key)?))
                }
                _ => None,
            },
        };
        Ok(c)
    }
}

pub(crate) async fn run(mut args: Args) -> anyhow::Result<()> {
    // `auto`: the coordinator advertised over mDNS.
    let given = args.server.clone();
    args.server = tokio::task::spawn_blocking(move || super::discover::resolve(&given))
        .await
        .context("discovery")??;
    let config = args.config()?;
    eprintln!(
        "taskgrid worker {} connecting to {}",
        config.id, config.server
    );
    let id = config.id.clone();
    match Worker::with_config(config)
        .run_until(super::signals::terminated())
        .await
    {
        Ok(()) => Ok(()),
        Err(WorkerError::DuplicateId(_)) => Err(anyhow::anyhow!(
            "worker id {id} is already connected to the coordinator \
             (another `taskgrid worker --id {id}` is running); give each worker its own --id"
        )),
        Err(e @ WorkerError::WrongToken(_)) => Err(anyhow::anyhow!(
            "{e} (check --worker-token or TASKGRID_WORKER_TOKEN)"
        )),
        Err(e @ WorkerError::TokenRequired(_)) => Err(anyhow::anyhow!(
            "{e} (set one with --worker-token or TASKGRID_WORKER_TOKEN)"
        )),
        Err(e) => Err(e).context("worker stopped"),
    }
}

/// This program, when its `main` serves `__spawner` (`main` says so with
/// [`serve_spawner`]); not in unit tests, whose executable is the test
/// harness. A worker with it starts the tasks that run in no cgroup
/// through `taskgrid __spawner`, so their peak memory is their own.
pub(crate) fn spawner() -> Option<std::path::PathBuf> {
    SPAWNER.get().cloned()
}

static SPAWNER: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// Called by `main`: this executable serves `__spawner`.
pub(crate) fn serve_spawner() {
    if let Ok(exe) = std::env::current_exe() {
        let _ = SPAWNER.set(exe);
    }
}

/// `--prefetch-hold-ms` unless given: the library's default hold.
pub(crate) const PREFETCH_HOLD_MS_DEFAULT: u64 =
    WorkerConfig::PREFETCH_HOLD_DEFAULT.as_millis() as u64;

/// A worker's prefetch: as given, or by default as many tasks as it has
/// slots (`taskgrid worker`, `up` and `bench`'s workers alike).
pub(crate) fn prefetch_or_default(prefetch: Option<u32>, slots: u32) -> u32 {
    prefetch.unwrap_or(slots)
}
