//! One control group per shell attempt (Linux): the task's CPU and memory
//! limits, and what the attempt cost, measured on its processes alone.
//!
//! The hierarchy is found once per process: cgroup v2 where the worker's
//! own cgroup can hold children with the `memory` controller, else v1's
//! `memory` hierarchy (with `cpu` and `cpuacct` where they are mounted).
//! Under it the worker makes `taskgrid-<pid>/` and, per attempt, `a<n>/`.
//! The child is in it from its first instruction, so nothing it allocates
//! is charged elsewhere and the worker's own memory is never counted (the
//! `ru_maxrss` of a forked child starts at the worker's size). With v1 the
//! spawning thread joins the attempt's group, forks (a child starts in its
//! parent thread's groups) and ends (a thread of its own, so no worker thread is ever left in a group); v2 keeps a process's threads
//! together, so there `/bin/sh` joins the group and then `exec`s the
//! program (the workspace forbids the unsafe `pre_exec`).
//!
//! Where no hierarchy is usable (no cgroup file system, or no right to make
//! groups), [`available`] says why once, and a memory limit falls back to
//! `RLIMIT_AS` (a CPU limit is then not enforced).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use taskgrid_core::Resources;

/// The CFS period a CPU limit is expressed in: 100 ms.
const CPU_PERIOD_US: u64 = 100_000;

/// Where attempts' groups are made.
#[derive(Debug)]
enum Hierarchy {
    /// Unified: one directory holds every controller's files.
    V2 { base: PathBuf },
    /// Legacy: a directory per controller.
    V1 {
        memory: PathBuf,
        cpu: Option<PathBuf>,
        cpuacct: Option<PathBuf>,
    },
}

static HIERARCHY: OnceLock<Result<Hierarchy, String>> = OnceLock::new();
static NEXT: AtomicU64 = AtomicU64::new(1);

/// Whether attempts run in their own cgroups here, or why not. Found once
/// and logged the first time.
pub fn available() -> Result<&'static str, String> {
    match hierarchy() {
        Ok(Hierarchy::V2 { .. }) => Ok("cgroup v2"),
        Ok(Hierarchy::V1 { .. }) => Ok("cgroup v1"),
        Err(why) => Err(why.clone()),
    }
}

fn hierarchy() -> &'static Result<Hierarchy, String> {
    HIERARCHY.get_or_init(|| {
        let found = find_v2().or_else(|v2| find_v1().map_err(|v1| format!("{v2}; {v1}")));
        match &found {
            Ok(h) => tracing::info!(?h, "each shell attempt runs in its own cgroup"),
            Err(why) => tracing::warn!(
                "cgroups are not available ({why}): memory limits fall back to RLIMIT_AS, \
                 CPU limits are not enforced, and usage is measured per process"
            ),
        }
        found
    })
}

/// This process's path in the hierarchy whose `/proc/self/cgroup` line
/// matches `controller` (`""` for v2).
fn own_path(controller: &str) -> Option<String> {
    let text = fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, names, path) = (parts.next()?, parts.next()?, parts.next()?);
        let hit = if controller.is_empty() {
            names.is_empty()
        } else {
            names.split(',').any(|n| n == controller)
        };
        hit.then(|| path.trim_start_matches('/').to_owned())
    })
}

/// A fresh `taskgrid-<pid>` directory under `mount`/(own path), or under
/// `mount` itself when the own path cannot hold one.
fn make_base(mount: &Path, own: Option<String>) -> Result<PathBuf, String> {
    let name = format!("taskgrid-{}", std::process::id());
    let mut tried = Vec::new();
    for parent in [own.map(|o| mount.join(o)), Some(mount.to_path_buf())]
        .into_iter()
        .flatten()
    {
        remove_stale(&parent);
        let dir = parent.join(&name);
        match fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(dir),
            Err(e) => tried.push(format!("{}: {e}", dir.display())),
        }
    }
    Err(tried.join(", "))
}

