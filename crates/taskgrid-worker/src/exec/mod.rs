//! The executors of a worker: they run one attempt of a shell or container
//! task as a child process and say how it ended.
//!
//! [`run_shell`] and [`run_container`] own everything between "start this"
//! and the [`ExecReport`]: policy checks, spawning the child in its own
//! process group, streaming its stdout and stderr as chunks, enforcing the
//! timeout and reacting to a stop request, killing the whole process group,
//! and measuring the CPU time and peak memory of the attempt. They know
//! nothing of the coordinator: the caller turns a stop request into a value
//! on a [`tokio::sync::watch`] channel and forwards the output chunks and the
//! report.
//!
//! ## Limits and cgroups
//!
//! A shell task with CPU or memory limits (`resources`) runs in a cgroup of
//! its own, made for the attempt and removed after it (see the `cgroup`
//! module): v2 where the worker's group can hand down the memory
//! controller, else v1's memory, cpu and cpuacct hierarchies. The group
//! enforces the limits, its figures replace the process's (CPU seconds of
//! every process in it, the peak memory of them all), and a process the
//! kernel killed for exceeding the memory limit makes the attempt fail
//! "out of memory". A group costs about a millisecond of kernel work
//! (measured: mkdir, moving the spawning thread in and out, rmdir), as much
//! as a short task, so a task without limits gets none. Without usable
//! cgroups a memory limit is an `RLIMIT_AS` set by `/bin/sh` before it
//! `exec`s the program, and a CPU limit is not enforced; the worker says
//! which at start-up ([`cgroups`]).
//!
//! ## Processes and signals
//!
//! The child runs in a new process group whose id is its pid, with stdin on
//! `/dev/null`. A stop (a timeout or a [`StopReason`] on the watch channel)
//! sends `SIGTERM` to the group and `SIGKILL` [`ExecLimits::kill_grace`]
//! later if the main process has not exited. Whenever the main process exits
//! — on its own or because it was stopped — whatever is left of its group
//! gets `SIGKILL` at once, like the rest of a container when its init dies:
//! a task's background processes never outlive it, and they cannot keep its
//! output pipes open. A process that leaves the group (`setsid`, a
//! daemonizing double fork) escapes this; only a cgroup could follow it.
//!
//! ## Reaping and resource usage
//!
//! Tokio's `Child::wait` does not return `rusage`, and
//! `getrusage(RUSAGE_CHILDREN)` deltas mix up attempts that run at the same
//! time (and its `ru_maxrss` is a maximum over every child ever, not a
//! delta). So each child is spawned with `std::process`, its pipes handed to
//! tokio, and a reaping task waits for it in three steps: the child's exit
//! (on Linux through a pidfd that the runtime's own event loop watches;
//! elsewhere, or without pidfds, on a blocking-pool thread in `waitid` with
//! `WNOWAIT`), leaving it dead but not reaped, so its pid — the process
//! group id — cannot be reused; `killpg(SIGKILL)` for the rest of the group;
//! then `wait4` on that one pid, which returns its exit status and its own
//! `rusage` (including the descendants it waited for). Signals from the
//! async side and the reaping take the same lock, so a signal is never sent
//! to a process group id after it was released. With a pidfd, only a group
//! that outlives its leader costs a blocking thread, to wait (briefly) for
//! it to die; without, every attempt holds one while it runs. The
//! reaping task is spawned, so a child is reaped even if its attempt is
//! dropped (though not if the whole runtime shuts down first, as when the
//! worker process exits). The workspace forbids `unsafe`, so `wait4` comes from the small
//! `wait4` crate, `waitid`/`killpg` from `nix` and `pidfd_open` from `rustix`.
//!
//! ## The spawner
//!
//! Linux counts in a process's `ru_maxrss` the memory it replaced at
//! `exec`: for a child of the worker, the worker's whole size. So a shell
//! attempt in no cgroup is started, where the worker was given one, by a
//! [`Spawner`]: a fresh `exec` of the worker's program (`taskgrid
//! __spawner`) that does nothing else, so the task's peak is its own (or
//! the spawner's ~7 MiB, for a task smaller than that). The spawner
//! receives the child's pipes over a Unix socket, reaps it exactly as above
//! and sends back its status and `rusage`; signals go through it, under the
//! same lock as its reaping. It kills every task it still runs when the
//! worker's end of the socket closes, even on `kill -9`. Without it (a
//! program embedding the worker that does not serve `__spawner`, or a
//! spawner that died), the worker spawns by itself and a task's peak memory
//! is reported as 0 when it is no more than the worker's own: not
//! measured, rather than wrong.
//!
//! Dropping a `run_*` future before it finishes kills the process group with
//! `SIGKILL` (a container is removed with `<runtime> rm -f`).
//!
//! This module is Unix-only.

