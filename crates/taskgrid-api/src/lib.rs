//! The JSON types of the HTTP API under [`API_PREFIX`], shared by the
//! coordinator's server and the typed client so the two cannot drift.
//! It must never depend on a transport (no HTTP client or server, no
//! gRPC): serde and the core model only, so the client and the TUI compile
//! neither protoc nor tonic.
//!
//! Requests are strict (`deny_unknown_fields`): a misspelt field is an error,
//! never silently ignored. Timestamps are microseconds since the Unix epoch;
//! durations are whole milliseconds in fields ending in `_ms`.
//!
//! A submit is a flat [`SubmitRequest`]: every field of the core
//! [`TaskSpec`], a handler payload given as any JSON value (not as JSON text),
//! and two relative times, `delay_ms` and `expires_in_ms`, resolved by the
//! coordinator's clock when the task is accepted.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use taskgrid_core::{
    AttemptRecord, ContainerSpec, LabelReq, Priority, Progress, Resources, RetryPolicy,
    ShellCommand, ShellSpec, State, Stream, TaskCounts, TaskFailure, TaskId, TaskKind, TaskRecord,
    TaskSpec, TaskStatus, Timestamp, WorkerId,
};

mod schedule;

pub use schedule::{
    BackfillRequest, BadScheduleRequest, FireList, PauseRequest, ScheduleDetail, ScheduleEvent,
    ScheduleEventFilter, ScheduleEventKind, ScheduleInfo, ScheduleList, ScheduleRequest,
};

/// Where the JSON API is mounted.
pub const API_PREFIX: &str = "/api/v1";
/// The SSE event name of the last event of a followed output stream
/// (its data is an [`OutputEnd`]).
pub const SSE_END: &str = "end";
/// The SSE event name sent first when a resumed event stream could not be
/// replayed without a gap (its data is a [`StreamReset`]).
pub const SSE_RESET: &str = "reset";
/// The SSE event name of each message of `/events/summary` (its data is a
/// [`Summary`]).
pub const SSE_SUMMARY: &str = "summary";
/// How many tasks one `/events/summary` connection may watch.
pub const SUMMARY_WATCH_MAX: usize = 200;

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// A machine-readable code and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// A stable `snake_case` code, e.g. `not_found`, `queue_full`.
    pub code: String,
    /// What happened, for people.
    pub message: String,
    /// The request field at fault, when one is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// With `not_leader`: where the leading coordinator is
    /// (`http://HOST:PORT`), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
}

/// The header a standby coordinator names the leader in, on every answer
/// it refuses with `not_leader` (HTTP) or `UNAVAILABLE` (gRPC metadata).
pub const LEADER_HEADER: &str = "taskgrid-leader";

/// `GET /api/v1/coordinators`: the coordinators serving this grid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coordinators {
    /// Whether several coordinators share the store (PostgreSQL): then one
    /// leads and the others stand by; else this one is all there is.
    pub shared: bool,
    /// The leader's term: it rises by one at every change of leader (0 for
    /// a store that is not shared).
    pub term: u64,
    /// The leading coordinator, if one holds a current lease.
    pub leader: Option<CoordinatorView>,
    /// The coordinators standing by to take over.
    pub standbys: Vec<CoordinatorView>,
}

/// One coordinator of [`Coordinators`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoordinatorView {
    /// Which process: `pid N on HOST`.
    pub name: String,
    /// Where clients and workers reach it; empty if unknown.
    pub address: String,
}

/// The work a task does, as the API shows it: like [`TaskKind`], but a
/// handler's payload is any JSON value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Kind {
    /// A named handler, given a JSON payload (default `null`).
    Handler {
        /// The handler's registered name.
        name: String,
        /// The payload.
        #[serde(default)]
        payload: Value,
    },
    /// A program run by the shell executor.
    Shell(ShellSpec),
    /// An image run by the container executor.
    Container(ContainerSpec),
}

impl Kind {
    /// The core form: the payload becomes JSON text.
    pub fn into_core(self) -> TaskKind {
        match self {
            Kind::Handler { name, payload } => TaskKind::handler(name, payload.to_string()),
            Kind::Shell(s) => TaskKind::Shell(Box::new(s)),
            Kind::Container(c) => TaskKind::Container(Box::new(c)),
        }
    }

