//! One attempt's process from spawn to the end: spawned in its own process
//! group, its output pumped out, the timeout and stop requests turned into
//! signals (or a container stop), until it is reaped by [`group`](super::group).

use std::io;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use std::process::{Child, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use taskgrid_core::{StopReason, Stream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinError;
use tokio::time::Instant;

use super::ExecLimits;
use super::cgroup::AttemptGroup;
use super::container;
use super::group::{ProcessGroup, Reaped, spawn_reaper};
use super::output::{OutputSink, pump};

/// What to start: the parts of a `std::process::Command` that a shell task
/// sets.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Launch {
    /// The file to execute, or a bare name for the OS to look up.
    pub(crate) exec: PathBuf,
    /// `argv[0]` when it differs from `exec`.
    pub(crate) arg0: Option<String>,
    /// The arguments after `argv[0]`.
    pub(crate) args: Vec<String>,
    /// The working directory, if not the worker's.
    pub(crate) cwd: Option<String>,
    /// Variables added to the worker's environment.
    pub(crate) env: Vec<(String, String)>,
}

impl Launch {
    /// The same as a command, to spawn here.
    pub(crate) fn command(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(&self.exec);
        if let Some(arg0) = &self.arg0 {
            cmd.arg0(arg0);
        }
        cmd.args(&self.args);
        if let Some(cwd) = &self.cwd {
            cmd.current_dir(cwd);
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }
}

/// What one attempt is given besides its command.
pub(crate) struct Attempt<'a> {
    pub(crate) timeout: Option<Duration>,
    pub(crate) limits: &'a ExecLimits,
    pub(crate) stop: watch::Receiver<Option<StopReason>>,
    pub(crate) output: mpsc::Sender<(Stream, String)>,
    /// The attempt's cgroup, which the child is spawned into.
    pub(crate) cgroup: Option<&'a AttemptGroup>,
    /// What the child reads on standard input (`/dev/null` when absent).
    pub(crate) stdin: Option<&'a str>,
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

/// How the attempt's process is started.
pub(crate) enum Launcher<'a> {
    /// Spawned by the worker itself.
    Command(std::process::Command),
    /// Spawned by the spawner process (see [`spawner`](super::spawner)).
    #[cfg(target_os = "linux")]
    Spawner(&'a super::spawner::Spawner, super::spawner::Launch),
    #[cfg(not(target_os = "linux"))]
    #[doc(hidden)]
    _Never(std::marker::PhantomData<&'a ()>),
}

/// Who signals the attempt's process group.
#[derive(Debug, Clone)]
enum Signaller {
    Local(ProcessGroup),
    #[cfg(target_os = "linux")]
    Remote(super::spawner::RemoteGroup),
}

impl Signaller {
    fn signal(&self, sig: Signal) {
        match self {
            Signaller::Local(group) => group.signal(sig),
            #[cfg(target_os = "linux")]
            Signaller::Remote(group) => group.signal(sig),
        }
    }

    /// The group's id, where this process knows it (for logs).
    fn id(&self) -> Option<i32> {
        match self {
            Signaller::Local(group) => Some(group.id()),
            #[cfg(target_os = "linux")]
            Signaller::Remote(_) => None,
        }
    }
}

/// A started process: its streams, who signals it and who reaps it.
struct Started {
    input: Option<std::process::ChildStdin>,
    stdout: tokio::process::ChildStdout,
    stderr: tokio::process::ChildStderr,
    group: Signaller,
    waiter: Waiter,
    guard: KillOnDrop,
}

/// Resolves once the process is reaped and its group is dead.
type Waiter = std::pin::Pin<Box<dyn std::future::Future<Output = io::Result<Reaped>> + Send>>;

/// A spawn by the spawner that failed, carried in the waiter's error.
#[derive(Debug)]
struct SpawnFailure(io::Error);

impl std::fmt::Display for SpawnFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SpawnFailure {}

/// The spawn error inside `e`, if the process was never started.
fn spawn_failure(e: io::Error) -> Result<io::Error, io::Error> {
    if e.get_ref().is_some_and(|i| i.is::<SpawnFailure>()) {
        let inner = e.into_inner().map(|i| i.downcast::<SpawnFailure>());
        if let Some(Ok(f)) = inner {
            return Ok(f.0);
        }
        return Err(io::Error::other("a spawn failure was lost"));
    }
    Err(e)
}

/// Starts the process with piped output (and input when there is some)
/// in a process group of its own.
async fn start(
    launcher: Launcher<'_>,
    cgroup: Option<&AttemptGroup>,
    stdin: bool,
    stopper: &Stopper,
) -> io::Result<Started> {
    match launcher {
        Launcher::Command(mut cmd) => {
            cmd.stdin(if stdin { Stdio::piped() } else { Stdio::null() })
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .process_group(0);
            let mut child = match cgroup {
                Some(group) => group.spawn(&mut cmd)?,
                None => cmd.spawn()?,
            };
            let group = ProcessGroup::new(child.id());
            let guard = KillOnDrop {
                group: Signaller::Local(group.clone()),
                stopper: stopper.clone(),
                armed: true,
            };
            let input = child.stdin.take();
            let pipes = take_pipes(&mut child);
            let reaper = spawn_reaper(child, group.clone());
            let waiter: Waiter = Box::pin(async move { joined(reaper.await) });
            let (stdout, stderr) = pipes?; // on an error the guard kills it
            Ok(Started {
                input,
                stdout,
                stderr,
                group: Signaller::Local(group),
                waiter,
                guard,
            })
        }
        #[cfg(target_os = "linux")]
        Launcher::Spawner(spawner, launch) => {
            use std::os::fd::OwnedFd;
            let (input, child_in) = if stdin {
                let (r, w) = std::io::pipe()?;
                (
                    Some(std::process::ChildStdin::from(OwnedFd::from(w))),
                    Some(OwnedFd::from(r)),
                )
            } else {
                (None, None)
            };
            let (out_r, out_w) = std::io::pipe()?;
            let (err_r, err_w) = std::io::pipe()?;
            let child = match spawner
                .spawn(&launch, child_in, out_w.into(), err_w.into())
                .await
            {
                Ok(child) => child,
                // Not sent (a request over the socket's size, a spawner
                // that just died): nothing was started, so the worker
                // starts it itself.
                Err(e) => {
                    tracing::debug!(error = %e, "the spawner cannot take this task: spawned here");
                    let cmd = Launcher::Command(launch.command());
                    return Box::pin(start(cmd, cgroup, stdin, stopper)).await;
                }
            };
            let group = Signaller::Remote(child.group());
            let guard = KillOnDrop {
                group: group.clone(),
                stopper: stopper.clone(),
                armed: true,
            };
            // The output is read from now on; whether the spawn worked is
            // learnt on the way to the exit (a failed one ends it).
            let (spawned, exit) = (child.spawned, child.exit);
            let gone = || io::Error::other("the spawner process ended");
            let waiter: Waiter = Box::pin(async move {
                match spawned.await {
                    Ok(Ok(_pid)) => {}
                    Ok(Err(e)) => return Err(io::Error::other(SpawnFailure(e))),
                    Err(_) => return Err(gone()),
                }
                exit.await.unwrap_or_else(|_| Err(gone()))
            });
            let stdout = tokio::process::ChildStdout::from_std(std::process::ChildStdout::from(
                OwnedFd::from(out_r),
            ))?;
            let stderr = tokio::process::ChildStderr::from_std(std::process::ChildStderr::from(
                OwnedFd::from(err_r),
            ))?;
            Ok(Started {
                input,
                stdout,
                stderr,
                group,
                waiter,
                guard,
            })
        }
        #[cfg(not(target_os = "linux"))]
        Launcher::_Never(_) => Err(io::Error::from(io::ErrorKind::Unsupported)),
    }
}

/// Runs the attempt's process in its own process group until it and its
/// group are gone, streaming its output, enforcing the timeout and obeying
/// stop requests.
pub(crate) async fn supervise(
    launcher: Launcher<'_>,
    attempt: Attempt<'_>,
    stopper: Stopper,
) -> Supervised {
    let Attempt {
        timeout,
        limits,
        stop,
        output,
        cgroup,
        stdin,
    } = attempt;
    if let Some(reason) = *stop.borrow() {
        return Supervised::NotStarted(reason);
    }
    let started = Instant::now();
    let Started {
        input,
        stdout,
        stderr,
        group,
        waiter,
        mut guard,
    } = match start(launcher, cgroup, stdin.is_some(), &stopper).await {
        Ok(s) => s,
        Err(e) => return Supervised::SpawnFailed(e),
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
    let feed = feed(input, stdin.unwrap_or_default(), gone_rx.clone());
    let ((exit, stopped, duration), (), (), ()) = tokio::join!(
        control,
        pump(stdout, Stream::Stdout, &sink, chunk, gone_rx.clone()),
        pump(stderr, Stream::Stderr, &sink, chunk, gone_rx),
        feed,
    );
    guard.armed = false;
    let exit = match exit {
        Err(e) => match spawn_failure(e) {
            Ok(e) => return Supervised::SpawnFailed(e),
            Err(e) => Err(e),
        },
        ok => ok,
    };
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
    mut waiter: Waiter,
    group: &Signaller,
    stopper: &Stopper,
    deadline: Option<Instant>,
    limits: &ExecLimits,
    mut stop: watch::Receiver<Option<StopReason>>,
) -> (io::Result<Reaped>, Option<StopReason>) {
    let reason = tokio::select! {
        biased; // a process that already ended reports its own exit
        exit = &mut waiter => return (exit, None),
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
    (exit, Some(reason))
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
    r.unwrap_or_else(|e| Err(io::Error::other(format!("the reaping task failed: {e}"))))
}

/// Writes `data` to the child's standard input and closes it. A child that
/// ends (or closes its input) before reading it all is not an error.
/// Gives up when the main process is gone: what is left of its group may
/// hold the pipe open without reading it.
async fn feed(pipe: Option<std::process::ChildStdin>, data: &str, mut gone: watch::Receiver<bool>) {
    use tokio::io::AsyncWriteExt;
    let Some(pipe) = pipe else {
        return;
    };
    let mut pipe = match tokio::process::ChildStdin::from_std(pipe) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!("cannot write the task's standard input: {e}");
            return;
        }
    };
    let gone = async move {
        while !*gone.borrow_and_update() {
            if gone.changed().await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        written = pipe.write_all(data.as_bytes()) => {
            if let Err(e) = written
                && e.kind() != io::ErrorKind::BrokenPipe
            {
                tracing::debug!("the task's standard input was cut short: {e}");
            }
        }
        () = gone => tracing::debug!("the task ended before reading all its standard input"),
    }
    // Dropping the pipe closes it: the program reads its end of file.
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

/// Kills the group if the attempt's future is dropped before it ended.
struct KillOnDrop {
    group: Signaller,
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
