//! taskgrid — a distributed task execution system.
//!
//! This crate is the one to depend on from Rust. It re-exports:
//! - the **worker SDK**: run your own handlers on any machine, connected to a
//!   coordinator —
//!   ```no_run
//!   # async fn demo() -> Result<(), taskgrid::WorkerError> {
//!   taskgrid::Worker::connect("http://127.0.0.1:7070")
//!       .handler("double", |ctx| async move {
//!           let n: u64 = ctx.payload()?;
//!           Ok(serde_json::json!(n * 2))
//!       })
//!       .run()
//!       .await
//!   # }
//!   ```
//! - the **embedded engine**: [`TaskSystem`] runs the same engine inside your
//!   program, on a SQLite file or in memory —
//!   ```
//!   # fn main() -> Result<(), taskgrid::Error> {
//!   # let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()
//!   #     .map_err(|_| taskgrid::Error::ShutDown)?;
//!   # rt.block_on(async {
//!   let system = taskgrid::TaskSystem::builder() // in memory; `.sqlite(path, …)` to keep it
//!       .handler("double", |ctx| async move {
//!           let n: u64 = ctx.payload()?;
//!           Ok(serde_json::json!(n * 2))
//!       })
//!       .build()?;
//!   system.start()?;
//!   let result = system.submit(taskgrid::Task::handler("double", &21)).await?.wait().await?;
//!   assert_eq!(result.value::<u64>().ok().flatten(), Some(42));
//!   system.shutdown().await
//!   # })
//!   # }
//!   ```
//! - the **handler API** both of them run: [`TaskContext`] (payload,
//!   progress, logs, checkpoints, subtasks, cancellation), [`TaskError`]
//!   (fail and retry, retry after a delay, or fail for good), [`Handler`] for handlers with
//!   hooks —
//!   ```
//!   use taskgrid::{TaskContext, TaskError, handler_fn};
//!
//!   let resize = handler_fn(|ctx: TaskContext| async move {
//!       let width: u32 = ctx.payload()?;
//!       if width == 0 {
//!           return Err(TaskError::fatal("width must be positive"));
//!       }
//!       ctx.progress(1.0, "resized");
//!       Ok(serde_json::json!({ "width": width }))
//!   });
//!   # let _ = resize;
//!   ```
//! - the **client** of a coordinator's HTTP API: [`Client`];
//! - the task model: [`model`].

pub use taskgrid_client::{Client, ClientError};
pub use taskgrid_runtime::{
    Error, EventKind, Handler, HandlerResult, SystemConfig, Task, TaskContext, TaskError,
    TaskEvent, TaskHandle, TaskResult, TaskSystem, handler_fn,
};
pub use taskgrid_worker::{Worker, WorkerConfig, WorkerError};

/// The task model: specs, states, priorities, ids.
pub mod model {
    pub use taskgrid_core::{
        FailureCode, LabelReq, Priority, RetryPolicy, ShellCommand, ShellSpec, State, TaskId,
        TaskKind, TaskRecord, TaskSpec,
    };
}
