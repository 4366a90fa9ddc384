//! Handlers — the named Rust functions an embedded system runs — and the
//! [`TaskContext`] each call receives: payload, progress, checkpoints,
//! cancellation, logs and subtasks.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use taskgrid_core::{Outcome, Progress, RetryHint, Stream, TaskFailure, TaskId, TaskSpec};
use tokio::sync::watch;

use crate::Task;

/// A boxed, sendable future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What a handler returns: a JSON result, or how it failed.
pub type HandlerResult = Result<serde_json::Value, TaskError>;

/// How a handler failed, and what should happen next.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum TaskError {
    /// A failure retried as the task's retry policy says.
    #[error("{0}")]
    Failed(String),
    /// A failure to retry after this delay (if a retry is left).
    #[error("{1} (retry after {0:?})")]
    RetryAfter(Duration, String),
    /// A failure that must not be retried.
    #[error("{0}")]
    Fatal(String),
}

impl TaskError {
    /// A retryable failure from anything printable.
    pub fn failed(e: impl std::fmt::Display) -> Self {
        TaskError::Failed(e.to_string())
    }
    /// A final failure from anything printable.
    pub fn fatal(e: impl std::fmt::Display) -> Self {
        TaskError::Fatal(e.to_string())
    }

    /// The outcome an executor reports for this failure.
    pub fn into_outcome(self) -> Outcome {
        let (message, retry) = match self {
            TaskError::Failed(m) => (m, RetryHint::Policy),
            TaskError::RetryAfter(d, m) => (m, RetryHint::After(d)),
            TaskError::Fatal(m) => (m, RetryHint::Never),
        };
        Outcome::Failed {
            message,
            retry,
            exit_code: None,
        }
    }
}

impl From<serde_json::Error> for TaskError {
    fn from(e: serde_json::Error) -> Self {
        TaskError::Fatal(format!("bad payload: {e}"))
    }
}

/// A named piece of work. Closures `Fn(TaskContext) -> impl Future<Output =
/// HandlerResult>` are handlers through [`handler_fn`]; implement the trait
/// directly for the lifecycle hooks.
pub trait Handler: Send + Sync + 'static {
    /// Runs one attempt.
    fn call(&self, ctx: TaskContext) -> BoxFuture<HandlerResult>;
    /// Called once the task has succeeded (after the result is stored).
    fn on_success(&self, _task: TaskId, _result: Option<&str>) {}
    /// Called once the task has finished unsuccessfully.
    fn on_failure(&self, _task: TaskId, _error: &TaskFailure) {}
    /// Called when a failed attempt is going to be retried.
    fn on_retry(&self, _task: TaskId, _attempt: u32, _error: &TaskFailure) {}
}

/// A [`Handler`] made from a closure.
pub struct FnHandler<F>(F);

/// Makes a handler from an async closure.
pub fn handler_fn<F, Fut>(f: F) -> FnHandler<F>
where
    F: Fn(TaskContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    FnHandler(f)
}

impl<F, Fut> Handler for FnHandler<F>
where
    F: Fn(TaskContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    fn call(&self, ctx: TaskContext) -> BoxFuture<HandlerResult> {
        Box::pin((self.0)(ctx))
    }
}

/// Runs a handler call, turning a panic inside it into an error.
pub fn catch_unwind(call: BoxFuture<HandlerResult>) -> impl Future<Output = HandlerResult> + Send {
    CatchUnwind(call)
}

/// The outcome an executor reports for a handler's result.
pub fn outcome_of(result: HandlerResult) -> Outcome {
    match result {
        Ok(value) => Outcome::Succeeded {
            result: Some(value.to_string().into()),
            exit_code: None,
        },
        Err(e) => e.into_outcome(),
    }
}

/// Turns a panic inside a handler into an error instead of a lost task.
struct CatchUnwind(BoxFuture<HandlerResult>);

impl Future for CatchUnwind {
    type Output = HandlerResult;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<HandlerResult> {
        let fut = &mut self.0;
        match std::panic::catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx))) {
            Ok(p) => p,
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".to_owned());
                Poll::Ready(Err(TaskError::Failed(format!("handler panicked: {msg}"))))
            }
        }
    }
}

