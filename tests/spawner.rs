#![allow(clippy::unwrap_used)]
//! The worker's spawner (`taskgrid __spawner`) against real programs: a
//! task it starts reports its own peak memory, not the worker's; exits,
//! standard input, stops, timeouts and the process group behave as when
//! the worker spawns by itself; and if the spawner dies, the attempt it ran
//! ends with an error and the next one is spawned by the worker.
#![cfg(target_os = "linux")]

mod util;

use std::path::Path;
use std::time::Duration;

use taskgrid_core::{Outcome, ShellCommand, ShellSpec, StopReason, Stream};
use taskgrid_worker::{ExecLimits, ExecReport, ShellInput, ShellPolicy, Spawner, run_shell};
use tokio::sync::{mpsc, watch};
use util::{alive, await_gone};

async fn spawner() -> Spawner {
    Spawner::start(Path::new(env!("CARGO_BIN_EXE_taskgrid")))
        .await
        .unwrap()
}

fn script(s: &str) -> ShellSpec {
    ShellSpec {
        command: ShellCommand::Script(s.into()),
        env: vec![("GREETING".into(), "hello".into())],
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
        kill_grace: Duration::from_millis(200),
        ..ExecLimits::default()
    }
}

fn succeeded() -> Outcome {
    Outcome::Succeeded {
        result: None,
        exit_code: Some(0),
    }
}

/// A running attempt: its stop sender and its output as it comes.
struct Live {
    stop: watch::Sender<Option<StopReason>>,
    out: mpsc::Receiver<(Stream, String)>,
    report: tokio::task::JoinHandle<ExecReport>,
    stdout: String,
}

impl Live {
    fn start(
        spawner: std::sync::Arc<Spawner>,
        spec: ShellSpec,
        stdin: Option<String>,
        timeout: Option<Duration>,
    ) -> Live {
        let (stop, stop_rx) = watch::channel(None);
        let (out_tx, out) = mpsc::channel(64);
        let report = tokio::spawn(async move {
            let input = ShellInput {
                stdin: stdin.as_deref(),
                spawner: Some(&spawner),
                ..ShellInput::default()
            };
            run_shell(
                &spec,
                input,
                timeout,
                &limits(),
                &ShellPolicy::Any,
                stop_rx,
                out_tx,
            )
            .await
        });
        Live {
            stop,
            out,
            report,
            stdout: String::new(),
        }
    }

    /// Waits until the standard output holds `text`.
    async fn await_stdout(&mut self, text: &str) {
        while !self.stdout.contains(text) {
            match self.out.recv().await {
                Some((Stream::Stdout, chunk)) => self.stdout.push_str(&chunk),
                Some(_) => {}
                None => panic!("the output ended before {text:?}: {:?}", self.stdout),
            }
        }
    }

    async fn finish(mut self) -> (ExecReport, String) {
        while let Some((stream, chunk)) = self.out.recv().await {
            if stream == Stream::Stdout {
                self.stdout.push_str(&chunk);
            }
        }
        (self.report.await.unwrap(), self.stdout)
    }
}

/// The number a task printed after `prefix` on a line of its own.
fn printed(stdout: &str, prefix: &str) -> u32 {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {prefix:?} line in {stdout:?}"))
}

