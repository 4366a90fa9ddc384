//! The spawner: a small helper process that starts the worker's shell
//! tasks, so that a task's peak memory is its own.
//!
//! Linux counts in a process's `ru_maxrss` the peak of the memory it
//! replaced at `exec` — for a child of the worker, the worker's own size
//! (15–30 MiB), whether it was forked or spawned with `vfork`. A task
//! started by the spawner, a fresh `exec` of the worker's program that
//! does nothing else, starts from the spawner's size instead (~7 MiB for a
//! release build), so a task's peak is its own wherever it is larger than
//! that. A task in a cgroup is measured by its group and does not need it.
//!
//! The worker starts it once (`PROGRAM __spawner`, with one end of a
//! `SOCK_SEQPACKET` socket pair as its standard input) and talks to it in
//! JSON messages, one per packet:
//!
//! - `spawn`: a program, its arguments, directory and environment, with
//!   the child's standard output, error and (optionally) input attached as
//!   `SCM_RIGHTS`. The spawner starts it in a process group of its own and
//!   answers `spawned` with its pid, or `failed` with the OS error (the
//!   worker reads the output meanwhile: a failed spawn ends the attempt).
//! - `signal`: a signal for an attempt's process group, sent only while its
//!   leader is not reaped (the same lock as the worker's own groups), so it
//!   never reaches a recycled id.
//! - `exited`: when the leader exited and the rest of its group is dead
//!   (the same reaping as [`group`](super::group), by one thread for all
//!   children: `waitid(P_ALL, WNOWAIT)`, `SIGKILL` to the group, `wait4`),
//!   its wait status and `rusage`.
//!
//! When the worker goes away (its end of the socket closes, even on
//! `kill -9`), the spawner kills every group it started and exits: no task
//! outlives the worker that ran it. If the spawner dies, the attempts it
//! was running end with an error and the worker spawns later tasks itself.

use std::collections::HashMap;
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{ExitCode, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use nix::sys::signal::Signal;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};
use serde::{Deserialize, Serialize};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::oneshot;

use super::group::{self, ProcessGroup, Reaped};
pub(crate) use super::process::Launch;

/// The first argument that makes the worker's program a spawner (see
/// [`serve`]).
pub const SPAWNER_ARG: &str = "__spawner";

/// Followed by a variable's name: the spawner removes it from the
/// environment of the tasks it starts (unless a task sets it).
const UNSET_ARG: &str = "--unset";

/// mimalloc's option that keeps its first arena from being committed (and
/// made resident) at start-up.
const LAZY_ARENA: (&str, &str) = ("MIMALLOC_ARENA_EAGER_COMMIT", "0");

/// How long [`Spawner::start`] waits for the spawner's `ready`.
const READY_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

/// The largest message, either way. A spawn request holds the program, its
/// arguments and its environment; a larger one is spawned by the worker
/// itself.
const MAX_MESSAGE: usize = 128 << 10;

/// A request: the worker sends its launch by reference (no copy per
/// task), the spawner reads an owned one.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Request<L = Launch> {
    /// Start `launch`; the packet carries stdout, stderr and, when `stdin`,
    /// standard input.
    Spawn { id: u64, launch: L, stdin: bool },
    /// Send `signal` to the group of attempt `id`, unless it is reaped.
    Signal { id: u64, signal: i32 },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Reply {
    /// The spawner's first message.
    Ready,
    Spawned {
        id: u64,
        pid: u32,
    },
    Failed {
        id: u64,
        errno: Option<i32>,
        message: String,
    },
    Exited {
        id: u64,
        /// The raw wait status.
        status: i32,
        cpu_seconds: f64,
        peak_rss_bytes: u64,
    },
    /// The leader could not be reaped.
    Lost {
        id: u64,
        message: String,
    },
}

// ---------------------------------------------------------------- worker side

/// A running spawner, as the worker holds it. Dropping it closes the
/// socket: the spawner kills what it still runs and exits.
#[derive(Debug)]
pub struct Spawner {
    inner: Arc<Inner>,
    pid: u32,
}

