//! Tests of what only the SQLite backend has: files, reopening, migrations,
//! pragmas, and rows it did not write itself. The shared behaviour is in the
//! conformance suite.

use rusqlite::Connection;
use taskgrid_core::{AttemptOutcome, Change, State};

use super::{Durability, SqliteOptions, SqliteStore, checkpoint};
use crate::conformance::{Life, audit, fire, output, schedule, submit, task, tid, ts};
use crate::{Store, StoreError, TaskQuery};

fn open(path: &std::path::Path) -> SqliteStore {
    SqliteStore::open(path, SqliteOptions::default()).unwrap()
}

fn schema_of(conn: &Connection) -> Vec<String> {
    let mut stmt = conn
        .prepare(
            "SELECT type || ' ' || name || ' ' || IFNULL(sql, '') FROM sqlite_master \
             WHERE name NOT LIKE 'sqlite_stat%' ORDER BY name",
        )
        .unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn reopening_keeps_everything_and_migrating_again_is_a_no_op() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let store = open(&path);
    let a = task(1);
    let mut life = Life::of(&a);
    store
        .apply(&[
            submit(a.clone()),
            submit(task(2)),
            life.assign("w1", 10),
            life.to(State::Running, 11, None, |_| {}),
            output(1, 1, "hello"),
            life.to(
                State::Succeeded,
                12,
                Some(AttemptOutcome::Succeeded),
                |_| {},
            ),
        ])
        .unwrap();
    let snapshot = |s: &SqliteStore| {
        (
            s.list(&TaskQuery::default()).unwrap(),
            s.attempts(a.id).unwrap(),
            s.output(a.id, 0, 10).unwrap(),
            s.count_by_state().unwrap(),
            s.load_active().unwrap(),
        )
    };
    let before = snapshot(&store);
    let schema_before = schema_of(&store.read_conn());
    drop(store);

    let store = open(&path);
    assert_eq!(snapshot(&store), before);
    assert_eq!(schema_of(&store.read_conn()), schema_before);
    let version = super::schema::user_version(&store.read_conn()).unwrap();
    assert_eq!(version, SqliteStore::schema_version());
    // Sequence numbers keep increasing across a reopen.
    store.apply(&[output(1, 1, "again")]).unwrap();
    let out = store.output(a.id, 0, 10).unwrap();
    assert_eq!(out.len(), 2);
    assert!(out[1].0 > out[0].0);
}

#[test]
fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    drop(open(&path));
    let newer = SqliteStore::schema_version() + 1;
    Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", newer)
        .unwrap();
    match SqliteStore::open(&path, SqliteOptions::default()) {
        Err(StoreError::NewerSchema { found, supported }) => {
            assert_eq!((found, supported), (newer, SqliteStore::schema_version()));
        }
        other => panic!("expected NewerSchema, got {other:?}"),
    }
}

#[test]
fn durability_picks_the_sync_mode_and_wal_is_on() {
    let dir = tempfile::tempdir().unwrap();
    for (durability, want) in [(Durability::Process, 1), (Durability::PowerLoss, 2)] {
        let store =
            SqliteStore::open(dir.path().join("t.db"), SqliteOptions { durability }).unwrap();
        let conn = store.write_conn();
        let sync: i64 = conn
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .unwrap();
        assert_eq!(sync, want, "{durability:?}");
        let mode: String = conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let busy: i64 = conn
            .pragma_query_value(None, "busy_timeout", |r| r.get(0))
            .unwrap();
        assert_eq!(busy, 5_000);
        // SQLite's own checkpoint in the commit is off: the WAL hook and
        // the store's checkpoint thread copy the WAL back instead.
        let every: i64 = conn
            .pragma_query_value(None, "wal_autocheckpoint", |r| r.get(0))
            .unwrap();
        assert_eq!(every, 0);
        assert!(store.checkpointer.is_some());
        let limit: i64 = conn
            .pragma_query_value(None, "journal_size_limit", |r| r.get(0))
            .unwrap();
        assert_eq!(limit, 64 << 20);
    }
    assert_eq!(SqliteOptions::default().durability, Durability::Process);
}

#[test]
fn reads_do_not_wait_for_an_open_write_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let store = open(&path);
    store.apply(&[submit(task(1))]).unwrap();

    // Another writer holds the write lock with uncommitted rows.
    let mut other = Connection::open(&path).unwrap();
    let tx = other
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .unwrap();
    tx.execute("UPDATE tasks SET state = 'running'", [])
        .unwrap();

    let started = std::time::Instant::now();
    assert_eq!(
        store.get(tid(1)).unwrap().unwrap().status.state,
        State::Queued
    );
    assert_eq!(store.list(&TaskQuery::default()).unwrap().len(), 1);
    assert!(
        started.elapsed() < super::BUSY_TIMEOUT / 2,
        "the reader waited for the writer"
    );
    tx.rollback().unwrap();
}

