//! The container executor: a [`ContainerSpec`] run through a runtime CLI
//! (`docker` or `podman`) as `<runtime> run --rm --name taskgrid-<unique>
//! -e K=V… IMAGE COMMAND…`, stopped with `<runtime> stop`.
//!
//! Environment values are passed as `-e K=V` arguments, so they are visible
//! to local users in the CLI's command line while it runs; they never touch
//! the CLI's own environment, so a task cannot redirect the CLI (for example
//! with `DOCKER_HOST`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use taskgrid_core::{ContainerSpec, Outcome, StopReason, Stream};
use tokio::sync::{mpsc, watch};

use super::exit::{self, never};
use super::process::{self, Attempt, Stopper, Supervised};
use super::{ExecLimits, ExecReport};

/// How long a `<runtime> rm` may take, and `<runtime> stop` beyond the
/// grace it was given.
const CALL_LIMIT: Duration = Duration::from_secs(10);

/// The container runtime CLI a worker uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRuntime {
    /// The CLI: a name looked up on the worker's `PATH` (`docker`,
    /// `podman`) or a path to it. It must accept docker's `run` and `stop`
    /// syntax.
    pub program: PathBuf,
}

impl ContainerRuntime {
    /// The runtime CLI at `program`.
    pub fn new(program: impl Into<PathBuf>) -> Self {
        ContainerRuntime {
            program: program.into(),
        }
    }

    /// `docker`, found on `PATH`.
    pub fn docker() -> Self {
        Self::new("docker")
    }

    /// `podman`, found on `PATH`.
    pub fn podman() -> Self {
        Self::new("podman")
    }

    /// Whether this runtime can run containers here: runs `<runtime>
    /// version`, which talks to the daemon (docker) or checks the set-up
    /// (podman), for at most `limit`. The error says why not in words, e.g.
    /// "`docker` not found on PATH" or "`docker version` failed (exit
    /// status: 1): Cannot connect to the Docker daemon…".
    pub async fn probe(&self, limit: Duration) -> Result<(), String> {
        let shown = self.program.display();
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.arg("version")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let out = match tokio::time::timeout(limit, cmd.output()).await {
            Ok(Ok(out)) => out,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                // A bare name is looked up on PATH; anything with a slash
                // is a path.
                let bare = !self.program.as_os_str().as_encoded_bytes().contains(&b'/');
                return Err(if bare {
                    format!("`{shown}` not found on PATH")
                } else {
                    format!("`{shown}` does not exist")
                });
            }
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                return Err(format!("`{shown}` cannot be run: permission denied"));
            }
            Ok(Err(e)) => return Err(format!("`{shown}` cannot be run: {e}")),
            Err(_) => {
                return Err(format!("`{shown} version` did not answer within {limit:?}"));
            }
        };
        if out.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        // The first line says it ("Cannot connect to the Docker daemon…").
        match stderr.lines().map(str::trim).find(|l| !l.is_empty()) {
            Some(line) => Err(format!("`{shown} version` failed ({}): {line}", out.status)),
            None => Err(format!("`{shown} version` failed ({})", out.status)),
        }
    }
}

impl Default for ContainerRuntime {
    /// [`ContainerRuntime::docker`].
    fn default() -> Self {
        Self::docker()
    }
}

/// Runs a container task to its end through `runtime`.
///
/// Output, `timeout`, `stop` and the report work as for
/// [`run_shell`](super::run_shell), except that a stop runs
/// `<runtime> stop --time <kill_grace, rounded up to seconds> <name>`; if
/// the CLI has not exited `kill_grace` after that, its process group is
/// killed and `<runtime> rm -f <name>` makes sure the container is gone; `cpu_seconds` and `peak_rss_bytes` are zero (the container
/// runs under the runtime's daemon). Exit codes 125, 126 and 127 are the
/// runtime's way of saying the container could not run, and the message says
/// so. An invalid spec (an image starting with `-`, a bad variable name) is
/// refused with [`RetryHint::Never`](taskgrid_core::RetryHint::Never); a
/// runtime CLI that cannot be started fails with the task's retry policy,
/// since another worker may have one.
pub async fn run_container(
    spec: &ContainerSpec,
    runtime: &ContainerRuntime,
    timeout: Option<Duration>,
    limits: &ExecLimits,
    stop: watch::Receiver<Option<StopReason>>,
    output: mpsc::Sender<(Stream, String)>,
) -> ExecReport {
    if let Err(message) = validate(spec) {
        return ExecReport::not_started(never(message));
    }
    let name = unique_name();
    let mut cmd = std::process::Command::new(&runtime.program);
    cmd.args(run_args(spec, &name));
    let stopper = Stopper::Container {
        runtime: runtime.program.clone(),
        name,
    };
    let attempt = Attempt {
        timeout,
        limits,
        stop,
        output,
        cgroup: None,
        stdin: None,
    };
    match process::supervise(process::Launcher::Command(cmd), attempt, stopper).await {
        Supervised::NotStarted(reason) => ExecReport::not_started(exit::stopped_outcome(reason)),
        Supervised::SpawnFailed(e) => ExecReport::not_started(Outcome::failed(format!(
            "cannot start the container runtime {}: {e}",
            runtime.program.display()
        ))),
        Supervised::Ended {
            exit,
            stopped,
            duration,
            output_truncated,
        } => ExecReport {
            cpu_seconds: 0.0,
            peak_rss_bytes: 0,
            ..exit::report(exit, stopped, duration, output_truncated, describe_code)
        },
    }
}

