//! The shell executor: a [`ShellSpec`] checked against the worker's
//! [`ShellPolicy`], then run as a child process (directly for argv, under
//! `/bin/sh -c` for a script) with the task's environment added to the
//! worker's.

use std::io;
use std::path::Path;
use std::time::Duration;

use taskgrid_core::{Outcome, Resources, RetryHint, ShellSpec, StopReason, Stream};
use tokio::sync::{mpsc, watch};

use super::cgroup::AttemptGroup;
use super::exit::{self, never};
use super::policy::Program;
use super::process::{self, Attempt, Launch, Launcher, Stopper, Supervised};
use super::spawner::Spawner;
use super::{ExecLimits, ExecReport, ShellPolicy};

/// What a shell attempt is given besides its spec.
#[derive(Debug, Clone, Copy, Default)]
pub struct ShellInput<'a> {
    /// CPU and memory limits.
    pub resources: Resources,
    /// Standard input.
    pub stdin: Option<&'a str>,
    /// Run in a cgroup of its own even without limits (exact peak memory
    /// and CPU seconds, for about a millisecond of kernel work).
    pub own_cgroup: bool,
    /// Started by this spawner when the attempt runs in no cgroup (its
    /// peak memory then is its own, not the worker's; see [`Spawner`]).
    pub spawner: Option<&'a Spawner>,
}

/// Runs a shell task to its end.
///
/// - `input.stdin`: what the program reads on standard input, written to
///   a pipe that is closed at its end (`/dev/null` when absent); a program
///   that exits without reading it all is not an error.
/// - `input.own_cgroup`: a group even without limits (see below).
/// - `input.resources`: on Linux the attempt runs in its own cgroup with these
///   CPU and memory limits, and its CPU seconds and peak memory are the
///   group's; a process of it killed for exceeding the memory limit fails
///   the attempt with "out of memory". Without cgroups a memory limit is an
///   `RLIMIT_AS` (see [`cgroups`](super::cgroups)).
/// - `timeout`: the attempt is stopped with outcome
///   [`Outcome::TimedOut`] this long after the spawn.
/// - `stop`: the coordinator's stop requests. The attempt is stopped as soon
///   as the value is `Some` (with [`Outcome::Cancelled`] for
///   [`StopReason::Cancel`], [`Outcome::TimedOut`] for
///   [`StopReason::Timeout`]); if it already is, nothing is spawned. A
///   dropped sender means no stop will come.
/// - `output`: stdout and stderr chunks, in order within each stream. The
///   executor waits for room in the channel, so a full channel eventually
///   blocks the child on its pipe; a closed one is ignored and the output
///   drained.
///
/// A stop sends `SIGTERM` to the process group, then `SIGKILL` after
/// [`ExecLimits::kill_grace`]. When the report is returned the child is
/// reaped and every process left in its group has been killed.
///
/// Exit code 0 is [`Outcome::Succeeded`]; another code or a signal is
/// [`Outcome::Failed`] under the task's retry policy. A refusal by `policy`,
/// an invalid spec (NUL bytes, a bad variable name, a missing working
/// directory) and a program that cannot be found or executed fail with
/// [`RetryHint::Never`](taskgrid_core::RetryHint::Never) and a message
/// naming the cause.
pub async fn run_shell(
    spec: &ShellSpec,
    input: ShellInput<'_>,
    timeout: Option<Duration>,
    limits: &ExecLimits,
    policy: &ShellPolicy,
    stop: watch::Receiver<Option<StopReason>>,
    output: mpsc::Sender<(Stream, String)>,
) -> ExecReport {
    let program = match policy.admit(&spec.command, &spec.env) {
        Ok(program) => program,
        Err(message) => return ExecReport::not_started(never(message)),
    };
    if let Err(message) = validate(spec, &program) {
        return ExecReport::not_started(never(message));
    }
    let launch = launch(spec, &program);
    let mut cmd = launch.command();
    let resources = input.resources;
    // A group costs about a millisecond of kernel work per attempt (making,
    // joining and removing it), as much as a short task itself: only an
    // attempt with limits gets one.
    let cgroup = match (input.own_cgroup || !resources.is_none())
        .then(|| AttemptGroup::create(&mut cmd, resources))
        .transpose()
    {
        Ok(group) => group.flatten(),
        Err(e) => {
            return ExecReport::not_started(Outcome::failed(format!(
                "cannot make the attempt's cgroup: {e}"
            )));
        }
    };
    let attempt = Attempt {
        timeout,
        limits,
        stop,
        output,
        cgroup: cgroup.as_ref(),
        stdin: input.stdin,
    };
    // In no cgroup, and not wrapped for an `RLIMIT_AS`: the spawner can
    // start it, so that its peak memory is its own.
    let launcher = match input.spawner {
        #[cfg(target_os = "linux")]
        Some(spawner)
            if cgroup.is_none() && resources.memory_bytes.is_none() && spawner.is_alive() =>
        {
            Launcher::Spawner(spawner, launch)
        }
        _ => Launcher::Command(cmd),
    };
    let measured_alone = !matches!(launcher, Launcher::Command(_));
    match process::supervise(launcher, attempt, Stopper::Group).await {
        Supervised::NotStarted(reason) => ExecReport::not_started(exit::stopped_outcome(reason)),
        Supervised::SpawnFailed(e) => ExecReport::not_started(spawn_failure(&program.name, &e)),
        Supervised::Ended {
            exit,
            stopped,
            duration,
            output_truncated,
        } => {
            let mut report =
                exit::report(exit, stopped, duration, output_truncated, exit::plain_code);
            if cgroup.is_none() && !measured_alone && report.peak_rss_bytes <= own_peak_rss() {
                // A child starts as a copy of the worker, and the kernel
                // counts that copy's size in its peak (`ru_maxrss`): a
                // figure no larger than the worker's own says nothing of
                // the program. Not measured, rather than wrong.
                report.peak_rss_bytes = 0;
            }
            if let Some(group) = &cgroup {
                let m = group.measure();
                if let Some(cpu) = m.cpu_seconds {
                    report.cpu_seconds = cpu;
                }
                report.peak_rss_bytes = m.peak_bytes;
                let killed = report.signal == Some(nix::sys::signal::Signal::SIGKILL as i32);
                // Only a failure is explained by memory: a success stays one,
                // and a cancel or timeout is what was asked for.
                if m.oom_killed && matches!(report.outcome, Outcome::Failed { .. }) {
                    let limit = resources
                        .memory_bytes
                        .map(|b| format!(": it exceeded its memory limit of {}", bytes(b)))
                        .unwrap_or_default();
                    let how = if killed {
                        "killed"
                    } else {
                        "a process was killed"
                    };
                    report.outcome = Outcome::Failed {
                        message: format!("out of memory ({how}{limit})"),
                        retry: RetryHint::Policy,
                        exit_code: report.exit_code,
                    };
                }
            }
            report
        }
    }
}

