#![allow(clippy::unwrap_used)]
//! The command line as a person or a script meets it: machine-readable
//! output where `--json` is asked for, and plain logs where no terminal
//! reads them.

mod util;

use std::io::{BufRead, BufReader, Read};
use std::process::Stdio;

use taskgrid_core::{State, TaskId};
use util::{Proc, Server, alive, await_gone, await_state, await_worker, taskgrid, worker};

/// A coordinator on a fresh data dir and one worker `w1` with one slot,
/// registered.
async fn grid() -> (tempfile::TempDir, Server, Proc) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "127.0.0.1:0", &[]);
    let w = worker(&server.url(), "w1", &["--slots", "1"]);
    await_worker(&server.client(None), "w1").await;
    (dir, server, w)
}

/// `taskgrid logs ID --json` prints one JSON object per chunk, with its
/// stream and attempt, and `--follow --json` ends with the task's end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_json_prints_one_object_per_chunk() {
    let (_dir, server, _w) = grid().await;
    let out = taskgrid()
        .args([
            "submit",
            "--server",
            &server.url(),
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2",
        ])
        .output()
        .unwrap();
    let id: TaskId = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    await_state(&server.client(None), id, None).await;

    for follow in [false, true] {
        let mut cmd = taskgrid();
        cmd.args(["logs", &id.to_string(), "--json", "--server", &server.url()]);
        if follow {
            cmd.arg("--follow");
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
            .collect();
        let chunks: Vec<(String, String, u64)> = lines
            .iter()
            .filter(|v| v.get("data").is_some())
            .map(|v| {
                (
                    v["stream"].as_str().unwrap().to_owned(),
                    v["data"].as_str().unwrap().to_owned(),
                    v["attempt"].as_u64().unwrap(),
                )
            })
            .collect();
        let mut sorted = chunks.clone();
        sorted.sort();
        assert_eq!(
            sorted,
            [
                ("stderr".to_owned(), "err\n".to_owned(), 1),
                ("stdout".to_owned(), "out\n".to_owned(), 1)
            ],
            "follow {follow}: {lines:?}"
        );
        if follow {
            let end = lines.last().unwrap();
            assert_eq!(end["state"], "succeeded", "{end}");
        }
    }
}

/// Logs written to a pipe or a file carry no colour codes.
#[test]
fn logs_to_a_pipe_are_plain_text() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = taskgrid()
        .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("TASKGRID_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Listening: the start-up's log lines (a new database is migrated) are
    // written by then.
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("listening"), "{line:?}");
    let _ = child.kill();
    let _ = child.wait();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(err.contains("migrated"), "{err:?}");
    assert!(!err.contains('\u{1b}'), "colour codes in a pipe: {err:?}");
}

/// A submit deduplicated by its unique key says so (stdout keeps just the
/// id); the short forms of the common commands work and are listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deduplicated_submit_says_so_and_short_forms_work() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "127.0.0.1:0", &[]);
    let submit = || {
        taskgrid()
            .args([
                "s",
                "--server",
                &server.url(),
                "--queue",
                "nobody",
                "--unique-key",
                "nightly",
                "--",
                "true",
            ])
            .output()
            .unwrap()
    };
    let first = submit();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(!String::from_utf8_lossy(&first.stderr).contains("exists"));
    let again = submit();
    assert!(again.status.success());
    assert_eq!(again.stdout, first.stdout, "the same id");
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        err.contains("unique key \"nightly\" exists") && err.contains("instead of creating"),
        "{err}"
    );
    let ls = taskgrid()
        .args(["ls", "--server", &server.url(), "--queue", "nobody"])
        .output()
        .unwrap();
    assert!(ls.status.success());
    let id = String::from_utf8_lossy(&first.stdout).trim().to_owned();
    assert!(String::from_utf8_lossy(&ls.stdout).contains(&id));
    let help = taskgrid().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for alias in ["[alias: s]", "[alias: ls]", "[alias: st]", "[alias: log]"] {
        assert!(help.contains(alias), "{alias} in {help}");
    }
}

