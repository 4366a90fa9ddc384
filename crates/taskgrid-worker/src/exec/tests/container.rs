//! The container executor against a stand-in runtime: a shell script that
//! records each call's arguments and acts like `docker` enough to test with.

use std::path::{Path, PathBuf};
use std::time::Duration;

use taskgrid_core::{ContainerSpec, Outcome, RetryHint, StopReason, Stream};
use tempfile::TempDir;

use super::{LIMIT, Live, alive, install_script, limits, run_to_end, text};
use crate::exec::{ContainerRuntime, ExecLimits, run_container};

/// Records its arguments (one per line, then `--`) in `calls` beside it.
/// `run` behaves by image: `mode-block` writes its pid to `run.pid`, says
/// `ready` and sleeps until killed; `mode-125` fails like a missing image;
/// anything else greets and exits 0. `stop` kills the blocked `run` unless
/// a `stubborn` file exists.
const STAND_IN: &str = r#"#!/bin/sh
dir=$(dirname "$0")
{ for a in "$@"; do printf '%s\n' "$a"; done; echo --; } >> "$dir/calls"
case "$1" in
run)
  case " $* " in
  *" mode-block "*) echo $$ > "$dir/run.pid"; echo ready; exec sleep 1000 ;;
  *" mode-125 "*) echo "Unable to find image 'mode-125'" >&2; exit 125 ;;
  esac
  echo "hello from the container"
  echo "a warning" >&2
  ;;
stop)
  [ -f "$dir/stubborn" ] || kill -TERM "$(cat "$dir/run.pid")"
  ;;
esac
"#;

struct StandIn {
    dir: TempDir,
    runtime: ContainerRuntime,
}