/// This process's own peak resident memory (`VmHWM`), in bytes.
fn own_peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

/// `bytes` as a person reads it: `64 MiB`.
fn bytes(b: u64) -> String {
    if b.is_multiple_of(1 << 30) {
        format!("{} GiB", b >> 30)
    } else if b.is_multiple_of(1 << 20) {
        format!("{} MiB", b >> 20)
    } else {
        format!("{b} bytes")
    }
}

fn launch(spec: &ShellSpec, program: &Program) -> Launch {
    let mut env: Vec<(String, String)> = Vec::with_capacity(spec.env.len() + 1);
    if let Some(cwd) = &spec.cwd {
        // Shells trust an inherited $PWD that names the current directory;
        // the worker's own would be wrong here.
        if Path::new(cwd).is_absolute() {
            env.push(("PWD".to_owned(), cwd.clone()));
        }
    }
    env.extend(spec.env.iter().cloned());
    Launch {
        exec: program.exec.clone(),
        arg0: program.arg0.clone(),
        args: program.args.clone(),
        cwd: spec.cwd.clone(),
        env,
    }
}

/// Refuses what `exec` would reject, with a message that says what.
fn validate(spec: &ShellSpec, program: &Program) -> Result<(), String> {
    let has_nul = |s: &str| s.contains('\0');
    if has_nul(&program.name) || program.args.iter().any(|a| has_nul(a)) {
        return Err("the command contains a NUL byte".into());
    }
    for (k, v) in &spec.env {
        if k.is_empty() || k.contains('=') || has_nul(k) {
            return Err(format!("invalid environment variable name {k:?}"));
        }
        if has_nul(v) {
            return Err(format!("environment variable {k} contains a NUL byte"));
        }
    }
    if let Some(cwd) = &spec.cwd {
        match std::fs::metadata(cwd) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(format!("working directory {cwd:?} is not a directory")),
            Err(e) => return Err(format!("working directory {cwd:?}: {e}")),
        }
    }
    Ok(())
}

fn spawn_failure(name: &str, e: &io::Error) -> Outcome {
    match e.kind() {
        io::ErrorKind::NotFound => never(format!("program {name:?} not found")),
        io::ErrorKind::PermissionDenied => {
            never(format!("cannot execute {name:?}: permission denied"))
        }
        _ if e.raw_os_error() == Some(nix::errno::Errno::ENOEXEC as i32) => {
            never(format!("cannot execute {name:?}: not an executable format"))
        }
        // Out of processes, memory or descriptors: may pass on a retry.
        _ => Outcome::failed(format!("cannot start {name:?}: {e}")),
    }
}