#[test]
fn corrupt_rows_are_errors_not_panics() {
    let store = SqliteStore::open_in_memory().unwrap();
    store.apply(&[submit(task(1)), submit(task(2))]).unwrap();
    let corrupt = |sql: &str| {
        store.write_conn().execute(sql, []).unwrap();
    };
    corrupt("UPDATE tasks SET status = '{\"state\":' WHERE created_at = 1001");
    let err = store.get(tid(1)).unwrap_err();
    assert!(
        matches!(&err, StoreError::Corrupt(m) if m.contains("status")),
        "{err:?}"
    );
    assert!(matches!(store.load_active(), Err(StoreError::Corrupt(_))));

    corrupt("UPDATE tasks SET created_at = 'yesterday' WHERE created_at = 1002");
    assert!(matches!(store.get(tid(2)), Err(StoreError::Corrupt(_))));

    corrupt("UPDATE tasks SET state = 'sleeping'");
    assert!(matches!(
        store.count_by_state(),
        Err(StoreError::Corrupt(_))
    ));

    let key = tid(1).to_bytes();
    let conn = store.write_conn();
    conn.execute(
        "INSERT INTO attempts (task_id, attempt, worker, assigned_at, outcome) VALUES (?1, 1, 'w', 0, 'vanished')",
        [&key[..]],
    )
    .unwrap();
    conn.execute(
        "INSERT INTO output (task_id, attempt, stream, data) VALUES (?1, 1, 'stdin', 'x')",
        [&key[..]],
    )
    .unwrap();
    conn.execute(
        "INSERT INTO tasks (id, queue, state, created_at, spec, status) VALUES (X'0001', 'q', 'queued', 0, '', '')",
        [],
    )
    .unwrap();
    drop(conn);
    assert!(matches!(
        store.attempts(tid(1)),
        Err(StoreError::Corrupt(_))
    ));
    assert!(matches!(
        store.output(tid(1), 0, 10),
        Err(StoreError::Corrupt(_))
    ));
    let err = store.list(&TaskQuery::default()).unwrap_err();
    assert!(
        matches!(&err, StoreError::Corrupt(m) if m.contains("2 bytes")),
        "{err:?}"
    );
}

#[test]
fn a_version_1_database_is_upgraded_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    {
        // A database as the first release left it.
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(super::schema::MIGRATIONS[0]).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
    }
    let store = open(&path);
    let conn = Connection::open(&path).unwrap();
    let v: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(v, super::schema::MIGRATIONS.len() as i64);
    let a = task(1);
    let mut life = Life::of(&a);
    store
        .apply(&[
            submit(a.clone()),
            life.assign("w1", 10),
            life.to(State::Running, 11, None, |_| {}),
            life.to(State::Failed, 12, Some(AttemptOutcome::Failed), |s| {
                s.usage = Some(taskgrid_core::Usage {
                    cpu_seconds: 2.0,
                    peak_rss_bytes: 10,
                    signal: Some(15),
                });
            }),
        ])
        .unwrap();
    assert_eq!(
        store.attempts(a.id).unwrap()[0].usage.map(|u| u.signal),
        Some(Some(15))
    );
}

#[test]
fn a_second_store_on_the_same_file_is_refused_until_the_first_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("data").join("taskgrid.db");
    let first = SqliteStore::open(&db, SqliteOptions::default()).unwrap();
    let err = SqliteStore::open(&db, SqliteOptions::default()).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(&err, StoreError::Locked { pid: Some(p), .. } if *p == std::process::id()),
        "{err:?}"
    );
    assert!(
        msg.contains(&dir.path().join("data").display().to_string()),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("pid {}", std::process::id())),
        "{msg}"
    );
    // The first store goes on working.
    first.apply(&[submit(task(1))]).unwrap();
    drop(first);
    let again = SqliteStore::open(&db, SqliteOptions::default()).unwrap();
    assert!(again.get(task(1).id).unwrap().is_some());
}

#[test]
fn schedules_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    crate::conformance::checks::schedules_survive_reopening(&mut || Box::new(open(&path)));
}

