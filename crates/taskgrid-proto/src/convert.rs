//! Conversions between wire messages and the core model. Everything that
//! arrives from the network is checked here and refused with a
//! [`ConvertError`] naming what is wrong, never unwrapped.

use std::collections::HashMap;
use std::time::Duration;

use taskgrid_core::{
    Assignment, ContainerSpec, Outcome, Resources, RetryHint, ShellCommand, ShellSpec, Stream,
    TaskId, TaskKind,
};

use crate::worker;

/// A wire message that does not make sense.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConvertError {
    /// A required field is missing.
    #[error("missing field {0}")]
    Missing(&'static str),
    /// A task id that is not a task id.
    #[error("invalid task id {0:?}")]
    BadTaskId(String),
    /// A field has a value outside its range.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// The task id and attempt an [`worker::AttemptRef`] names.
pub fn task_id(r: Option<&worker::AttemptRef>) -> Result<(TaskId, u32), ConvertError> {
    let r = r.ok_or(ConvertError::Missing("attempt"))?;
    let id = r
        .task_id
        .parse()
        .map_err(|_| ConvertError::BadTaskId(r.task_id.clone()))?;
    if r.attempt == 0 {
        return Err(ConvertError::Invalid {
            field: "attempt",
            reason: "attempts are numbered from 1".into(),
        });
    }
    Ok((id, r.attempt))
}

/// The wire form of an attempt reference.
pub fn attempt_ref(id: TaskId, attempt: u32) -> worker::AttemptRef {
    worker::AttemptRef {
        task_id: id.to_string(),
        attempt,
    }
}

fn env_map(env: &[(String, String)]) -> HashMap<String, String> {
    env.iter().cloned().collect()
}

fn env_vec(env: &HashMap<String, String>) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    v.sort();
    v
}

/// The wire form of an engine assignment.
pub fn assignment_from_core(a: &Assignment) -> worker::Assignment {
    use worker::assignment::Kind;
    let kind = match &a.kind {
        TaskKind::Handler { name, payload } => Kind::Handler(worker::HandlerTask {
            name: name.to_string(),
            payload_json: payload.to_string(),
        }),
        TaskKind::Shell(s) => Kind::Shell(worker::ShellTask {
            command: Some(match &s.command {
                ShellCommand::Argv(args) => {
                    worker::shell_task::Command::Argv(worker::Argv { args: args.clone() })
                }
                ShellCommand::Script(s) => worker::shell_task::Command::Script(s.clone()),
            }),
            env: env_map(&s.env),
            cwd: s.cwd.clone().unwrap_or_default(),
        }),
        TaskKind::Container(c) => Kind::Container(worker::ContainerTask {
            image: c.image.clone(),
            command: c.command.clone(),
            env: env_map(&c.env),
        }),
    };
    worker::Assignment {
        attempt: Some(attempt_ref(a.id, a.attempt)),
        kind: Some(kind),
        timeout_ms: a.timeout.map_or(0, taskgrid_core::duration_millis),
        checkpoint_json: a.checkpoint.as_deref().unwrap_or_default().to_owned(),
        slots: a.slots,
        cpus: a.resources.cpus.unwrap_or(0.0),
        memory_bytes: a.resources.memory_bytes.unwrap_or(0),
        stdin: a.stdin.as_deref().cloned(),
    }
}

/// The task kind of a wire assignment (on the worker side).
pub fn kind_to_core(a: &worker::Assignment) -> Result<TaskKind, ConvertError> {
    use worker::assignment::Kind;
    Ok(
        match a.kind.as_ref().ok_or(ConvertError::Missing("kind"))? {
            Kind::Handler(h) => TaskKind::handler(&h.name, h.payload_json.as_str()),
            Kind::Shell(s) => TaskKind::Shell(Box::new(ShellSpec {
                command: match s
                    .command
                    .as_ref()
                    .ok_or(ConvertError::Missing("shell.command"))?
                {
                    worker::shell_task::Command::Argv(a) => ShellCommand::Argv(a.args.clone()),
                    worker::shell_task::Command::Script(s) => ShellCommand::Script(s.clone()),
                },
                env: env_vec(&s.env),
                cwd: Some(s.cwd.clone()).filter(|c| !c.is_empty()),
            })),
            Kind::Container(c) => TaskKind::Container(Box::new(ContainerSpec {
                image: c.image.clone(),
                command: c.command.clone(),
                env: env_vec(&c.env),
            })),
        },
    )
}

/// The CPU and memory limits of a wire assignment (0 is none).
pub fn resources_of(a: &worker::Assignment) -> Resources {
    Resources {
        cpus: (a.cpus.is_finite() && a.cpus > 0.0).then_some(a.cpus),
        memory_bytes: (a.memory_bytes > 0).then_some(a.memory_bytes),
    }
}

/// The timeout of a wire assignment.
pub fn timeout_of(a: &worker::Assignment) -> Option<Duration> {
    (a.timeout_ms > 0).then(|| Duration::from_millis(a.timeout_ms))
}

/// The core outcome a wire result reports.
pub fn outcome_from_result(r: &worker::Result) -> Result<Outcome, ConvertError> {
    use worker::result::Outcome as O;
    Ok(
        match r.outcome.as_ref().ok_or(ConvertError::Missing("outcome"))? {
            O::Succeeded(s) => Outcome::Succeeded {
                result: Some(s.result_json.clone().into_boxed_str()).filter(|r| !r.is_empty()),
                exit_code: r.exit_code,
            },
            O::Failed(f) => Outcome::Failed {
                message: f.message.clone(),
                retry: match worker::failed::Retry::try_from(f.retry) {
                    Ok(worker::failed::Retry::Policy) => RetryHint::Policy,
                    Ok(worker::failed::Retry::After) => {
                        RetryHint::After(Duration::from_millis(f.retry_after_ms))
                    }
                    Ok(worker::failed::Retry::Never) => RetryHint::Never,
                    Err(_) => {
                        return Err(ConvertError::Invalid {
                            field: "failed.retry",
                            reason: format!("unknown value {}", f.retry),
                        });
                    }
                },
                exit_code: r.exit_code,
            },
            O::TimedOut(_) => Outcome::TimedOut,
            O::Cancelled(_) => Outcome::Cancelled,
        },
    )
}