    /// The API form of a core kind. A payload that is not JSON text (which
    /// a validated spec never has) is shown as a JSON string.
    pub fn from_core(kind: &TaskKind) -> Self {
        match kind {
            TaskKind::Handler { name, payload } => Kind::Handler {
                name: name.to_string(),
                payload: serde_json::from_str(payload)
                    .unwrap_or_else(|_| Value::String(payload.to_string())),
            },
            TaskKind::Shell(s) => Kind::Shell((**s).clone()),
            TaskKind::Container(c) => Kind::Container((**c).clone()),
        }
    }

    /// What it runs, in a few words (`handler resize`, `echo hi`,
    /// `sh -c "…"`, `container alpine`), for listings.
    pub fn describe(&self) -> String {
        match self {
            Kind::Handler { name, .. } => format!("handler {name}"),
            Kind::Shell(s) => match &s.command {
                ShellCommand::Argv(a) => a.join(" "),
                ShellCommand::Script(s) => format!("sh -c {s:?}"),
            },
            Kind::Container(c) => format!("container {}", c.image),
        }
    }
}

/// `POST /tasks`: a task to submit. Only `kind` is required.
///
/// ```json
/// {"kind": {"type": "shell", "command": {"argv": ["echo", "hi"]}},
///  "queue": "default", "priority": "high", "delay_ms": 5000}
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    /// The work to do.
    pub kind: Kind,
    /// The named queue (default `default`).
    #[serde(default = "default_queue")]
    pub queue: String,
    /// `critical`, `high`, `normal` (default), `low`, or 0–255.
    #[serde(default)]
    pub priority: Priority,
    /// Free-form tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Worker labels required: `key` or `key=value`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<LabelReq>,
    /// Slots the task occupies (default 1).
    #[serde(default = "one")]
    pub slots: u32,
    /// Longest one attempt may run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Not before this instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_at: Option<Timestamp>,
    /// Must start before this instant, or it ends `expired`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
    /// Fail "no capable worker" after this long without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dispatch_timeout_ms: Option<u64>,
    /// How failures are retried (default: not at all).
    #[serde(default)]
    pub retry: RetryPolicy,
    /// Tasks that must succeed first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<TaskId>,
    /// While a live task has this key, submitting returns that task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unique_key: Option<String>,
    /// Lowest worker trust (0–1) it may run on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_trust: Option<f64>,
    /// Its concurrency key: tasks of different keys take turns in a queue,
    /// and the coordinator's key limits apply to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency_key: Option<String>,
    /// CPU and memory limits of each attempt: `{"cpus":1.5,"memory_bytes":536870912}`.
    #[serde(default, skip_serializing_if = "Resources::is_none")]
    pub resources: Resources,
    /// Text a shell task reads on its standard input (at most 1 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    /// The task that spawned this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<TaskId>,
    /// Not before this long after acceptance (sets `run_at`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    /// Expire if not started this long after it may first run (sets
    /// `expires_at`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_ms: Option<u64>,
}

fn default_queue() -> String {
    taskgrid_core::DEFAULT_QUEUE.to_owned()
}

fn one() -> u32 {
    1
}

/// Relative times of a [`SubmitRequest`], resolved when it is accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RelativeTimes {
    /// From `delay_ms`.
    pub delay: Option<Duration>,
    /// From `expires_in_ms`.
    pub expires_in: Option<Duration>,
}

impl SubmitRequest {
    /// A request for `kind` with every other field at its default.
    pub fn new(kind: Kind) -> Self {
        SubmitRequest::from_spec(&TaskSpec::new(kind.into_core()))
    }

    /// A handler task.
    pub fn handler(name: impl Into<String>, payload: Value) -> Self {
        SubmitRequest::new(Kind::Handler {
            name: name.into(),
            payload,
        })
    }

    /// A shell task running `argv` directly.
    pub fn shell<S: Into<String>>(argv: impl IntoIterator<Item = S>) -> Self {
        SubmitRequest::new(Kind::Shell(ShellSpec {
            command: ShellCommand::Argv(argv.into_iter().map(Into::into).collect()),
            env: Vec::new(),
            cwd: None,
        }))
    }

    /// The core spec and the relative times still to resolve.
    pub fn into_spec(self) -> (TaskSpec, RelativeTimes) {
        let times = RelativeTimes {
            delay: self.delay_ms.map(Duration::from_millis),
            expires_in: self.expires_in_ms.map(Duration::from_millis),
        };
        let spec = TaskSpec {
            kind: self.kind.into_core(),
            queue: Arc::from(self.queue),
            priority: self.priority,
            tags: self.tags,
            labels: self.labels,
            slots: self.slots,
            timeout: self.timeout_ms.map(Duration::from_millis),
            expires_at: self.expires_at,
            run_at: self.run_at,
            dispatch_timeout: self.dispatch_timeout_ms.map(Duration::from_millis),
            retry: self.retry,
            after: self.after,
            unique_key: self.unique_key,
            min_trust: self.min_trust,
            concurrency_key: self.concurrency_key.map(Arc::from),
            parent: self.parent,
            resources: (!self.resources.is_none()).then(|| Box::new(self.resources)),
            stdin: self.stdin.map(Arc::new),
        };
        (spec, times)
    }

