//! The taskgrid worker: the agent that runs tasks on a machine.
//!
//! It owns the connection to a coordinator (gRPC client, reconnects,
//! drains) and the executors. It depends on the handler API
//! (`taskgrid-sdk`) and the wire format (`taskgrid-proto`) only, and must
//! never depend on the runtime, the server or the store: a program that
//! embeds a worker compiles no SQLite, axum or HTTP server
//! (`tests/layout.rs` checks it).
//!
//! An executor ([`exec`]) runs one attempt and returns an [`ExecReport`]:
//!
//! ```no_run
//! # async fn demo() {
//! use taskgrid_core::{ShellCommand, ShellSpec, StopReason, Stream};
//! use taskgrid_worker::{ExecLimits, ShellInput, ShellPolicy, run_shell};
//! use tokio::sync::{mpsc, watch};
//!
//! let spec = ShellSpec {
//!     command: ShellCommand::Script("echo hello".into()),
//!     env: vec![],
//!     cwd: None,
//! };
//! let (stop_tx, stop_rx) = watch::channel(None::<StopReason>);
//! let (out_tx, mut out_rx) = mpsc::channel::<(Stream, String)>(64);
//! let forward = tokio::spawn(async move {
//!     while let Some((stream, text)) = out_rx.recv().await {
//!         println!("{}: {text}", stream.as_str()); // to the coordinator
//!     }
//! });
//! let limits = ExecLimits::default();
//! // No stdin, no CPU or memory limits (see `ShellInput`).
//! let input = ShellInput::default();
//! let report = run_shell(&spec, input, None, &limits, &ShellPolicy::Any, stop_rx, out_tx).await;
//! // A cancel from the coordinator would be `stop_tx.send(Some(StopReason::Cancel))`.
//! # drop(stop_tx);
//! forward.await.ok();
//! println!("{:?} in {:?}", report.outcome, report.duration);
//! # }
//! ```
//!
//! The public API:
//!
//! - [`run_shell`]`(spec, timeout, limits, policy, stop, output)` and
//!   [`run_container`]`(spec, runtime, timeout, limits, stop, output)`, both
//!   `async` and returning an [`ExecReport`]: the [`Outcome`] plus exit code,
//!   signal, duration, CPU seconds, peak RSS and whether output was
//!   truncated. `stop` is a `watch::Receiver<Option<StopReason>>`
//!   ([`StopReason`] is the core's); `output` an
//!   `mpsc::Sender<(Stream, String)>`.
//! - [`ExecLimits`]: output cap, chunk size and kill grace, with defaults.
//! - [`ShellPolicy`]: `Any`, `AllowList` or `Disabled`.
//! - [`ContainerRuntime`]: the `docker`/`podman` CLI to use.
//!
//! Executors must run inside a tokio runtime with IO and time enabled, on a
//! Unix system. See [`exec`] for how processes are grouped, stopped, reaped
//! and measured.
//!
//! [`Outcome`]: taskgrid_core::Outcome

mod agent;
pub mod exec;

pub use agent::{ATTEMPT_VAR, TASK_ID_VAR, Worker, WorkerConfig, WorkerError, WorkerTls};

pub use exec::{
    ContainerRuntime, ExecLimits, ExecReport, SPAWNER_ARG, ShellInput, ShellPolicy, Spawner,
    StopReason, cgroups, run_container, run_shell, serve_spawner,
};