/// `explain` gives times as a person reads them, and names the worker that
/// ran a finished task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_reads_like_a_sentence() {
    let (_dir, server, _w) = grid().await;
    let submit = |extra: &[&str]| {
        let out = taskgrid()
            .args(["submit", "--server", &server.url()])
            .args(extra)
            .args(["--", "true"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let explain = |id: &str, json: bool| {
        let mut c = taskgrid();
        c.args(["explain", id, "--server", &server.url()]);
        if json {
            c.arg("--json");
        }
        String::from_utf8_lossy(&c.output().unwrap().stdout).into_owned()
    };
    let later = submit(&["--delay", "1h"]);
    let text = explain(&later, false);
    assert!(text.contains("waiting for its start time, 20"), "{text}");
    assert!(
        text.contains("Z, in 3599.") || text.contains("Z, in 3600."),
        "{text}"
    );
    assert!(!text.contains("since the epoch"), "{text}");

    let done = submit(&[]);
    await_state(&server.client(None), done.parse().unwrap(), None).await;
    let text = explain(&done, false);
    assert!(
        text.contains("is succeeded") && text.contains("ran on worker w1"),
        "{text}"
    );
    let json: serde_json::Value = serde_json::from_str(&explain(&done, true)).unwrap();
    assert_eq!(json["worker"], "w1", "{json}");
}

/// A task killed by a signal exits `submit --wait` as a shell would
/// (128 + N) and says which signal; `status` names it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_killed_by_a_signal_exits_128_plus_n() {
    let (_dir, server, _w) = grid().await;
    let out = taskgrid()
        .args([
            "submit",
            "--wait",
            "--server",
            &server.url(),
            "--",
            "sh",
            "-c",
            "kill -9 $$",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(137), "{err}");
    assert!(err.contains("killed by SIGKILL"), "{err}");
    let page = server.client(None).list(&Default::default()).await.unwrap();
    let id = page.tasks[0].id.to_string();
    let status = taskgrid()
        .args(["status", &id, "--server", &server.url()])
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(status.contains("killed by SIGKILL"), "{status}");
    let help = taskgrid().args(["submit", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for code in ["137", "124", "130"] {
        assert!(help.contains(code), "{code} in {help}");
    }
}

/// The first Ctrl-C cancels the task and waits for its end; a second one
/// leaves at once, saying the task may still be ending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_ctrl_c_detaches_submit_wait() {
    let (_dir, server, _w) = grid().await;
    // It ignores SIGTERM (and so does its sleep), so a cancel takes the
    // worker's 5 s kill grace to end it.
    let mut child = taskgrid()
        .args([
            "submit",
            "--wait",
            "--server",
            &server.url(),
            "--",
            "sh",
            "-c",
            "trap '' TERM; echo started; sleep 30",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "started\n");
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let interrupt = |pid: u32| {
        let ok = std::process::Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    };
    interrupt(child.id());
    // Wait until it says it is cancelling.
    let mut said = String::new();
    loop {
        let mut l = String::new();
        assert!(err.read_line(&mut l).unwrap() > 0, "stderr ended: {said}");
        said.push_str(&l);
        if l.contains("cancelling task") {
            break;
        }
    }
    let second = std::time::Instant::now();
    interrupt(child.id());
    let status = child.wait().unwrap();
    let mut rest = String::new();
    err.read_to_string(&mut rest).unwrap();
    assert_eq!(status.code(), Some(130), "{said}{rest}");
    assert!(rest.contains("may still be ending"), "{rest}");
    assert!(
        second.elapsed() < std::time::Duration::from_secs(4),
        "it left {:?} after the second Ctrl-C: it waited for the task",
        second.elapsed()
    );
}

/// A coordinator that cannot be reached is said once, with what to check.
#[test]
fn an_unreachable_coordinator_is_said_once_with_what_to_check() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let out = taskgrid().args(["ls", "--server", &url]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.matches(&format!("127.0.0.1:{port}")).count(),
        1,
        "{err}"
    );
    assert!(
        err.contains("cannot connect") && err.contains("Connection refused"),
        "{err}"
    );
    assert!(
        err.contains("set --server or TASKGRID_SERVER")
            || err.contains("Set --server or TASKGRID_SERVER"),
        "{err}"
    );
}

/// Container tasks, environment variables, `min_trust` and the retry
/// backoff can be submitted from the command line, and bad values are
/// refused naming the flag, with nothing created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_flags_reach_the_task_and_bad_ones_create_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "127.0.0.1:0", &[]);
    let url = server.url();
    let run = |args: &[&str]| {
        let mut all = vec!["submit", "--server", url.as_str(), "--queue", "nobody"];
        all.extend_from_slice(args);
        taskgrid().args(&all).output().unwrap()
    };
    let out = run(&[
        "--image",
        "alpine:3",
        "--env",
        "A=1",
        "--env",
        "B=x=y",
        "--min-trust",
        "0.5",
        "--retries",
        "2",
        "--backoff",
        "2s",
        "--backoff-factor",
        "3",
        "--backoff-max",
        "1m",
        "--backoff-jitter",
        "0",
        "--",
        "echo",
        "hi",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id: TaskId = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let task = server.client(None).get(id).await.unwrap().task;
    let spec = serde_json::to_value(&task.spec).unwrap();
    assert_eq!(
        spec["kind"],
        serde_json::json!({
            "type": "container",
            "image": "alpine:3",
            "command": ["echo", "hi"],
            "env": [["A", "1"], ["B", "x=y"]],
        }),
        "{spec}"
    );
    assert_eq!(task.spec.min_trust, Some(0.5));
    let r = &task.spec.retry;
    assert_eq!(r.max_retries, 2);
    assert_eq!(r.initial_backoff, std::time::Duration::from_secs(2));
    assert_eq!(r.multiplier, 3.0);
    assert_eq!(r.max_backoff, std::time::Duration::from_secs(60));
    assert_eq!(r.jitter, 0.0);

    // A shell command gets its --env too.
    let out = run(&[
        "--env",
        "GREETING=hello",
        "--",
        "sh",
        "-c",
        "echo $GREETING",
    ]);
    assert!(out.status.success());
    let id: TaskId = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let spec = serde_json::to_value(server.client(None).get(id).await.unwrap().task.spec).unwrap();
    assert_eq!(
        spec["kind"]["env"],
        serde_json::json!([["GREETING", "hello"]])
    );

    for (args, named) in [
        (&["--env", "NOEQUALS", "--", "true"][..], "--env"),
        (&["--min-trust", "2", "--", "true"][..], "--min-trust"),
        (
            &["--backoff-jitter", "x", "--", "true"][..],
            "--backoff-jitter",
        ),
        (
            &["--retries", "1", "--backoff-factor", "0.5", "--", "true"][..],
            "retry.multiplier",
        ),
        (
            &["--image", "alpine", "--script", "--", "true"][..],
            "--image",
        ),
    ] {
        let out = run(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(err.contains(named), "{args:?}: {err}");
    }
    let all = server
        .client(None)
        .list(&taskgrid_api::ListQuery::default())
        .await
        .unwrap();
    assert_eq!(all.tasks.len(), 2, "refused submits created nothing");
}

/// `--cpus` and `--memory` reach the task; a shell task over its memory
/// limit, on a real worker, ends failed "out of memory" and `submit --wait`
/// exits 137 (SIGKILL); bad sizes are refused naming the flag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_over_its_memory_limit_ends_out_of_memory() {
    let (_dir, server, _w) = grid().await;
    let url = server.url();
    for (flag, value) in [("--memory", "10x"), ("--memory", "512K"), ("--cpus", "0")] {
        let out = taskgrid()
            .args(["submit", "--server", &url, flag, value, "--", "true"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(flag),
            "{flag} {value}: {err}"
        );
    }
    let out = taskgrid()
        .args([
            "submit", "--server", &url, "--queue", "nobody", "--cpus", "1.5", "--memory", "512M",
            "--", "true",
        ])
        .output()
        .unwrap();
    let id: TaskId = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let spec = server.client(None).get(id).await.unwrap().task.spec;
    assert_eq!(
        (spec.resources.cpus, spec.resources.memory_bytes),
        (Some(1.5), Some(512 << 20))
    );

    // The worker said how much memory it has: what tasks ask for on it
    // never adds up to more.
    let workers = server.client(None).workers().await.unwrap();
    assert!(
        workers[0].memory_bytes.is_some_and(|m| m > 64 << 20) && workers[0].cpus.is_some(),
        "{workers:?}"
    );

    if let Err(why) = taskgrid_worker::cgroups() {
        eprintln!("skipped the out-of-memory run: no usable cgroup here ({why})");
        return;
    }
    let out = taskgrid()
        .args([
            "submit",
            "--server",
            &url,
            "--wait",
            "--memory",
            "64M",
            "--",
            "dd",
            "if=/dev/zero",
            "of=/dev/null",
            "bs=256M",
            "count=1",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(137), "{err}");
    assert!(err.contains("out of memory"), "{err}");
}

/// `submit --wait` passes a piped standard input to the task, as a local
/// command would; more than 1 MiB is refused before anything is submitted,
/// and `--no-stdin` keeps it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_wait_forwards_piped_stdin() {
    use std::io::Write;
    let (_dir, server, _w) = grid().await;
    let url = server.url();
    let piped = |extra: &[&str], input: Vec<u8>| {
        let mut args = vec!["submit", "--server", url.as_str(), "--wait"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--", "sh", "-c", "wc -l; cat | head -c 5"]);
        let mut child = taskgrid()
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let feeder = std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
        let out = child.wait_with_output().unwrap();
        feeder.join().unwrap();
        out
    };
    let out = piped(&[], b"a\nb\nc\n".to_vec());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "3");

    let out = piped(&["--no-stdin"], b"a\nb\n".to_vec());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0");

    let client = server.client(None);
    let tasks = || async {
        let all = taskgrid_api::ListQuery::default();
        client.list(&all).await.unwrap().tasks.len()
    };
    let before = tasks().await;
    let out = piped(&[], vec![b'x'; (1 << 20) + 1]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("more than 1 MiB"),
        "{err}"
    );
    let out = piped(&[], vec![0xff, 0xfe, b'\n']);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("not UTF-8"), "{err}");
    assert_eq!(before, tasks().await, "a refused stdin submits nothing");
}

/// Lines a child writes to stderr, read on a thread of their own so that a
/// test can wait for one with a deadline.
struct StderrLines {
    lines: std::sync::mpsc::Receiver<String>,
    seen: String,
}

impl StderrLines {
    fn of(child: &mut std::process::Child) -> StderrLines {
        let err = child.stderr.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        StderrLines {
            lines,
            seen: String::new(),
        }
    }

    /// The first line (from here on) that contains `text`; panics, showing
    /// everything read, if none comes within 30 s.
    fn until(&mut self, text: &str) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push_str(&line);
                    self.seen.push('\n');
                    if line.contains(text) {
                        return line;
                    }
                }
                Err(_) => panic!("no line with {text:?} in:\n{}", self.seen),
            }
        }
    }

    /// Everything written, once stderr is closed (at most 30 s from now).
    fn rest(mut self) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push_str(&line);
                    self.seen.push('\n');
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return self.seen,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    panic!("stderr still open after 30 s:\n{}", self.seen)
                }
            }
        }
    }
}

