//! What a client asks for: [`TaskSpec`] — the kind of work, where it may run,
//! when, how often it is retried, and what it waits for.
//!
//! A spec is immutable once accepted; everything that changes while a task
//! lives is in [`crate::TaskStatus`].

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{Priority, TaskId, Timestamp};

/// The queue every task goes to unless it names another.
pub const DEFAULT_QUEUE: &str = "default";

/// The work a task does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum TaskKind {
    /// A named handler registered by an executor, given a JSON payload.
    Handler {
        /// The handler's registered name.
        name: Arc<str>,
        /// The payload as JSON text (validated by whoever built the spec).
        payload: Box<str>,
    },
    /// A program run by the shell executor.
    Shell(Box<ShellSpec>),
    /// An image run by the container executor.
    Container(Box<ContainerSpec>),
}

impl TaskKind {
    /// A handler task with the given JSON payload text.
    pub fn handler(name: impl AsRef<str>, payload: impl Into<Box<str>>) -> Self {
        TaskKind::Handler {
            name: Arc::from(name.as_ref()),
            payload: payload.into(),
        }
    }

    /// What an executor must offer to run this kind.
    pub fn requirement(&self) -> ExecRequirement {
        match self {
            TaskKind::Handler { name, .. } => ExecRequirement::Handler(name.clone()),
            TaskKind::Shell(_) => ExecRequirement::Shell,
            TaskKind::Container(_) => ExecRequirement::Container,
        }
    }

    /// Bytes of caller-supplied data in this kind (payload, argv, env…),
    /// checked against the engine's payload limit.
    pub fn payload_len(&self) -> usize {
        let pairs =
            |v: &[(String, String)]| v.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
        match self {
            TaskKind::Handler { name, payload } => name.len() + payload.len(),
            TaskKind::Shell(s) => {
                let cmd = match &s.command {
                    ShellCommand::Argv(a) => a.iter().map(String::len).sum(),
                    ShellCommand::Script(s) => s.len(),
                };
                cmd + pairs(&s.env) + s.cwd.as_ref().map_or(0, String::len)
            }
            TaskKind::Container(c) => {
                c.image.len() + c.command.iter().map(String::len).sum::<usize>() + pairs(&c.env)
            }
        }
    }
}

/// A shell task: a program and its environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShellSpec {
    /// What to run.
    pub command: ShellCommand,
    /// Extra environment variables.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<(String, String)>,
    /// Working directory; the executor's own when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
}

/// The program of a shell task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ShellCommand {
    /// A program and its arguments, run directly.
    Argv(Vec<String>),
    /// A script run under `sh -c`.
    Script(String),
}

/// A container task: an image run with `--rm`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerSpec {
    /// The image reference.
    pub image: String,
    /// The command and arguments; the image's default when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Environment variables.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<(String, String)>,
}

/// The executor capability a task needs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ExecRequirement {
    /// A handler with this name.
    Handler(Arc<str>),
    /// The shell executor.
    Shell,
    /// The container executor.
    Container,
}

/// A label a worker must carry: `key` (present with any value) or `key=value`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct LabelReq {
    /// The label's key.
    pub key: String,
    /// The value it must have; any value when `None`.
    pub value: Option<String>,
}

impl LabelReq {
    /// Whether a worker with these labels satisfies the requirement.
    pub fn matches(&self, labels: &[(String, String)]) -> bool {
        labels
            .iter()
            .any(|(k, v)| *k == self.key && self.value.as_ref().is_none_or(|want| want == v))
    }
}

/// A label requirement that is not `key` or `key=value` with a non-empty key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid label {0:?}: expected key or key=value with a non-empty key")]
pub struct ParseLabelError(pub String);

impl std::str::FromStr for LabelReq {
    type Err = ParseLabelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (key, value) = match s.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim().to_owned())),
            None => (s.trim(), None),
        };
        if key.is_empty() || key.chars().any(char::is_whitespace) {
            return Err(ParseLabelError(s.to_owned()));
        }
        Ok(LabelReq {
            key: key.to_owned(),
            value,
        })
    }
}

impl TryFrom<String> for LabelReq {
    type Error = ParseLabelError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<LabelReq> for String {
    fn from(l: LabelReq) -> String {
        match l.value {
            Some(v) => format!("{}={v}", l.key),
            None => l.key,
        }
    }
}

/// How a failed task is retried.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Retries after the first attempt; 0 means a failure is final.
    pub max_retries: u32,
    /// Delay before the first retry.
    #[serde(with = "crate::spec::duration_ms")]
    pub initial_backoff: Duration,
    /// The delay never grows past this.
    #[serde(with = "crate::spec::duration_ms")]
    pub max_backoff: Duration,
    /// Each retry waits this many times longer than the one before.
    pub multiplier: f64,
    /// Fraction (0–1) of each delay that is randomised to spread retries out.
    pub jitter: f64,
}

