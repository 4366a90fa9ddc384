#![allow(clippy::unwrap_used)]
//! The distributed system end to end: real coordinator and worker
//! processes on 127.0.0.1, killed with SIGKILL where a guarantee is at
//! stake.

mod util;

use std::process::Stdio;

use taskgrid_api::{Kind, ListQuery, SubmitRequest};
use taskgrid_core::{AttemptOutcome, FailureCode, ShellCommand, ShellSpec, State};
use util::{Proc, Server, await_state, await_worker, taskgrid, worker};

fn script(s: &str) -> SubmitRequest {
    let kind = Kind::Shell(ShellSpec {
        command: ShellCommand::Script(s.into()),
        env: vec![],
        cwd: None,
    });
    serde_json::from_value(serde_json::json!({ "kind": kind })).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_wait_streams_output_and_mirrors_the_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "127.0.0.1:0", &[]);
    let _w = worker(&server.url(), "w1", &["--slots", "2"]);
    await_worker(&server.client(None), "w1").await;
    let out = taskgrid()
        .args([
            "submit",
            "--server",
            &server.url(),
            "--wait",
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 7",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("err\n"));
    assert_eq!(out.status.code(), Some(7));
    // Without --wait it prints the id as soon as the task is accepted.
    let out = taskgrid()
        .args(["submit", "--server", &server.url(), "--", "true"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let id: taskgrid_core::TaskId = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert_eq!(
        await_state(&server.client(None), id, None).await,
        State::Succeeded
    );
    // A timeout is exit code 124.
    let out = taskgrid()
        .args([
            "submit",
            "--server",
            &server.url(),
            "--wait",
            "--timeout",
            "200ms",
            "--",
            "sleep",
            "30",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(124));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_task_is_replaced_and_one_result_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "127.0.0.1:0", &["--heartbeat-ms", "500"]);
    let client = server.client(None);
    let mut w1 = worker(&server.url(), "w1", &[]);
    await_worker(&client, "w1").await;
    // The first attempt leaves a marker and hangs; the second finds it and finishes.
    let marker = dir.path().join("marker");
    let s = format!(
        "if [ -e {m} ]; then echo second; else touch {m}; exec sleep 1000; fi",
        m = marker.display()
    );
    let id = client.submit(&script(&s)).await.unwrap().id;
    await_state(&client, id, Some(State::Running)).await;
    let _w2 = worker(&server.url(), "w2", &[]);
    await_worker(&client, "w2").await;
    w1.kill9();
    assert_eq!(await_state(&client, id, None).await, State::Succeeded);
    let d = client.get(id).await.unwrap();
    assert_eq!(d.attempts.len(), 2, "{:?}", d.attempts);
    assert_eq!(
        (d.attempts[0].worker.as_str(), d.attempts[0].outcome),
        ("w1", Some(AttemptOutcome::Lost))
    );
    assert_eq!(
        (d.attempts[1].worker.as_str(), d.attempts[1].outcome),
        ("w2", Some(AttemptOutcome::Succeeded))
    );
    let out = client.output(id, 0, None).await.unwrap();
    assert_eq!(
        out.chunks
            .iter()
            .map(|c| c.data.as_str())
            .collect::<String>(),
        "second\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_killed_with_tasks_queued_and_running_loses_none() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), "127.0.0.1:0", &["--heartbeat-ms", "500"]);
    let addr = server.addr.clone();
    let client = server.client(None);
    let _w = worker(&server.url(), "w1", &["--slots", "2"]);
    await_worker(&client, "w1").await;
    let mut ids = Vec::new();
    // Two slots: the first two run for a second, the rest wait behind them.
    for i in 0..20 {
        let pause = if i < 2 { "1" } else { "0.05" };
        ids.push(
            client
                .submit(&script(&format!("sleep {pause}; echo {i}")))
                .await
                .unwrap()
                .id,
        );
    }
    await_state(&client, ids[0], Some(State::Running)).await;
    server.proc.kill9();
    // Same data, same port: the worker reconnects on its own.
    let server = Server::start(dir.path(), &addr, &["--heartbeat-ms", "500"]);
    let client = server.client(None);
    for id in &ids {
        assert_eq!(
            await_state(&client, *id, None).await,
            State::Succeeded,
            "task {id}"
        );
    }
    let page = client
        .list(&ListQuery {
            limit: Some(100),
            ..ListQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(page.tasks.len(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_capable_worker_ends_the_task_failed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "127.0.0.1:0", &[]);
    let client = server.client(None);
    let _w = worker(&server.url(), "strict", &["--allow", "echo"]);
    await_worker(&client, "strict").await;
    // Every capable worker refuses it.
    let out = taskgrid()
        .args(["submit", "--server", &server.url(), "--wait", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no capable worker"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A label no worker has, with a dispatch timeout.
    let mut req = script("echo hi");
    req.labels = vec!["gpu".parse().unwrap()];
    req.dispatch_timeout_ms = Some(300);
    let id = client.submit(&req).await.unwrap().id;
    assert_eq!(await_state(&client, id, None).await, State::Failed);
    let d = client.get(id).await.unwrap();
    let err = d.task.status.error.unwrap();
    assert_eq!(err.code, FailureCode::NoCapableWorker);
    assert!(err.message.contains("gpu"), "{}", err.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_required_and_a_wrong_one_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        "127.0.0.1:0",
        &["--client-token", "c-secret", "--worker-token", "w-secret"],
    );
    for token in [None, Some("wrong")] {
        let mut cmd = taskgrid();
        cmd.args(["submit", "--server", &server.url(), "--", "true"]);
        if let Some(t) = token {
            cmd.args(["--token", t]);
        }
        let out = cmd.env_remove("TASKGRID_TOKEN").output().unwrap();
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("401"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let page = server
        .client(Some("c-secret"))
        .list(&ListQuery::default())
        .await
        .unwrap();
    assert!(page.tasks.is_empty(), "a refused submit stored nothing");
    // A worker with the wrong token is refused for good and exits.
    let status = taskgrid()
        .args([
            "worker",
            "--server",
            &server.url(),
            "--id",
            "intruder",
            "--worker-token",
            "nope",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success());
    // Garbage on the port does not take the coordinator down.
    {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(&server.addr).unwrap();
        let _ = s.write_all(
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x04\xff\xff\xff\xff\xff\xffgarbage",
        );
    }
    server.client(None).health().await.unwrap();
}

#[test]
fn listening_beyond_loopback_without_tokens_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = taskgrid()
        .args(["server", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refusing to listen"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _unused: Option<Proc> = None;
}

fn alive(pid: i32) -> bool {
    // Killed children of a reaper-less PID 1 linger as zombies: dead.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            stat.rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next())
                != Some("Z")
        }
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_shell_task_kills_its_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "127.0.0.1:0", &[]);
    let client = server.client(None);
    let _w = worker(&server.url(), "w1", &[]);
    await_worker(&client, "w1").await;
    let id = client
        .submit(&script("sleep 1000 & echo $$ $!; wait"))
        .await
        .unwrap()
        .id;
    let mut out = client.follow_output(id, 0).await.unwrap();
    let pids: Vec<i32> = match out.next().await {
        Some(Ok(taskgrid_client::FollowItem::Chunk(c))) => c
            .data
            .split_whitespace()
            .map(|p| p.parse().unwrap())
            .collect(),
        other => panic!("expected the pids, got {other:?}"),
    };
    assert_eq!(pids.len(), 2);
    assert!(pids.iter().all(|p| alive(*p)));
    let status = taskgrid()
        .args(["cancel", "--server", &server.url(), &id.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(await_state(&client, id, None).await, State::Cancelled);
    assert!(
        pids.iter().all(|p| !alive(*p)),
        "no orphan may survive: {pids:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_a_worker_and_hands_its_task_back() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "127.0.0.1:0", &[]);
    let client = server.client(None);
    let mut w = worker(&server.url(), "w1", &["--drain-grace-ms", "100"]);
    await_worker(&client, "w1").await;
    let id = client.submit(&script("sleep 1000")).await.unwrap().id;
    await_state(&client, id, Some(State::Running)).await;
    let pid = w.0.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let exit = tokio::task::spawn_blocking(move || w.0.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "a drained worker exits cleanly: {exit}");
    // Handed back at once, not after three missed heartbeats (15 s).
    let t0 = std::time::Instant::now();
    assert_eq!(
        await_state(&client, id, Some(State::Queued)).await,
        State::Queued
    );
    assert!(t0.elapsed() < std::time::Duration::from_secs(5));
    client.cancel(id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_of_tasks_is_followed_to_the_end_with_a_summary() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "127.0.0.1:0", &[]);
    let client = server.client(None);
    let _w = worker(&server.url(), "w1", &["--slots", "4"]);
    await_worker(&client, "w1").await;
    let file = dir.path().join("tasks.jsonl");
    let mut lines = String::new();
    for i in 0..20 {
        let s = if i % 10 == 9 { "exit 1" } else { "true" };
        lines.push_str(&serde_json::to_string(&script(s)).unwrap());
        lines.push('\n');
    }
    std::fs::write(&file, lines).unwrap();
    let out = taskgrid()
        .args([
            "submit",
            "--server",
            &server.url(),
            "--wait",
            "--json",
            "--file",
        ])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "two failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (
            summary["tasks"].as_u64(),
            summary["succeeded"].as_u64(),
            summary["failed"].as_u64()
        ),
        (Some(20), Some(18), Some(2))
    );

    // A bad line is refused, naming it, and nothing is submitted.
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        format!(
            "{}\n{{\"kind\": 7}}\n",
            serde_json::to_string(&script("true")).unwrap()
        ),
    )
    .unwrap();
    let out = taskgrid()
        .args(["submit", "--server", &server.url(), "--file"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("bad.jsonl:2"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page = client
        .list(&ListQuery {
            limit: Some(100),
            ..ListQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(page.tasks.len(), 20, "only the first file's tasks exist");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_wait_shows_the_progress_a_remote_handler_reports() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "127.0.0.1:0", &[]);
    let client = server.client(None);
    let mut config = taskgrid::WorkerConfig::new(server.url());
    config.id = "rust-worker".into();
    let worker = taskgrid::Worker::with_config(config).handler("resize", |ctx| async move {
        ctx.progress(0.5, "halfway");
        ctx.log("resized");
        Ok(serde_json::json!("done"))
    });
    tokio::spawn(worker.run());
    await_worker(&client, "rust-worker").await;
    let out = taskgrid()
        .args([
            "submit",
            "--server",
            &server.url(),
            "--wait",
            "--handler",
            "resize",
            "--payload",
            "{\"w\":64}",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("50% halfway"), "{stderr}");
    assert!(stderr.contains("resized"), "{stderr}");
}