#[test]
fn a_version_3_database_gains_schedules_and_keeps_its_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    {
        // Back to the release before schedules (steps 4 to 6 only add
        // tables), with a task in it.
        open(&path).apply(&[submit(task(1))]).unwrap();
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "DROP TABLE schedules; DROP TABLE schedule_fires; DROP TABLE meta; \
             DROP TABLE audit; PRAGMA user_version = 3;",
        )
        .unwrap();
    }
    let store = open(&path);
    assert_eq!(
        super::schema::user_version(&store.read_conn()).unwrap(),
        SqliteStore::schema_version()
    );
    assert_eq!(store.get(tid(1)).unwrap(), Some(task(1)));
    let rec = schedule("nightly");
    store
        .apply(&[
            Change::Schedule(Box::new(rec.clone())),
            Change::Fire(Box::new(fire("nightly", 5))),
        ])
        .unwrap();
    assert_eq!(store.schedules().unwrap(), [rec]);
    assert_eq!(
        store.fires("nightly", None, None, 10).unwrap(),
        [fire("nightly", 5)]
    );
    store
        .apply(&[Change::Meta {
            key: "metrics".into(),
            value: "{}".into(),
        }])
        .unwrap();
    assert_eq!(store.meta("metrics").unwrap().as_deref(), Some("{}"));
}

#[test]
fn corrupt_schedule_rows_are_errors_not_panics() {
    let store = SqliteStore::open_in_memory().unwrap();
    store
        .apply(&[
            Change::Schedule(Box::new(schedule("nightly"))),
            Change::Fire(Box::new(fire("nightly", 5))),
        ])
        .unwrap();
    let exec = |sql: &str| {
        store.write_conn().execute(sql, []).unwrap();
    };

    exec("UPDATE schedule_fires SET record = '{\"schedule\":'");
    let err = store.fires("nightly", None, None, 10).unwrap_err();
    assert!(
        matches!(&err, StoreError::Corrupt(m) if m.contains("nightly") && m.contains("fire")),
        "{err:?}"
    );
    exec("UPDATE schedule_fires SET record = 42");
    assert!(matches!(
        store.fires("nightly", None, None, 10),
        Err(StoreError::Corrupt(_))
    ));

    exec("UPDATE schedules SET name = 'renamed'");
    let err = store.schedules().unwrap_err();
    assert!(
        matches!(&err, StoreError::Corrupt(m) if m.contains("renamed") && m.contains("nightly")),
        "{err:?}"
    );
    exec("UPDATE schedules SET record = '[]'");
    let err = store.schedules().unwrap_err();
    assert!(
        matches!(&err, StoreError::Corrupt(m) if m.contains("renamed")),
        "{err:?}"
    );
}

#[test]
fn releasing_memory_keeps_every_read_and_write() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("t.db"));
    let all = |store: &SqliteStore| {
        let q = TaskQuery {
            limit: 10_000,
            ..TaskQuery::default()
        };
        store.list(&q).unwrap().len()
    };
    let changes: Vec<Change> = (1..=2_000).map(|i| submit(task(i))).collect();
    store.apply(&changes).unwrap();
    assert_eq!(all(&store), 2_000);
    // Takes both connections' locks: twice in a row, and between reads and
    // writes, nothing is held or lost.
    store.release_memory();
    store.release_memory();
    assert_eq!(all(&store), 2_000);
    store.apply(&[submit(task(2_001))]).unwrap();
    assert!(store.get(tid(2_001)).unwrap().is_some());
}