/// The wire result for a core outcome (on the worker side).
pub fn result_from_outcome(id: TaskId, attempt: u32, outcome: &Outcome) -> worker::Result {
    use worker::result::Outcome as O;
    let (o, exit_code) = match outcome {
        Outcome::Succeeded { result, exit_code } => (
            O::Succeeded(worker::Succeeded {
                result_json: result.as_deref().unwrap_or_default().to_owned(),
            }),
            *exit_code,
        ),
        Outcome::Failed {
            message,
            retry,
            exit_code,
        } => {
            let (retry, after) = match retry {
                RetryHint::Policy => (worker::failed::Retry::Policy, 0),
                RetryHint::After(d) => (
                    worker::failed::Retry::After,
                    taskgrid_core::duration_millis(*d),
                ),
                RetryHint::Never => (worker::failed::Retry::Never, 0),
            };
            (
                O::Failed(worker::Failed {
                    message: message.clone(),
                    retry: retry as i32,
                    retry_after_ms: after,
                }),
                *exit_code,
            )
        }
        Outcome::TimedOut => (O::TimedOut(worker::Empty {}), None),
        Outcome::Cancelled => (O::Cancelled(worker::Empty {}), None),
    };
    worker::Result {
        attempt: Some(attempt_ref(id, attempt)),
        outcome: Some(o),
        exit_code,
        ..Default::default()
    }
}

/// The core stream of a wire stream value.
pub fn stream_to_core(s: i32) -> Result<Stream, ConvertError> {
    match worker::Stream::try_from(s) {
        Ok(worker::Stream::Stdout) => Ok(Stream::Stdout),
        Ok(worker::Stream::Stderr) => Ok(Stream::Stderr),
        Ok(worker::Stream::Log) => Ok(Stream::Log),
        Err(_) => Err(ConvertError::Invalid {
            field: "stream",
            reason: format!("unknown value {s}"),
        }),
    }
}

/// The wire stream value of a core stream.
pub fn stream_from_core(s: Stream) -> i32 {
    (match s {
        Stream::Stdout => worker::Stream::Stdout,
        Stream::Stderr => worker::Stream::Stderr,
        Stream::Log => worker::Stream::Log,
    }) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_assignment_round_trips() {
        let a = Assignment {
            id: TaskId::from_u128(42),
            attempt: 3,
            worker: taskgrid_core::WorkerId::new("w"),
            kind: TaskKind::Shell(Box::new(ShellSpec {
                command: ShellCommand::Argv(vec!["echo".into(), "hi".into()]),
                env: vec![("A".into(), "1".into())],
                cwd: Some("/tmp".into()),
            })),
            timeout: Some(Duration::from_secs(2)),
            checkpoint: Some("{\"n\":1}".into()),
            slots: 2,
            resources: Resources {
                cpus: Some(1.5),
                memory_bytes: Some(64 << 20),
            },
            stdin: Some(std::sync::Arc::new("line\n".into())),
        };
        let wire = assignment_from_core(&a);
        assert_eq!(kind_to_core(&wire).unwrap(), a.kind);
        assert_eq!(timeout_of(&wire), a.timeout);
        assert_eq!(wire.slots, 2);
        assert_eq!(resources_of(&wire), a.resources);
        assert_eq!(wire.stdin.as_deref(), Some("line\n"));
        assert_eq!(task_id(wire.attempt.as_ref()).unwrap(), (a.id, 3));
    }

    #[test]
    fn outcomes_round_trip() {
        let id = TaskId::from_u128(1);
        for o in [
            Outcome::ok(),
            Outcome::Succeeded {
                result: Some("[1]".into()),
                exit_code: Some(0),
            },
            Outcome::Failed {
                message: "x".into(),
                retry: RetryHint::After(Duration::from_millis(250)),
                exit_code: Some(2),
            },
            Outcome::Failed {
                message: "y".into(),
                retry: RetryHint::Never,
                exit_code: None,
            },
            Outcome::TimedOut,
            Outcome::Cancelled,
        ] {
            assert_eq!(
                outcome_from_result(&result_from_outcome(id, 1, &o)).unwrap(),
                o
            );
        }
    }

    #[test]
    fn malformed_frames_are_refused_with_a_reason() {
        assert_eq!(task_id(None), Err(ConvertError::Missing("attempt")));
        let bad = worker::AttemptRef {
            task_id: "nope".into(),
            attempt: 1,
        };
        assert_eq!(
            task_id(Some(&bad)),
            Err(ConvertError::BadTaskId("nope".into()))
        );
        let zero = worker::AttemptRef {
            task_id: TaskId::from_u128(1).to_string(),
            attempt: 0,
        };
        assert!(matches!(
            task_id(Some(&zero)),
            Err(ConvertError::Invalid {
                field: "attempt",
                ..
            })
        ));
        let no_outcome = worker::Result::default();
        assert_eq!(
            outcome_from_result(&no_outcome),
            Err(ConvertError::Missing("outcome"))
        );
        assert!(stream_to_core(7).is_err());
        assert!(kind_to_core(&worker::Assignment::default()).is_err());
    }
}