/// The `run` arguments after the runtime's name.
pub(crate) fn run_args(spec: &ContainerSpec, name: &str) -> Vec<String> {
    let mut args = vec!["run".into(), "--rm".into(), "--name".into(), name.into()];
    for (k, v) in &spec.env {
        args.push("-e".into());
        args.push(format!("{k}={v}"));
    }
    args.push(spec.image.clone());
    args.extend(spec.command.iter().cloned());
    args
}

fn validate(spec: &ContainerSpec) -> Result<(), String> {
    if spec.image.is_empty() {
        return Err("the container image is empty".into());
    }
    if spec.image.starts_with('-') {
        return Err(format!(
            "invalid container image {:?}: it would be read as an option",
            spec.image
        ));
    }
    let has_nul = |s: &str| s.contains('\0');
    if has_nul(&spec.image) || spec.command.iter().any(|a| has_nul(a)) {
        return Err("the container image or command contains a NUL byte".into());
    }
    for (k, v) in &spec.env {
        if k.is_empty() || k.contains('=') || has_nul(k) || has_nul(v) {
            return Err(format!("invalid environment variable name {k:?}"));
        }
    }
    Ok(())
}

/// What a non-zero exit of `<runtime> run` means.
fn describe_code(code: i32) -> String {
    match code {
        125 => {
            "the container could not be run: the container runtime failed (exit code 125)".into()
        }
        126 => "the container could not be run: its command could not be invoked (exit code 126)"
            .into(),
        127 => "the container could not be run: its command was not found (exit code 127)".into(),
        _ => exit::plain_code(code),
    }
}

/// `taskgrid-<worker pid>-<unix ms>-<sequence>`: unique on this host even
/// across worker restarts.
fn unique_name() -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("taskgrid-{}-{ms}-{seq}", std::process::id())
}

/// Runs `<runtime> stop --time <grace> <name>` and waits for it, bounded.
pub(crate) async fn stop(runtime: &Path, name: &str, grace: Duration) {
    let secs = grace.as_secs() + u64::from(grace.subsec_nanos() > 0);
    let time = secs.to_string();
    runtime_call(
        runtime,
        &["stop", "--time", &time, name],
        grace + CALL_LIMIT,
    )
    .await;
}

/// Runs `<runtime> rm -f <name>` and waits for it, bounded.
pub(crate) async fn remove(runtime: &Path, name: &str) {
    runtime_call(runtime, &["rm", "-f", name], CALL_LIMIT).await;
}

/// Runs the runtime CLI with `args` for at most `limit`; failures are
/// logged, since the attempt's outcome is already decided.
async fn runtime_call(runtime: &Path, args: &[&str], limit: Duration) {
    let mut cmd = tokio::process::Command::new(runtime);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let call = args.join(" ");
    match tokio::time::timeout(limit, cmd.output()).await {
        Ok(Ok(out)) if out.status.success() => {}
        Ok(Ok(out)) => tracing::warn!(
            %call,
            status = %out.status,
            stderr = %String::from_utf8_lossy(&out.stderr).trim(),
            "container runtime call failed"
        ),
        Ok(Err(e)) => tracing::warn!(%call, error = %e, "cannot run the container runtime"),
        Err(_) => tracing::warn!(%call, "the container runtime call did not finish in time"),
    }
}

/// Removes a container from a `Drop`: starts `<runtime> rm -f <name>` and
/// reaps it on a thread of its own.
pub(crate) fn remove_detached(runtime: &Path, name: &str) {
    let spawned = std::process::Command::new(runtime)
        .args(["rm", "-f", name])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    match spawned {
        Ok(mut child) => {
            std::thread::spawn(move || child.wait());
        }
        Err(e) => tracing::warn!(container = name, error = %e, "cannot remove container"),
    }
}
