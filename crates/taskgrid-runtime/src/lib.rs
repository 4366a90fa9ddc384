//! The taskgrid runtime: the embedded [`TaskSystem`] around the pure engine
//! — the driver that alone owns the engine, the group-committed store, the
//! publisher, the local executor, and the [`WorkerService`] remote workers
//! are served through. The same engine, store and guarantees as the
//! coordinator, inside your Rust program.
//!
//! It owns every decision and every commit, and must never depend on a
//! transport: no axum, no tonic, no HTTP types (the coordinator's network
//! face is `taskgrid-server`, built on this crate's public API). SQLite is
//! its `sqlite` feature (on by default); without it an embedded system runs
//! on the memory store or any [`Store`](taskgrid_store::Store) you give it.
//!
//! ```no_run
//! use std::time::Duration;
//! use taskgrid_runtime::{Task, TaskSystem, TaskError};
//!
//! # async fn demo() -> Result<(), taskgrid_runtime::Error> {
//! let system = TaskSystem::builder()
//!     .sqlite("taskgrid.db", Default::default())
//!     .concurrency(4)
//!     .handler("double", |ctx| async move {
//!         let n: u64 = ctx.payload()?;
//!         ctx.progress(1.0, "done");
//!         Ok::<_, TaskError>(serde_json::json!(n * 2))
//!     })
//!     .build()?;
//! system.start()?;
//! let handle = system.submit(Task::handler("double", &21).retries(3)).await?;
//! let result = handle.wait_timeout(Duration::from_secs(5)).await?;
//! assert_eq!(result.value::<u64>().unwrap(), Some(42));
//! system.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! Handlers are async and run on the tokio runtime: CPU-heavy or blocking
//! work inside one belongs in `tokio::task::spawn_blocking`.

mod audit;
mod builder;
mod clock;
mod config;
mod driver;
mod error;
mod event;
mod executor;
mod failstop;
mod handle;
mod inner;
mod link;
mod monitor;
mod publisher;
mod report;
mod result;
mod retention;
mod schedules;
mod sync;
mod system;
mod upkeep;
mod workers;

pub use audit::AUDIT_PAGE_MAX;
pub use builder::TaskSystemBuilder;
pub use config::{RetentionStats, SystemConfig};
pub use error::Error;
pub use event::{EventKind, SharedEvent, TaskEvent};
pub use handle::TaskHandle;
pub use link::WorkerLink;
pub use monitor::WorkerView;
pub use result::TaskResult;
pub use schedules::{EXPLAIN_FIRES, FIRES_LIMIT_MAX};
pub use system::TaskSystem;
pub use taskgrid_sdk::{
    BoxFuture, ContextBackend, FnHandler, Handler, HandlerResult, InvalidPayload, Task,
    TaskContext, TaskError, catch_unwind, handler_fn, outcome_of,
};
pub use upkeep::{DELETE_BATCH, METRICS_SAVE_EVERY};
pub use workers::{Note, Registration, Session, WorkerError, WorkerService};
