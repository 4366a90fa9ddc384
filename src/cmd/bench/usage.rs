//! What a process costs, read from Linux's /proc: CPU seconds (user +
//! system, `/proc/PID/stat`) and resident memory, now and at its peak
//! (`VmRSS` and `VmHWM` of `/proc/PID/status`). Elsewhere than Linux the
//! files are missing and the figures are reported as unknown.

use std::path::Path;

use anyhow::Context;

/// Clock ticks per second of the times in `/proc/PID/stat`: `USER_HZ`,
/// which Linux fixes at 100 for user space on every architecture it runs
/// on.
const USER_HZ: f64 = 100.0;

/// One reading of a process's resource use.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Sample {
    /// CPU seconds used so far, user plus system.
    pub(super) cpu_secs: f64,
    /// Resident memory now, in bytes.
    pub(super) rss_bytes: u64,
    /// The most resident memory so far, in bytes.
    pub(super) peak_rss_bytes: u64,
}

/// Reads the resource use of process `pid`.
pub(super) fn sample(pid: u32) -> anyhow::Result<Sample> {
    let stat_path = format!("/proc/{pid}/stat");
    let stat =
        std::fs::read_to_string(&stat_path).with_context(|| format!("reading {stat_path}"))?;
    let status_path = format!("/proc/{pid}/status");
    let status =
        std::fs::read_to_string(&status_path).with_context(|| format!("reading {status_path}"))?;
    let cpu_secs = cpu_secs(&stat).with_context(|| format!("unexpected {stat_path}"))?;
    let kib = |key| status_kib(&status, key).with_context(|| format!("no {key} in {status_path}"));
    Ok(Sample {
        cpu_secs,
        rss_bytes: kib("VmRSS")? * 1024,
        peak_rss_bytes: kib("VmHWM")? * 1024,
    })
}

/// utime + stime of a `/proc/PID/stat` line, in seconds. The command name
/// (field 2) may hold spaces and parentheses, so fields are counted after
/// its last `)`: field 3 (state) is the first there, utime (14) the 12th.
fn cpu_secs(stat: &str) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
}

/// A `Key:   123 kB` line of `/proc/PID/status`, in KiB.
fn status_kib(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let value = line.strip_prefix(key)?.strip_prefix(':')?;
        value.split_whitespace().next()?.parse().ok()
    })
}

/// Bytes taken by the SQLite database in `dir`: the file, its WAL and its
/// shared-memory index.
pub(super) fn store_bytes(dir: &Path) -> u64 {
    ["taskgrid.db", "taskgrid.db-wal", "taskgrid.db-shm"]
        .iter()
        .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
        .map(|m| m.len())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_read_after_a_command_name_with_spaces_and_parens() {
        let stat = "4242 (tokio (rt) 1) S 1 4242 4242 0 -1 4194560 900 0 0 0 \
                    250 50 0 0 20 0 3 0 100 123456 789 18446744073709551615";
        assert_eq!(cpu_secs(stat), Some(3.0));
        assert_eq!(cpu_secs("garbage"), None);
        assert_eq!(cpu_secs("1 (x) S 1 2"), None);
    }

    #[test]
    fn memory_lines_are_read_in_kib() {
        let status = "Name:\ttaskgrid\nVmHWM:\t  20480 kB\nVmRSS:\t   10240 kB\n";
        assert_eq!(status_kib(status, "VmRSS"), Some(10240));
        assert_eq!(status_kib(status, "VmHWM"), Some(20480));
        assert_eq!(status_kib(status, "VmSwap"), None);
    }

    #[test]
    fn this_process_can_be_measured() {
        let s = sample(std::process::id()).expect("/proc is readable on Linux");
        assert!(s.rss_bytes > 0 && s.peak_rss_bytes >= s.rss_bytes);
        assert!(s.cpu_secs >= 0.0);
    }
}
