//! A task as it lives: [`TaskRecord`] = the immutable spec plus the
//! [`TaskStatus`] the engine changes, and the typed outcomes that executors
//! report and attempts keep.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{State, TaskId, TaskSpec, Timestamp, WorkerId};

/// Why a task ended without success, in a form a program can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureCode {
    /// The work itself reported an error (a handler error, a non-zero exit).
    Error,
    /// An attempt ran past the task's timeout.
    Timeout,
    /// No connected worker could run it, or every capable one refused.
    NoCapableWorker,
    /// A task it depended on did not succeed.
    DependencyFailed,
    /// A client cancelled it.
    Cancelled,
    /// It did not start before its `expires_at`.
    Expired,
}

/// A failure with its code and a human-readable message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskFailure {
    /// The class of failure.
    pub code: FailureCode,
    /// What happened, for people.
    pub message: String,
}

impl TaskFailure {
    /// A failure of `code` with `message`.
    pub fn new(code: FailureCode, message: impl Into<String>) -> Self {
        TaskFailure {
            code,
            message: message.into(),
        }
    }
}

/// Reported progress of a running task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Done fraction, 0 to 1.
    pub fraction: f32,
    /// What it is doing now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// What one attempt cost, as its executor measured it.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Usage {
    /// User plus system CPU seconds.
    pub cpu_seconds: f64,
    /// Peak resident memory in bytes.
    pub peak_rss_bytes: u64,
    /// The signal that killed the program, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
}

/// Everything about a task that changes after it is accepted.
///
/// Serialized with every field (`null` where empty); read, every field
/// but `state` may be left out and is then empty (`0`, `false`, `null`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskStatus {
    /// Current state.
    pub state: State,
    /// Number of the current (or last) attempt; 0 before the first
    /// assignment. It is the attempt's fencing token: a report naming an
    /// older attempt is stale and ignored.
    #[serde(default)]
    pub attempt: u32,
    /// Failed attempts that were retried (compared with `max_retries`).
    #[serde(default)]
    pub retries: u32,
    /// The worker of the current (or last) attempt.
    pub worker: Option<WorkerId>,
    /// When the task may next be queued (pending `run_at`, retry backoff).
    pub wake_at: Option<Timestamp>,
    /// When it last entered `queued`.
    pub queued_at: Option<Timestamp>,
    /// When the current (or last) attempt started running.
    pub started_at: Option<Timestamp>,
    /// When it reached its terminal state.
    pub finished_at: Option<Timestamp>,
    /// A client asked to cancel it while it was running.
    #[serde(default)]
    pub cancel_requested: bool,
    /// The result of a successful run (JSON text for handlers).
    pub result: Option<Box<str>>,
    /// Why it ended unsuccessfully (or why the last attempt failed).
    pub error: Option<TaskFailure>,
    /// Exit code of the last attempt, for programs.
    pub exit_code: Option<i32>,
    /// What the last attempt cost, when its executor measured it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

impl TaskStatus {
    /// The status of a task just accepted in `state`.
    pub fn new(state: State) -> Self {
        TaskStatus {
            state,
            attempt: 0,
            retries: 0,
            worker: None,
            wake_at: None,
            queued_at: None,
            started_at: None,
            finished_at: None,
            cancel_requested: false,
            result: None,
            error: None,
            exit_code: None,
            usage: None,
        }
    }
}

/// A task: its id, what was asked, and where it is now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// The task's id.
    pub id: TaskId,
    /// What was asked.
    pub spec: TaskSpec,
    /// When it was accepted.
    pub created_at: Timestamp,
    /// Where it is now.
    pub status: TaskStatus,
    /// Last reported progress.
    pub progress: Option<Progress>,
    /// Last saved checkpoint (JSON text); a retry sees it.
    pub checkpoint: Option<Box<str>>,
}

/// What an executor reports at the end of an attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// The work succeeded.
    Succeeded {
        /// Its result (JSON text for handlers).
        result: Option<Box<str>>,
        /// Exit code, for programs.
        exit_code: Option<i32>,
    },
    /// The work failed.
    Failed {
        /// What went wrong.
        message: String,
        /// Whether and when to retry.
        retry: RetryHint,
        /// Exit code, for programs.
        exit_code: Option<i32>,
    },
    /// The executor stopped the attempt at the task's timeout.
    TimedOut,
    /// The executor stopped the attempt because it was asked to.
    Cancelled,
}

impl Outcome {
    /// A success with no result.
    pub const fn ok() -> Self {
        Outcome::Succeeded {
            result: None,
            exit_code: None,
        }
    }
    /// A retryable failure with `message`.
    pub fn failed(message: impl Into<String>) -> Self {
        Outcome::Failed {
            message: message.into(),
            retry: RetryHint::Policy,
            exit_code: None,
        }
    }
}

/// How a failure wants to be retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetryHint {
    /// As the task's retry policy says.
    Policy,
    /// After this delay (if a retry is left), instead of the policy's backoff.
    After(#[serde(with = "crate::spec::duration_ms")] Duration),
    /// Never: the failure is final whatever retries are left.
    Never,
}

/// How one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    /// The worker refused the assignment.
    Rejected,
    /// The attempt succeeded.
    Succeeded,
    /// The attempt failed.
    Failed,
    /// The attempt ran out of time.
    TimedOut,
    /// The attempt was stopped by a cancel.
    Cancelled,
    /// The worker (or the coordinator) was lost while it ran.
    Lost,
}

impl AttemptOutcome {
    /// The lower-case name used in the store and the API.
    pub const fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Rejected => "rejected",
            AttemptOutcome::Succeeded => "succeeded",
            AttemptOutcome::Failed => "failed",
            AttemptOutcome::TimedOut => "timed_out",
            AttemptOutcome::Cancelled => "cancelled",
            AttemptOutcome::Lost => "lost",
        }
    }
}

/// One attempt of a task, as the store keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// The task.
    pub task: TaskId,
    /// The attempt number (the fencing token).
    pub attempt: u32,
    /// The worker it was assigned to.
    pub worker: WorkerId,
    /// When it was assigned.
    pub assigned_at: Timestamp,
    /// When it started running.
    pub started_at: Option<Timestamp>,
    /// When it ended.
    pub finished_at: Option<Timestamp>,
    /// How it ended; `None` while it runs.
    pub outcome: Option<AttemptOutcome>,
    /// The error of a failed attempt.
    pub error: Option<String>,
    /// Exit code, for programs.
    pub exit_code: Option<i32>,
    /// What the attempt cost, when its executor measured it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// Which stream a chunk of output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
    /// A log line from a handler.
    Log,
}

impl Stream {
    /// The lower-case name used in the store and the API.
    pub const fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
            Stream::Log => "log",
        }
    }
}

/// A piece of a task's output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputChunk {
    /// The task.
    pub task: TaskId,
    /// The attempt that produced it.
    pub attempt: u32,
    /// Which stream.
    pub stream: Stream,
    /// The text.
    pub data: String,
}