/// `taskgrid worker` with stderr piped, at the default log level.
fn logged_worker(server: &str, id: &str, extra: &[&str]) -> (Proc, StderrLines) {
    let mut child = taskgrid()
        .args(["worker", "--server", server, "--id", id, "--name", id])
        .args(extra)
        .env_remove("TASKGRID_LOG")
        .env_remove("TASKGRID_WORKER_TOKEN")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = StderrLines::of(&mut child);
    (Proc(child), lines)
}

/// Waits (at most 30 s) for the process to end; its exit code and all
/// it wrote to stderr.
fn ends_within_30s(mut p: Proc, err: StderrLines) -> (Option<i32>, String) {
    let pid = p.0.id().to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(p.0.wait());
    });
    match rx.recv_timeout(std::time::Duration::from_secs(30)) {
        Ok(status) => (status.unwrap().code(), err.rest()),
        Err(_) => {
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid])
                .status();
            panic!("it did not end within 30 s");
        }
    }
}

/// A worker that cannot reach its coordinator says why in plain words,
/// with what to check, not "transport error".
#[test]
fn a_worker_that_cannot_connect_says_why() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let (_w, mut err) = logged_worker(&url, "lonely", &[]);
    let line = err.until("connection refused");
    assert!(
        line.contains(&format!(
            "cannot reach the coordinator at {url}: connection refused"
        )) && line.contains("is `taskgrid server` running there?"),
        "{line}"
    );
    assert!(!line.contains("transport error"), "{line}");
    assert_eq!(line.matches(&url).count(), 1, "{line}");
}

/// A wrong or missing worker token stops the worker, saying which.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_with_a_wrong_token_says_so_and_stops() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "127.0.0.1:0", &["--worker-token", "s3cret"]);
    let (w, err) = logged_worker(&server.url(), "w1", &["--worker-token", "guess"]);
    let (code, err) = ends_within_30s(w, err);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("wrong worker token"), "{err}");
    assert!(err.contains("--worker-token"), "{err}");

    let (w, err) = logged_worker(&server.url(), "w1", &[]);
    let (code, err) = ends_within_30s(w, err);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("requires a worker token"), "{err}");
}

