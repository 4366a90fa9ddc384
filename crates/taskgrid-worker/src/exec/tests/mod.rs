//! End-to-end tests of the executors with real processes, and what they
//! share: running an attempt live (to stop it once it has said it is
//! ready), collecting its output, and checking that processes are gone.
//!
//! Tests never sleep to let something happen: they wait for the child to
//! say something on its output, and every wait is bounded by [`LIMIT`].

mod container;
mod shell;

use std::future::Future;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;
use taskgrid_core::{ShellCommand, ShellSpec, StopReason, Stream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::group::proc_state_and_pgrp;
use super::{ExecLimits, ExecReport};

/// Longest any one test may wait for anything.
const LIMIT: Duration = Duration::from_secs(60);

type Chunks = Vec<(Stream, String)>;

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(LIMIT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what} did not finish within {LIMIT:?}"),
    }
}

fn script(s: &str) -> ShellSpec {
    ShellSpec {
        command: ShellCommand::Script(s.into()),
        env: vec![],
        cwd: None,
    }
}

fn argv(a: &[&str]) -> ShellSpec {
    ShellSpec {
        command: ShellCommand::Argv(a.iter().map(|s| (*s).to_owned()).collect()),
        env: vec![],
        cwd: None,
    }
}

fn limits() -> ExecLimits {
    ExecLimits {
        kill_grace: Duration::from_secs(2),
        ..ExecLimits::default()
    }
}

/// Everything one stream said, in order.
fn text(chunks: &Chunks, stream: Stream) -> String {
    chunks
        .iter()
        .filter(|(s, _)| *s == stream)
        .map(|(_, t)| t.as_str())
        .collect()
}

/// The pids a script printed, one per stdout line.
fn pids(chunks: &Chunks) -> Vec<i32> {
    text(chunks, Stream::Stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Whether `pid` is a live process (a zombie is dead: it only waits for its
/// new parent, init, to reap it).
fn alive(pid: i32) -> bool {
    if kill(Pid::from_raw(pid), None) == Err(Errno::ESRCH) {
        return false;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    !matches!(
        proc_state_and_pgrp(&stat),
        None | Some(('Z' | 'X' | 'x', _))
    )
}

/// Whether `leader`, a process group leader this process spawned, is
/// reaped: gone, or its pid reused by a process outside its old group.
fn reaped(leader: i32) -> bool {
    if kill(Pid::from_raw(leader), None) == Err(Errno::ESRCH) {
        return true;
    }
    let stat = std::fs::read_to_string(format!("/proc/{leader}/stat")).unwrap_or_default();
    proc_state_and_pgrp(&stat).is_some_and(|(_, pgrp)| pgrp != leader)
}

/// Writes an executable script at `path`. Another process writes the file:
/// had this one, a child forked by a parallel test at that moment would
/// hold the write descriptor until its exec, and running the script would
/// fail with "text file busy".
fn install_script(path: &std::path::Path, content: &str) {
    let source = path.with_extension("src");
    std::fs::write(&source, content).unwrap();
    let status = std::process::Command::new("install")
        .args(["-m", "755"])
        .arg(&source)
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success(), "install {}: {status}", path.display());
}

/// An attempt running on its own task, with its stop channel and output.
struct Live {
    stop: watch::Sender<Option<StopReason>>,
    out: mpsc::Receiver<(Stream, String)>,
    task: JoinHandle<ExecReport>,
    seen: Chunks,
}

impl Live {
    /// Starts `run` with a fresh stop channel and output channel.
    fn start<F, Fut>(run: F) -> Live
    where
        F: FnOnce(watch::Receiver<Option<StopReason>>, mpsc::Sender<(Stream, String)>) -> Fut,
        Fut: Future<Output = ExecReport> + Send + 'static,
    {
        let (stop, stop_rx) = watch::channel(None);
        let (tx, out) = mpsc::channel(64);
        Live {
            stop,
            out,
            task: tokio::spawn(run(stop_rx, tx)),
            seen: Vec::new(),
        }
    }

    /// Reads output until stdout holds `n` complete lines.
    async fn stdout_lines(&mut self, n: usize) -> Vec<String> {
        within("waiting for output", async {
            loop {
                let out = text(&self.seen, Stream::Stdout);
                if out.matches('\n').count() >= n {
                    return out.lines().map(str::to_owned).collect();
                }
                match self.out.recv().await {
                    Some(chunk) => self.seen.push(chunk),
                    None => panic!("output ended early: {:?}", self.seen),
                }
            }
        })
        .await
    }

    /// Reads output until stdout contains `needle`.
    async fn stdout_contains(&mut self, needle: &str) {
        within("waiting for output", async {
            while !text(&self.seen, Stream::Stdout).contains(needle) {
                match self.out.recv().await {
                    Some(chunk) => self.seen.push(chunk),
                    None => panic!("output ended without {needle:?}: {:?}", self.seen),
                }
            }
        })
        .await;
    }

    fn request_stop(&self, reason: StopReason) {
        self.stop.send_replace(Some(reason));
    }

    /// The report, and all output the attempt produced.
    async fn finish(mut self) -> (ExecReport, Chunks) {
        within("the attempt", async {
            while let Some(chunk) = self.out.recv().await {
                self.seen.push(chunk);
            }
            let report = self.task.await.expect("the attempt panicked");
            (report, self.seen)
        })
        .await
    }
}

/// Runs `run` to its end with no stop request.
async fn run_to_end<F, Fut>(run: F) -> (ExecReport, Chunks)
where
    F: FnOnce(watch::Receiver<Option<StopReason>>, mpsc::Sender<(Stream, String)>) -> Fut,
    Fut: Future<Output = ExecReport> + Send + 'static,
{
    Live::start(run).finish().await
}
