#![allow(clippy::unwrap_used)]
//! The promises of docs/engine.md and docs/api.md where they can break, with real `taskgrid`
//! processes on OS-chosen ports: an acknowledged cancel survives `kill -9`;
//! a second coordinator cannot open a data dir in use; a full disk stops
//! the coordinator without losing what it acknowledged; blank tokens and
//! unknown parents are refused.

mod util;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use taskgrid_api::{CancelOutcomeKind, Kind, SubmitRequest};
use taskgrid_core::{ShellCommand, ShellSpec, State, TaskId};
use util::{Server, TempDatabase, signal, taskgrid};

/// A shell task on a queue no worker serves: it waits, and never runs.
fn waiting(queue: &str) -> SubmitRequest {
    let kind = Kind::Shell(ShellSpec {
        command: ShellCommand::Script("true".into()),
        env: vec![],
        cwd: None,
    });
    let mut r: SubmitRequest = serde_json::from_value(serde_json::json!({ "kind": kind })).unwrap();
    r.queue = queue.to_owned();
    r
}

/// Waits (bounded) for a child to exit; its status. Past `limit` the child
/// is killed and the test fails.
fn exit_of(child: &mut std::process::Child, limit: Duration) -> std::process::ExitStatus {
    let pid = child.id().to_string();
    std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::channel();
        s.spawn(move || {
            let _ = tx.send(child.wait());
        });
        match rx.recv_timeout(limit) {
            Ok(status) => status.unwrap(),
            Err(_) => {
                let _ = Command::new("kill").args(["-9", &pid]).status();
                panic!("the process did not exit within {limit:?}");
            }
        }
    })
}

/// An acknowledged cancel survives kill -9 as a submit does.
/// The cancels are answered, then the coordinator is killed at once; after
/// a restart every one of them is still cancelled (none queued again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_cancels_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), "127.0.0.1:0", &[]);
    let client = server.client(None);
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(client.submit(&waiting("nobody")).await.unwrap().id);
    }
    let tagged: Vec<TaskId> = {
        let mut r = waiting("nobody");
        r.tags = vec!["batch".into()];
        let mut out = Vec::new();
        for _ in 0..10 {
            out.push(client.submit(&r).await.unwrap().id);
        }
        out
    };
    for id in &ids {
        let c = client.cancel(*id).await.unwrap();
        assert_eq!(c.outcome, CancelOutcomeKind::Cancelled);
    }
    assert_eq!(client.cancel_tag("batch").await.unwrap(), tagged.len());
    // Right after the last answer: no goodbye, no flush.
    server.proc.kill9();

    let server = Server::start(dir.path(), "127.0.0.1:0", &[]);
    let client = server.client(None);
    for id in ids.iter().chain(&tagged) {
        let state = client.get(*id).await.unwrap().task.status.state;
        assert_eq!(state, State::Cancelled, "task {id} came back {state}");
    }
}

/// One coordinator per data dir: a second one exits at once, naming the
/// dir and the first one's pid; the first goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_coordinator_on_a_data_dir_in_use_exits_and_names_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let first = Server::start(dir.path(), "127.0.0.1:0", &[]);
    let client = first.client(None);
    let id = client.submit(&waiting("q")).await.unwrap().id;
    let mut second = taskgrid()
        .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = exit_of(&mut second, Duration::from_secs(20));
    assert!(!status.success(), "the second coordinator must not run");
    let mut err = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut err).unwrap();
    assert!(err.contains(&dir.path().display().to_string()), "{err}");
    assert!(err.contains(&format!("pid {}", first.proc.0.id())), "{err}");
    // The first is untouched: its task is still queued, and it takes more.
    assert_eq!(
        client.get(id).await.unwrap().task.status.state,
        State::Queued
    );
    client.submit(&waiting("q")).await.unwrap();
    client.ready().await.unwrap();
}

