//! How a [`Change::Status`](taskgrid_core::Change::Status) maintains the
//! attempt history, decided once here so that every backend keeps the same
//! rows.

use taskgrid_core::{AttemptOutcome, State, TaskId, TaskStatus, Timestamp, Usage, WorkerId};

use crate::StoreError;

/// One write to the attempt history implied by a status change.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum AttemptOp<'a> {
    /// `queued → assigned`: a new attempt row.
    Assign {
        /// The attempt number.
        attempt: u32,
        /// The worker it was offered to.
        worker: &'a WorkerId,
        /// When.
        at: Timestamp,
    },
    /// `assigned → running`: the attempt started.
    Start {
        /// The attempt number.
        attempt: u32,
        /// When.
        at: Timestamp,
    },
    /// The change carries an attempt outcome: the attempt ended.
    Finish {
        /// The attempt number.
        attempt: u32,
        /// When.
        at: Timestamp,
        /// How it ended.
        outcome: AttemptOutcome,
        /// The error message, for failed and timed-out attempts.
        error: Option<&'a str>,
        /// The exit code the status reports.
        exit_code: Option<i32>,
        /// What the attempt cost, if measured.
        usage: Option<Usage>,
    },
}

/// The attempt writes for a status change of task `id` out of `from` into
/// `status` at `at`, in the order they apply (at most two).
pub(crate) fn attempt_ops<'a>(
    id: TaskId,
    from: State,
    at: Timestamp,
    status: &'a TaskStatus,
    outcome: Option<AttemptOutcome>,
) -> Result<[Option<AttemptOp<'a>>; 2], StoreError> {
    let attempt = status.attempt;
    let first = match (from, status.state) {
        (State::Queued, State::Assigned) => {
            let worker = status.worker.as_ref().ok_or_else(|| {
                StoreError::Invalid(format!(
                    "task {id}: attempt {attempt} assigned without a worker"
                ))
            })?;
            Some(AttemptOp::Assign {
                attempt,
                worker,
                at,
            })
        }
        (State::Assigned, State::Running) => Some(AttemptOp::Start { attempt, at }),
        _ => None,
    };
    let finish = outcome.map(|outcome| AttemptOp::Finish {
        attempt,
        at,
        outcome,
        error: match outcome {
            AttemptOutcome::Failed | AttemptOutcome::TimedOut => {
                status.error.as_ref().map(|e| e.message.as_str())
            }
            _ => None,
        },
        exit_code: status.exit_code,
        usage: status.usage,
    });
    Ok([first, finish])
}

/// What an attempt cost, from its stored columns: `None` unless CPU
/// seconds were recorded (a negative peak reads as 0).
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn usage_of(
    cpu_seconds: Option<f64>,
    peak_rss_bytes: Option<i64>,
    signal: Option<i32>,
) -> Option<Usage> {
    cpu_seconds.map(|cpu_seconds| Usage {
        cpu_seconds,
        peak_rss_bytes: u64::try_from(peak_rss_bytes.unwrap_or(0)).unwrap_or(0),
        signal,
    })
}

/// The outcome named `s` in the store.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn parse_outcome(s: &str) -> Option<AttemptOutcome> {
    use AttemptOutcome as O;
    [
        O::Rejected,
        O::Succeeded,
        O::Failed,
        O::TimedOut,
        O::Cancelled,
        O::Lost,
    ]
    .into_iter()
    .find(|o| o.as_str() == s)
}

/// The error of a duplicate assignment of `attempt` to task `id`.
pub(crate) fn duplicate_attempt(id: TaskId, attempt: u32) -> StoreError {
    StoreError::Invalid(format!("task {id}: attempt {attempt} is already recorded"))
}