impl StandIn {
    fn new() -> StandIn {
        let dir = tempfile::tempdir().unwrap();
        let program = dir.path().join("docker");
        install_script(&program, STAND_IN);
        StandIn {
            dir,
            runtime: ContainerRuntime::new(program),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The argument lists of every call so far, in order.
    fn calls(&self) -> Vec<Vec<String>> {
        read_calls(&self.path("calls"))
    }

    fn start(&self, spec: ContainerSpec, timeout: Option<Duration>, limits: ExecLimits) -> Live {
        let runtime = self.runtime.clone();
        Live::start(move |stop, out| async move {
            run_container(&spec, &runtime, timeout, &limits, stop, out).await
        })
    }
}

fn read_calls(path: &Path) -> Vec<Vec<String>> {
    let calls = std::fs::read_to_string(path).unwrap_or_default();
    let mut all = Vec::new();
    let mut one = Vec::new();
    for line in calls.lines() {
        if line == "--" {
            all.push(std::mem::take(&mut one));
        } else {
            one.push(line.to_owned());
        }
    }
    all
}

fn spec(image: &str, command: &[&str], env: &[(&str, &str)]) -> ContainerSpec {
    ContainerSpec {
        image: image.into(),
        command: command.iter().map(|s| (*s).to_owned()).collect(),
        env: env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    }
}

fn strings(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test]
async fn run_passes_name_env_image_and_command_as_separate_arguments() {
    let rt = StandIn::new();
    let spec = spec(
        "alpine:3",
        &["echo", "a b", "$HOME"],
        &[("A", "1"), ("B", "two words")],
    );
    let (report, chunks) = rt.start(spec, None, limits()).finish().await;
    assert_eq!(
        report.outcome,
        Outcome::Succeeded {
            result: None,
            exit_code: Some(0)
        }
    );
    let calls = rt.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    let name = calls[0][3].clone();
    assert!(name.starts_with("taskgrid-"), "{name}");
    let mut expected = strings(&["run", "--rm", "--name"]);
    expected.push(name);
    expected.extend(strings(&[
        "-e",
        "A=1",
        "-e",
        "B=two words",
        "alpine:3",
        "echo",
        "a b",
        "$HOME",
    ]));
    assert_eq!(calls[0], expected);
    assert_eq!(text(&chunks, Stream::Stdout), "hello from the container\n");
    assert_eq!(text(&chunks, Stream::Stderr), "a warning\n");
    assert_eq!((report.cpu_seconds, report.peak_rss_bytes), (0.0, 0));
}

#[tokio::test]
async fn every_attempt_gets_its_own_container_name() {
    let rt = StandIn::new();
    for _ in 0..2 {
        rt.start(spec("img", &[], &[]), None, limits())
            .finish()
            .await;
    }
    let calls = rt.calls();
    assert_eq!(calls.len(), 2);
    assert_ne!(calls[0][3], calls[1][3]);
    assert_eq!(
        calls[0].len(),
        5,
        "no command means none is passed: {calls:?}"
    );
}

#[tokio::test]
async fn cancel_runs_runtime_stop_with_the_grace_in_seconds() {
    let rt = StandIn::new();
    let lim = ExecLimits {
        kill_grace: Duration::from_millis(1500),
        ..limits()
    };
    let mut live = rt.start(spec("mode-block", &["serve"], &[]), None, lim);
    live.stdout_lines(1).await; // "ready": run.pid is written
    let run_pid: i32 = std::fs::read_to_string(rt.path("run.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    live.request_stop(StopReason::Cancel);
    let (report, _) = live.finish().await;
    assert_eq!(report.outcome, Outcome::Cancelled);
    assert_eq!(
        report.signal,
        Some(15),
        "the stand-in's stop sent TERM: {report:?}"
    );
    let calls = rt.calls();
    assert_eq!(calls.len(), 2, "{calls:?}");
    let name = &calls[0][3];
    assert_eq!(calls[1], strings(&["stop", "--time", "2", name]));
    assert!(!alive(run_pid));
}

#[tokio::test]
async fn a_runtime_that_ignores_stop_has_its_cli_killed_and_the_container_removed() {
    let rt = StandIn::new();
    std::fs::write(rt.path("stubborn"), "").unwrap();
    let lim = ExecLimits {
        kill_grace: Duration::from_millis(200),
        ..limits()
    };
    // The timeout leaves the stand-in ample time to say it is ready.
    let mut live = rt.start(
        spec("mode-block", &[], &[]),
        Some(Duration::from_secs(2)),
        lim,
    );
    live.stdout_lines(1).await;
    let run_pid: i32 = std::fs::read_to_string(rt.path("run.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let (report, _) = live.finish().await;
    assert_eq!(report.outcome, Outcome::TimedOut);
    assert_eq!(report.signal, Some(9), "{report:?}");
    let calls = rt.calls();
    assert_eq!(calls.len(), 3, "{calls:?}");
    let name = &calls[0][3];
    assert_eq!(calls[1], strings(&["stop", "--time", "1", name]));
    assert_eq!(calls[2], strings(&["rm", "-f", name]));
    assert!(!alive(run_pid));
}

#[tokio::test]
async fn exit_125_says_the_container_could_not_run() {
    let rt = StandIn::new();
    let (report, chunks) = rt
        .start(spec("mode-125", &[], &[]), None, limits())
        .finish()
        .await;
    let Outcome::Failed {
        message,
        retry: RetryHint::Policy,
        exit_code: Some(125),
    } = &report.outcome
    else {
        panic!("{report:?}")
    };
    assert!(message.contains("could not be run"), "{message}");
    assert!(text(&chunks, Stream::Stderr).contains("Unable to find image"));
}

#[tokio::test]
async fn an_image_that_looks_like_an_option_is_refused_before_running() {
    let rt = StandIn::new();
    let (report, _) = rt
        .start(spec("--privileged", &[], &[]), None, limits())
        .finish()
        .await;
    let Outcome::Failed {
        message,
        retry: RetryHint::Never,
        ..
    } = &report.outcome
    else {
        panic!("{report:?}")
    };
    assert!(message.contains("--privileged"), "{message}");
    assert!(rt.calls().is_empty());
}

#[tokio::test]
async fn a_missing_runtime_fails_naming_it() {
    let runtime = ContainerRuntime::new("/nonexistent/taskgrid-docker");
    let spec = spec("img", &[], &[]);
    let lim = limits();
    let (report, _) = run_to_end(move |stop, out| async move {
        run_container(&spec, &runtime, None, &lim, stop, out).await
    })
    .await;
    let Outcome::Failed {
        message,
        retry: RetryHint::Policy,
        ..
    } = &report.outcome
    else {
        panic!("{report:?}")
    };
    assert!(
        message.contains("/nonexistent/taskgrid-docker"),
        "{message}"
    );
}

/// A runtime answers the probe when `<runtime> version` exits 0.
#[tokio::test]
async fn a_runtime_that_answers_version_passes_the_probe() {
    let rt = StandIn::new();
    assert_eq!(rt.runtime.probe(LIMIT).await, Ok(()));
    assert_eq!(rt.calls(), [strings(&["version"])]);
}

/// A runtime that is missing, fails or hangs is unusable, and says why.
#[tokio::test]
async fn a_missing_failing_or_hanging_runtime_fails_the_probe_saying_why() {
    let missing = ContainerRuntime::new("/nonexistent/taskgrid-docker");
    let why = missing.probe(LIMIT).await.unwrap_err();
    assert_eq!(why, "`/nonexistent/taskgrid-docker` does not exist");

    let not_on_path = ContainerRuntime::new("taskgrid-no-such-runtime");
    let why = not_on_path.probe(LIMIT).await.unwrap_err();
    assert_eq!(why, "`taskgrid-no-such-runtime` not found on PATH");

    let dir = tempfile::tempdir().unwrap();
    let failing = dir.path().join("failing");
    install_script(
        &failing,
        "#!/bin/sh\necho 'Cannot connect to the Docker daemon. Is it running?' >&2\nexit 1\n",
    );
    let why = ContainerRuntime::new(&failing)
        .probe(LIMIT)
        .await
        .unwrap_err();
    assert!(
        why.contains("version` failed (exit status: 1): Cannot connect to the Docker daemon"),
        "{why}"
    );

    let hanging = dir.path().join("hanging");
    install_script(&hanging, "#!/bin/sh\nexec sleep 1000\n");
    let started = std::time::Instant::now();
    let why = ContainerRuntime::new(&hanging)
        .probe(Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(why.contains("did not answer within 200ms"), "{why}");
    assert!(started.elapsed() < LIMIT);
}