#[derive(Debug)]
struct Inner {
    socket: AsyncFd<OwnedFd>,
    pending: Mutex<HashMap<u64, Pending>>,
    next: AtomicU64,
    alive: AtomicBool,
    /// Set when the worker lets it go (not a death to report).
    closing: AtomicBool,
}

#[derive(Debug)]
struct Pending {
    /// The child's pid, once it is spawned.
    pid: Option<u32>,
    spawned: Option<oneshot::Sender<io::Result<u32>>>,
    exited: Option<oneshot::Sender<io::Result<Reaped>>>,
}

/// A child the spawner was asked to start.
#[derive(Debug)]
pub(crate) struct RemoteChild {
    /// Its pid (and process group id) once started, or why it was not.
    pub(crate) spawned: oneshot::Receiver<io::Result<u32>>,
    /// Resolves when it was reaped and its group is dead.
    pub(crate) exit: oneshot::Receiver<io::Result<Reaped>>,
    handle: RemoteGroup,
}

impl RemoteChild {
    /// The handle that signals its group.
    pub(crate) fn group(&self) -> RemoteGroup {
        self.handle.clone()
    }
}

/// Signals one attempt's group through the spawner.
#[derive(Debug, Clone)]
pub(crate) struct RemoteGroup {
    inner: Arc<Inner>,
    id: u64,
}

impl RemoteGroup {
    /// Asks the spawner to signal the group (a no-op once it is reaped).
    /// Never blocks: when the socket is full, the request is sent as soon
    /// as there is room, by a task of its own.
    pub(crate) fn signal(&self, sig: Signal) {
        let req = Request::Signal {
            id: self.id,
            signal: sig as i32,
        };
        match self.inner.send_now(&req, &[]) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                match tokio::runtime::Handle::try_current() {
                    Ok(rt) => {
                        let inner = self.inner.clone();
                        rt.spawn(async move {
                            if let Err(e) = inner.send(&req, &[]).await {
                                tracing::warn!(error = %e, %sig, "cannot ask the spawner to signal a task");
                            }
                        });
                    }
                    Err(_) => {
                        tracing::warn!(%sig, "cannot ask the spawner to signal a task: its socket is full")
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, %sig, "cannot ask the spawner to signal a task"),
        }
    }
}

