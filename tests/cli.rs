#![allow(clippy::unwrap_used)]
//! The command line as a person or a script meets it: machine-readable
//! output where `--json` is asked for, and plain logs where no terminal
//! reads them.

mod util;

use std::io::{BufRead, BufReader, Read};
use std::process::Stdio;

use taskgrid_core::TaskId;
use util::{Proc, Server, await_state, await_worker, taskgrid, worker};

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
        .stdin(Stdio::null())
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
        .stdin(Stdio::null())
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
        .list(&taskgrid_proto::api::ListQuery::default())
        .await
        .unwrap();
    assert_eq!(all.tasks.len(), 2, "refused submits created nothing");
}