/// The audit log of a version 7 database (numbered by AUTOINCREMENT) is
/// moved to rowid numbers in place: its entries keep their numbers, and
/// no number is given twice, not even where every entry had been pruned
/// before the upgrade, nor across a prune of all and a reopening after,
/// nor when entries' times do not follow their numbers.
#[test]
fn a_version_7_audit_log_keeps_its_numbers_going_up() {
    let entry = |at: u64| audit(at, "POST /api/v1/tasks");
    let seqs = |store: &SqliteStore| -> Vec<u64> {
        store
            .audit(None, 10)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect()
    };
    // A version 7 database (its migrations only) with entries 1..=3 as
    // that version wrote them, of which a prune left `keep`.
    let old = |path: &std::path::Path, keep: &str| {
        let conn = Connection::open(path).unwrap();
        for step in &super::schema::MIGRATIONS[..7] {
            conn.execute_batch(step).unwrap();
        }
        conn.pragma_update(None, "user_version", 7).unwrap();
        for at in 1..=3 {
            let Change::Audit(rec) = entry(at) else {
                unreachable!("an audit entry")
            };
            conn.execute(
                "INSERT INTO audit (at, record) VALUES (?1, ?2)",
                rusqlite::params![
                    super::write::micros(rec.at),
                    serde_json::to_string(&*rec).unwrap()
                ],
            )
            .unwrap();
        }
        conn.execute_batch(&format!("DELETE FROM audit WHERE seq NOT IN ({keep})"))
            .unwrap();
    };
    let dir = tempfile::tempdir().unwrap();

    let kept = dir.path().join("kept.db");
    old(&kept, "2, 3");
    let store = open(&kept);
    assert_eq!(seqs(&store), [3, 2], "the kept entries keep their numbers");
    store.apply(&[entry(4)]).unwrap();
    assert_eq!(seqs(&store)[0], 4);
    store
        .apply(&[Change::AuditPruned { before: ts(100) }])
        .unwrap();
    drop(store);
    let store = open(&kept);
    store.apply(&[entry(5)]).unwrap();
    assert_eq!(seqs(&store), [5], "after a prune of all and a reopening");
    drop(store);

    let emptied = dir.path().join("emptied.db");
    old(&emptied, "0");
    let store = open(&emptied);
    assert!(seqs(&store).is_empty());
    store.apply(&[entry(4)]).unwrap();
    assert_eq!(seqs(&store), [4], "numbers 1 to 3 were given before");
    let has_autoincrement: i64 = store
        .read_conn()
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE name = 'audit' AND sql LIKE '%AUTOINCREMENT%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(has_autoincrement, 0);

    // Times out of order (the clock set back between two runs): entries
    // 6 and 7 are older than 5. A prune takes 4, 6 and 7; a second, with
    // nothing to delete, must not let the next number fall back to 6.
    store.apply(&[entry(50), entry(10), entry(11)]).unwrap();
    assert_eq!(seqs(&store), [7, 6, 5, 4]);
    let prune = Change::AuditPruned { before: ts(20) };
    store.apply(std::slice::from_ref(&prune)).unwrap();
    assert_eq!(seqs(&store), [5]);
    store.apply(&[prune]).unwrap();
    store.apply(&[entry(60)]).unwrap();
    assert_eq!(seqs(&store), [8, 5], "6 and 7 were given before");
}

/// A store whose WAL is copied back every `MARK` pages, and a writer of
/// batches of `count` new tasks that answers the WAL's frames after it.
fn marked_store(
    path: &std::path::Path,
) -> (
    SqliteStore,
    std::sync::Arc<checkpoint::Progress>,
    impl FnMut(&SqliteStore, u128) -> u64 + use<>,
) {
    let store = SqliteStore::open_marked(path, SqliteOptions::default(), MARK).unwrap();
    let progress = store.wal.clone().unwrap();
    let frames = progress.clone();
    let mut n = 0;
    let write = move |store: &SqliteStore, count: u128| {
        let batch: Vec<Change> = (n..n + count).map(|i| submit(task(i))).collect();
        store.apply(&batch).unwrap();
        n += count;
        frames.frames.load(std::sync::atomic::Ordering::Relaxed)
    };
    (store, progress, write)
}

const MARK: u64 = 50;

#[test]
fn a_busy_writer_leaves_the_wal_copy_to_a_thread() {
    use std::sync::atomic::Ordering::Relaxed;
    use std::time::Duration;
    let large = checkpoint::BUSY_CHANGES as u128;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let (mut store, progress, mut write) = marked_store(&path);
    let mut written = 0;
    let mut write = |store: &SqliteStore, count: u128| {
        written += count as u64;
        write(store, count)
    };
    // Past the mark, a large commit wakes the thread, which copies the WAL
    // back; the writer does not.
    while write(&store, large) < MARK {}
    assert!(
        progress.wait_past(0, Duration::from_secs(30)) >= 1,
        "no checkpoint ran"
    );
    assert_eq!(
        progress.inline.load(Relaxed),
        0,
        "the writer checkpointed itself"
    );
    // Once a run has copied everything, the next commit starts the WAL
    // over (a run that raced a later commit is followed by another).
    let mut restarted = false;
    for _ in 0..50 {
        let seen = progress.runs();
        if write(&store, large) < MARK {
            restarted = true;
            break;
        }
        progress.wait_past(seen, Duration::from_secs(30));
    }
    assert!(restarted, "the WAL was never copied back whole");
    assert_eq!(progress.inline.load(Relaxed), 0);

    // With the thread stopped (it panicked, or the store is closing), a
    // large commit past the mark copies the WAL back itself.
    progress.wait_idle(Duration::from_secs(30));
    let runs = progress.runs();
    drop(store.checkpointer.take());
    while write(&store, large) < MARK {}
    assert_eq!(
        progress.inline.load(Relaxed),
        1,
        "the writer left the WAL to grow"
    );
    assert_eq!(progress.runs(), runs);
    assert!(write(&store, 1) < MARK, "the WAL did not start over");
    drop(store);
    // Everything written is there after reopening.
    let store = open(&path);
    let counts = store.count_by_state().unwrap();
    assert!(counts.contains(&(State::Queued, written)), "{counts:?}");
}