/// A tmpfs of `size` mounted on `path` for the test's life (root only).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Option<Tmpfs> {
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(path.to_owned()))
    }

    fn resize(&self, size: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(ok.success(), "remount {}", self.0.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A full disk: the first commit that fails is answered 503 `store_failed`,
/// the coordinator stops with a message that says why, and once there is
/// room again a restart has every task it acknowledged — and nothing of
/// what it refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_the_coordinator_and_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = Tmpfs::mount(dir.path(), "1m") else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    let data = dir.path().join("data");
    let mut server = Server::start(&data, "127.0.0.1:0", &[]);
    let client = server.client(None);
    let mut acked = Vec::new();
    let mut big = waiting("nobody");
    big.kind = Kind::Shell(ShellSpec {
        command: ShellCommand::Script(format!("true # {}", "x".repeat(4000))),
        env: vec![],
        cwd: None,
    });
    let refused = loop {
        assert!(acked.len() < 100_000, "the disk never filled");
        match client.submit(&big).await {
            Ok(r) => acked.push(r.id),
            Err(e) => break e,
        }
    };
    assert_eq!(refused.status(), Some(503), "{refused}");
    assert_eq!(refused.code(), Some("store_failed"), "{refused}");
    let status = exit_of(&mut server.proc.0, Duration::from_secs(30));
    assert!(!status.success(), "it must stop with an error: {status}");

    disk.resize("64m");
    let server = Server::start(&data, "127.0.0.1:0", &[]);
    let client = server.client(None);
    client.ready().await.unwrap();
    let total = client
        .list(&taskgrid_api::ListQuery {
            limit: Some(1000),
            ..Default::default()
        })
        .await
        .unwrap()
        .tasks
        .len();
    assert!(!acked.is_empty());
    for id in &acked {
        assert_eq!(
            client.get(*id).await.unwrap().task.status.state,
            State::Queued,
            "acknowledged task {id}"
        );
    }
    assert_eq!(total, acked.len().min(1000), "nothing refused was kept");
}

/// A token that is set but blank (`TOKEN=` in a deployment file) stops the
/// process at start-up instead of letting anyone in.
#[test]
fn blank_tokens_are_refused_at_start_up() {
    for (cmd, var) in [
        ("server", "TASKGRID_WORKER_TOKEN"),
        ("server", "TASKGRID_CLIENT_TOKEN"),
        ("worker", "TASKGRID_WORKER_TOKEN"),
        ("list", "TASKGRID_TOKEN"),
    ] {
        for blank in ["", "   "] {
            let mut c = taskgrid();
            c.arg(cmd).env(var, blank).stdout(Stdio::null());
            if cmd == "server" {
                c.args(["--listen", "0.0.0.0:0", "--data-dir"])
                    .arg(std::env::temp_dir().join("taskgrid-never-created"));
            }
            if cmd == "worker" {
                c.args(["--server", "http://127.0.0.1:9"]);
            }
            let out = c.output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{cmd} {var}={blank:?}: {err}");
            assert!(err.contains("must not be empty or blank"), "{err}");
        }
    }
}

/// A task whose parent names no task is refused, and nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_parent_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "127.0.0.1:0", &[]);
    let client = server.client(None);
    let mut r = waiting("q");
    r.parent = Some(TaskId::from_u128(42));
    let err = client.submit(&r).await.unwrap_err();
    assert_eq!(err.status(), Some(400), "{err}");
    assert_eq!(err.code(), Some("unknown_parent"), "{err}");
    assert!(
        client
            .list(&Default::default())
            .await
            .unwrap()
            .tasks
            .is_empty()
    );
    // A real parent is fine.
    let parent = client.submit(&waiting("q")).await.unwrap().id;
    r.parent = Some(parent);
    client.submit(&r).await.unwrap();
}

/// `--store` chooses the backend: an acknowledged task survives a `kill -9`
/// on `sqlite:PATH` (kept at PATH, not in the data dir) and is gone on
/// `memory`; a store that cannot be opened as given is refused at start-up,
/// naming what is wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_flag_chooses_the_backend() {
    let data = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let db = elsewhere.path().join("nested").join("grid.db");
    let store = format!("sqlite:{}", db.display());

    let mut server = Server::start(data.path(), "127.0.0.1:0", &["--store", &store]);
    let id = server
        .client(None)
        .submit(&waiting("nobody"))
        .await
        .unwrap()
        .id;
    server.proc.kill9();
    assert!(db.exists(), "the SQLite file is where --store says");
    assert!(
        !data.path().join("taskgrid.db").exists(),
        "nothing is written to the data dir"
    );
    let server = Server::start(data.path(), "127.0.0.1:0", &["--store", &store]);
    assert_eq!(
        server.client(None).get(id).await.unwrap().task.status.state,
        State::Queued,
        "an acknowledged task survives kill -9 on sqlite:PATH"
    );
    drop(server);

    let mut server = Server::start(data.path(), "127.0.0.1:0", &["--store", "memory"]);
    let id = server
        .client(None)
        .submit(&waiting("nobody"))
        .await
        .unwrap()
        .id;
    assert_eq!(
        server.client(None).get(id).await.unwrap().task.status.state,
        State::Queued
    );
    server.proc.kill9();
    let server = Server::start(data.path(), "127.0.0.1:0", &["--store", "memory"]);
    let err = server.client(None).get(id).await.unwrap_err().to_string();
    assert!(err.contains("not_found"), "memory keeps nothing: {err}");
    assert!(!data.path().join("taskgrid.db").exists());
    drop(server);

    for (flags, expected) in [
        (
            &["--store", "postgress://x"][..],
            "unknown store `postgress://x`",
        ),
        (&["--store", "sqlite:"][..], "names no file"),
        (
            &["--database-url", "mysql://x"][..],
            "--database-url: unknown store `mysql://x`",
        ),
        (
            &["--store", "memory", "--full-sync"][..],
            "--full-sync applies to a SQLite store",
        ),
    ] {
        let out = taskgrid()
            .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data.path())
            .args(flags)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flags:?} was accepted");
        assert!(stderr.contains(expected), "{flags:?}: {stderr}");
    }
}

