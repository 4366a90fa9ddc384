//! The taskgrid handler API: what a named Rust function needs to run as a
//! task, and the [`Task`] builder to submit one.
//!
//! This crate owns [`Handler`], [`TaskContext`], [`TaskError`] and
//! [`ContextBackend`] (where a context sends what a handler reports). The
//! embedded `TaskSystem` and a remote worker both implement
//! [`ContextBackend`] and run the same handlers.
//!
//! It must never depend on the store, the server (axum, tonic) or the
//! worker: anyone writing a handler pays for serde and tokio's sync
//! module only.
//!
//! ```
//! use taskgrid_sdk::{TaskContext, TaskError, handler_fn};
//!
//! let double = handler_fn(|ctx: TaskContext| async move {
//!     let n: u64 = ctx.payload()?;
//!     ctx.progress(1.0, "done");
//!     Ok::<_, TaskError>(serde_json::json!(n * 2))
//! });
//! # let _ = double;
//! ```

mod handler;
mod task;

pub use handler::{
    BoxFuture, ContextBackend, FnHandler, Handler, HandlerResult, TaskContext, TaskError,
    catch_unwind, handler_fn, outcome_of,
};
pub use task::{InvalidPayload, Task};