/// Removes the `taskgrid-<pid>` groups of workers that are gone (with the
/// attempt groups they left); a group that still holds a process stays.
fn remove_stale(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("taskgrid-"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new("/proc").join(pid.to_string()).exists() {
            continue;
        }
        let dir = entry.path();
        if let Ok(attempts) = fs::read_dir(&dir) {
            for a in attempts.flatten() {
                if a.path().is_dir() {
                    let _ = fs::remove_dir(a.path());
                }
            }
        }
        let _ = fs::remove_dir(&dir);
    }
}

fn find_v2() -> Result<Hierarchy, String> {
    let mount = Path::new("/sys/fs/cgroup");
    let controllers = fs::read_to_string(mount.join("cgroup.controllers"))
        .map_err(|_| "no cgroup v2 hierarchy at /sys/fs/cgroup".to_owned())?;
    if !controllers.split_whitespace().any(|c| c == "memory") {
        return Err("cgroup v2 has no memory controller".into());
    }
    let own = own_path("").unwrap_or_default();
    let parent = mount.join(&own);
    // The worker's own group must hand memory and cpu down to children.
    write(&parent.join("cgroup.subtree_control"), "+memory +cpu")
        .or_else(|_| write(&parent.join("cgroup.subtree_control"), "+memory"))
        .map_err(|e| format!("cannot enable the memory controller below /{own}: {e}"))?;
    let base = make_base(mount, Some(own))?;
    write(&base.join("cgroup.subtree_control"), "+memory +cpu")
        .or_else(|_| write(&base.join("cgroup.subtree_control"), "+memory"))
        .map_err(|e| format!("{}: {e}", base.display()))?;
    Ok(Hierarchy::V2 { base })
}

fn find_v1() -> Result<Hierarchy, String> {
    let mount = |names: &[&str]| {
        names
            .iter()
            .map(|n| Path::new("/sys/fs/cgroup").join(n))
            .find(|p| p.join("cgroup.procs").exists())
    };
    let memory_mount = mount(&["memory"])
        .filter(|p| p.join("memory.limit_in_bytes").exists())
        .ok_or_else(|| "no cgroup v1 memory hierarchy".to_owned())?;
    let memory = make_base(&memory_mount, own_path("memory"))?;
    let mut cpu = None;
    let mut cpuacct = None;
    if let Some(m) = mount(&["cpu", "cpu,cpuacct"]).filter(|p| p.join("cpu.cfs_quota_us").exists())
        && let Ok(base) = make_base(&m, own_path("cpu"))
    {
        cpu = Some(base);
    }
    if let Some(m) = mount(&["cpuacct", "cpu,cpuacct"]).filter(|p| p.join("cpuacct.usage").exists())
        && let Ok(base) = make_base(&m, own_path("cpuacct"))
        && Some(&base) != cpu.as_ref()
    {
        cpuacct = Some(base);
    } else if cpu
        .as_ref()
        .is_some_and(|c| c.join("cpuacct.usage").exists())
    {
        cpuacct.clone_from(&cpu);
    }
    Ok(Hierarchy::V1 {
        memory,
        cpu,
        cpuacct,
    })
}

fn write(path: &Path, value: &str) -> io::Result<()> {
    fs::write(path, value)
}

fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The value of `key` in a flat-keyed file (`memory.events`, `cpu.stat`,
/// `memory.oom_control`).
fn keyed(path: &Path, key: &str) -> Option<u64> {
    let text = fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// The memory this worker's tasks may use in all: the machine's
/// (`MemTotal`), or the worker's own cgroup limit when that is lower.
pub fn machine_memory() -> Option<u64> {
    let total = fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kib| kib * 1024)
    })?;
    let own_limit = own_path("")
        .map(|p| Path::new("/sys/fs/cgroup").join(p).join("memory.max"))
        .and_then(|p| read_u64(&p))
        .or_else(|| {
            own_path("memory")
                .map(|p| {
                    Path::new("/sys/fs/cgroup/memory")
                        .join(p)
                        .join("memory.limit_in_bytes")
                })
                .and_then(|p| read_u64(&p))
        });
    Some(own_limit.map_or(total, |l| l.min(total)))
}