async fn run(
    spawner: &std::sync::Arc<Spawner>,
    spec: ShellSpec,
    stdin: Option<&str>,
) -> (ExecReport, String) {
    Live::start(spawner.clone(), spec, stdin.map(str::to_owned), None)
        .finish()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_it_starts_reports_its_own_peak_memory() {
    // Make this process (the "worker") big: a child it forked would report
    // at least this much.
    let ballast = vec![1u8; 128 << 20];
    std::hint::black_box(&ballast);
    let spawner = std::sync::Arc::new(spawner().await);
    // In a process group of its own: a Ctrl-C or a SIGTERM to the worker's
    // group (which drains) does not reach it, nor its tasks through it.
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", spawner.pid())).unwrap();
    let pgrp: u32 = stat[stat.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .nth(2)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(pgrp, spawner.pid());

    let (report, out) = run(&spawner, argv(&["echo", "hi"]), None).await;
    assert_eq!(report.outcome, succeeded());
    assert_eq!(out, "hi\n");
    assert!(
        report.peak_rss_bytes > 0 && report.peak_rss_bytes < 32 << 20,
        "echo's own peak (at least the spawner's, ~7 MiB in a release build, \
         ~12 in a debug one), not the worker's 128+ MiB: {} bytes",
        report.peak_rss_bytes
    );

    // A program that does use memory is measured as using it.
    let (report, _) = run(
        &spawner,
        argv(&["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"]),
        None,
    )
    .await;
    assert_eq!(report.outcome, succeeded());
    assert!(
        report.peak_rss_bytes >= 64 << 20 && report.peak_rss_bytes < 90 << 20,
        "dd's 64 MiB buffer: {} bytes",
        report.peak_rss_bytes
    );
    drop(ballast);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exits_input_environment_and_spawn_failures_are_as_without_it() {
    let spawner = std::sync::Arc::new(spawner().await);
    let (report, out) = run(
        &spawner,
        script(r#"read line; echo "$GREETING $line${MIMALLOC_ARENA_EAGER_COMMIT:-}"; exit 3"#),
        Some("world\n"),
    )
    .await;
    // The task has its own variables, and none the spawner was given.
    assert_eq!(out, "hello world\n");
    assert_eq!(report.exit_code, Some(3));
    assert!(
        matches!(&report.outcome, Outcome::Failed { message, .. } if message.contains("code 3")),
        "{report:?}"
    );

    // Killed by a signal: the signal is reported, as for a child of the worker.
    let (report, _) = run(&spawner, script("kill -9 $$"), None).await;
    assert_eq!(report.signal, Some(9));

    // A missing program fails for good, naming it.
    let (report, _) = run(&spawner, argv(&["no-such-program-here"]), None).await;
    assert!(
        matches!(&report.outcome, Outcome::Failed { message, retry, .. }
            if message.contains("\"no-such-program-here\" not found")
                && *retry == taskgrid_core::RetryHint::Never),
        "{report:?}"
    );
    // Spawns after a failure still work.
    let (report, out) = run(&spawner, argv(&["echo", "again"]), None).await;
    assert_eq!(report.outcome, succeeded());
    assert_eq!(out, "again\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_reaches_the_group_through_it_and_nothing_of_the_group_survives() {
    let spawner = std::sync::Arc::new(spawner().await);
    // A cancel: SIGTERM to the group (the trap answers), then the
    // background process left in the group is killed.
    let mut live = Live::start(
        spawner.clone(),
        script(r#"trap 'echo term; exit 0' TERM; sleep 1000 & echo "bg $!"; echo ready; wait"#),
        None,
        None,
    );
    live.await_stdout("ready").await;
    let bg = printed(&live.stdout, "bg ");
    assert!(alive(bg));
    live.stop.send(Some(StopReason::Cancel)).unwrap();
    let (report, out) = live.finish().await;
    assert_eq!(report.outcome, Outcome::Cancelled, "{report:?}");
    assert!(out.contains("term"), "{out}");
    assert!(
        !alive(bg),
        "the group's background process outlived the task"
    );

    // A timeout: SIGTERM ignored, so SIGKILL after the (short) grace.
    let mut live = Live::start(
        spawner.clone(),
        script("trap '' TERM; echo ready; while :; do sleep 1; done"),
        None,
        Some(Duration::from_millis(300)),
    );
    live.await_stdout("ready").await;
    let (report, _) = live.finish().await;
    assert_eq!(report.outcome, Outcome::TimedOut, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_it_dies_its_attempt_ends_and_the_worker_spawns_by_itself() {
    let spawner = std::sync::Arc::new(spawner().await);
    let mut live = Live::start(
        spawner.clone(),
        script(r#"echo "pid $$"; echo ready; exec sleep 1000"#),
        None,
        None,
    );
    live.await_stdout("ready").await;
    let pid = printed(&live.stdout, "pid ");
    // The worker learns a task's pid from the spawner's `spawned`, which
    // can come after the task's first output; a later task's end comes
    // after it on the same socket.
    let (report, _) = run(&spawner, argv(&["true"]), None).await;
    assert_eq!(report.outcome, succeeded());
    let status = std::process::Command::new("kill")
        .args(["-9", &spawner.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let (report, _) = live.finish().await;
    assert!(
        matches!(&report.outcome, Outcome::Failed { message, .. } if message.contains("spawner")),
        "{report:?}"
    );
    assert!(!spawner.is_alive());
    // Killed (SIGKILL to its group) when the worker saw the spawner go.
    await_gone(pid, "the orphaned task was not killed").await;
    let (report, out) = run(&spawner, argv(&["echo", "still"]), None).await;
    assert_eq!(report.outcome, succeeded());
    assert_eq!(out, "still\n");
}

/// A request too big for the socket is spawned by the worker itself, and a
/// program that does not serve `__spawner` is refused at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_it_cannot_take_is_spawned_by_the_worker() {
    let spawner = std::sync::Arc::new(spawner().await);
    // Three variables of 100 KiB (one string may not pass 128 KiB).
    let big = "x".repeat(100 << 10);
    let spec = ShellSpec {
        command: ShellCommand::Script(r#"printf %s "$B1$B2$B3" | wc -c"#.into()),
        env: ["B1", "B2", "B3"]
            .map(|k| (k.to_owned(), big.clone()))
            .to_vec(),
        cwd: None,
    };
    let (report, out) = run(&spawner, spec, None).await;
    assert_eq!(report.outcome, succeeded());
    assert_eq!(out.trim(), (300 << 10).to_string());
    assert!(spawner.is_alive());

    let err = Spawner::start(Path::new("/bin/true")).await.unwrap_err();
    assert!(err.to_string().contains("exited at once"), "{err}");
}
