//! [`Task`]: a builder for the tasks an embedded system submits.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use taskgrid_core::{
    LabelReq, Priority, RetryPolicy, TaskId, TaskKind, TaskSpec, Timestamp, duration_micros,
};

/// A task to submit: a handler name, its payload, and how to run it.
///
/// ```
/// # use taskgrid_sdk::Task;
/// # use std::time::Duration;
/// let task = Task::handler("resize", &serde_json::json!({"image": "cat.png"}))
///     .priority("high".parse().unwrap())
///     .retries(3)
///     .timeout(Duration::from_secs(30))
///     .tag("thumbnails");
/// ```
#[derive(Debug, Clone)]
pub struct Task {
    spec: TaskSpec,
    delay: Option<Duration>,
    expires_in: Option<Duration>,
    payload_error: Option<String>,
}

/// A task's payload could not be serialised as JSON; nothing was submitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid payload: {0}")]
pub struct InvalidPayload(pub String);

impl Task {
    /// A task for handler `name` with `payload` serialised as JSON.
    pub fn handler<P: Serialize + ?Sized>(name: &str, payload: &P) -> Task {
        let (payload, payload_error) = match serde_json::to_string(payload) {
            Ok(p) => (p, None),
            Err(e) => ("null".to_owned(), Some(e.to_string())),
        };
        Task::from_spec(TaskSpec::new(TaskKind::handler(name, payload))).with_error(payload_error)
    }

    /// A task from a complete spec.
    pub fn from_spec(spec: TaskSpec) -> Task {
        Task {
            spec,
            delay: None,
            expires_in: None,
            payload_error: None,
        }
    }

    fn with_error(mut self, e: Option<String>) -> Self {
        self.payload_error = e;
        self
    }

    /// The named queue (default `default`).
    pub fn queue(mut self, queue: &str) -> Self {
        self.spec.queue = Arc::from(queue);
        self
    }
    /// The priority (default normal).
    pub fn priority(mut self, p: Priority) -> Self {
        self.spec.priority = p;
        self
    }
    /// Longest one attempt may run.
    pub fn timeout(mut self, d: Duration) -> Self {
        self.spec.timeout = Some(d);
        self
    }
    /// Retries after a failure, with the default exponential backoff.
    pub fn retries(mut self, n: u32) -> Self {
        self.spec.retry.max_retries = n;
        self
    }
    /// The whole retry policy.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.spec.retry = policy;
        self
    }
    /// Do not start before `d` from submission.
    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = Some(d);
        self
    }
    /// Do not start before this time.
    pub fn run_at(mut self, t: SystemTime) -> Self {
        let micros = t
            .duration_since(UNIX_EPOCH)
            .map(duration_micros)
            .unwrap_or(0);
        self.spec.run_at = Some(Timestamp::from_micros(micros));
        self
    }
    /// Expire (instead of running) if not started within `d` of when it may
    /// start (its `run_at` or delay, else its submission).
    pub fn expires_in(mut self, d: Duration) -> Self {
        self.expires_in = Some(d);
        self
    }
    /// Fail "no capable worker" if no worker could run it for `d`.
    pub fn dispatch_timeout(mut self, d: Duration) -> Self {
        self.spec.dispatch_timeout = Some(d);
        self
    }
    /// Adds a tag.
    pub fn tag(mut self, tag: &str) -> Self {
        self.spec.tags.push(tag.to_owned());
        self
    }
    /// Requires a worker label (`key` or `key=value`).
    pub fn label(mut self, label: LabelReq) -> Self {
        self.spec.labels.push(label);
        self
    }
    /// Run only after `id` has succeeded.
    pub fn after(mut self, id: TaskId) -> Self {
        self.spec.after.push(id);
        self
    }
    /// While a live task has this key, submitting returns that task.
    pub fn unique_key(mut self, key: &str) -> Self {
        self.spec.unique_key = Some(key.to_owned());
        self
    }
    /// Its concurrency key (`customer-42`): tasks of different keys take
    /// turns in their queue, and the coordinator's key limits apply to it.
    pub fn concurrency_key(mut self, key: &str) -> Self {
        self.spec.concurrency_key = Some(key.into());
        self
    }
    /// Slots the task occupies while running (default 1).
    pub fn slots(mut self, n: u32) -> Self {
        self.spec.slots = n;
        self
    }
    /// Run only on workers with at least this trust (0–1).
    pub fn min_trust(mut self, t: f64) -> Self {
        self.spec.min_trust = Some(t);
        self
    }
    /// The spec as it stands (relative times not yet resolved).
    pub fn spec(&self) -> &TaskSpec {
        &self.spec
    }

    /// The final spec, with relative times resolved against `now`.
    pub fn resolve(mut self, now: Timestamp) -> Result<TaskSpec, InvalidPayload> {
        if let Some(e) = self.payload_error {
            return Err(InvalidPayload(e));
        }
        if let Some(d) = self.delay {
            self.spec.run_at = Some(now.plus(d));
        }
        if let Some(d) = self.expires_in {
            self.spec.expires_at = Some(self.spec.run_at.unwrap_or(now).plus(d));
        }
        Ok(self.spec)
    }
}

impl From<TaskSpec> for Task {
    fn from(spec: TaskSpec) -> Self {
        Task::from_spec(spec)
    }
}