impl Spawner {
    /// Starts `program __spawner` and returns its handle once it said it is
    /// ready (within 10 seconds). `program` must be a build of
    /// taskgrid whose `main` calls [`serve`] for that argument (the
    /// `taskgrid` binary does). Needs a Tokio runtime.
    pub async fn start(program: &Path) -> io::Result<Spawner> {
        let (ours, theirs) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )?;
        rustix::io::ioctl_fionbio(&ours, true)?;
        let mut cmd = std::process::Command::new(program);
        cmd.arg(SPAWNER_ARG);
        // The allocator commits its first arena eagerly (~4 MiB resident),
        // which every task would count in its peak: not in the spawner. The
        // variable is unset again for the tasks it starts.
        if std::env::var_os(LAZY_ARENA.0).is_none() {
            cmd.env(LAZY_ARENA.0, LAZY_ARENA.1)
                .arg(UNSET_ARG)
                .arg(LAZY_ARENA.0);
        }
        let mut child = cmd
            .stdin(Stdio::from(theirs))
            .stdout(Stdio::null())
            // Not in the worker's group: a Ctrl-C or a `kill -TERM -PGID`
            // meant for the worker (which drains) must not kill it and,
            // with it, every task.
            .process_group(0)
            .spawn()?;
        // The command holds the spawner's end of the socket: closed here,
        // so that the spawner's exit reads as the socket's end.
        drop(cmd);
        let pid = child.id();
        // Reaped by a thread of its own; it ends when the socket closes.
        std::thread::Builder::new()
            .name("taskgrid-spawner-reaper".into())
            .spawn(move || match child.wait() {
                Ok(s) if s.success() => {}
                Ok(s) => tracing::warn!(status = %s, "the spawner ended"),
                Err(e) => tracing::warn!(error = %e, "cannot reap the spawner"),
            })?;
        #[allow(deprecated)] // see `group::exit_notice`: an owned fd cannot be swapped
        let socket = AsyncFd::with_interest(ours, Interest::READABLE | Interest::WRITABLE)?;
        // A program that does not serve `__spawner` never says it is ready
        // (and is killed when the socket closes, if it reads it at all).
        let mut buf = vec![0u8; 256];
        let ready = tokio::time::timeout(READY_WITHIN, async {
            loop {
                let mut guard = socket.readable().await?;
                match recv_packet(socket.get_ref(), &mut buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => guard.clear_ready(),
                    Err(e) => return Err(e),
                    Ok((0, _)) => return Err(io::Error::other("it exited at once")),
                    Ok((n, _)) => {
                        return match serde_json::from_slice::<Reply>(&buf[..n]) {
                            Ok(Reply::Ready) => Ok(()),
                            _ => Err(io::Error::other("its first message is not `ready`")),
                        };
                    }
                }
            }
        })
        .await
        .unwrap_or_else(|_| {
            Err(io::Error::other(format!(
                "it did not say it is ready within {READY_WITHIN:?} (does {} serve `{SPAWNER_ARG}`?)",
                program.display()
            )))
        });
        if let Err(e) = ready {
            let _ = rustix::net::shutdown(socket.get_ref(), rustix::net::Shutdown::Both);
            return Err(e);
        }
        let inner = Arc::new(Inner {
            socket,
            pending: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            alive: AtomicBool::new(true),
            closing: AtomicBool::new(false),
        });
        tokio::spawn(read_replies(inner.clone()));
        Ok(Spawner { inner, pid })
    }

    /// The spawner process's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether it still runs (after it died, the worker spawns by itself).
    pub fn is_alive(&self) -> bool {
        self.inner.alive.load(Ordering::Acquire)
    }

    /// Asks for `launch` to be started with these descriptors as its
    /// standard streams; [`RemoteChild::spawned`] says whether it was.
    pub(crate) async fn spawn(
        &self,
        launch: &Launch,
        stdin: Option<OwnedFd>,
        stdout: OwnedFd,
        stderr: OwnedFd,
    ) -> io::Result<RemoteChild> {
        let inner = &self.inner;
        let id = inner.next.fetch_add(1, Ordering::Relaxed);
        let (spawned_tx, spawned_rx) = oneshot::channel();
        let (exited_tx, exited_rx) = oneshot::channel();
        inner.pending().insert(
            id,
            Pending {
                pid: None,
                spawned: Some(spawned_tx),
                exited: Some(exited_tx),
            },
        );
        // Removed again if this future ends before the request is sent
        // (an error, or the attempt dropped meanwhile).
        let mut unsent = Unsent {
            inner,
            id,
            armed: true,
        };
        if !self.is_alive() {
            return Err(gone());
        }
        let req = Request::Spawn {
            id,
            launch,
            stdin: stdin.is_some(),
        };
        let mut fds = vec![stdout.as_fd(), stderr.as_fd()];
        if let Some(fd) = &stdin {
            fds.push(fd.as_fd());
        }
        inner.send(&req, &fds).await?;
        unsent.armed = false;
        // Ours are closed now: the child holds the only write ends.
        drop((stdin, stdout, stderr));
        Ok(RemoteChild {
            spawned: spawned_rx,
            exit: exited_rx,
            handle: RemoteGroup {
                inner: inner.clone(),
                id,
            },
        })
    }
}

/// Forgets a spawn whose request was never sent.
struct Unsent<'a> {
    inner: &'a Inner,
    id: u64,
    armed: bool,
}

impl Drop for Unsent<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.inner.pending().remove(&self.id);
        }
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        // The reader holds the socket too: shut it down so that both the
        // spawner and the reader see its end.
        self.inner.closing.store(true, Ordering::Release);
        let _ = rustix::net::shutdown(self.inner.socket.get_ref(), rustix::net::Shutdown::Both);
    }
}

fn gone() -> io::Error {
    io::Error::other("the spawner process ended")
}

impl Inner {
    fn pending(&self) -> MutexGuard<'_, HashMap<u64, Pending>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends one message, waiting for room.
    async fn send<L: Serialize>(
        &self,
        req: &Request<L>,
        fds: &[std::os::fd::BorrowedFd<'_>],
    ) -> io::Result<()> {
        let body = encode(req)?;
        loop {
            let mut ready = self.socket.writable().await?;
            match send_packet(self.socket.get_ref(), &body, fds) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => ready.clear_ready(),
                other => return other,
            }
        }
    }