#[test]
fn a_light_load_copies_the_wal_back_in_its_commit() {
    use std::sync::atomic::Ordering::Relaxed;
    let dir = tempfile::tempdir().unwrap();
    let (store, progress, mut write) = marked_store(&dir.path().join("t.db"));
    // Small commits past the mark copy the WAL back themselves, in the
    // commit: the WAL starts over at the next one, and the thread never
    // runs.
    while write(&store, 1) < MARK {}
    let frames = progress.frames.load(Relaxed);
    assert_eq!(progress.inline.load(Relaxed), 1, "at {frames} frames");
    assert!(write(&store, 1) < frames, "the WAL did not start over");
    assert_eq!(progress.runs(), 0, "the thread copied a light load's WAL");
}

#[test]
fn a_large_commit_keeps_the_writer_busy_for_the_small_ones_after_it() {
    use std::sync::atomic::Ordering::Relaxed;
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let (store, progress, mut write) = marked_store(&dir.path().join("t.db"));
    let busy = checkpoint::BUSY_CHANGES as u128;
    write(&store, busy - 1);
    assert!(
        !progress.busy(),
        "one commit below the mark is not a backlog"
    );
    write(&store, 64);
    assert!(progress.busy());
    // It fades by a sixteenth per commit: 13 small commits later the
    // writer is still busy, the 14th is not.
    for i in 0..13 {
        write(&store, 1);
        assert!(progress.busy(), "after {} small commits", i + 1);
    }
    write(&store, 1);
    assert!(!progress.busy());

    // So a small commit that crosses the mark within a backlog (a large
    // commit every eight) leaves the copy to the thread. (A large one
    // that crosses it first is copied by the thread too, and the WAL
    // starts over.)
    let (runs, inline) = (progress.runs(), progress.inline.load(Relaxed));
    let mut crossed_small = false;
    for i in 0..10_000 {
        let large = i % 8 == 0;
        if write(&store, if large { 64 } else { 1 }) >= MARK && !large {
            crossed_small = true;
            break;
        }
        progress.wait_idle(Duration::from_secs(30));
    }
    assert!(crossed_small, "no small commit crossed the mark");
    progress.wait_idle(Duration::from_secs(30));
    assert!(progress.runs() > runs, "the thread did not copy");
    assert_eq!(
        progress.inline.load(Relaxed),
        inline,
        "a small commit copied"
    );
}

/// A commit that would copy the WAL back in a light load is announced
/// (`next_commit_stalls`), so that a caller leaves it to the writer
/// thread; not while the writer is busy, and not once a copy is whole.
#[test]
fn the_store_says_when_its_next_commit_would_copy_the_wal_back() {
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let (store, progress, mut write) = marked_store(&path);
    assert!(!store.next_commit_stalls());
    // A reader's snapshot keeps every frame from being copied back.
    let reader = Connection::open(&path).unwrap();
    reader.execute_batch("BEGIN").unwrap();
    let _: i64 = reader
        .query_row("SELECT count(*) FROM tasks", [], |r| r.get(0))
        .unwrap();
    // Busy past the mark: the thread's copy is the one due, not a commit's.
    while write(&store, checkpoint::BUSY_CHANGES as u128) < MARK {}
    progress.wait_idle(Duration::from_secs(30));
    assert!(progress.busy());
    assert!(
        !store.next_commit_stalls(),
        "a busy writer's copy is the thread's"
    );
    // Once the writer is not busy, its next commit would copy.
    write(&store, 1);
    assert!(!progress.busy());
    assert!(
        store.next_commit_stalls(),
        "the reader kept the WAL past the mark"
    );
    // With the reader gone, a commit copies the whole WAL back, and the
    // next one starts it over: nothing is due.
    reader.execute_batch("COMMIT").unwrap();
    drop(reader);
    write(&store, 1);
    assert!(!store.next_commit_stalls(), "the copy was whole");
    assert!(write(&store, 1) < MARK, "the WAL started over");
    assert!(!store.next_commit_stalls());
}
