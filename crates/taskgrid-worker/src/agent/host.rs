//! What a worker says of its host in each heartbeat: load per CPU, memory
//! available, free disk where it runs tasks. Read from `/proc` and
//! `statvfs(2)`; on systems without them the figures are unknown.

/// One sample of the host.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Sample {
    /// The 1-minute load average per CPU.
    pub(crate) load: Option<f64>,
    /// `MemAvailable`, bytes.
    pub(crate) memory_available_bytes: Option<u64>,
    /// Free disk (for unprivileged users) where tasks run, bytes.
    pub(crate) disk_free_bytes: Option<u64>,
}

/// Reads the host now.
pub(crate) fn sample() -> Sample {
    Sample {
        load: load_per_cpu(),
        memory_available_bytes: memory_available(),
        disk_free_bytes: disk_free(),
    }
}

fn load_per_cpu() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let load: f64 = text.split_whitespace().next()?.parse().ok()?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    Some(load / cpus as f64)
}

fn memory_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
}

#[cfg(target_os = "linux")]
fn disk_free() -> Option<u64> {
    let st = rustix::fs::statvfs(".").ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

#[cfg(not(target_os = "linux"))]
fn disk_free() -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_linux_host_says_its_load_memory_and_disk() {
        let s = super::sample();
        if cfg!(target_os = "linux") {
            assert!(s.load.is_some_and(|l| l >= 0.0), "{s:?}");
            assert!(s.memory_available_bytes.is_some_and(|m| m > 0), "{s:?}");
            assert!(s.disk_free_bytes.is_some_and(|d| d > 0), "{s:?}");
        }
    }
}
