//! One child process from spawn to reaping: its own process group, its
//! output pumped out, the timeout and stop requests turned into signals, and
//! the `wait4` that says how it ended and what it used (see the module docs
//! of [`crate::exec`] for why it is reaped this way).

use std::io;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use taskgrid_core::{StopReason, Stream};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinError, JoinHandle};
use tokio::time::Instant;
use wait4::Wait4;

use super::ExecLimits;
use super::container;
use super::output::{OutputSink, pump};

/// After the final `SIGKILL`, how long reaping waits for the rest of the
/// group to die before it gives up and logs.
const GROUP_EXIT_WAIT: Duration = Duration::from_secs(1);

/// What one attempt is given besides its command.
pub(crate) struct Attempt<'a> {
    pub(crate) timeout: Option<Duration>,
    pub(crate) limits: &'a ExecLimits,
    pub(crate) stop: watch::Receiver<Option<StopReason>>,
    pub(crate) output: mpsc::Sender<(Stream, String)>,
}

/// How a stop request reaches the process.
#[derive(Debug, Clone)]
pub(crate) enum Stopper {
    /// `SIGTERM` to the process group.
    Group,
    /// `<runtime> stop --time <grace> <name>`; the process is that runtime's
    /// CLI running the container.
    Container {
        /// The runtime CLI.
        runtime: PathBuf,
        /// The container's name.
        name: String,
    },
}

/// What the main process left behind when it was reaped.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reaped {
    pub(crate) status: ExitStatus,
    pub(crate) cpu_seconds: f64,
    pub(crate) peak_rss_bytes: u64,
}

/// How supervising a command went.
#[derive(Debug)]
pub(crate) enum Supervised {
    /// A stop was requested before anything was spawned.
    NotStarted(StopReason),
    /// The command could not be spawned.
    SpawnFailed(io::Error),
    /// The process ran and is gone, with its whole group.
    Ended {
        /// Its exit, or why it could not be reaped.
        exit: io::Result<Reaped>,
        /// Whether it was stopped, and why.
        stopped: Option<StopReason>,
        /// From spawn to reaping.
        duration: Duration,
        /// Whether output was cut at the cap.
        output_truncated: bool,
    },
}

/// Runs `cmd` in its own process group until it and its group are gone,
/// streaming its output, enforcing the timeout and obeying stop requests.
pub(crate) async fn supervise(
    mut cmd: std::process::Command,
    attempt: Attempt<'_>,
    stopper: Stopper,
) -> Supervised {
    let Attempt {
        timeout,
        limits,
        stop,
        output,
    } = attempt;
    if let Some(reason) = *stop.borrow() {
        return Supervised::NotStarted(reason);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let started = Instant::now();
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => return Supervised::SpawnFailed(e),
    };
    let group = ProcessGroup::new(child.id());
    let mut guard = KillOnDrop {
        group: group.clone(),
        stopper: stopper.clone(),
        armed: true,
    };
    let pipes = take_pipes(&mut child);
    let waiter = tokio::task::spawn_blocking({
        let group = group.clone();
        move || reap(child, &group)
    });
    let (stdout, stderr) = match pipes {
        Ok(pipes) => pipes,
        Err(e) => return Supervised::SpawnFailed(e), // the guard kills it
    };

    let sink = OutputSink::new(output, limits.max_output_bytes);
    let (gone_tx, gone_rx) = watch::channel(false);
    let control = async {
        let deadline = timeout.map(|t| started + t);
        let (exit, stopped) = control(waiter, &group, &stopper, deadline, limits, stop).await;
        let duration = started.elapsed();
        let _ = gone_tx.send(true);
        (exit, stopped, duration)
    };
    let chunk = limits.chunk_bytes();
    let ((exit, stopped, duration), (), ()) = tokio::join!(
        control,
        pump(stdout, Stream::Stdout, &sink, chunk, gone_rx.clone()),
        pump(stderr, Stream::Stderr, &sink, chunk, gone_rx),
    );
    guard.armed = false;
    Supervised::Ended {
        exit,
        stopped,
        duration,
        output_truncated: sink.truncated(),
    }
}

/// Waits for the process, a stop request or the deadline; on a stop, stops
/// the process and escalates to `SIGKILL` after the grace.
async fn control(
    mut waiter: JoinHandle<io::Result<Reaped>>,
    group: &ProcessGroup,
    stopper: &Stopper,
    deadline: Option<Instant>,
    limits: &ExecLimits,
    mut stop: watch::Receiver<Option<StopReason>>,
) -> (io::Result<Reaped>, Option<StopReason>) {
    let reason = tokio::select! {
        biased; // a process that already ended reports its own exit
        exit = &mut waiter => return (joined(exit), None),
        reason = stop_requested(&mut stop) => reason,
        () = sleep_until(deadline) => StopReason::Timeout,
    };
    tracing::debug!(pgid = group.id(), ?reason, "stopping a task's process");
    match stopper {
        Stopper::Group => group.signal(Signal::SIGTERM),
        Stopper::Container { runtime, name } => {
            container::stop(runtime, name, limits.kill_grace).await;
        }
    }
    let exit = match tokio::time::timeout(limits.kill_grace, &mut waiter).await {
        Ok(exit) => exit,
        Err(_) => {
            tracing::debug!(
                pgid = group.id(),
                "grace over: SIGKILL to the process group"
            );
            group.signal(Signal::SIGKILL);
            let exit = waiter.await;
            if let Stopper::Container { runtime, name } = stopper {
                // The stop failed or came before the container existed: make
                // sure the daemon does not keep running it without us.
                container::remove(runtime, name).await;
            }
            exit
        }
    };
    (joined(exit), Some(reason))
}

