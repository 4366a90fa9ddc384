//! A child's process group and the end of its life: signals that can
//! never hit a recycled id, reaping with `wait4` for the attempt's own
//! resource usage, and making sure the rest of the group is dead (see the
//! module docs of [`crate::exec`] for why it is done this way).

use std::io;
use std::process::{Child, ExitStatus};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
#[cfg(target_os = "linux")]
use tokio::io::{Interest, unix::AsyncFd};
use tokio::task::JoinHandle;
use wait4::Wait4;

/// After the final `SIGKILL`, how long reaping waits for the rest of the
/// group to die before it gives up and logs.
const GROUP_EXIT_WAIT: Duration = Duration::from_secs(1);

/// What the main process left behind when it was reaped.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reaped {
    pub(crate) status: ExitStatus,
    pub(crate) cpu_seconds: f64,
    pub(crate) peak_rss_bytes: u64,
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
    pub(crate) fn new(pid: u32) -> Self {
        ProcessGroup {
            // Pids fit in a pid_t; the cast cannot wrap.
            pgid: Pid::from_raw(pid as i32),
            reaped: Arc::new(Mutex::new(false)),
        }
    }

    pub(crate) fn id(&self) -> i32 {
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

/// Starts reaping `child` as a task of its own, so it is reaped even if the
/// attempt that spawned it is dropped. Where the kernel has pidfds, the
/// exit wakes the runtime's own event loop; elsewhere (or if `pidfd_open`
/// fails) a blocking thread waits for it.
pub(crate) fn spawn_reaper(child: Child, group: ProcessGroup) -> JoinHandle<io::Result<Reaped>> {
    #[cfg(target_os = "linux")]
    match exit_notice(&child) {
        Ok(notice) => return tokio::spawn(reap_on_notice(notice, child, group)),
        Err(e) => tracing::debug!(error = %e, "no pidfd: reaping on a blocking thread"),
    }
    tokio::task::spawn_blocking(move || reap(child, &group))
}

/// A pidfd for `child` that the runtime's reactor watches: it turns
/// readable when the child exits.
#[cfg(target_os = "linux")]
fn exit_notice(child: &Child) -> io::Result<AsyncFd<std::os::fd::OwnedFd>> {
    use rustix::process::{Pid as RawPid, PidfdFlags, pidfd_open};
    let pid = i32::try_from(child.id())
        .ok()
        .and_then(RawPid::from_raw)
        .ok_or_else(|| io::Error::other("the child's pid is not a valid pid"))?;
    // The child is ours and unreaped, so its pid cannot have been reused.
    // (The fd is only polled, never read: no `PIDFD_NONBLOCK`, which needs
    // Linux 5.10 where `pidfd_open` itself needs 5.3.)
    let fd = pidfd_open(pid, PidfdFlags::empty())?;
    // Deprecated because an arbitrary `AsRawFd` may close or swap its fd
    // under the registration (the replacement is `unsafe`, which the
    // workspace forbids). An `OwnedFd` moved into the `AsyncFd` cannot: it
    // stays open, and the same fd, until the `AsyncFd` is dropped.
    #[allow(deprecated)]
    AsyncFd::with_interest(fd, Interest::READABLE)
}

#[cfg(target_os = "linux")]
async fn reap_on_notice(
    notice: AsyncFd<std::os::fd::OwnedFd>,
    child: Child,
    group: ProcessGroup,
) -> io::Result<Reaped> {
    let res = loop {
        match notice.readable().await {
            // Readiness may be spurious: make sure the child has exited.
            Ok(mut ready) => match leader_exited(&group, false) {
                Ok(false) => ready.clear_ready(),
                Ok(true) => break kill_then_reap(child, &group),
                Err(e) => break Err(e),
            },
            Err(e) => {
                tracing::debug!(error = %e, "pidfd wait failed: reaping on a blocking thread");
                return tokio::task::spawn_blocking(move || reap(child, &group))
                    .await
                    .unwrap_or_else(|e| Err(io::Error::other(e)));
            }
        }
    };
    drop(notice);
    if killpg(group.pgid, None).is_ok() {
        // Only a group that outlived its leader makes anyone wait (and
        // the search of `/proc` for its live members runs off this thread).
        let pgid = group.pgid;
        let _ = tokio::task::spawn_blocking(move || await_group_exit(pgid)).await;
    }
    reaped(res?)
}

/// Blocks until `child` exits, kills the rest of its group, reaps it with
/// `wait4` and waits (briefly) for the group to die.
pub(crate) fn reap(child: Child, group: &ProcessGroup) -> io::Result<Reaped> {
    let res = wait_then_reap(child, group);
    await_group_exit(group.pgid);
    reaped(res?)
}

fn reaped(res: wait4::ResUse) -> io::Result<Reaped> {
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
    while !leader_exited(group, true)? {}
    kill_then_reap(child, group)
}

/// `waitid(WNOWAIT)` on the group's leader: whether it has exited (it stays
/// a zombie, so its pid is still ours); `block` waits for that. After an
/// error nothing may be signalled any more, so the group is marked reaped.
#[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
fn leader_exited(group: &ProcessGroup, block: bool) -> io::Result<bool> {
    use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
    let mut flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT;
    if !block {
        flags |= WaitPidFlag::WNOHANG;
    }
    loop {
        match waitid(Id::Pid(group.pgid), flags) {
            Ok(WaitStatus::StillAlive) => return Ok(false),
            Ok(_) => return Ok(true),
            Err(Errno::EINTR) => continue,
            Err(e) => {
                *group.lock() = true;
                return Err(e.into());
            }
        }
    }
}

/// The leader has exited: kills the rest of its group, then reaps it.
#[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
fn kill_then_reap(child: Child, group: &ProcessGroup) -> io::Result<wait4::ResUse> {
    let mut reaped = group.lock();
    send(group.pgid, Signal::SIGKILL);
    let res = child.wait4();
    *reaped = true;
    res
}

/// For the spawner's reaping thread, which saw the leader exit with
/// `waitid(P_ALL, WNOWAIT)`: kills the rest of its group, then reaps it.
#[cfg(target_os = "linux")]
pub(crate) fn reap_exited(child: Child, group: &ProcessGroup) -> io::Result<Reaped> {
    reaped(kill_then_reap(child, group)?)
}

/// Whether any process (a zombie included) is left in the group.
pub(crate) fn outlived(group: &ProcessGroup) -> bool {
    killpg(group.pgid, None).is_ok()
}

/// Waits (briefly) until no live process is left in the group.
pub(crate) fn await_exit(group: &ProcessGroup) {
    await_group_exit(group.pgid);
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

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_whatever_the_command_name_holds() {
        let odd = "42 (a) b (c) S 1 40 40 0 -1";
        assert_eq!(proc_state_and_pgrp(odd), Some(('S', 40)));
        assert_eq!(proc_state_and_pgrp("7 (sleep) Z 1 7 7"), Some(('Z', 7)));
        assert_eq!(proc_state_and_pgrp("garbage"), None);
    }

    #[test]
    fn the_blocking_reaper_returns_the_exit_and_resource_usage() {
        use std::os::unix::process::{CommandExt, ExitStatusExt};
        // The path taken where pidfds are missing.
        let child = std::process::Command::new("sh")
            .args(["-c", "exit 3"])
            .process_group(0)
            .spawn()
            .unwrap();
        let group = ProcessGroup::new(child.id());
        let reaped = reap(child, &group).unwrap();
        assert_eq!(reaped.status.code(), Some(3));
        assert!(reaped.status.signal().is_none());
        assert!(reaped.peak_rss_bytes > 0);
        assert!(*group.lock(), "the group must be marked reaped");
    }

    #[test]
    fn signals_stop_once_the_leader_is_marked_reaped() {
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new("sleep")
            .arg("1000")
            .process_group(0)
            .spawn()
            .unwrap();
        let group = ProcessGroup::new(child.id());
        *group.lock() = true;
        group.signal(Signal::SIGKILL);
        assert!(child.try_wait().unwrap().is_none(), "the signal went out");
        *group.lock() = false;
        group.signal(Signal::SIGKILL);
        let status = child.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9)
        );
    }
}