/// Starts a coordinator on a thread, and waits there until it says it
/// leads: a standby's thread ends at its promotion.
fn start_standby(data: &Path, url: &str) -> std::thread::JoinHandle<(Server, std::time::Instant)> {
    let (data, url) = (data.to_owned(), url.to_owned());
    std::thread::spawn(move || {
        let mut server = Server::start(
            &data,
            "127.0.0.1:0",
            &["--store", &url, "--lease-ms", "1000"],
        );
        server.await_leading();
        (server, std::time::Instant::now())
    })
}

/// `--store postgres://…` with standbys: any number of coordinators on one
/// database, one leads. A paused leader (SIGSTOP past its lease) is
/// replaced by a standby, and once it resumes it commits nothing (its
/// submit is refused and it stops); a killed leader (kill -9) is replaced
/// too; every acknowledged task is in the store afterwards, and nothing
/// else. The failover times are printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_standbys_take_over_and_a_paused_leader_commits_nothing() {
    let db = TempDatabase::new();
    let url = db.url();
    let data = tempfile::tempdir().unwrap();
    let mut first = Server::start(
        data.path(),
        "127.0.0.1:0",
        &["--store", &url, "--lease-ms", "1000"],
    );
    assert_eq!(first.await_leading(), 1, "the first coordinator leads");
    let t1 = first
        .client(None)
        .submit(&waiting("nobody"))
        .await
        .unwrap()
        .id;

    // A standby waits; pausing the leader past its lease promotes it.
    let standby = start_standby(data.path(), &url);
    let paused_at = std::time::Instant::now();
    signal(first.proc.0.id(), "-STOP");
    let (mut second, promoted_at) = standby.join().unwrap();
    eprintln!(
        "failover after SIGSTOP of the leader: {:?} (lease 1 s)",
        promoted_at - paused_at
    );
    let client = second.client(None);
    assert_eq!(
        client.get(t1).await.unwrap().task.status.state,
        State::Queued,
        "the new leader has what the old one acknowledged"
    );
    let t2 = client.submit(&waiting("nobody")).await.unwrap().id;

    // The old leader wakes up: it may commit nothing, so it acknowledges
    // nothing, and stops.
    signal(first.proc.0.id(), "-CONT");
    let refused = first.client(None).submit(&waiting("nobody")).await;
    assert!(refused.is_err(), "a fenced leader acknowledged a submit");
    let status = exit_of(&mut first.proc.0, Duration::from_secs(30));
    assert!(!status.success(), "a fenced leader stops non-zero");

    // kill -9 of the leader: a standby takes over when the lease lapses.
    let standby = start_standby(data.path(), &url);
    let killed_at = std::time::Instant::now();
    second.proc.kill9();
    let (third, promoted_at) = standby.join().unwrap();
    eprintln!(
        "failover after kill -9 of the leader: {:?} (lease 1 s)",
        promoted_at - killed_at
    );
    let page = third
        .client(None)
        .list(&taskgrid_api::ListQuery::default())
        .await
        .unwrap();
    let mut ids: Vec<_> = page.tasks.iter().map(|t| t.id).collect();
    ids.sort();
    let mut expected = vec![t1, t2];
    expected.sort();
    assert_eq!(
        ids, expected,
        "exactly the acknowledged tasks, nothing else"
    );
    drop(third);
}