    /// The API form of a stored spec (absolute times only).
    pub fn from_spec(spec: &TaskSpec) -> Self {
        SubmitRequest {
            kind: Kind::from_core(&spec.kind),
            queue: spec.queue.to_string(),
            priority: spec.priority,
            tags: spec.tags.clone(),
            labels: spec.labels.clone(),
            slots: spec.slots,
            timeout_ms: spec.timeout.map(taskgrid_core::duration_millis),
            run_at: spec.run_at,
            expires_at: spec.expires_at,
            dispatch_timeout_ms: spec.dispatch_timeout.map(taskgrid_core::duration_millis),
            retry: spec.retry,
            after: spec.after.clone(),
            unique_key: spec.unique_key.clone(),
            min_trust: spec.min_trust,
            concurrency_key: spec.concurrency_key.as_deref().map(str::to_owned),
            resources: spec.resources(),
            stdin: spec.stdin.as_deref().cloned(),
            parent: spec.parent,
            delay_ms: None,
            expires_in_ms: None,
        }
    }
}

/// The answer to a submit (`POST /tasks`, `POST /tasks/{id}/retry`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmitResponse {
    /// The task's id.
    pub id: TaskId,
    /// Its state right after acceptance.
    pub state: State,
    /// False when a live task with the same unique key was returned instead.
    pub created: bool,
}

/// `POST /tasks/batch`: tasks accepted all or none, in one commit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// The tasks, in order.
    pub tasks: Vec<SubmitRequest>,
}

/// The answer to a batch submit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchResponse {
    /// The ids, in the order of the request.
    pub ids: Vec<TaskId>,
}

/// A task as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskView {
    /// Its id.
    pub id: TaskId,
    /// What was asked (times resolved; `delay_ms`/`expires_in_ms` absent).
    pub spec: SubmitRequest,
    /// When it was accepted.
    pub created_at: Timestamp,
    /// Where it is now. `status.result` is the result as JSON text.
    pub status: TaskStatus,
    /// Last reported progress.
    #[serde(default)]
    pub progress: Option<Progress>,
    /// Last saved checkpoint (JSON text).
    #[serde(default)]
    pub checkpoint: Option<Box<str>>,
}

impl From<TaskRecord> for TaskView {
    fn from(r: TaskRecord) -> Self {
        TaskView {
            id: r.id,
            spec: SubmitRequest::from_spec(&r.spec),
            created_at: r.created_at,
            status: r.status,
            progress: r.progress,
            checkpoint: r.checkpoint,
        }
    }
}

/// `GET /tasks/{id}`: a task and its attempts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskDetail {
    /// The task.
    pub task: TaskView,
    /// Its attempts, oldest first.
    pub attempts: Vec<AttemptRecord>,
}

/// Which end of the id (submission) order `GET /tasks` starts from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ListOrder {
    /// Oldest first; `cursor` pages on to newer tasks.
    #[default]
    Oldest,
    /// Newest first; `cursor` pages on to older tasks.
    Newest,
}

/// `GET /tasks` query: every filter is optional; results are in id
/// `GET /api/v1/audit`: a page of the audit log, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Only entries numbered below this (the last `seq` of the previous
    /// page).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<u64>,
    /// Most entries returned (default 100, at most 1,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// (submission) order, oldest first unless `order` says otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only tasks in this state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<State>,
    /// Only tasks of this queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// Only tasks with this tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Only tasks that ran, or are running, on this worker: an attempt was
    /// assigned to it and it did not refuse it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// Only subtasks of this task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<TaskId>,
    /// Only tasks after this id: the `next_cursor` of the previous page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<TaskId>,
    /// Page size (default 100, capped by the server, e.g. at 1,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// Oldest (default) or newest first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<ListOrder>,
    /// Also return the whole grid's task count per state (`counts`),
    /// whatever the filters.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub counts: bool,
}

/// A page of tasks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskPage {
    /// The tasks, in the query's order.
    pub tasks: Vec<TaskView>,
    /// Pass as `cursor` for the next page; absent on the last page (also
    /// when it is full).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<TaskId>,
    /// The whole grid's tasks per state, when the query asked for `counts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counts: Option<std::collections::BTreeMap<State, u64>>,
}