mod cgroup;
mod container;
mod exit;
mod group;
mod output;
mod policy;
mod process;
mod shell;
#[cfg(target_os = "linux")]
mod spawner;
#[cfg(not(target_os = "linux"))]
mod spawner {
    //! The spawner is Linux-only: elsewhere the worker spawns by itself.
    use std::io;
    use std::path::Path;
    use std::process::ExitCode;

    /// The first argument that makes the worker's program a spawner.
    pub const SPAWNER_ARG: &str = "__spawner";

    /// A spawner process; none can be started on this OS.
    #[derive(Debug)]
    pub struct Spawner(());

    impl Spawner {
        /// Always fails here: the spawner is Linux-only.
        pub async fn start(_program: &Path) -> io::Result<Spawner> {
            Err(io::Error::from(io::ErrorKind::Unsupported))
        }

        /// Never: none can be started.
        pub fn is_alive(&self) -> bool {
            false
        }

        /// None: none can be started.
        pub fn pid(&self) -> u32 {
            0
        }
    }

    /// Refuses to run: the spawner is Linux-only.
    pub fn serve() -> ExitCode {
        eprintln!("taskgrid: the spawner runs on Linux only");
        ExitCode::from(2)
    }
}

#[cfg(test)]
mod tests;

use std::time::Duration;

use taskgrid_core::Outcome;

pub use cgroup::{available as cgroups, machine_memory};
pub use container::{ContainerRuntime, run_container};
pub use policy::ShellPolicy;
pub use shell::{ShellInput, run_shell};
pub use spawner::{SPAWNER_ARG, Spawner, serve as serve_spawner};
pub use taskgrid_core::StopReason;

/// Limits that apply to every attempt an executor runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecLimits {
    /// Most bytes of output (stdout and stderr together, as forwarded
    /// UTF-8) forwarded per attempt. Past it one
    /// `[output truncated after N bytes]` line goes to the stderr stream and
    /// the rest is read and discarded, so the task keeps running.
    pub max_output_bytes: usize,
    /// Largest chunk forwarded at once; chunks end at a line break when one
    /// falls within this size. Values under 4 are treated as 4 so a UTF-8
    /// character always fits.
    pub chunk_bytes: usize,
    /// Time between `SIGTERM` and `SIGKILL` when an attempt is stopped; for a
    /// container, the `--time` given to `<runtime> stop` (rounded up to whole
    /// seconds).
    pub kill_grace: Duration,
}

impl ExecLimits {
    /// Default output cap per attempt: 1 MiB.
    pub const MAX_OUTPUT_BYTES_DEFAULT: usize = 1 << 20;
    /// Default chunk size: 16 KiB.
    pub const CHUNK_BYTES_DEFAULT: usize = 16 << 10;
    /// Default grace between `SIGTERM` and `SIGKILL`: 5 s.
    pub const KILL_GRACE_DEFAULT: Duration = Duration::from_secs(5);

    pub(crate) fn chunk_bytes(&self) -> usize {
        self.chunk_bytes.max(4)
    }
}

impl Default for ExecLimits {
    fn default() -> Self {
        ExecLimits {
            max_output_bytes: Self::MAX_OUTPUT_BYTES_DEFAULT,
            chunk_bytes: Self::CHUNK_BYTES_DEFAULT,
            kill_grace: Self::KILL_GRACE_DEFAULT,
        }
    }
}

/// How one attempt ended, with what it cost.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecReport {
    /// The outcome to report to the coordinator.
    pub outcome: Outcome,
    /// Exit code of the main process, if it exited normally.
    pub exit_code: Option<i32>,
    /// The signal that killed the main process, if one did.
    pub signal: Option<i32>,
    /// Wall time from spawn to reaping; zero if nothing was spawned.
    pub duration: Duration,
    /// User plus system CPU seconds of the main process and the descendants
    /// it waited for. Zero for containers: they run under the runtime's
    /// daemon, not under the CLI this worker starts.
    pub cpu_seconds: f64,
    /// Peak memory in bytes: of the attempt's cgroup (all its processes)
    /// when it ran in one (a task with limits), else the `ru_maxrss` of
    /// the main process or the largest descendant it waited for. Started
    /// by a [`Spawner`], that figure is at least the spawner's size (~7
    /// MiB); spawned by the worker itself, it starts from the worker's, so
    /// it is zero (not measured) when no larger. Zero for containers.
    pub peak_rss_bytes: u64,
    /// Whether output past [`ExecLimits::max_output_bytes`] was discarded.
    pub output_truncated: bool,
}

impl ExecReport {
    /// A report for an attempt that ended before anything was spawned.
    pub(crate) fn not_started(outcome: Outcome) -> Self {
        ExecReport {
            outcome,
            exit_code: None,
            signal: None,
            duration: Duration::ZERO,
            cpu_seconds: 0.0,
            peak_rss_bytes: 0,
            output_truncated: false,
        }
    }
}