/// What an attempt's group measured when it ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Measured {
    /// CPU seconds of every process of the attempt (None: not measured).
    pub(crate) cpu_seconds: Option<f64>,
    /// The attempt's peak memory in bytes.
    pub(crate) peak_bytes: u64,
    /// Whether the kernel killed a process of it for exceeding its limit.
    pub(crate) oom_killed: bool,
}

/// One attempt's cgroup; removed when dropped.
#[derive(Debug)]
pub(crate) struct AttemptGroup {
    /// Its directory in each hierarchy it is in.
    dirs: Vec<PathBuf>,
    v2: bool,
    memory: PathBuf,
    cpuacct: Option<PathBuf>,
}

impl AttemptGroup {
    /// Makes the group of a new attempt with `limits`. `Ok(None)` where
    /// cgroups are not available (a memory limit is then set on `cmd` with
    /// `RLIMIT_AS`).
    pub(crate) fn create(
        cmd: &mut std::process::Command,
        limits: Resources,
    ) -> io::Result<Option<AttemptGroup>> {
        let Ok(h) = hierarchy() else {
            if let Some(bytes) = limits.memory_bytes {
                rlimit_as(cmd, bytes);
            }
            return Ok(None);
        };
        let name = format!("a{}", NEXT.fetch_add(1, Ordering::Relaxed));
        let mut group = match h {
            Hierarchy::V2 { base } => {
                let dir = base.join(&name);
                fs::create_dir(&dir)?;
                AttemptGroup {
                    dirs: vec![dir.clone()],
                    v2: true,
                    memory: dir.clone(),
                    cpuacct: Some(dir),
                }
            }
            Hierarchy::V1 { memory, .. } => {
                let dir = memory.join(&name);
                fs::create_dir(&dir)?;
                AttemptGroup {
                    dirs: vec![dir.clone()],
                    v2: false,
                    memory: dir,
                    cpuacct: None,
                }
            }
        };
        // From here on, a failure removes what was made (Drop).
        match h {
            Hierarchy::V2 { .. } => {
                let dir = group.memory.clone();
                if let Some(bytes) = limits.memory_bytes {
                    write(&dir.join("memory.max"), &bytes.to_string())?;
                    // Swap would let it exceed the limit unseen.
                    let _ = write(&dir.join("memory.swap.max"), "0");
                }
                if let Some(cpus) = limits.cpus {
                    let max = format!("{} {CPU_PERIOD_US}", quota_us(cpus));
                    write(&dir.join("cpu.max"), &max)?;
                }
                let procs = dir.join("cgroup.procs");
                wrap_in_sh(cmd, r#"echo 0 > "$0" && exec "$@""#, procs.as_os_str());
            }
            Hierarchy::V1 { cpu, cpuacct, .. } => {
                let mem = group.memory.clone();
                if let Some(bytes) = limits.memory_bytes {
                    write(&mem.join("memory.limit_in_bytes"), &bytes.to_string())?;
                    let _ = write(&mem.join("memory.memsw.limit_in_bytes"), &bytes.to_string());
                    let _ = write(&mem.join("memory.swappiness"), "0");
                }
                if let Some(cpu) = cpu {
                    let dir = cpu.join(&name);
                    fs::create_dir(&dir)?;
                    group.dirs.push(dir.clone());
                    if let Some(cpus) = limits.cpus {
                        write(&dir.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                        write(&dir.join("cpu.cfs_quota_us"), &quota_us(cpus).to_string())?;
                    }
                } else if limits.cpus.is_some() {
                    tracing::warn!(
                        "no cgroup cpu controller: the task's CPU limit is not enforced"
                    );
                }
                if let Some(acct) = cpuacct {
                    let dir = acct.join(&name);
                    if cpu.as_ref() != Some(acct) {
                        fs::create_dir(&dir)?;
                        group.dirs.push(dir.clone());
                    }
                    group.cpuacct = Some(dir);
                }
            }
        }
        Ok(Some(group))
    }

    /// Spawns `cmd` in the group: for v1, from a short-lived
    /// thread of its own that joins the group, forks and ends.
    pub(crate) fn spawn(&self, cmd: &mut std::process::Command) -> io::Result<std::process::Child> {
        if self.v2 {
            return cmd.spawn();
        }
        // A thread of its own joins the group, forks and ends: no thread
        // of the worker is ever left in an attempt's group.
        std::thread::scope(|s| {
            s.spawn(|| {
                self.dirs
                    .iter()
                    .try_for_each(|d| write(&d.join("tasks"), "0"))?;
                cmd.spawn()
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the spawning thread panicked")))
        })
    }

    /// What the attempt cost, read once its processes are gone.
    pub(crate) fn measure(&self) -> Measured {
        if self.v2 {
            Measured {
                cpu_seconds: keyed(&self.memory.join("cpu.stat"), "usage_usec")
                    .map(|us| us as f64 / 1e6),
                peak_bytes: read_u64(&self.memory.join("memory.peak")).unwrap_or(0),
                oom_killed: keyed(&self.memory.join("memory.events"), "oom_kill")
                    .is_some_and(|n| n > 0),
            }
        } else {
            // `oom_kill` counts the kernel's kills (Linux 4.13 and later;
            // `failcnt` would count every time the limit was reached).
            let oom =
                keyed(&self.memory.join("memory.oom_control"), "oom_kill").is_some_and(|n| n > 0);
            Measured {
                cpu_seconds: self
                    .cpuacct
                    .as_ref()
                    .and_then(|d| read_u64(&d.join("cpuacct.usage")))
                    .map(|ns| ns as f64 / 1e9),
                peak_bytes: read_u64(&self.memory.join("memory.max_usage_in_bytes")).unwrap_or(0),
                oom_killed: oom,
            }
        }
    }
}

impl Drop for AttemptGroup {
    fn drop(&mut self) {
        // The processes are reaped: usually the groups go at once. One that
        // is still emptying (or holds a process that left the task's
        // process group) is retried off the async threads for a while.
        let left: Vec<PathBuf> = self
            .dirs
            .drain(..)
            .filter(|d| fs::remove_dir(d).is_err_and(|e| e.kind() != io::ErrorKind::NotFound))
            .collect();
        if left.is_empty() {
            return;
        }
        let _ = std::thread::Builder::new()
            .name("taskgrid-cgroup-rm".into())
            .spawn(move || {
                for dir in left {
                    let mut tries = 0;
                    while let Err(e) = fs::remove_dir(&dir) {
                        tries += 1;
                        if tries >= 500 || e.kind() == io::ErrorKind::NotFound {
                            if e.kind() != io::ErrorKind::NotFound {
                                tracing::warn!(dir = %dir.display(), "cannot remove an attempt's cgroup: {e}");
                            }
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            });
    }
}

/// The CFS quota for `cpus` CPUs per period (at least 1 ms, as the kernel
/// requires).
fn quota_us(cpus: f64) -> u64 {
    ((cpus * CPU_PERIOD_US as f64) as u64).max(1_000)
}

/// Limits the child's address space to `bytes` where no cgroup can.
fn rlimit_as(cmd: &mut std::process::Command, bytes: u64) {
    let script = format!(r#"ulimit -v {} && exec "$@""#, bytes / 1024);
    wrap_in_sh(cmd, &script, std::ffi::OsStr::new("sh"));
}

/// Makes `cmd` run under `/bin/sh -c SCRIPT ARG0 PROGRAM ARGS…`, with the
/// same environment and directory: `SCRIPT` prepares the process (joins a
/// group, sets a limit) and `exec`s the program.
fn wrap_in_sh(cmd: &mut std::process::Command, script: &str, arg0: &std::ffi::OsStr) {
    let mut sh = std::process::Command::new("/bin/sh");
    sh.arg("-c")
        .arg(script)
        .arg(arg0)
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => sh.env(k, v),
            None => sh.env_remove(k),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        sh.current_dir(dir);
    }
    *cmd = sh;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_are_per_period_and_at_least_a_millisecond() {
        assert_eq!(quota_us(1.5), 150_000);
        assert_eq!(quota_us(0.001), 1_000);
    }
}