impl RetryPolicy {
    /// Default delay before the first retry: 1 s.
    pub const INITIAL_BACKOFF_DEFAULT: Duration = Duration::from_secs(1);
    /// Default cap on the retry delay: 5 min.
    pub const MAX_BACKOFF_DEFAULT: Duration = Duration::from_secs(300);

    /// No retries.
    pub const NONE: RetryPolicy = RetryPolicy {
        max_retries: 0,
        initial_backoff: Self::INITIAL_BACKOFF_DEFAULT,
        max_backoff: Self::MAX_BACKOFF_DEFAULT,
        multiplier: 2.0,
        jitter: 0.2,
    };

    /// `n` retries with the default exponential backoff.
    pub fn retries(n: u32) -> Self {
        RetryPolicy {
            max_retries: n,
            ..Self::NONE
        }
    }

    /// The delay before retry number `retry` (1-based), given `unit` drawn
    /// uniformly from [0, 1): exponential, capped, then jittered downwards.
    pub fn backoff(&self, retry: u32, unit: f64) -> Duration {
        let exp = retry.saturating_sub(1).min(64) as i32;
        let base = self.initial_backoff.as_secs_f64() * self.multiplier.powi(exp);
        let capped = base.min(self.max_backoff.as_secs_f64());
        let jittered = capped * (1.0 - self.jitter * unit);
        Duration::from_secs_f64(jittered.max(0.0))
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self::NONE
    }
}

/// Everything a client says about a task when submitting it.
///
/// Serialized (the store's and the worker protocol's form), a field at its
/// default is left out, and read, one left out takes its default: a no-op
/// task's spec is its kind alone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    /// The work to do.
    pub kind: TaskKind,
    /// The named queue (default `default`).
    #[serde(default = "default_queue", skip_serializing_if = "is_default_queue")]
    pub queue: Arc<str>,
    /// Dispatch order: higher first.
    #[serde(default, skip_serializing_if = "is_normal")]
    pub priority: Priority,
    /// Free-form tags, for filtering and cancelling in bulk.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Labels the executing worker must carry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<LabelReq>,
    /// Slots the task occupies on its worker (default 1).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub slots: u32,
    /// Longest one attempt may run before it is `timed_out`.
    #[serde(
        default,
        with = "crate::spec::opt_duration_ms",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    /// The task must start before this instant or it ends `expired`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
    /// Not before this instant (a delay or ETA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_at: Option<Timestamp>,
    /// If no connected worker could run it for this long, it fails with
    /// "no capable worker" instead of waiting forever.
    #[serde(
        default,
        with = "crate::spec::opt_duration_ms",
        skip_serializing_if = "Option::is_none"
    )]
    pub dispatch_timeout: Option<Duration>,
    /// How failures are retried.
    #[serde(default, skip_serializing_if = "is_no_retry")]
    pub retry: RetryPolicy,
    /// Tasks that must succeed before this one may run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<TaskId>,
    /// While a task with this key is not terminal, submitting another with
    /// the same key returns the first one's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unique_key: Option<String>,
    /// Lowest worker trust (0–1) this task may run on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_trust: Option<f64>,
    /// Its concurrency key (`customer-42`): tasks of different keys take
    /// turns in their queue, and the coordinator's key limits (how many at
    /// once, how many per period) apply to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency_key: Option<Arc<str>>,
    /// The task that spawned this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<TaskId>,
    /// CPU and memory limits of each attempt (shell tasks run in a cgroup
    /// with them where the worker has cgroups).
    /// (Boxed, as `stdin`: most tasks have neither, and the engine holds
    /// every live task.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Box<Resources>>,
    /// Text a shell task's program reads on its standard input (at most
    /// [`TaskSpec::STDIN_MAX`] bytes); `/dev/null` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<Arc<String>>,
}

/// CPU and memory limits a task asks for; unset means unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// CPUs' worth of time per wall-clock second (`1.5`: one and a half).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    /// Memory in bytes; a task that needs more ends "out of memory".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
}

impl Resources {
    /// The least memory a limit may give: 1 MiB.
    pub const MEMORY_MIN: u64 = 1 << 20;
    /// The most CPUs a limit may give.
    pub const CPUS_MAX: f64 = 4096.0;

    /// Whether no limit is set.
    pub fn is_none(&self) -> bool {
        self.cpus.is_none() && self.memory_bytes.is_none()
    }
}