    /// Sends one message now (a signal: from `Drop` too, so it cannot wait).
    fn send_now(&self, req: &Request, fds: &[std::os::fd::BorrowedFd<'_>]) -> io::Result<()> {
        send_packet(self.socket.get_ref(), &encode(req)?, fds)
    }

    /// The spawner is gone: every attempt waiting on it ends with an error,
    /// and the groups it ran are killed (nobody else would: they are
    /// orphans now). Their leaders were alive a moment ago and their group
    /// ids stay taken while any member lives, so the signal cannot reach a
    /// recycled group but in a race with its own end.
    fn fail_all(&self) {
        self.alive.store(false, Ordering::Release);
        let pending = std::mem::take(&mut *self.pending());
        for (_, p) in pending {
            if let Some(pid) = p.pid.and_then(|p| i32::try_from(p).ok()) {
                let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
            }
            // Dropped, not answered: whether it was started is unknown, so
            // the attempt ends as one that ran, not as a failed spawn.
            drop(p.spawned);
            if let Some(tx) = p.exited {
                let _ = tx.send(Err(gone()));
            }
        }
    }
}

async fn read_replies(inner: Arc<Inner>) {
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let mut ready = match inner.socket.readable().await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read from the spawner");
                break;
            }
        };
        let (n, _) = match recv_packet(inner.socket.get_ref(), &mut buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                ready.clear_ready();
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read from the spawner");
                break;
            }
            Ok((0, _)) => break, // closed
            Ok(got) => got,
        };
        match serde_json::from_slice::<Reply>(&buf[..n]) {
            Ok(reply) => deliver(&inner, reply),
            Err(e) => tracing::warn!(error = %e, "a reply from the spawner makes no sense"),
        }
    }
    if !inner.closing.load(Ordering::Acquire) {
        tracing::warn!(
            "the spawner process ended: the tasks it ran are ended, and the worker starts \
             tasks itself from now on (their peak memory is not measured below its own size)"
        );
    }
    inner.fail_all();
}

fn deliver(inner: &Inner, reply: Reply) {
    let mut pending = inner.pending();
    match reply {
        Reply::Spawned { id, pid } => {
            if let Some(p) = pending.get_mut(&id) {
                p.pid = Some(pid);
                if let Some(tx) = p.spawned.take() {
                    let _ = tx.send(Ok(pid));
                }
            }
        }
        Reply::Failed { id, errno, message } => {
            if let Some(tx) = pending.remove(&id).and_then(|p| p.spawned) {
                let e = match errno {
                    Some(errno) => io::Error::from_raw_os_error(errno),
                    None => io::Error::other(message),
                };
                let _ = tx.send(Err(e));
            }
        }
        Reply::Exited {
            id,
            status,
            cpu_seconds,
            peak_rss_bytes,
        } => {
            if let Some(tx) = pending.remove(&id).and_then(|p| p.exited) {
                let _ = tx.send(Ok(Reaped {
                    status: ExitStatus::from_raw(status),
                    cpu_seconds,
                    peak_rss_bytes,
                }));
            }
        }
        Reply::Ready => {}
        Reply::Lost { id, message } => {
            if let Some(tx) = pending.remove(&id).and_then(|p| p.exited) {
                let _ = tx.send(Err(io::Error::other(message)));
            }
        }
    }
}

// --------------------------------------------------------------- spawner side

/// Writes a line to standard error, ignoring a closed one (`eprintln!`
/// would panic, and take the reaping thread with it).
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(io::stderr(), $($arg)*);
    }};
}

