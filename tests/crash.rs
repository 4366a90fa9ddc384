//! Durability under `kill -9`: a `taskgrid demo` process submitting tasks to
//! a SQLite file is killed with SIGKILL at random points; after a restart
//! every task whose submit was acknowledged (its id printed) is in the store
//! and runs to a terminal state.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use taskgrid_core::{State, TaskId};
use taskgrid_store::{SqliteOptions, SqliteStore, Store};

fn taskgrid(data: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_taskgrid"));
    c.arg("demo")
        .arg("--data-dir")
        .arg(data)
        .arg("--concurrency")
        .arg("4");
    c
}

/// Starts a submitting run, reads `kill_after` acknowledged ids, then kills it.
fn run_and_kill(data: &Path, kill_after: usize) -> Vec<TaskId> {
    let mut child = taskgrid(data)
        .args(["--tasks", "5000", "--print-ids"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start taskgrid demo");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut acked = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("read child stdout");
        if let Ok(id) = line.trim().parse::<TaskId>() {
            acked.push(id);
            if acked.len() == kill_after {
                break;
            }
        }
    }
    // SIGKILL: no destructor, no flush, no goodbye.
    child.kill().expect("kill -9");
    child.wait().expect("reap");
    acked
}

#[test]
fn acknowledged_tasks_survive_sigkill_and_finish_after_restart() {
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as usize;
    let dir = tempfile::tempdir().unwrap();
    let mut acked = Vec::new();
    for round in 0..3 {
        let kill_after = 1 + (seed / (round + 1)) % 1500;
        let ids = run_and_kill(dir.path(), kill_after);
        assert_eq!(
            ids.len(),
            kill_after,
            "seed {seed}: round {round} ended early"
        );
        acked.extend(ids);
    }
    // Restart: finish whatever was left, then exit.
    let status = taskgrid(dir.path())
        .args(["--tasks", "0"])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(
        status.success(),
        "seed {seed}: recovery run failed: {status}"
    );

    let store =
        SqliteStore::open(dir.path().join("taskgrid.db"), SqliteOptions::default()).unwrap();
    let unique: HashSet<TaskId> = acked.iter().copied().collect();
    assert_eq!(
        unique.len(),
        acked.len(),
        "seed {seed}: an id was acknowledged twice"
    );
    for id in &acked {
        let rec = store
            .get(*id)
            .unwrap()
            .unwrap_or_else(|| panic!("seed {seed}: acknowledged task {id} was lost"));
        assert_eq!(rec.status.state, State::Succeeded, "seed {seed}: task {id}");
    }
    assert!(
        store.load_active().unwrap().is_empty(),
        "seed {seed}: tasks left unfinished"
    );
}
