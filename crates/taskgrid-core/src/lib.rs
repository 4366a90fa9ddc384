//! The pure taskgrid engine.
//!
//! This crate holds the task model ([`TaskSpec`], [`TaskRecord`], the
//! [`State`] machine), and the [`Engine`]: queues, dispatch and routing,
//! retries, dependencies, timeouts, expiry and worker leases. It does no IO
//! and never reads a clock: every command takes `now` and records what it
//! decided in an [`Outbox`] — durable [`Change`]s for the store, assignments
//! and stop requests for executors. The async shell around it lives in
//! `taskgrid-runtime`.
//!
//! It must never depend on IO, an async runtime, the store or any
//! transport: everything else builds on it, and it builds on nothing of
//! taskgrid's.

mod audit;
mod change;
mod engine;
mod id;
mod metrics;
mod priority;
mod record;
mod schedule;
mod spec;
mod state;
mod time;

pub use audit::{AuditEntry, AuditRecord};
pub use change::Change;
pub use engine::{
    Assignment, BACKFILL_MAX, BUFFER_MAX, CONCURRENCY_KEY_MAX, CancelOutcome, CommandError, Engine,
    EngineConfig, Explanation, Gate, KeyLimit, KeyLimitView, Outbox, QueueStats, Rate, ReportAck,
    ScheduleError, ScheduleGate, ScheduleView, StopAttempt, StopReason, SubmitError, Submitted,
    TRUST_REMEMBERED_MAX, WorkerHealth, WorkerInfo,
};
pub use id::{ParseIdError, TaskId, WorkerId};
pub use metrics::{
    Bucket, Histogram, HistogramSummary, LABEL_VALUES_MAX, LE_MICROS, Metrics, MetricsSnapshot,
    OTHER_LABEL, QueueKindSnapshot, SavedMetrics, SeriesSnapshot, TaskCounts, Throughput,
    kind_label,
};
pub use priority::{ParsePriorityError, Priority};
pub use record::{
    AttemptOutcome, AttemptRecord, FailureCode, Outcome, OutputChunk, Progress, RetryHint, Stream,
    TaskFailure, TaskRecord, TaskStatus, Usage,
};
pub use schedule::{
    BadSchedule, FireOutcome, FireRecord, Overlap, Recurrence, SCHEDULE_NAME_MAX, ScheduleRecord,
    ScheduleSpec, ScheduleState, check_schedule_name,
};
pub use spec::{
    ContainerSpec, DEFAULT_QUEUE, ExecRequirement, LabelReq, ParseLabelError, Resources,
    RetryPolicy, ShellCommand, ShellSpec, TaskKind, TaskSpec,
};
pub use state::{Event, ParseStateError, State, TransitionError, transition};
pub use time::{Timestamp, duration_micros, duration_millis};