/// Runs the spawner on its standard input (the worker's socket) until the
/// worker closes it. Call it first thing in `main` when the first argument
/// is [`SPAWNER_ARG`], before any runtime or thread starts: the smaller
/// this process, the closer a task's peak memory to its own.
pub fn serve() -> ExitCode {
    let socket = match io::stdin().as_fd().try_clone_to_owned() {
        Ok(fd) => fd,
        Err(e) => {
            say!("taskgrid spawner: no socket on standard input: {e}");
            return ExitCode::from(2);
        }
    };
    let mut unset = Vec::new();
    let mut args = std::env::args_os().skip(2);
    while let Some(arg) = args.next() {
        match (arg.to_str(), args.next()) {
            (Some(UNSET_ARG), Some(name)) => unset.push(name),
            _ => {
                say!("taskgrid spawner: unexpected argument {arg:?}");
                return ExitCode::from(2);
            }
        }
    }
    let socket = Arc::new(socket);
    reply(&socket, &Reply::Ready);
    let children = Arc::new(Children::default());
    {
        let (socket, children) = (socket.clone(), children.clone());
        if let Err(e) = std::thread::Builder::new()
            .name("reaper".into())
            .stack_size(256 << 10)
            .spawn(move || reap_all(&socket, &children))
        {
            say!("taskgrid spawner: cannot start the reaping thread: {e}");
            return ExitCode::from(1);
        }
    }
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let (n, fds) = match recv_packet(&socket, &mut buf) {
            Ok((0, _)) => break,
            Ok(got) => got,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                say!("taskgrid spawner: cannot read from the worker: {e}");
                break;
            }
        };
        match serde_json::from_slice::<Request>(&buf[..n]) {
            Ok(Request::Spawn { id, launch, stdin }) => {
                start(&socket, &children, id, &launch, &unset, stdin, fds);
            }
            Ok(Request::Signal { id, signal }) => {
                let group = lock(&children.groups).get(&id).cloned();
                if let (Some(group), Ok(sig)) = (group, Signal::try_from(signal)) {
                    group.signal(sig);
                }
            }
            Err(e) => say!("taskgrid spawner: a request makes no sense: {e}"),
        }
    }
    // The worker is gone: so are its tasks.
    for group in lock(&children.groups).values() {
        group.signal(Signal::SIGKILL);
    }
    ExitCode::SUCCESS
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A task the spawner started and has not reaped.
struct Running {
    id: u64,
    child: std::process::Child,
    group: ProcessGroup,
}

/// What the spawner runs: by pid for the reaping thread, by attempt for
/// signals (until the attempt's end is sent).
#[derive(Default)]
struct Children {
    by_pid: Mutex<HashMap<u32, Running>>,
    groups: Mutex<HashMap<u64, ProcessGroup>>,
    /// Signalled when `by_pid` gains a child.
    started: Condvar,
}

fn reply(socket: &OwnedFd, r: &Reply) {
    if let Err(e) = encode(r).and_then(|b| send_packet(socket, &b, &[])) {
        say!("taskgrid spawner: cannot answer the worker: {e}");
    }
}

fn start(
    socket: &OwnedFd,
    children: &Children,
    id: u64,
    launch: &Launch,
    unset: &[std::ffi::OsString],
    stdin: bool,
    fds: Vec<OwnedFd>,
) {
    let expected = if stdin { 3 } else { 2 };
    if fds.len() != expected {
        return reply(
            socket,
            &Reply::Failed {
                id,
                errno: None,
                message: format!("expected {expected} descriptors, got {}", fds.len()),
            },
        );
    }
    let mut fds = fds.into_iter();
    let (Some(out), Some(err)) = (fds.next(), fds.next()) else {
        return;
    };
    let mut cmd = launch.command();
    for name in unset {
        if !launch.env.iter().any(|(k, _)| name == k.as_str()) {
            cmd.env_remove(name);
        }
    }
    cmd.stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .stdin(fds.next().map_or_else(Stdio::null, Stdio::from))
        // A `vfork` (std's `posix_spawn`): the task's peak starts from the
        // spawner's whole size (~7 MiB). A fork would start it from the
        // spawner's private pages alone (~2.7 MiB for `echo`), but the
        // spawner's pages then fault on their next write after every
        // spawn: it cost a third of short tasks' throughput (BENCHMARKS.md).
        .process_group(0);
    // Held from the spawn until `spawned` is sent: the reaping thread
    // cannot take the child (and answer its end) before that.
    let mut by_pid = lock(&children.by_pid);
    let child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            return reply(
                socket,
                &Reply::Failed {
                    id,
                    errno: e.raw_os_error(),
                    message: e.to_string(),
                },
            );
        }
    };
    drop(cmd); // closes our copies of the child's streams
    let pid = child.id();
    let group = ProcessGroup::new(pid);
    lock(&children.groups).insert(id, group.clone());
    by_pid.insert(pid, Running { id, child, group });
    reply(socket, &Reply::Spawned { id, pid });
    drop(by_pid);
    children.started.notify_one();
}