/// What a cancel achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelOutcomeKind {
    /// It was not running: it is `cancelled` now.
    Cancelled,
    /// It is running: its executor was told to stop.
    Requested,
    /// It had already finished.
    AlreadyFinished,
}

/// The answer to `POST /tasks/{id}/cancel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelResponse {
    /// What the cancel achieved.
    pub outcome: CancelOutcomeKind,
    /// The task's state after it.
    pub state: State,
}

/// `POST /tasks/cancel` body (the tag may also be given as `?tag=`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CancelTagRequest {
    /// Cancel every live task with this tag.
    pub tag: String,
}

/// The answer to `POST /tasks/cancel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelTagResponse {
    /// How many live tasks were cancelled (or asked to stop).
    pub cancelled: usize,
}

/// `GET /tasks/{id}/output` query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputQuery {
    /// Only chunks after this sequence number (default 0: from the start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<u64>,
    /// Page size (default 1,000, capped by the server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// Stream chunks as SSE until the task ends, instead of one page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follow: Option<bool>,
}

/// One chunk of a task's output, with its sequence number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputEntry {
    /// Its position in the task's output (the SSE event id when followed).
    pub seq: u64,
    /// The attempt that produced it.
    pub attempt: u32,
    /// Which stream.
    pub stream: Stream,
    /// The text.
    pub data: String,
}

/// A page of output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputPage {
    /// The chunks, in order.
    pub chunks: Vec<OutputEntry>,
    /// Pass as `after` to read on (the last `seq`, or the `after` given).
    pub next_after: u64,
}

/// The data of the [`SSE_END`] event closing a followed output stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputEnd {
    /// The task.
    pub id: TaskId,
    /// Its terminal state.
    pub state: State,
    /// Exit code of the last attempt, for programs.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// The signal that killed the last attempt's program, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// The result as JSON text, when it succeeded.
    #[serde(default)]
    pub result: Option<Box<str>>,
    /// Why it did not succeed.
    #[serde(default)]
    pub error: Option<TaskFailure>,
}

/// A worker as the coordinator sees it (`GET /workers`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerView {
    /// Its id.
    pub id: WorkerId,
    /// Its labels, as `[key, value]` pairs.
    pub labels: Vec<(String, String)>,
    /// Its handlers.
    pub handlers: Vec<String>,
    /// It runs shell tasks.
    pub shell: bool,
    /// It runs container tasks.
    pub container: bool,
    /// Its slots.
    pub slots: u32,
    /// Slots' worth of tasks it holds ready beyond `slots`.
    #[serde(default)]
    pub prefetch: u32,
    /// Slots taken by its assigned and running tasks (at most `slots` +
    /// `prefetch`).
    pub used: u32,
    /// Recent success rate (0.5 for a new worker).
    pub trust: f64,
    /// Attempts it runs, as `[task, attempt]` pairs.
    pub running: Vec<(TaskId, u32)>,
    /// Its memory in bytes, as it said: tasks' `resources.memory_bytes`
    /// placed on it never add up to more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// Its CPUs, as it said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    /// Above this load per CPU of its host it is offered no new work.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_load: Option<f64>,
    /// What its last heartbeat said of its host: load per CPU, memory
    /// available, free disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<taskgrid_core::WorkerHealth>,
}

impl WorkerView {
    /// Its labels as written on the command line: `gpu`, `os=linux`.
    pub fn label_texts(&self) -> Vec<String> {
        self.labels
            .iter()
            .map(|(k, v)| {
                if v.is_empty() {
                    k.clone()
                } else {
                    format!("{k}={v}")
                }
            })
            .collect()
    }
}

/// `GET /events` query: every filter is optional.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventFilter {
    /// Only events of this task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<TaskId>,
    /// Only events of tasks in this queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// Only events of tasks with this tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

/// `GET /events/summary` query.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SummaryQuery {
    /// Task ids, comma-separated (at most [`SUMMARY_WATCH_MAX`]), whose
    /// state and progress the summaries carry when they change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watch: Option<String>,
}

