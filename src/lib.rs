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
//!   program on a SQLite file;
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
