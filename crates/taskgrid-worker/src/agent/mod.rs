//! The worker agent: connects out to a coordinator (no inbound port), keeps
//! one gRPC `Session` stream open, and runs what it is assigned with the
//! executors — shell, container, and Rust handlers registered through
//! [`Worker::handler`].
//!
//! Attempts outlive connections: if the stream breaks they keep running,
//! their reports wait in a buffer, and on reconnect the worker lists every
//! attempt it has not finished reporting so the coordinator keeps them (or
//! says which to stop). On drain it stops taking work, lets running attempts
//! finish within the grace, stops the rest, and says goodbye before it
//! closes the stream, which hands what is left back to the queue at once.
//!
//! A shell task finds its task id and attempt number in the environment
//! variables [`TASK_ID_VAR`] and [`ATTEMPT_VAR`].

mod backend;
mod cause;
mod host;
mod run;

pub use run::{ATTEMPT_VAR, TASK_ID_VAR};
mod session;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use taskgrid_sdk::{Handler, HandlerResult, TaskContext, handler_fn};

use crate::{ContainerRuntime, ExecLimits, ShellPolicy};

/// Settings of a worker; `WorkerConfig::new(url)` gives working defaults.
#[derive(Clone)]
pub struct WorkerConfig {
    /// The coordinator, e.g. `http://127.0.0.1:7070`.
    pub server: String,
    /// The worker token, sent as `Authorization: Bearer`.
    pub token: Option<String>,
    /// Stable id (kept across restarts by the caller, e.g. in a state file).
    pub id: String,
    /// Display name.
    pub name: String,
    /// Labels tasks may require (`gpu` has an empty value).
    pub labels: Vec<(String, String)>,
    /// Tasks (by slots) run at once.
    pub slots: u32,
    /// Slots' worth of tasks held ready beyond `slots`, each started the
    /// moment a slot frees (0: none). For many short tasks this hides the
    /// round trip to the coordinator between one task and the next; the
    /// price is that a held task waits here even if another worker is free,
    /// for at most `prefetch_hold`.
    pub prefetch: u32,
    /// How long a task may wait here, held beyond the slots, before it is
    /// handed back unstarted (the coordinator then offers it to a worker
    /// with a free slot, this one included). Bounds what a prefetch costs
    /// long tasks: one busy worker never sits on work another could run.
    pub prefetch_hold: Duration,
    /// Run every shell attempt in a cgroup of its own, not only those with
    /// limits: exact peak memory and CPU seconds for every task, at about a
    /// millisecond of kernel work per attempt.
    pub cgroup_every_task: bool,
    /// The program to start as the spawner of shell tasks (see
    /// [`Spawner`](crate::Spawner)): a taskgrid build whose `main` serves
    /// [`SPAWNER_ARG`](crate::SPAWNER_ARG), such as the `taskgrid` binary.
    /// With it, a task that runs in no cgroup reports its own peak memory;
    /// without it (the default, since a program embedding the worker may
    /// not serve that argument), such a task's peak is not measured (0).
    pub spawner: Option<std::path::PathBuf>,
    /// Queues served; all when empty.
    pub queues: Vec<String>,
    /// Which programs shell tasks may run.
    pub shell: ShellPolicy,
    /// The container runtime, or `None` for no container tasks. It is
    /// probed at start-up (`<runtime> version`): if that fails, the worker
    /// runs no container tasks and logs why.
    pub container: Option<ContainerRuntime>,
    /// Output caps and kill grace.
    pub limits: ExecLimits,
    /// How long a drain waits for running attempts.
    pub drain_grace: Duration,
    /// First reconnect delay; doubles up to `reconnect_max`.
    pub reconnect_min: Duration,
    /// Longest reconnect delay.
    pub reconnect_max: Duration,
    /// How long the coordinator may keep saying that this worker's id is
    /// connected from another process before the worker gives up with
    /// [`WorkerError::DuplicateId`]. The other process may be this one's
    /// predecessor, just ended, whose stream the coordinator has not seen
    /// close yet.
    pub duplicate_id_grace: Duration,
    /// TLS for an `https://` coordinator.
    pub tls: WorkerTls,
    /// Above this 1-minute load average per CPU of its host the worker
    /// takes no new work (the coordinator offers it none until the load
    /// its heartbeats report is under it again).
    pub max_load: Option<f64>,
}

/// TLS settings of a worker, used with `https://` coordinators: the
/// system's root certificates are always trusted.
#[derive(Clone, Default)]
pub struct WorkerTls {
    /// CA certificates (PEM) trusted besides the system's roots: for a
    /// coordinator whose certificate a private CA signed.
    pub ca_pem: Option<Vec<u8>>,
    /// This worker's client certificate chain and private key (PEM), for a
    /// coordinator that takes only workers with one (`--worker-ca`).
    pub identity_pem: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for WorkerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("WorkerTls")
            .field("ca", &self.ca_pem.is_some())
            .field("identity", &self.identity_pem.is_some())
            .finish()
    }
}