/// One message of `/events/summary`: the cluster at a glance, sent at most
/// a few times a second and only when something happened, so that a
/// dashboard can follow any load for the price of a few small messages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// The last event (`/events` seq) this summary accounts for.
    pub seq: u64,
    /// When it was gathered.
    pub at: Timestamp,
    /// Counters since the coordinator started; a client takes differences
    /// between two summaries for rates.
    pub totals: TaskCounts,
    /// Tasks waiting: pending, queued or retrying.
    pub waiting: u64,
    /// Tasks assigned to a worker or running.
    pub running: u64,
    /// Workers connected (the local executor included).
    pub workers: u64,
    /// Their slots in total.
    pub slots: u64,
    /// Slots in use.
    pub used: u64,
    /// Watched tasks that changed since the previous summary, by id; every
    /// watched task, as it stands, in the first summary of a connection and
    /// whenever changes may have been missed (the connection or the
    /// coordinator fell behind).
    pub tasks: std::collections::BTreeMap<TaskId, WatchedTask>,
}

/// Where a watched task stands, in a [`Summary`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WatchedTask {
    /// Its state.
    pub state: State,
    /// Its last reported progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
}

/// Something that happened to a task: the data of an `/events` SSE event,
/// whose SSE id is `seq`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskEvent {
    /// Position in the coordinator's event stream (from 1, per process).
    pub seq: u64,
    /// The task.
    pub id: TaskId,
    /// When it happened.
    pub at: Timestamp,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

impl TaskEvent {
    /// The state this event moved its task into, if any.
    pub fn new_state(&self) -> Option<State> {
        match &self.kind {
            EventKind::Submitted { state, .. } => Some(*state),
            EventKind::State { to, .. } => Some(*to),
            _ => None,
        }
    }
}

/// The kinds of [`TaskEvent`], tagged by `event`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    /// The task was accepted.
    Submitted {
        /// Its queue.
        queue: String,
        /// Its first state.
        state: State,
        /// The task that spawned it.
        #[serde(default)]
        parent: Option<TaskId>,
    },
    /// The task changed state.
    State {
        /// The state it left.
        from: State,
        /// The state it entered.
        to: State,
        /// The attempt number.
        attempt: u32,
        /// The error, when it failed or is retrying.
        #[serde(default)]
        error: Option<TaskFailure>,
        /// The result (JSON text), when it succeeded.
        #[serde(default)]
        result: Option<Box<str>>,
    },
    /// The task reported progress.
    Progress(Progress),
    /// The task saved a checkpoint.
    Checkpoint,
    /// The task produced output.
    Output {
        /// Which stream.
        stream: Stream,
        /// The text.
        data: String,
    },
}

/// The data of a [`SSE_RESET`] event: events after `after` could not all be
/// replayed (the replay buffer no longer reaches back), so a client should
/// re-read the state it cares about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamReset {
    /// The last event id the client had.
    pub after: u64,
}

/// `GET /healthz` and `GET /readyz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// `ok`, or what is not.
    pub status: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn submit_request_round_trips_through_the_core_spec() {
        let json = r#"{"kind":{"type":"handler","name":"h","payload":{"n":1}},
            "priority":"high","tags":["a"],"timeout_ms":1500,"delay_ms":20}"#;
        let req: SubmitRequest = serde_json::from_str(json).expect("valid request");
        let (spec, times) = req.clone().into_spec();
        assert_eq!(spec.timeout, Some(Duration::from_millis(1500)));
        assert_eq!(times.delay, Some(Duration::from_millis(20)));
        assert_eq!(&*spec.queue, "default");
        assert!(
            matches!(&spec.kind, TaskKind::Handler { payload, .. } if &**payload == r#"{"n":1}"#)
        );
        let back = SubmitRequest::from_spec(&spec);
        assert_eq!(back.kind, req.kind);
        assert_eq!(back.delay_ms, None);
    }

    #[test]
    fn unknown_fields_are_refused_by_name() {
        let bad = r#"{"kind":{"type":"handler","name":"h"},"prio":"high"}"#;
        let err = serde_json::from_str::<SubmitRequest>(bad)
            .expect_err("unknown field")
            .to_string();
        assert!(err.contains("`prio`"), "{err}");
        let bad = r#"{"kind":{"type":"handler","name":"h","extra":1}}"#;
        assert!(serde_json::from_str::<SubmitRequest>(bad).is_err());
    }

    #[test]
    fn events_decode_with_their_kind_flattened() {
        let json = r#"{"seq":3,"id":"0190a0b0-0000-7000-8000-000000000001","at":5,
            "event":"state","from":"queued","to":"assigned","attempt":1}"#;
        let ev: TaskEvent = serde_json::from_str(json).expect("valid event");
        assert_eq!(ev.seq, 3);
        assert_eq!(ev.new_state(), Some(State::Assigned));
    }
}