/// The reaping thread: waits for any child to exit (`waitid(P_ALL,
/// WNOWAIT)`, so it stays a zombie and its group id reserved), kills the
/// rest of its group, reaps it with `wait4` and sends its end. A group
/// that outlives its leader is waited for on a thread of its own.
fn reap_all(socket: &Arc<OwnedFd>, children: &Arc<Children>) {
    use nix::errno::Errno;
    use nix::sys::wait::{Id, WaitPidFlag, waitid};
    loop {
        {
            let mut by_pid = lock(&children.by_pid);
            while by_pid.is_empty() {
                by_pid = children
                    .started
                    .wait(by_pid)
                    .unwrap_or_else(|e| e.into_inner());
            }
        }
        let pid = match waitid(Id::All, WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
            Ok(status) => match status.pid() {
                Some(pid) => pid,
                None => continue,
            },
            Err(Errno::EINTR) => continue,
            Err(e) => {
                say!("taskgrid spawner: cannot wait for the tasks: {e}");
                return;
            }
        };
        let Some(Running { id, child, group }) = u32::try_from(pid.as_raw())
            .ok()
            .and_then(|p| lock(&children.by_pid).remove(&p))
        else {
            // Not one of ours (it cannot be: the spawner starts nothing
            // else); reap it so that the wait does not see it again.
            let _ = nix::sys::wait::waitpid(pid, None);
            continue;
        };
        let answer = match group::reap_exited(child, &group) {
            Ok(r) => Reply::Exited {
                id,
                status: r.status.into_raw(),
                cpu_seconds: r.cpu_seconds,
                peak_rss_bytes: r.peak_rss_bytes,
            },
            Err(e) => Reply::Lost {
                id,
                message: format!("cannot reap the task's process: {e}"),
            },
        };
        let finish = move |socket: &OwnedFd, children: &Children, answer: &Reply| {
            lock(&children.groups).remove(&id);
            reply(socket, answer);
        };
        if group::outlived(&group) {
            let (s, c, a) = (socket.clone(), children.clone(), answer.clone());
            let spawned = std::thread::Builder::new()
                .stack_size(128 << 10)
                .spawn(move || {
                    group::await_exit(&group);
                    finish(&s, &c, &a);
                });
            if let Err(e) = spawned {
                say!("taskgrid spawner: cannot start a thread: {e}");
                finish(socket, children, &answer);
            }
        } else {
            finish(socket, children, &answer);
        }
    }
}

// ------------------------------------------------------------------- packets

fn encode<T: Serialize>(msg: &T) -> io::Result<Vec<u8>> {
    let body = serde_json::to_vec(msg).map_err(io::Error::other)?;
    if body.len() > MAX_MESSAGE {
        return Err(io::Error::other(format!(
            "a message to the spawner of {} bytes is over its {} KiB",
            body.len(),
            MAX_MESSAGE >> 10
        )));
    }
    Ok(body)
}

fn send_packet(
    socket: &OwnedFd,
    body: &[u8],
    fds: &[std::os::fd::BorrowedFd<'_>],
) -> io::Result<()> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(3))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other("too many descriptors for one message"));
    }
    let sent = rustix::net::sendmsg(
        socket,
        &[IoSlice::new(body)],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    if sent != body.len() {
        return Err(io::Error::other("a message to the spawner was cut short"));
    }
    Ok(())
}

/// One packet and the descriptors it carried (close-on-exec, so that no
/// other task inherits them).
fn recv_packet(socket: &OwnedFd, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(3))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = rustix::net::recvmsg(
        socket,
        &mut [IoSliceMut::new(buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(got) = m {
            fds.extend(got);
        }
    }
    if msg.flags.contains(rustix::net::ReturnFlags::TRUNC) {
        return Err(io::Error::other("a message from the spawner was cut short"));
    }
    Ok((msg.bytes, fds))
}