impl WorkerConfig {
    /// Default drain grace: 30 s.
    pub const DRAIN_GRACE_DEFAULT: Duration = Duration::from_secs(30);
    /// Default longest wait of a prefetched task for a slot here: 1 s.
    pub const PREFETCH_HOLD_DEFAULT: Duration = Duration::from_secs(1);
    /// Default first reconnect delay: 100 ms.
    pub const RECONNECT_MIN_DEFAULT: Duration = Duration::from_millis(100);
    /// Default longest reconnect delay: 1 s. A restarted coordinator has
    /// every worker back within a second of listening again; a thousand
    /// workers retrying once a second cost it nothing to speak of.
    pub const RECONNECT_MAX_DEFAULT: Duration = Duration::from_secs(1);
    /// Default duplicate id grace: 3 s. A killed worker's stream is seen
    /// closed within milliseconds; a restarted one is back after that.
    pub const DUPLICATE_ID_GRACE_DEFAULT: Duration = Duration::from_secs(3);

    /// Defaults for a worker of `server`: id and name from the host name,
    /// one slot per CPU, shell allowed, no containers.
    pub fn new(server: impl Into<String>) -> Self {
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_owned())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "worker".to_owned());
        WorkerConfig {
            server: server.into(),
            token: None,
            id: format!("{host}-{}", std::process::id()),
            name: host,
            labels: Vec::new(),
            slots: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            prefetch: 0,
            prefetch_hold: Self::PREFETCH_HOLD_DEFAULT,
            cgroup_every_task: false,
            spawner: None,
            queues: Vec::new(),
            shell: ShellPolicy::Any,
            container: None,
            limits: ExecLimits::default(),
            drain_grace: Self::DRAIN_GRACE_DEFAULT,
            reconnect_min: Self::RECONNECT_MIN_DEFAULT,
            reconnect_max: Self::RECONNECT_MAX_DEFAULT,
            duplicate_id_grace: Self::DUPLICATE_ID_GRACE_DEFAULT,
            tls: WorkerTls::default(),
            max_load: None,
        }
    }
}

/// A worker: configure, register handlers, then [`Worker::run`].
///
/// ```no_run
/// # async fn demo() -> Result<(), taskgrid_worker::WorkerError> {
/// use taskgrid_worker::Worker;
/// Worker::connect("http://127.0.0.1:7070")
///     .handler("double", |ctx| async move {
///         let n: u64 = ctx.payload()?;
///         Ok(serde_json::json!(n * 2))
///     })
///     .run()
///     .await
/// # }
/// ```
pub struct Worker {
    config: WorkerConfig,
    handlers: HashMap<String, Arc<dyn Handler>>,
}

/// Why a worker stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// The coordinator refused this worker for good (an invalid
    /// registration): retrying would not help.
    #[error("refused by the coordinator: {0}")]
    Refused(String),
    /// The coordinator at this address refused the worker's token.
    #[error("the coordinator at {0} refused this worker: wrong worker token")]
    WrongToken(String),
    /// The coordinator at this address requires a worker token and the
    /// worker has none.
    #[error("the coordinator at {0} requires a worker token, and this worker has none")]
    TokenRequired(String),
    /// Another worker process with this id is connected to the
    /// coordinator (for longer than [`WorkerConfig::duplicate_id_grace`]).
    #[error(
        "worker id {0:?} is already connected to the coordinator (another worker process has this id)"
    )]
    DuplicateId(String),
    /// The server address is not a valid URL.
    #[error("invalid server address {0:?}: {1}")]
    BadServer(String, String),
    /// TLS cannot work as set up: plain http:// to a coordinator that
    /// serves TLS or the reverse, a certificate not trusted, a client
    /// certificate missing or refused. Retrying would not help.
    #[error("{0}")]
    Tls(String),
}

impl Worker {
    /// A worker of the coordinator at `server`, with default settings.
    pub fn connect(server: impl Into<String>) -> Self {
        Worker::with_config(WorkerConfig::new(server))
    }

    /// A worker with these settings.
    pub fn with_config(config: WorkerConfig) -> Self {
        Worker {
            config,
            handlers: HashMap::new(),
        }
    }

    /// Registers an async closure as handler `name`.
    pub fn handler<F, Fut>(self, name: &str, f: F) -> Self
    where
        F: Fn(TaskContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        self.handler_impl(name, handler_fn(f))
    }

    /// Registers a [`Handler`] as `name`.
    pub fn handler_impl(mut self, name: &str, h: impl Handler) -> Self {
        self.handlers.insert(name.to_owned(), Arc::new(h));
        self
    }

    /// Sets the worker token.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.config.token = Some(token.into());
        self
    }

    /// Runs until the coordinator refuses the worker for good (see
    /// [`WorkerError`]); a coordinator that cannot be reached is tried
    /// again and again, and why it cannot is logged.
    pub async fn run(self) -> Result<(), WorkerError> {
        self.run_until(std::future::pending()).await
    }

    /// Runs until `drain` resolves (e.g. on SIGTERM), then drains: takes no
    /// new work, gives running attempts `drain_grace` to finish, stops the
    /// rest and disconnects, handing them back to the queue.
    pub async fn run_until(
        self,
        drain: impl Future<Output = ()> + Send,
    ) -> Result<(), WorkerError> {
        if !matches!(self.config.shell, crate::ShellPolicy::Disabled) {
            // Said once, at start-up: whether tasks' CPU and memory limits
            // are enforced with cgroups here, or why not.
            let _ = crate::exec::cgroups();
        }
        session::run(self.config, self.handlers, drain).await
    }
}