/// Resolves with the first stop request; never if none comes.
async fn stop_requested(rx: &mut watch::Receiver<Option<StopReason>>) -> StopReason {
    loop {
        if let Some(reason) = *rx.borrow_and_update() {
            return reason;
        }
        if rx.changed().await.is_err() {
            // Nobody can ask any more: no stop will come.
            return std::future::pending().await;
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn joined(r: Result<io::Result<Reaped>, JoinError>) -> io::Result<Reaped> {
    r.unwrap_or_else(|e| Err(io::Error::other(format!("the reaping thread failed: {e}"))))
}

fn take_pipes(
    child: &mut Child,
) -> io::Result<(tokio::process::ChildStdout, tokio::process::ChildStderr)> {
    let missing = || io::Error::other("the child's output was not piped");
    let out = child.stdout.take().ok_or_else(missing)?;
    let err = child.stderr.take().ok_or_else(missing)?;
    Ok((
        tokio::process::ChildStdout::from_std(out)?,
        tokio::process::ChildStderr::from_std(err)?,
    ))
}

/// A child's process group. Signals go to the whole group, and only while
/// the child (whose pid is the group id) is not reaped: reaping takes the
/// same lock, so a signal never reaches a recycled id.
#[derive(Debug, Clone)]
pub(crate) struct ProcessGroup {
    pgid: Pid,
    reaped: Arc<Mutex<bool>>,
}

impl ProcessGroup {
    fn new(pid: u32) -> Self {
        ProcessGroup {
            // Pids fit in a pid_t; the cast cannot wrap.
            pgid: Pid::from_raw(pid as i32),
            reaped: Arc::new(Mutex::new(false)),
        }
    }

    fn id(&self) -> i32 {
        self.pgid.as_raw()
    }

    fn lock(&self) -> MutexGuard<'_, bool> {
        self.reaped.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends `sig` to the group unless its leader was reaped.
    pub(crate) fn signal(&self, sig: Signal) {
        let reaped = self.lock();
        if !*reaped {
            send(self.pgid, sig);
        }
    }
}

fn send(pgid: Pid, sig: Signal) {
    match killpg(pgid, sig) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => tracing::warn!(pgid = pgid.as_raw(), %sig, error = %e, "killpg failed"),
    }
}

/// Kills the group if the attempt's future is dropped before it ended.
struct KillOnDrop {
    group: ProcessGroup,
    stopper: Stopper,
    armed: bool,
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        self.group.signal(Signal::SIGKILL);
        if let Stopper::Container { runtime, name } = &self.stopper {
            container::remove_detached(runtime, name);
        }
    }
}

/// Blocks until `child` exits, kills the rest of its group, reaps it with
/// `wait4` and waits (briefly) for the group to die.
fn reap(child: Child, group: &ProcessGroup) -> io::Result<Reaped> {
    let res = wait_then_reap(child, group);
    await_group_exit(group.pgid);
    let res = res?;
    let cpu = res.rusage.utime + res.rusage.stime;
    Ok(Reaped {
        status: res.status,
        cpu_seconds: cpu.as_secs_f64(),
        peak_rss_bytes: res.rusage.maxrss,
    })
}

/// Where `waitid(WNOWAIT)` exists, the leader is left a zombie while the
/// group is killed, so its pid cannot be reused under the signal.
#[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
fn wait_then_reap(child: Child, group: &ProcessGroup) -> io::Result<wait4::ResUse> {
    use nix::sys::wait::{Id, WaitPidFlag, waitid};
    loop {
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT;
        match waitid(Id::Pid(group.pgid), flags) {
            Ok(_) => break,
            Err(Errno::EINTR) => continue,
            Err(e) => {
                *group.lock() = true;
                return Err(e.into());
            }
        }
    }
    let mut reaped = group.lock();
    send(group.pgid, Signal::SIGKILL);
    let res = child.wait4();
    *reaped = true;
    res
}

/// Elsewhere the leader is reaped first; the group id stays reserved while
/// any member lives, so only an empty group's id could be reused.
#[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
fn wait_then_reap(child: Child, group: &ProcessGroup) -> io::Result<wait4::ResUse> {
    let res = child.wait4();
    let mut reaped = group.lock();
    *reaped = true;
    send(group.pgid, Signal::SIGKILL);
    res
}

/// Waits until no live (non-zombie) process is left in the group, for at
/// most [`GROUP_EXIT_WAIT`]. `SIGKILL` is delivered asynchronously; this
/// makes "the report returned" mean "the group is dead". Orphans are reaped
/// by init, which may take its time, so zombies count as dead.
fn await_group_exit(pgid: Pid) {
    let deadline = std::time::Instant::now() + GROUP_EXIT_WAIT;
    while killpg(pgid, None).is_ok() && has_live_member(pgid) {
        if std::time::Instant::now() >= deadline {
            tracing::warn!(pgid = pgid.as_raw(), "a task's processes outlived SIGKILL");
            return;
        }
        // Nothing notifies us when a process that is not our child dies.
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[cfg(target_os = "linux")]
fn has_live_member(pgid: Pid) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .any(|stat| match proc_state_and_pgrp(&stat) {
            Some((state, pgrp)) => pgrp == pgid.as_raw() && !matches!(state, 'Z' | 'X' | 'x'),
            None => false,
        })
}

/// Without `/proc`, any member counts (zombies included) until the deadline.
#[cfg(not(target_os = "linux"))]
fn has_live_member(_pgid: Pid) -> bool {
    true
}

/// The state letter and process group of a `/proc/<pid>/stat` line.
#[cfg(target_os = "linux")]
pub(crate) fn proc_state_and_pgrp(stat: &str) -> Option<(char, i32)> {
    // "pid (comm) S ppid pgrp ..."; comm may hold spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let _ppid = fields.next()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some((state, pgrp))
}