/// A second `taskgrid worker` with the id of a connected one exits
/// non-zero saying so; the first keeps running tasks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_worker_with_a_connected_id_exits_and_the_first_keeps_working() {
    let (_dir, server, mut first) = grid().await;
    let (second, err) = logged_worker(&server.url(), "w1", &[]);
    let (code, err) = ends_within_30s(second, err);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(
            "worker id w1 is already connected to the coordinator \
             (another `taskgrid worker --id w1` is running)"
        ),
        "{err}"
    );
    assert!(
        first.0.try_wait().unwrap().is_none(),
        "the first one exited"
    );
    let out = taskgrid()
        .args(["submit", "--wait", "--server", &server.url(), "--", "true"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page = server.client(None).list(&Default::default()).await.unwrap();
    assert_eq!(page.tasks[0].status.worker.as_ref().unwrap().as_str(), "w1");
}

/// A container runtime that does not answer `version` is not advertised
/// (and container tasks go elsewhere, or nowhere); one that does is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_working_container_runtime_is_advertised() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), "127.0.0.1:0", &[]);
    let client = server.client(None);
    let missing = dir.path().join("no-such-docker");
    let (_plain, mut err) = logged_worker(
        &server.url(),
        "plain",
        &["--container-runtime", missing.to_str().unwrap()],
    );
    let line = err.until("container tasks disabled");
    assert!(line.contains("no-such-docker` does not exist"), "{line}");
    await_worker(&client, "plain").await;
    let container_of = |id: &'static str| {
        let client = &client;
        async move {
            let workers = client.workers().await.unwrap();
            workers
                .iter()
                .find(|w| w.id.as_str() == id)
                .unwrap()
                .container
        }
    };
    assert!(!container_of("plain").await);
    let submit = |extra: &[&str]| {
        let out = taskgrid()
            .args(["submit", "--server", &server.url(), "--image", "alpine:3"])
            .args(extra)
            .args(["--", "echo", "hi"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<TaskId>()
            .unwrap()
    };
    let nowhere = submit(&["--dispatch-timeout", "300ms"]);
    await_state(&client, nowhere, None).await;
    let status = client.get(nowhere).await.unwrap().task.status;
    assert_eq!(status.state, State::Failed);
    let error = status.error.unwrap();
    assert_eq!(
        error.code,
        taskgrid_core::FailureCode::NoCapableWorker,
        "{}",
        error.message
    );

    // A stand-in that answers `version` and runs anything.
    let source = dir.path().join("fake-docker.src");
    std::fs::write(
        &source,
        "#!/bin/sh\ncase \"$1\" in run) echo ran in a container ;; esac\n",
    )
    .unwrap();
    let fake = dir.path().join("fake-docker");
    let installed = std::process::Command::new("install")
        .args(["-m", "755"])
        .arg(&source)
        .arg(&fake)
        .status()
        .unwrap();
    assert!(installed.success());
    let _boxed = worker(
        &server.url(),
        "boxed",
        &["--container-runtime", fake.to_str().unwrap()],
    );
    await_worker(&client, "boxed").await;
    assert!(container_of("boxed").await);
    let ran = submit(&[]);
    await_state(&client, ran, None).await;
    let status = client.get(ran).await.unwrap().task.status;
    assert_eq!(status.state, State::Succeeded);
    assert_eq!(status.worker.unwrap().as_str(), "boxed");
}

/// `taskgrid schedule`: add (cron with a zone, and an interval), list,
/// show, trigger (its task runs on the worker), pause with a note,
/// explain, resume, backfill (once per range), delete; a bad definition
/// names its field, exits non-zero and creates nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedule_commands_define_fire_pause_explain_and_backfill() {
    let (_dir, server, _w) = grid().await;
    let url = server.url();
    let tg = |args: &[&str]| {
        let out = taskgrid()
            .args(["schedule", args[0], "--server", &url])
            .args(&args[1..])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let ok = |args: &[&str]| {
        let (code, out, err) = tg(args);
        assert_eq!(code, Some(0), "schedule {args:?}: {out}{err}");
        out
    };

    let out = ok(&[
        "add",
        "nightly",
        "--cron",
        "0 3 * * *",
        "--tz",
        "Europe/Berlin",
        "--overlap",
        "buffer-one",
        "--tag",
        "ops",
        "--",
        "echo",
        "hi",
    ]);
    assert!(
        out.contains("created schedule nightly (cron '0 3 * * *' Europe/Berlin)"),
        "{out}"
    );
    // 03:00 in Berlin is 01:00 or 02:00 UTC, by the season.
    assert!(
        out.contains("T02:00:00.000Z") || out.contains("T01:00:00.000Z"),
        "{out}"
    );

    // Bad input: the field is named, nothing is created.
    let (code, _, err) = tg(&["add", "broken", "--cron", "61 * * * *", "--", "true"]);
    assert_ne!(code, Some(0));
    assert!(err.contains("cron"), "{err}");
    let (code, _, err) = tg(&[
        "add",
        "zoned",
        "--every",
        "5m",
        "--tz",
        "Mars/Olympus",
        "--",
        "true",
    ]);
    assert_ne!(code, Some(0));
    assert!(err.contains("tz"), "{err}");
    let out = ok(&["list"]);
    assert!(
        out.contains("nightly") && out.contains("buffer-one"),
        "{out}"
    );
    assert!(!out.contains("broken") && !out.contains("zoned"), "{out}");

    let out = ok(&["show", "nightly"]);
    let next: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.starts_with("next fires:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .collect();
    assert_eq!(next.len(), 5, "{out}");
    assert!(out.contains("no fires yet"), "{out}");

    // Trigger: the task runs on the worker and carries the schedule's tags.
    let fires: serde_json::Value =
        serde_json::from_str(&ok(&["trigger", "nightly", "--json"])).unwrap();
    assert_eq!(fires[0]["outcome"], "submitted", "{fires}");
    let id: TaskId = fires[0]["task"].as_str().unwrap().parse().unwrap();
    let client = server.client(None);
    let state = await_state(&client, id, None).await;
    assert_eq!(state, State::Succeeded);
    let task = client.get(id).await.unwrap();
    let tags = &task.task.spec.tags;
    assert!(tags.iter().any(|t| t == "schedule:nightly"), "{tags:?}");
    assert!(tags.iter().any(|t| t == "ops"), "{tags:?}");
    let out = ok(&["show", "nightly"]);
    assert!(out.contains(&format!("submitted {id}")), "{out}");

    // Pause with a note: list, explain and show say so; resume clears it.
    let out = ok(&["pause", "nightly", "--note", "db upgrade"]);
    assert!(out.contains("paused schedule nightly"), "{out}");
    let out = ok(&["explain", "nightly"]);
    assert!(out.contains("paused: db upgrade"), "{out}");
    assert!(out.contains("no next fire"), "{out}");
    assert!(ok(&["list"]).contains("paused"));
    ok(&["resume", "nightly"]);
    let out = ok(&["explain", "nightly"]);
    assert!(
        out.contains("fires as planned") && out.contains("next fire 20"),
        "{out}"
    );

    // Backfill the last three hours of an hourly schedule: one task per
    // hour boundary; the same range again runs nothing more.
    ok(&["add", "hourly", "--every", "1h", "--", "true"]);
    let now = std::time::SystemTime::now();
    let from =
        humantime::format_rfc3339(now - std::time::Duration::from_secs(3 * 3600)).to_string();
    let to = humantime::format_rfc3339(now).to_string();
    let backfill = || -> serde_json::Value {
        serde_json::from_str(&ok(&[
            "backfill", "hourly", "--from", &from, "--to", &to, "--json",
        ]))
        .unwrap()
    };
    let first = backfill();
    let first = first.as_array().unwrap();
    assert!((3..=4).contains(&first.len()), "{first:?}");
    assert!(
        first
            .iter()
            .all(|f| f["outcome"] == "submitted" && f["manual"] == true)
    );
    assert_eq!(
        backfill(),
        serde_json::json!([]),
        "a range is backfilled once"
    );

    ok(&["delete", "hourly"]);
    let (code, _, err) = tg(&["show", "hourly"]);
    assert_ne!(code, Some(0));
    assert!(err.contains("hourly"), "{err}");
}

/// `taskgrid submit --server URL [EXTRA] -- true`: the new task's id.
fn submit_true(url: &str, extra: &[&str]) -> TaskId {
    let out = taskgrid()
        .args(["submit", "--server", url])
        .args(extra)
        .args(["--", "true"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// A coordinator as `Server::start` starts one, with its log (the
/// runtime's at info level) readable line by line.
fn logged_server(data: &std::path::Path, extra: &[&str]) -> (Server, StderrLines) {
    let mut child = taskgrid()
        .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .args(extra)
        .env("TASKGRID_LOG", "warn,taskgrid_runtime=info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = StderrLines::of(&mut child);
    (Server::of(child), log)
}

/// `taskgrid delete`: a finished task goes, a live one is refused (and
/// stays) with exit 1; a coordinator with `--retain 3s` deletes finished
/// tasks by itself and keeps the live ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_and_retention_remove_finished_tasks_only() {
    let dir = tempfile::tempdir().unwrap();
    let (server, mut log) = logged_server(dir.path(), &["--retain", "3s"]);
    let _w = worker(&server.url(), "w1", &["--slots", "1"]);
    let client = server.client(None);
    await_worker(&client, "w1").await;
    let url = server.url();
    let submit = |extra: &[&str]| submit_true(&url, extra);
    let done = submit(&[]);
    let live = submit(&["--delay", "1h"]);
    await_state(&client, done, None).await;
    let out = taskgrid()
        .args([
            "delete",
            "--server",
            &url,
            &done.to_string(),
            &live.to_string(),
        ])
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stdout.contains(&format!("{done}: deleted")), "{stdout}");
    assert!(
        stderr.contains(&live.to_string()) && stderr.contains("not finished"),
        "{stderr}"
    );
    assert!(client.get(done).await.is_err());
    assert!(client.get(live).await.is_ok());

    // Retention: a second task is gone about 3 s after it ends (the sweep
    // runs every 300 ms and logs what it deleted); the live one stays.
    let second = submit(&[]);
    await_state(&client, second, None).await;
    log.until("retention: deleted finished tasks");
    assert!(client.get(second).await.is_err(), "retention deleted it");
    assert!(
        client.get(live).await.is_ok(),
        "a live task is never deleted"
    );
}

/// `taskgrid delete --tag/--state [--older-than]` deletes the finished
/// tasks that match and nothing else; a state that is not finished is
/// refused before anything is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_by_tag_and_state_takes_only_finished_matching_tasks() {
    let (_dir, server, _w) = grid().await;
    let url = server.url();
    let client = server.client(None);
    let submit = |extra: &[&str]| submit_true(&url, extra);
    let tagged: Vec<TaskId> = (0..2).map(|_| submit(&["--tag", "batch-7"])).collect();
    let other = submit(&["--tag", "other"]);
    let live = submit(&["--tag", "batch-7", "--delay", "1h"]);
    for id in tagged.iter().chain([&other]) {
        await_state(&client, *id, None).await;
    }
    let delete = |args: &[&str]| {
        let out = taskgrid()
            .args(["delete", "--server", &url])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, _, err) = delete(&["--state", "queued"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("not a finished state"), "{err}");
    // --older-than filters --tag/--state only: with an id it is refused.
    let (code, _, err) = delete(&["--older-than", "1h", &other.to_string()]);
    assert_eq!(code, Some(2), "{err}");
    assert!(client.get(other).await.is_ok());
    // None of them ended an hour ago.
    let (code, out, _) = delete(&["--tag", "batch-7", "--older-than", "1h"]);
    assert_eq!((code, out.trim()), (Some(0), "0 finished task(s) deleted"));
    let (code, out, _) = delete(&["--tag", "batch-7"]);
    assert_eq!((code, out.trim()), (Some(0), "2 finished task(s) deleted"));
    for id in &tagged {
        assert!(client.get(*id).await.is_err(), "{id} is deleted");
    }
    assert!(client.get(live).await.is_ok(), "the live task stays");
    assert!(client.get(other).await.is_ok(), "another tag stays");
    let (code, out, _) = delete(&["--state", "succeeded", "--json"]);
    assert_eq!(code, Some(0));
    assert_eq!(out.trim(), r#"{"deleted":1}"#);
    assert!(client.get(other).await.is_err());
}

/// `taskgrid server --queue-limit Q=N` refuses the submit beyond N waiting
/// tasks with `queue_full`; `taskgrid queue pause|resume` stop and restart
/// dispatch, and `queues` shows the limit and the pause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_limits_and_pause_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "127.0.0.1:0", &["--queue-limit", "capped=1"]);
    let url = server.url();
    let run = |args: &[&str]| {
        let out = taskgrid().args(args).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let submit = [
        "submit", "--server", &url, "--queue", "capped", "--", "true",
    ];
    let (code, first, err) = run(&submit);
    assert_eq!(code, Some(0), "{err}");
    let (code, _, err) = run(&submit);
    assert_ne!(code, Some(0));
    assert!(err.contains("queue_full") || err.contains("full"), "{err}");

    let (code, out, err) = run(&["queue", "pause", "--server", &url, "capped"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("queue capped: paused (1 ready"), "{out}");
    let (_, out, _) = run(&["queues", "--server", &url]);
    let row = out
        .lines()
        .find(|l| l.starts_with("capped"))
        .unwrap_or_default();
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cols.get(3..5), Some(&["true", "1"][..]), "{out}");

    // A worker joins: nothing is dispatched while paused; resume runs it.
    let _w = worker(&url, "w1", &["--slots", "1", "--queue", "capped"]);
    let client = server.client(None);
    await_worker(&client, "w1").await;
    let id: TaskId = first.trim().parse().unwrap();
    assert_eq!(
        client.get(id).await.unwrap().task.status.state,
        State::Queued
    );
    // It waits because of the pause, as explain says.
    let why = client.explain(id).await.unwrap();
    let why = serde_json::to_string(&why.gates).unwrap();
    assert!(why.contains("queue_paused"), "{why}");
    let (code, out, _) = run(&["queue", "resume", "--server", &url, "capped"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("dispatching"), "{out}");
    assert_eq!(await_state(&client, id, None).await, State::Succeeded);
    let (code, _, err) = run(&["server", "--queue-limit", "nolimit", "--data-dir", "x"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("QUEUE=N"), "{err}");
}

/// `taskgrid stats` counts on across a restart of the coordinator (SIGTERM,
/// then a new process on the same data dir), and so does a worker's trust.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_and_trust_count_on_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), "127.0.0.1:0", &[]);
    let url = server.url();
    let mut w = worker(&url, "w1", &["--slots", "1"]);
    let client = server.client(None);
    await_worker(&client, "w1").await;
    for _ in 0..3 {
        let out = taskgrid()
            .args(["submit", "--wait", "--server", &url, "--", "true"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0));
    }
    let stats = |url: &str| -> serde_json::Value {
        let out = taskgrid()
            .args(["stats", "--json", "--server", url])
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let before = stats(&url);
    assert_eq!(
        (&before["submitted"], &before["succeeded"]),
        (&serde_json::json!(3), &serde_json::json!(3)),
        "{before}"
    );
    let trust = client.workers().await.unwrap()[0].trust;
    assert!(trust > 0.75, "{trust}");

    // A graceful stop: the metrics are saved on the way out.
    w.kill9();
    util::signal(server.proc.0.id(), "-TERM");
    let status = server.proc.0.wait().unwrap();
    assert!(status.success(), "{status}");
    let server = Server::start(dir.path(), "127.0.0.1:0", &[]);
    let after = stats(&server.url());
    for field in ["submitted", "succeeded", "failed", "retried"] {
        assert_eq!(after[field], before[field], "{field}: {after}");
    }
    assert_eq!(after["run_time"]["count"], 3, "{after}");
    assert_eq!(after["workers"]["w1"]["succeeded"], 3, "{after}");
    let _w = worker(&server.url(), "w1", &["--slots", "1"]);
    let client = server.client(None);
    await_worker(&client, "w1").await;
    assert_eq!(client.workers().await.unwrap()[0].trust, trust);
}

/// `taskgrid.toml` in the current directory configures `server` and
/// `worker`; the environment wins over it (as `config check` shows, with
/// each value's origin); a bad key or value stops the process before it
/// starts anything, naming the file, the line and the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configuration_file_sets_server_and_worker_flags() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let file = format!(
        "# a grid's settings\n[server]\ndata-dir = {:?}\nqueue-limit = {{ capped = 1 }}\nretain = \"forever\"\n\n[worker]\nid = \"from-the-file\"\nslots = 1\nqueue = [\"capped\"]\n",
        data.display().to_string()
    );
    std::fs::write(dir.path().join("taskgrid.toml"), &file).unwrap();
    let in_dir = || {
        let mut c = taskgrid();
        c.current_dir(dir.path());
        c
    };
    let server = Server::of(
        in_dir()
            .args(["server", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let url = server.url();
    // The file's data-dir and queue limit.
    assert!(
        data.join("taskgrid.db").is_file(),
        "the store is in the file's data-dir"
    );
    let submit = |c: &mut std::process::Command| {
        c.args([
            "submit", "--server", &url, "--queue", "capped", "--", "true",
        ])
        .output()
        .unwrap()
    };
    let first = submit(&mut taskgrid());
    assert!(first.status.success());
    let first: TaskId = String::from_utf8_lossy(&first.stdout)
        .trim()
        .parse()
        .unwrap();
    let over = submit(&mut taskgrid());
    assert!(!over.status.success());
    assert!(
        String::from_utf8_lossy(&over.stderr).contains("full"),
        "the file's queue limit holds"
    );
    // The worker's id, slots and queue from the file, its server from a flag.
    let _w = Proc(
        in_dir()
            .args(["worker", "--server", &url])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let client = server.client(None);
    await_worker(&client, "from-the-file").await;
    let workers = client.workers().await.unwrap();
    let w = workers
        .iter()
        .find(|w| w.id.as_str() == "from-the-file")
        .unwrap();
    assert_eq!(w.slots, 1);
    assert_eq!(await_state(&client, first, None).await, State::Succeeded);

    // `config check`: each value with its origin; the environment wins.
    let out = in_dir()
        .args(["config", "check"])
        .env("TASKGRID_RETAIN", "3d")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("retain = \"3d\"  # environment TASKGRID_RETAIN"),
        "{text}"
    );
    assert!(
        text.contains("queue-limit = [\"capped=1\"]  # taskgrid.toml:4 (queue-limit)"),
        "{text}"
    );
    assert!(text.contains("heartbeat-ms = 5000  # default"), "{text}");
    assert!(
        text.contains("id = \"from-the-file\"  # taskgrid.toml:8 (id)"),
        "{text}"
    );

    // A bad key, then a bad value: exit 2 naming file, line and key, and
    // nothing started (no data dir).
    let bad = dir.path().join("bad");
    std::fs::create_dir(&bad).unwrap();
    let fresh = bad.join("data");
    for (text, says) in [
        (
            "[server]\nretian = \"1d\"\n",
            "taskgrid.toml:2: unknown key `retian` in [server]",
        ),
        (
            "[server]\n\nretain = \"soon\"\n",
            "taskgrid.toml:3: `retain`: ",
        ),
    ] {
        std::fs::write(
            bad.join("taskgrid.toml"),
            format!("{text}data-dir = {:?}\n", fresh.display().to_string()),
        )
        .unwrap();
        let out = taskgrid()
            .current_dir(&bad)
            .args(["server", "--listen", "127.0.0.1:0"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(says), "{err}");
        assert!(!fresh.exists(), "nothing was started");
    }
    // `--config PATH` must exist.
    let out = taskgrid()
        .args(["server", "--config", "/nonexistent/taskgrid.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such configuration file"));
}

/// Runs `taskgrid ARGS` without the client settings of the environment
/// (`TASKGRID_TOKEN`, `TASKGRID_CA`): its exit code, stdout and stderr.
fn run_cli(args: &[&str]) -> (Option<i32>, String, String) {
    let out = taskgrid()
        .args(args)
        .env_remove("TASKGRID_TOKEN")
        .env_remove("TASKGRID_CA")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Certificates made for one test: a CA, the coordinator's certificate
/// for 127.0.0.1 signed by it, a worker's client certificate signed by
/// it, and a client certificate of another CA; each as PEM files in `dir`.
struct Certs {
    ca: std::path::PathBuf,
    ca_pem: Vec<u8>,
    server_cert: std::path::PathBuf,
    server_key: std::path::PathBuf,
    worker_cert: std::path::PathBuf,
    worker_key: std::path::PathBuf,
    rogue_cert: std::path::PathBuf,
    rogue_key: std::path::PathBuf,
}

fn certs(dir: &std::path::Path) -> Certs {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
    let ca = |name: &str| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), Issuer::new(params, key))
    };
    let leaf = |issuer: &Issuer<'_, KeyPair>, name: &str| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![name.to_owned()]).unwrap();
        params
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        let cert = params.signed_by(&key, issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let write = |name: &str, pem: &str| {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path
    };
    let (ca_pem, issuer) = ca("taskgrid test CA");
    let (rogue_ca, rogue) = ca("another CA");
    let _ = rogue_ca;
    let (server_cert, server_key) = leaf(&issuer, "localhost");
    let (worker_cert, worker_key) = leaf(&issuer, "worker-1");
    let (rogue_cert, rogue_key) = leaf(&rogue, "rogue");
    Certs {
        ca: write("ca.pem", &ca_pem),
        ca_pem: ca_pem.into_bytes(),
        server_cert: write("server.pem", &server_cert),
        server_key: write("server.key", &server_key),
        worker_cert: write("worker.pem", &worker_cert),
        worker_key: write("worker.key", &worker_key),
        rogue_cert: write("rogue.pem", &rogue_cert),
        rogue_key: write("rogue.key", &rogue_key),
    }
}

/// A coordinator with `--tls-cert/--tls-key --worker-ca` serves the CLI
/// over HTTPS and a worker with a client certificate over gRPC with TLS;
/// everything set up wrong ends at once with a message saying what to
/// change: a client without the CA, plain http:// to it (client and
/// worker), a worker without a client certificate or with one of another
/// CA, a worker that does not trust its certificate, and an https://
/// worker at a plain coordinator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_clients_and_workers_and_says_what_is_set_up_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let c = certs(dir.path());
    let path = |p: &std::path::Path| p.to_str().unwrap().to_owned();
    let server = Server::start(
        &dir.path().join("data"),
        "127.0.0.1:0",
        &[
            "--tls-cert",
            &path(&c.server_cert),
            "--tls-key",
            &path(&c.server_key),
            "--worker-ca",
            &path(&c.ca),
        ],
    );
    let https = format!("https://{}", server.addr);
    let http = format!("http://{}", server.addr);
    let run = run_cli;
    let ca = path(&c.ca);
    let (code, out, err) = run(&["submit", "--server", &https, "--ca", &ca, "--", "true"]);
    assert_eq!(code, Some(0), "{err}");
    let id: TaskId = out.trim().parse().unwrap();
    let (code, _, err) = run(&["list", "--server", &https]);
    assert_eq!(code, Some(1));
    assert!(err.contains("give --ca FILE"), "no CA: {err}");
    let (code, _, err) = run(&["list", "--server", &http]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("serves TLS only: use an https:// URL"),
        "http://: {err}"
    );

    // A worker with the CA and a client certificate runs the task.
    let client = taskgrid_client::Client::new(&https, None)
        .unwrap()
        .with_ca_pem(&c.ca_pem)
        .unwrap();
    let _w = worker(
        &https,
        "w-tls",
        &[
            "--ca",
            &ca,
            "--tls-cert",
            &path(&c.worker_cert),
            "--tls-key",
            &path(&c.worker_key),
        ],
    );
    await_worker(&client, "w-tls").await;
    assert_eq!(await_state(&client, id, None).await, State::Succeeded);

    // Each worker set up wrong ends with what to change.
    let plain_dir = tempfile::tempdir().unwrap();
    let plain = Server::start(plain_dir.path(), "127.0.0.1:0", &[]);
    let at_plain = format!("https://{}", plain.addr);
    let rogue = [
        "--ca",
        &ca,
        "--tls-cert",
        &path(&c.rogue_cert),
        "--tls-key",
        &path(&c.rogue_key),
    ];
    for (server, extra, says) in [
        (&https, &["--ca", &ca][..], "client certificate"),
        (&https, &rogue[..], "client certificate"),
        (&https, &[][..], "is not trusted"),
        (&http, &[][..], "serves TLS only: use https://"),
        (
            &at_plain,
            &["--ca", &ca][..],
            "does not serve TLS: use http://",
        ),
    ] {
        let (p, err) = logged_worker(server, "w-wrong", extra);
        let (code, err) = ends_within_30s(p, err);
        assert_eq!(code, Some(1), "{server} {extra:?}: {err}");
        assert!(err.contains(says), "{server} {extra:?}: {err}");
    }
}

/// Every state-changing call and worker registration is in the audit log
/// — who (client, unauthenticated, worker:ID), from where, what, how it
/// ended — committed before the call is answered: a kill -9 right after
/// the last answer loses none of them. `taskgrid audit` reads it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_records_calls_and_registrations_through_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = ["--client-token", "ct", "--worker-token", "wt"];
    let mut server = Server::start(dir.path(), "127.0.0.1:0", &tokens);
    let url = server.url();
    let run = |args: &[&str]| {
        let (code, out, _) = run_cli(args);
        (code, out)
    };
    let (code, out) = run(&[
        "submit", "--server", &url, "--token", "ct", "--queue", "idle", "--", "true",
    ]);
    assert_eq!(code, Some(0));
    let id = out.trim().to_owned();
    let (code, _) = run(&["cancel", "--server", &url, "--token", "wrong", &id]);
    assert_eq!(code, Some(1));
    let (code, _) = run(&["queue", "pause", "--server", &url, "--token", "ct", "idle"]);
    assert_eq!(code, Some(0));
    // A worker with the token registers; one with a wrong token is refused.
    let client = server.client(Some("ct"));
    let _w = worker(&url, "w-audit", &["--worker-token", "wt"]);
    await_worker(&client, "w-audit").await;
    let (p, err) = logged_worker(&url, "w-bad", &["--worker-token", "nope"]);
    let (code, _) = ends_within_30s(p, err);
    assert_eq!(code, Some(1));
    let (code, _) = run(&["queue", "resume", "--server", &url, "--token", "ct", "idle"]);
    assert_eq!(code, Some(0));

    // The last call was answered: nothing after that may be needed.
    server.proc.kill9();
    let server = Server::start(dir.path(), "127.0.0.1:0", &tokens);
    let url = server.url();
    let (code, out) = run(&["audit", "--server", &url, "--token", "ct", "--json"]);
    assert_eq!(code, Some(0), "{out}");
    let entries: Vec<taskgrid_core::AuditEntry> = serde_json::from_str(&out).unwrap();
    let seen: Vec<(String, String, u16, Option<String>)> = entries
        .iter()
        .rev()
        .map(|e| {
            let r = &e.record;
            (r.actor.clone(), r.action.clone(), r.status, r.error.clone())
        })
        .collect();
    let expected = vec![
        ("client".into(), "POST /api/v1/tasks".into(), 201, None),
        (
            "unauthenticated".into(),
            format!("POST /api/v1/tasks/{id}/cancel"),
            401,
            Some("unauthorized".into()),
        ),
        (
            "client".into(),
            "POST /api/v1/queues/idle/pause".into(),
            200,
            None,
        ),
        ("worker:w-audit".into(), "worker register".into(), 200, None),
        (
            "worker".into(),
            "worker register".into(),
            401,
            Some("Unauthenticated".into()),
        ),
        (
            "client".into(),
            "POST /api/v1/queues/idle/resume".into(),
            200,
            None,
        ),
    ];
    assert_eq!(seen, expected, "{out}");
    assert!(
        entries.iter().all(|e| e
            .record
            .remote
            .as_deref()
            .is_some_and(|r| r.starts_with("127.0.0.1:"))),
        "{out}"
    );
    // The table names them too.
    let (code, table) = run(&["audit", "--server", &url, "--token", "ct", "--limit", "2"]);
    assert_eq!(code, Some(0));
    assert_eq!(table.lines().count(), 3, "a header and two rows: {table}");
    assert!(table.contains("POST /api/v1/queues/idle/resume"), "{table}");
}

/// A coordinator advertises itself over mDNS (on the loopback, where it
/// listens): `taskgrid discover` lists it with its URL, version and what
/// it requires; the CLI and a worker given `--server auto:NAME` find it.
/// One started with `--no-mdns` is not found, and saying so takes a
/// clear error, not a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinators_are_found_over_mdns() {
    let dir = tempfile::tempdir().unwrap();
    // Names of their own: other tests' coordinators advertise too.
    let name = format!("tg-test-{}", std::process::id());
    let server = Server::start(
        dir.path(),
        "127.0.0.1:0",
        &["--mdns-name", &name, "--worker-token", "wt"],
    );
    let url = server.url();
    let out = taskgrid()
        .args(["discover", "--wait", "3s", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let found: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let me = found
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name.as_str())
        .unwrap_or_else(|| panic!("{name} not among {found}"));
    assert_eq!(me["url"], url.as_str());
    assert_eq!(me["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        (me["tls"].as_bool(), me["worker_token"].as_bool()),
        (Some(false), Some(true))
    );
    assert_eq!(me["client_token"].as_bool(), Some(false));

    let auto = format!("auto:{name}");
    let out = taskgrid()
        .args(["submit", "--server", &auto, "--", "true"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id: TaskId = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let _w = worker(&auto, "w-mdns", &["--worker-token", "wt"]);
    let client = server.client(None);
    await_worker(&client, "w-mdns").await;
    assert_eq!(await_state(&client, id, None).await, State::Succeeded);

    let quiet_dir = tempfile::tempdir().unwrap();
    let quiet = format!("{name}-quiet");
    let _quiet = Server::start(
        quiet_dir.path(),
        "127.0.0.1:0",
        &["--mdns-name", &quiet, "--no-mdns"],
    );
    let out = taskgrid()
        .args(["list", "--server", &format!("auto:{quiet}")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no coordinator named"), "{err}");
}

/// A worker reports its host in every heartbeat — load per CPU, memory
/// available, free disk — and `taskgrid workers` shows them with its
/// `--max-load`, and its default prefetch (its slots); a load that is no
/// positive number is refused, and so is a prefetch hold of 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_report_their_host_load_memory_and_disk() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "127.0.0.1:0", &["--heartbeat-ms", "100"]);
    let url = server.url();
    let _w = worker(&url, "w-host", &["--max-load", "1000"]);
    let client = server.client(None);
    util::await_worker_where(&client, "w-host", |w| w.health.is_some()).await;
    let ws = client.workers().await.unwrap();
    let w = ws.iter().find(|w| w.id.as_str() == "w-host").unwrap();
    let health = w.health.unwrap();
    assert!(health.load.is_some_and(|l| l >= 0.0), "{health:?}");
    assert!(
        health.memory_available_bytes.is_some_and(|m| m > 0),
        "{health:?}"
    );
    assert!(health.disk_free_bytes.is_some_and(|d| d > 0), "{health:?}");
    assert_eq!(w.max_load, Some(1000.0));
    // With no --prefetch, it holds as many tasks as it has slots.
    assert_eq!(w.prefetch, w.slots);
    assert!(w.slots > 0);
    // Under its (high) threshold, it runs work.
    let id = submit_true(&url, &[]);
    assert_eq!(await_state(&client, id, None).await, State::Succeeded);
    let out = taskgrid()
        .args(["workers", "--server", &url])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("load/cpu") && table.contains("disk free"),
        "{table}"
    );
    let row = table.lines().find(|l| l.starts_with("w-host")).unwrap();
    assert!(!row.contains(" - "), "every figure is known: {row}");

    // A worker started with `flag 0` exits 2 saying `why`.
    let refused = |flag: &str, why: &str| {
        let out = taskgrid()
            .args(["worker", "--server", &url, flag, "0"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{flag} 0");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(why), "{flag} 0: {err}");
    };
    refused("--max-load", "is no load");
    // A hold of 0 would hand back every held task at once.
    refused("--prefetch-hold-ms", "--prefetch-hold-ms");
}

/// `taskgrid server --concurrency-limit/--rate-limit/--queue-concurrency`
/// with two real workers: tasks over a limit wait (never fail) while tasks
/// of another key run past them; `explain` and `taskgrid limits` say which
/// limit holds what; a key's tasks never overlapped beyond its limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_hold_tasks_across_two_workers_and_explain_says_which() {
    use taskgrid_core::State;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        "127.0.0.1:0",
        &[
            "--concurrency-limit",
            "cust-*=2",
            "--rate-limit",
            "api=2/1h",
            "--queue-concurrency",
            "reports=1",
        ],
    );
    let url = server.url();
    let client = server.client(None);
    let _w1 = worker(&url, "w1", &["--slots", "4"]);
    let _w2 = worker(&url, "w2", &["--slots", "4"]);
    await_worker(&client, "w1").await;
    await_worker(&client, "w2").await;
    // Tasks that run until the test writes to their FIFO.
    let fifo = |name: &str| {
        let path = dir.path().join(name);
        let made = std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .unwrap();
        assert!(made.success());
        path
    };
    let release = |path: std::path::PathBuf| {
        // Opening a FIFO to write waits for its reader: the task.
        tokio::task::spawn_blocking(move || std::fs::write(path, b"go\n").unwrap())
    };
    let submit = |extra: &[&str], script: &str| -> TaskId {
        let mut args = vec!["submit", "--server", &url];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--script", "--", script]);
        let (code, out, err) = run_cli(&args);
        assert_eq!(code, Some(0), "{err}");
        out.trim().parse().unwrap()
    };
    let (f1, f2, f3) = (fifo("f1"), fifo("f2"), fifo("f3"));
    let key_a = ["--concurrency-key", "cust-a"];
    let a: Vec<TaskId> = [
        format!("cat {} >/dev/null", f1.display()),
        format!("cat {} >/dev/null", f2.display()),
    ]
    .iter()
    .map(|s| submit(&key_a, s))
    .chain((0..4).map(|_| submit(&key_a, "true")))
    .collect();
    let b = submit(&["--concurrency-key", "cust-b"], "true");

    // cust-a's first two run; its other four wait although 6 slots are
    // free, and cust-b's task runs past them.
    await_state(&client, a[0], Some(State::Running)).await;
    await_state(&client, a[1], Some(State::Running)).await;
    assert_eq!(await_state(&client, b, None).await, State::Succeeded);
    for id in &a[2..] {
        let st = client.get(*id).await.unwrap().task.status.state;
        assert_eq!(st, State::Queued, "{id} waits for cust-a's limit");
    }
    let (code, out, err) = run_cli(&["explain", "--server", &url, &a[2].to_string()]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains(r#"concurrency key "cust-a" has 2 of at most 2 task(s) running"#),
        "{out}"
    );
    let (code, out, err) = run_cli(&["limits", "--server", &url, "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let limits: serde_json::Value = serde_json::from_str(&out).unwrap();
    let cust_a = limits
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["key"] == "cust-a")
        .unwrap_or_else(|| panic!("{out}"));
    assert_eq!(
        (&cust_a["concurrency"], &cust_a["running"], &cust_a["held"]),
        (
            &serde_json::json!(2),
            &serde_json::json!(2),
            &serde_json::json!(4)
        ),
        "{out}"
    );

    // Released, everything of cust-a runs to success, never more than two
    // at once (by the coordinator's start and end times).
    release(f1).await.unwrap();
    release(f2).await.unwrap();
    let mut spans = Vec::new();
    for id in &a {
        assert_eq!(await_state(&client, *id, None).await, State::Succeeded);
        let st = client.get(*id).await.unwrap().task.status;
        spans.push((st.started_at.unwrap(), st.finished_at.unwrap()));
    }
    for (start, _) in &spans {
        let overlapping = spans
            .iter()
            .filter(|(s, e)| s <= start && start < e)
            .count();
        assert!(
            overlapping <= 2,
            "{overlapping} of cust-a ran at once: {spans:?}"
        );
    }

    // A rate of 2 per hour: two start, the third waits and says until when.
    let api: Vec<TaskId> = (0..3)
        .map(|_| submit(&["--concurrency-key", "api"], "true"))
        .collect();
    await_state(&client, api[0], None).await;
    await_state(&client, api[1], None).await;
    let why = client.explain(api[2]).await.unwrap();
    let why = serde_json::to_value(&why.gates).unwrap();
    let rate = why
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["gate"] == "rate_limit")
        .unwrap_or_else(|| panic!("{why}"));
    assert_eq!(
        (&rate["starts"], &rate["per_ms"]),
        (&serde_json::json!(2), &serde_json::json!(3_600_000))
    );
    assert!(rate["next_at"].is_u64(), "{why}");
    assert_eq!(
        client.get(api[2]).await.unwrap().task.status.state,
        State::Queued
    );

    // A queue capped at one running task.
    let report = |s: &str| submit(&["--queue", "reports"], s);
    let r1 = report(&format!("cat {} >/dev/null", f3.display()));
    let r2 = report("true");
    await_state(&client, r1, Some(State::Running)).await;
    let why = client.explain(r2).await.unwrap();
    let why = serde_json::to_string(&why.gates).unwrap();
    assert!(
        why.contains(r#""gate":"queue_concurrency","queue":"reports","running":1,"limit":1"#),
        "{why}"
    );
    let (_, out, _) = run_cli(&["queues", "--server", &url]);
    assert!(
        out.lines()
            .any(|l| l.starts_with("reports") && l.contains("1/1")),
        "{out}"
    );
    release(f3).await.unwrap();
    assert_eq!(await_state(&client, r2, None).await, State::Succeeded);

    // A limit that could never let a task start is refused at start.
    let (code, _, err) = run_cli(&[
        "server",
        "--concurrency-limit",
        "cust-*=0",
        "--data-dir",
        "x",
    ]);
    assert_eq!(code, Some(2));
    assert!(err.contains("at least 1"), "{err}");
}

/// `taskgrid submit -- ARGS…` against `server`; the new task's id.
fn submit_argv(server: &Server, args: &[&str]) -> TaskId {
    let out = taskgrid()
        .args(["submit", "--server", &server.url(), "--"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// A process's peak resident memory (`VmHWM`), in bytes.
fn peak_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

/// A real worker starts its shell tasks through its spawner: a tiny task's
/// peak memory is its own, well under the worker's size (a child of the
/// worker would report at least that); and a worker killed with -9 takes
/// its tasks' processes with it (the spawner sees its socket close).
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workers_tasks_report_their_own_peak_and_end_with_the_worker() {
    let (_dir, server, mut w) = grid().await;
    let client = server.client(None);

    let id = submit_argv(&server, &["echo", "hi"]);
    assert_eq!(await_state(&client, id, None).await, State::Succeeded);
    let usage = client.get(id).await.unwrap().attempts[0].usage.unwrap();
    let worker_peak = peak_of(w.0.id());
    assert!(
        usage.peak_rss_bytes > 0 && usage.peak_rss_bytes < worker_peak,
        "echo's peak {} bytes, the worker's {worker_peak}",
        usage.peak_rss_bytes
    );

    let id = submit_argv(&server, &["sh", "-c", r#"echo "pid $$"; exec sleep 1000"#]);
    let mut output = client.follow_output(id, 0).await.unwrap();
    let mut text = String::new();
    let pid: u32 = loop {
        match output.next().await {
            Some(Ok(taskgrid_client::FollowItem::Chunk(c))) => text.push_str(&c.data),
            other => panic!("the task's output ended: {other:?} after {text:?}"),
        }
        if let Some(pid) = text
            .lines()
            .find_map(|l| l.strip_prefix("pid "))
            .and_then(|p| p.parse().ok())
        {
            break pid;
        }
    };
    assert!(alive(pid));
    w.kill9();
    // The spawner kills the group as soon as it reads the end of its socket.
    await_gone(pid, "the task's process outlived its worker").await;
}