fn default_queue() -> Arc<str> {
    Arc::from(DEFAULT_QUEUE)
}

fn one() -> u32 {
    1
}

fn is_default_queue(q: &Arc<str>) -> bool {
    &**q == DEFAULT_QUEUE
}

fn is_normal(p: &Priority) -> bool {
    *p == Priority::NORMAL
}

fn is_one(n: &u32) -> bool {
    *n == 1
}

fn is_no_retry(r: &RetryPolicy) -> bool {
    *r == RetryPolicy::NONE
}

impl TaskSpec {
    /// The most standard input a task may carry: 1 MiB.
    pub const STDIN_MAX: usize = 1 << 20;

    /// A spec for `kind` with every other field at its default.
    pub fn new(kind: TaskKind) -> Self {
        TaskSpec {
            kind,
            queue: default_queue(),
            priority: Priority::NORMAL,
            tags: Vec::new(),
            labels: Vec::new(),
            slots: 1,
            timeout: None,
            expires_at: None,
            run_at: None,
            dispatch_timeout: None,
            retry: RetryPolicy::NONE,
            after: Vec::new(),
            unique_key: None,
            min_trust: None,
            concurrency_key: None,
            parent: None,
            resources: None,
            stdin: None,
        }
    }

    /// Its CPU and memory limits (none when unset).
    pub fn resources(&self) -> Resources {
        self.resources.as_deref().copied().unwrap_or_default()
    }

    /// Sets its CPU and memory limits.
    pub fn set_resources(&mut self, r: Resources) {
        self.resources = (!r.is_none()).then(|| Box::new(r));
    }
}

/// Serde for a [`Duration`] as whole milliseconds.
pub(crate) mod duration_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(crate::duration_millis(*d))
    }
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

/// Serde for an optional [`Duration`] as whole milliseconds.
pub(crate) mod opt_duration_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&crate::duration_millis(*d)),
            None => s.serialize_none(),
        }
    }
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_jitters_down() {
        let p = RetryPolicy {
            max_retries: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            multiplier: 2.0,
            jitter: 0.5,
        };
        assert_eq!(p.backoff(1, 0.0), Duration::from_millis(100));
        assert_eq!(p.backoff(2, 0.0), Duration::from_millis(200));
        assert_eq!(p.backoff(3, 0.0), Duration::from_millis(400));
        assert_eq!(p.backoff(9, 0.0), Duration::from_secs(1));
        assert_eq!(p.backoff(9, 0.999_999).as_millis(), 500);
        assert_eq!(p.backoff(u32::MAX, 0.0), Duration::from_secs(1));
    }

    #[test]
    fn labels_match_by_key_or_key_value() {
        let have = vec![
            ("os".to_owned(), "linux".to_owned()),
            ("gpu".to_owned(), String::new()),
        ];
        assert!("gpu".parse::<LabelReq>().unwrap().matches(&have));
        assert!("os=linux".parse::<LabelReq>().unwrap().matches(&have));
        assert!(!"os=mac".parse::<LabelReq>().unwrap().matches(&have));
        assert!(!"arch".parse::<LabelReq>().unwrap().matches(&have));
        assert!("=x".parse::<LabelReq>().is_err());
    }

    #[test]
    fn a_spec_is_serialized_without_its_defaults_and_reads_back_whole() {
        let spec = TaskSpec::new(TaskKind::handler("h", "1"));
        let text = serde_json::to_string(&spec).unwrap();
        assert_eq!(
            text,
            r#"{"kind":{"type":"handler","name":"h","payload":"1"}}"#
        );
        assert_eq!(serde_json::from_str::<TaskSpec>(&text).unwrap(), spec);

        let mut other = spec;
        other.queue = "q".into();
        other.priority = Priority::HIGH;
        other.slots = 2;
        other.retry.max_retries = 3;
        let text = serde_json::to_string(&other).unwrap();
        for field in ["queue", "priority", "slots", "retry"] {
            assert!(text.contains(&format!("\"{field}\"")), "{field} in {text}");
        }
        assert_eq!(serde_json::from_str::<TaskSpec>(&text).unwrap(), other);
    }

    #[test]
    fn spec_json_rejects_unknown_fields() {
        let ok = r#"{"kind":{"type":"handler","name":"h","payload":"1"},"priority":"high"}"#;
        let spec: TaskSpec = serde_json::from_str(ok).unwrap();
        assert_eq!(spec.priority, Priority::HIGH);
        assert_eq!(&*spec.queue, "default");
        let bad = r#"{"kind":{"type":"handler","name":"h","payload":"1"},"prio":"high"}"#;
        let err = serde_json::from_str::<TaskSpec>(bad)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `prio`"), "{err}");
    }
}