/// Where a [`TaskContext`] sends what a handler reports: the embedded
/// system, or a remote worker's stream to its coordinator.
pub trait ContextBackend: Send + Sync + 'static {
    /// Records progress of attempt `attempt` of `id`.
    fn progress(&self, id: TaskId, attempt: u32, progress: Progress);
    /// Appends output.
    fn output(&self, id: TaskId, attempt: u32, stream: Stream, data: String);
    /// Saves a checkpoint; resolves once it is durable.
    fn checkpoint(
        &self,
        id: TaskId,
        attempt: u32,
        data: Box<str>,
    ) -> BoxFuture<Result<(), TaskError>>;
    /// Submits a subtask of `parent`; resolves to its id once accepted.
    fn spawn(&self, parent: TaskId, spec: TaskSpec) -> BoxFuture<Result<TaskId, TaskError>>;
    /// Now, for resolving a subtask's relative times.
    fn now(&self) -> taskgrid_core::Timestamp;
}

/// What a running handler knows and can do.
#[derive(Clone)]
pub struct TaskContext {
    backend: Arc<dyn ContextBackend>,
    id: TaskId,
    attempt: u32,
    payload: Arc<str>,
    checkpoint: Arc<Mutex<Option<Box<str>>>>,
    cancel: watch::Receiver<bool>,
}

impl TaskContext {
    /// A context for attempt `attempt` of task `id` (for executors: the
    /// embedded system and remote workers build these).
    pub fn new(
        backend: Arc<dyn ContextBackend>,
        id: TaskId,
        attempt: u32,
        payload: Arc<str>,
        checkpoint: Option<Box<str>>,
        cancel: watch::Receiver<bool>,
    ) -> Self {
        TaskContext {
            backend,
            id,
            attempt,
            payload,
            checkpoint: Arc::new(Mutex::new(checkpoint)),
            cancel,
        }
    }

    /// The task's id.
    pub fn id(&self) -> TaskId {
        self.id
    }

    /// The attempt number (1 for the first run).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The payload, decoded. A payload of the wrong shape is a fatal error.
    pub fn payload<T: DeserializeOwned>(&self) -> Result<T, TaskError> {
        Ok(serde_json::from_str(&self.payload)?)
    }

    /// The payload as JSON text.
    pub fn raw_payload(&self) -> &str {
        &self.payload
    }

    /// Reports progress: `fraction` from 0 to 1 and what is happening.
    pub fn progress(&self, fraction: f32, message: impl Into<String>) {
        let message = Some(message.into()).filter(|m| !m.is_empty());
        self.backend
            .progress(self.id, self.attempt, Progress { fraction, message });
    }

    /// Saves a checkpoint. Once this returns it is durable, and a retry of
    /// this task starts with it in [`TaskContext::checkpoint`].
    pub async fn save_checkpoint<T: Serialize>(&self, value: &T) -> Result<(), TaskError> {
        let data: Box<str> = serde_json::to_string(value)
            .map_err(|e| TaskError::Fatal(format!("checkpoint not serializable: {e}")))?
            .into();
        self.backend
            .checkpoint(self.id, self.attempt, data.clone())
            .await?;
        if let Ok(mut c) = self.checkpoint.lock() {
            *c = Some(data);
        }
        Ok(())
    }

    /// The last checkpoint saved by this or an earlier attempt.
    pub fn checkpoint<T: DeserializeOwned>(&self) -> Result<Option<T>, TaskError> {
        let data = self.checkpoint.lock().ok().and_then(|c| c.clone());
        match data {
            Some(d) => Ok(Some(serde_json::from_str(&d)?)),
            None => Ok(None),
        }
    }

    /// Whether the task has been asked to stop.
    pub fn is_cancelled(&self) -> bool {
        *self.cancel.borrow()
    }

    /// Completes when the task is asked to stop (cancelled or timed out).
    pub async fn cancelled(&self) {
        let mut rx = self.cancel.clone();
        // An error means the attempt is over: as good as cancelled.
        let _ = rx.wait_for(|c| *c).await;
    }

    /// Appends a line to the task's log (kept with its output).
    pub fn log(&self, line: impl Into<String>) {
        self.backend
            .output(self.id, self.attempt, Stream::Log, line.into());
    }

    /// Submits a subtask whose parent is this task; returns its id once it
    /// is accepted.
    pub async fn spawn(&self, task: Task) -> Result<TaskId, TaskError> {
        let spec = task.resolve(self.backend.now()).map_err(TaskError::fatal)?;
        self.backend.spawn(self.id, spec).await
    }
}
