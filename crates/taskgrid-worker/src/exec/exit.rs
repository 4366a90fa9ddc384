//! How a process's end becomes an [`Outcome`]: exit codes, signals, stops,
//! and the failures that happen before or instead of an exit.

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::Duration;

use nix::sys::signal::Signal;
use taskgrid_core::{Outcome, RetryHint, StopReason};

use super::ExecReport;
use super::group::Reaped;

/// What a non-zero exit code means for the program that returned it.
pub(crate) type DescribeCode = fn(i32) -> String;

/// The shell executor's reading: the program's own code.
pub(crate) fn plain_code(code: i32) -> String {
    format!("exited with code {code}")
}

/// The report of a process that ran: its exit and usage, and an outcome
/// that a stop decides whatever the exit status was.
pub(crate) fn report(
    exit: io::Result<Reaped>,
    stopped: Option<StopReason>,
    duration: Duration,
    output_truncated: bool,
    describe: DescribeCode,
) -> ExecReport {
    let mut report = ExecReport::not_started(Outcome::TimedOut);
    report.duration = duration;
    report.output_truncated = output_truncated;
    let outcome = match exit {
        Ok(r) => {
            report.exit_code = r.status.code();
            report.signal = r.status.signal();
            report.cpu_seconds = r.cpu_seconds;
            report.peak_rss_bytes = r.peak_rss_bytes;
            outcome(r.status, describe)
        }
        Err(e) => Outcome::failed(format!("lost track of the process: {e}")),
    };
    report.outcome = match stopped {
        Some(reason) => stopped_outcome(reason),
        None => outcome,
    };
    report
}

/// The outcome of an attempt that was stopped.
pub(crate) fn stopped_outcome(reason: StopReason) -> Outcome {
    match reason {
        StopReason::Timeout => Outcome::TimedOut,
        StopReason::Cancel => Outcome::Cancelled,
    }
}

/// The outcome of a process that ended with `status` on its own.
fn outcome(status: ExitStatus, describe: DescribeCode) -> Outcome {
    match (status.code(), status.signal()) {
        (Some(0), _) => Outcome::Succeeded {
            result: None,
            exit_code: Some(0),
        },
        (Some(code), _) => Outcome::Failed {
            message: describe(code),
            retry: RetryHint::Policy,
            exit_code: Some(code),
        },
        (None, Some(sig)) => Outcome::Failed {
            message: format!("killed by signal {}", signal_name(sig)),
            retry: RetryHint::Policy,
            exit_code: None,
        },
        (None, None) => Outcome::failed(format!("ended with status {status}")),
    }
}

/// `SIGKILL (9)`, or just the number for a signal nix does not know.
pub(crate) fn signal_name(sig: i32) -> String {
    match Signal::try_from(sig) {
        Ok(s) => format!("{} ({sig})", s.as_str()),
        Err(_) => format!("{sig}"),
    }
}

/// A failure that retrying on this worker cannot fix.
pub(crate) fn never(message: impl Into<String>) -> Outcome {
    Outcome::Failed {
        message: message.into(),
        retry: RetryHint::Never,
        exit_code: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_signals_read_as_the_brief_says() {
        let ok = outcome(ExitStatus::from_raw(0), plain_code);
        assert_eq!(
            ok,
            Outcome::Succeeded {
                result: None,
                exit_code: Some(0)
            }
        );
        let failed = outcome(ExitStatus::from_raw(3 << 8), plain_code);
        assert_eq!(
            failed,
            Outcome::Failed {
                message: "exited with code 3".into(),
                retry: RetryHint::Policy,
                exit_code: Some(3)
            }
        );
        let killed = outcome(ExitStatus::from_raw(9), plain_code);
        let Outcome::Failed { message, .. } = killed else {
            panic!("{killed:?}")
        };
        assert_eq!(message, "killed by signal SIGKILL (9)");
        let reaped = Reaped {
            status: ExitStatus::from_raw(15),
            cpu_seconds: 0.5,
            peak_rss_bytes: 1,
        };
        let stopped = report(
            Ok(reaped),
            Some(StopReason::Timeout),
            Duration::ZERO,
            false,
            plain_code,
        );
        assert_eq!(stopped.outcome, Outcome::TimedOut);
        assert_eq!((stopped.exit_code, stopped.signal), (None, Some(15)));
        assert_eq!(stopped.cpu_seconds, 0.5);
    }
}
