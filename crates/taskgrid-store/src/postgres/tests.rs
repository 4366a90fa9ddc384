//! The PostgreSQL store against the PostgreSQL this machine runs (CI
//! included): `TASKGRID_TEST_DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`. Every test works in a
//! schema of its own, dropped at the end, so tests run in parallel.

use std::sync::atomic::{AtomicU32, Ordering};

use taskgrid_core::{AttemptOutcome, Change, State};

use super::PostgresStore;
use crate::conformance::{Life, fire, schedule, submit, task, tid};
use crate::{Store, StoreError};

fn url() -> String {
    std::env::var("TASKGRID_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A schema name no other test (or test run) uses.
fn fresh_schema() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "tg_test_{}_{}_{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A [`PostgresStore`] in a schema of its own, dropped with it.
pub(crate) struct TempPg {
    // Fields drop in order: the store's connections close before the
    // schema goes.
    store: Option<PostgresStore>,
    schema: String,
}

impl TempPg {
    pub(crate) fn new() -> Self {
        let schema = fresh_schema();
        let store = PostgresStore::open_in_schema(&url(), &schema).unwrap();
        TempPg {
            store: Some(store),
            schema,
        }
    }

    fn store(&self) -> &PostgresStore {
        self.store.as_ref().unwrap()
    }
}

impl Drop for TempPg {
    fn drop(&mut self) {
        drop(self.store.take());
        drop_schema(&self.schema);
    }
}

/// Removes a test's schema and everything in it.
fn drop_schema(schema: &str) {
    if let Ok(mut c) = postgres::Client::connect(&url(), postgres::NoTls) {
        let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"));
    }
}

/// Standby options with a short lease, renewed every 100 ms.
fn waiting(lease_ms: u64) -> super::PostgresOptions {
    super::PostgresOptions {
        lease: std::time::Duration::from_millis(lease_ms),
        renew_every: std::time::Duration::from_millis(100),
        wait: true,
        address: String::new(),
    }
}

impl std::ops::Deref for TempPg {
    type Target = PostgresStore;

    fn deref(&self) -> &PostgresStore {
        self.store()
    }
}

crate::conformance_tests!(postgres_conformance, TempPg::new);

#[test]
fn one_writer_per_schema_and_the_holder_is_named() {
    let first = TempPg::new();
    let err = PostgresStore::open_in_schema(&url(), &first.schema).unwrap_err();
    match &err {
        StoreError::Locked { dir, pid, .. } => {
            assert!(dir.contains(&first.schema), "{err}");
            assert!(pid.is_some(), "the holder's backend pid is named: {err}");
        }
        other => panic!("expected Locked, got {other}"),
    }
    // Another schema on the same database is another store.
    let _second = TempPg::new();
    // Once the first is closed, its schema opens again, with its data.
    first.apply(&[submit(task(1))]).unwrap();
    let schema = first.schema.clone();
    let mut first = first;
    drop(first.store.take());
    let again = PostgresStore::open_in_schema(&url(), &schema).unwrap();
    assert_eq!(again.get(tid(1)).unwrap().map(|t| t.id), Some(tid(1)));
    drop(again);
}

#[test]
fn a_newer_schema_is_refused_and_bad_input_is_named() {
    let store = TempPg::new();
    let schema = store.schema.clone();
    let mut store = store;
    drop(store.store.take());
    let mut c = postgres::Client::connect(&url(), postgres::NoTls).unwrap();
    c.batch_execute(&format!(
        "UPDATE {schema}.taskgrid_schema SET version = 999"
    ))
    .unwrap();
    let err = PostgresStore::open_in_schema(&url(), &schema).unwrap_err();
    assert!(
        matches!(err, StoreError::NewerSchema { found: 999, .. }),
        "{err}"
    );
    let err = PostgresStore::open_in_schema(&url(), "bad; DROP TABLE x").unwrap_err();
    assert!(err.to_string().contains("schema name"), "{err}");
    let err = PostgresStore::open("not a url").unwrap_err();
    assert!(err.to_string().contains("database URL"), "{err}");
    let err = PostgresStore::open("postgres://nobody@127.0.0.1:1/none").unwrap_err();
    assert!(err.to_string().starts_with("postgres: "), "{err}");
}

/// A leader that stops renewing (paused) loses the lease to a waiting
/// standby after the lease's length, and from then on commits nothing: its
/// writes fail `Fenced`, and the store holds only what the leaders wrote in
/// their terms.
#[test]
fn a_paused_leader_is_fenced_once_a_standby_takes_over() {
    let schema = fresh_schema();
    let options = waiting(300);
    let mut leader = PostgresStore::open_with(&url(), &schema, options.clone()).unwrap();
    leader.apply(&[submit(task(1))]).unwrap();
    let first_term = leader.term();

    let standby = {
        let (url, schema) = (url(), schema.clone());
        std::thread::spawn(move || PostgresStore::open_with(&url, &schema, options))
    };
    leader.stop_renewing();
    let standby = standby.join().unwrap().unwrap();
    assert_eq!(standby.term(), first_term + 1, "a takeover raises the term");

    let err = leader.apply(&[submit(task(2))]).unwrap_err();
    assert!(
        matches!(err, StoreError::Fenced { term } if term == first_term),
        "{err}"
    );
    standby.apply(&[submit(task(3))]).unwrap();
    assert!(standby.get(tid(1)).unwrap().is_some());
    assert_eq!(
        standby.get(tid(2)).unwrap(),
        None,
        "the old leader wrote nothing"
    );
    assert!(standby.get(tid(3)).unwrap().is_some());

    drop(leader);
    drop(standby);
    drop_schema(&schema);
}

/// A leader that closes hands over at once: a standby waiting on a lease
/// far longer than the test, and trying it only that often, takes over as
/// soon as the leader is dropped (it is told).
#[test]
fn a_clean_close_hands_the_lease_over() {
    let schema = fresh_schema();
    let options = super::PostgresOptions {
        renew_every: std::time::Duration::from_secs(600),
        ..waiting(600_000)
    };
    let leader = PostgresStore::open_with(&url(), &schema, options.clone()).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let (url, schema) = (url(), schema.clone());
        std::thread::spawn(move || {
            let _ = tx.send(PostgresStore::open_with(&url, &schema, options));
        });
    }
    // Still the leader's: the standby has not taken it.
    assert!(rx.try_recv().is_err());
    drop(leader);
    // Only the hand-over can let it in within the 10-minute lease.
    let standby = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("the closed leader handed the lease over")
        .unwrap();
    assert_eq!(standby.term(), 2);
    drop(standby);
    drop_schema(&schema);
}

/// A change to a task placed before the task's own submit in one batch
/// fails as it would one change at a time, and writes nothing.
#[test]
fn a_change_before_its_tasks_submit_fails_the_batch() {
    let store = TempPg::new();
    let a = task(1);
    let progress = Change::Progress {
        id: a.id,
        progress: taskgrid_core::Progress {
            fraction: 0.5,
            message: None,
        },
    };
    let err = store
        .apply(&[progress.clone(), submit(a.clone())])
        .unwrap_err();
    assert!(
        matches!(err, StoreError::NotFound(id) if id == a.id),
        "{err}"
    );
    assert_eq!(store.get(a.id).unwrap(), None);
    store.apply(&[submit(a.clone())]).unwrap();
    let err = store.apply(&[progress, submit(a.clone())]).unwrap_err();
    assert!(
        matches!(err, StoreError::Duplicate(id) if id == a.id),
        "{err}"
    );
    assert_eq!(store.get(a.id).unwrap().unwrap().progress, None);
}

#[test]
fn passwords_never_reach_a_message() {
    use super::redact;
    assert_eq!(
        redact("postgres://tg:s3cret@db:5432/grid"),
        "postgres://tg:***@db:5432/grid"
    );
    assert_eq!(
        redact("postgres://db/grid?user=tg&password=s3cret&sslmode=disable"),
        "postgres://db/grid?user=tg&password=***&sslmode=disable"
    );
    assert_eq!(
        redact("host=db user=tg password=s3cret dbname=grid"),
        "host=db user=tg password=*** dbname=grid"
    );
    assert_eq!(redact("postgres://db/grid"), "postgres://db/grid");
}

/// A leader's renewals do not wait behind a write in flight: with the term
/// row held `FOR SHARE` (as a write holds it) for over two lease lengths, a
/// waiting standby does not take over, neither during the write nor when
/// it ends (the lease never lapsed); once the leader closes, it does.
#[test]
fn a_long_write_does_not_let_the_lease_lapse() {
    let schema = fresh_schema();
    // Renewed every 100 ms, a 1 s lease lapses only if renewals stall for
    // 900 ms: a wide margin on a loaded 2-core machine.
    let options = waiting(1000);
    let leader = PostgresStore::open_with(&url(), &schema, options.clone()).unwrap();
    let mut holder = postgres::Client::connect(&url(), postgres::NoTls).unwrap();
    let mut write = holder.transaction().unwrap();
    write
        .execute(
            &format!("SELECT 1 FROM {schema}.taskgrid_lease WHERE id = 1 FOR SHARE"),
            &[],
        )
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let standby = {
        let (url, schema) = (url(), schema.clone());
        std::thread::spawn(move || {
            let s = PostgresStore::open_with(&url, &schema, options);
            let _ = tx.send(());
            s
        })
    };
    assert!(
        rx.recv_timeout(std::time::Duration::from_millis(2500))
            .is_err(),
        "the standby took over while the leader renewed"
    );
    write.commit().unwrap();
    // Renewed all along, the lease has not lapsed: the write's end lets
    // no takeover through.
    assert!(
        rx.recv_timeout(std::time::Duration::from_millis(1500))
            .is_err(),
        "the lease lapsed behind a write"
    );
    drop(leader);
    let standby = standby.join().unwrap().unwrap();
    assert_eq!(standby.term(), 2);
    drop(standby);
    drop(holder);
    drop_schema(&schema);
}

/// The lease and the roster say who leads, at which address, and who
/// stands by; a standby that takes over leads at its own address, and the
/// old leader leaves the roster.
#[test]
fn the_cluster_names_the_leader_and_its_standbys() {
    let schema = fresh_schema();
    let at = |address: &str| super::PostgresOptions {
        address: address.to_owned(),
        ..waiting(600_000)
    };
    assert_eq!(
        super::read_cluster(&url(), &schema).unwrap(),
        crate::Cluster::default(),
        "nobody leads a store never opened"
    );
    let leader = PostgresStore::open_with(&url(), &schema, at("http://a:1")).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let (url, schema, options) = (url(), schema.clone(), at("http://b:2"));
        std::thread::spawn(move || {
            let _ = tx.send(PostgresStore::open_with(&url, &schema, options));
        });
    }
    // The standby enters the roster before its first wait.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let seen = loop {
        let c = leader.cluster().unwrap().unwrap();
        if !c.standbys.is_empty() || std::time::Instant::now() > deadline {
            break c;
        }
        std::thread::yield_now();
    };
    assert_eq!(seen.term, 1);
    assert_eq!(
        seen.leader.as_ref().map(|m| m.address.as_str()),
        Some("http://a:1")
    );
    let standbys: Vec<_> = seen.standbys.iter().map(|m| m.address.as_str()).collect();
    assert_eq!(standbys, ["http://b:2"]);
    assert_eq!(super::read_cluster(&url(), &schema).unwrap(), seen);

    drop(leader);
    let standby = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("the standby took over")
        .unwrap();
    let now = standby.cluster().unwrap().unwrap();
    assert_eq!(now.term, 2);
    assert_eq!(now.leader.map(|m| m.address), Some("http://b:2".to_owned()));
    assert_eq!(now.standbys, [], "the old leader left the roster");
    drop(standby);
    drop_schema(&schema);
}

#[test]
fn schedules_survive_reopening() {
    let schema = fresh_schema();
    crate::conformance::checks::schedules_survive_reopening(&mut || {
        Box::new(PostgresStore::open_in_schema(&url(), &schema).unwrap())
    });
    drop_schema(&schema);
}

/// A schema at version 1 (before schedules) is upgraded in place: its
/// tasks stay, and schedules and fires work.
#[test]
fn a_version_1_schema_gains_schedules_and_keeps_its_tasks() {
    let store = TempPg::new();
    let schema = store.schema.clone();
    store.apply(&[submit(task(1))]).unwrap();
    let mut store = store;
    drop(store.store.take());
    let mut c = postgres::Client::connect(&url(), postgres::NoTls).unwrap();
    c.batch_execute(&format!(
        "DROP TABLE {schema}.schedules; DROP TABLE {schema}.schedule_fires; \
         DROP TABLE {schema}.meta; DROP TABLE {schema}.audit; \
         UPDATE {schema}.taskgrid_schema SET version = 1"
    ))
    .unwrap();
    store.store = Some(PostgresStore::open_in_schema(&url(), &schema).unwrap());
    let version: i32 = c
        .query_one(
            &format!("SELECT version FROM {schema}.taskgrid_schema"),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(version as usize, super::MIGRATIONS.len());
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
}

#[test]
fn corrupt_schedule_rows_are_errors_not_panics() {
    let store = TempPg::new();
    store
        .apply(&[
            Change::Schedule(Box::new(schedule("nightly"))),
            Change::Fire(Box::new(fire("nightly", 5))),
        ])
        .unwrap();
    let mut c = postgres::Client::connect(&url(), postgres::NoTls).unwrap();
    let schema = store.schema.clone();
    let mut exec = |sql: &str| c.batch_execute(&sql.replace("{s}", &schema)).unwrap();

    exec("UPDATE {s}.schedule_fires SET record = '{\"schedule\":'");
    let err = store.fires("nightly", None, None, 10).unwrap_err();
    assert!(
        matches!(&err, StoreError::Corrupt(m) if m.contains("nightly") && m.contains("fire")),
        "{err:?}"
    );
    exec("UPDATE {s}.schedules SET name = 'renamed'");
    let err = store.schedules().unwrap_err();
    assert!(
        matches!(&err, StoreError::Corrupt(m) if m.contains("renamed") && m.contains("nightly")),
        "{err:?}"
    );
    exec("UPDATE {s}.schedules SET record = '[]'");
    assert!(matches!(store.schedules(), Err(StoreError::Corrupt(_))));
}

#[test]
fn a_transaction_left_open_is_rolled_back_before_the_next_batch() {
    let pg = TempPg::new();
    {
        // As if a panic came between the flight and its commit.
        let mut conn = pg.write_conn().unwrap();
        let abandoned = super::pipeline::Op::new(
            "INSERT INTO meta (key, value) VALUES ($1, $2)",
            vec![Box::new("abandoned"), Box::new("1")],
        );
        let answers = conn.run(&[abandoned]).unwrap();
        assert!(answers.iter().all(Result::is_ok));
    }
    let next = Change::Meta {
        key: "next".to_owned(),
        value: "1".to_owned(),
    };
    pg.apply(&[next, submit(task(1))]).unwrap();
    assert_eq!(pg.meta("abandoned").unwrap(), None);
    assert_eq!(pg.meta("next").unwrap().as_deref(), Some("1"));
    assert!(pg.get(tid(1)).unwrap().is_some());
}

#[test]
fn a_statement_the_client_cannot_send_rolls_its_one_flight_back() {
    // The server never hears of it, so nothing aborts the transaction:
    // the flight must end it with `ROLLBACK`, not `COMMIT`.
    let pg = TempPg::new();
    let mut conn = pg.write_conn().unwrap();
    let ops = [
        super::pipeline::Op::new(
            "INSERT INTO meta (key, value) VALUES ($1, $2)",
            vec![Box::new("sent"), Box::new("1")],
        ),
        // `value` is text: an integer fails to encode in the client.
        super::pipeline::Op::new(
            "INSERT INTO meta (key, value) VALUES ($1, $2)",
            vec![Box::new("unsent"), Box::new(1_i64)],
        ),
    ];
    let failed = conn
        .run_and_commit(&ops, &[false, false])
        .unwrap()
        .failed()
        .unwrap();
    assert!(
        matches!(failed, Some((1, ref e)) if e.code().is_none()),
        "{failed:?}"
    );
    drop(conn);
    assert_eq!(pg.meta("sent").unwrap(), None, "rolled back");
    pg.apply(&[submit(task(1))]).unwrap();
    assert!(pg.get(tid(1)).unwrap().is_some());
}

#[test]
fn bulk_writes_reach_their_rows_by_key_whatever_the_table_size() {
    // A hash join would read every task in the state (or every attempt)
    // per statement: a commit's cost would grow with the table.
    let pg = TempPg::new();
    let batch: Vec<Change> = (1..=3_000).map(|n| submit(task(n))).collect();
    pg.apply(&batch).unwrap();
    let mut lives: Vec<Life> = (1..=100).map(|n| Life::of(&task(n))).collect();
    let assign: Vec<Change> = lives.iter_mut().map(|l| l.assign("w", 10)).collect();
    let finish: Vec<Change> = lives
        .iter_mut()
        .flat_map(|l| {
            [
                l.to(State::Running, 11, None, |_| {}),
                l.to(
                    State::Succeeded,
                    12,
                    Some(AttemptOutcome::Succeeded),
                    |_| {},
                ),
            ]
        })
        .collect();
    let mut conn = pg.write_conn().unwrap();
    conn.run(&[super::pipeline::Op::new("ANALYZE", Vec::new())])
        .unwrap();
    conn.commit().unwrap();
    let mut plans = super::bulk::explain(&mut conn, &assign).unwrap();
    drop(conn);
    pg.apply(&assign).unwrap();
    let mut conn = pg.write_conn().unwrap();
    conn.run(&[super::pipeline::Op::new("ANALYZE", Vec::new())])
        .unwrap();
    conn.commit().unwrap();
    plans.extend(super::bulk::explain(&mut conn, &finish).unwrap());
    assert!(plans.len() >= 4, "{plans:#?}");
    for plan in plans {
        for scan in [
            "Hash Join",
            "Merge Join",
            "Seq Scan on tasks",
            "Seq Scan on attempts",
        ] {
            assert!(!plan.contains(scan), "{plan}");
        }
    }
}

#[test]
fn a_task_submitted_and_assigned_in_one_batch_is_written_once() {
    let pg = TempPg::new();
    let rec = task(1);
    let mut life = Life::of(&rec);
    let assign = life.assign("w1", 5);
    pg.apply(&[submit(rec), assign]).unwrap();
    let got = pg.get(tid(1)).unwrap().unwrap();
    assert_eq!(got.status, life.status);
    assert_eq!(pg.attempts(tid(1)).unwrap().len(), 1);
    // One row version: the first tuple of the table's first page. An
    // insert and then an update would have left the row at (0,2).
    let mut c = postgres::Client::connect(&url(), postgres::NoTls).unwrap();
    let row = c
        .query_one(
            &format!("SELECT ctid::text, state FROM {}.tasks", pg.schema),
            &[],
        )
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "(0,1)");
    assert_eq!(row.get::<_, String>(1), "assigned");
}

#[test]
fn a_fenced_batch_runs_nothing_after_the_fence() {
    // An old leader's statements after a failed fence must not run: they
    // would take row locks the new leader's commits could wait for (or
    // deadlock on).
    let schema = fresh_schema();
    let options = waiting(300);
    let mut leader = PostgresStore::open_with(&url(), &schema, options.clone()).unwrap();
    let rec = task(1);
    let mut life = Life::of(&rec);
    leader.apply(&[submit(rec)]).unwrap();
    let standby = {
        let (url, schema) = (url(), schema.clone());
        std::thread::spawn(move || PostgresStore::open_with(&url, &schema, options))
    };
    leader.stop_renewing();
    let standby = standby.join().unwrap().unwrap();

    // The new leader's side holds task 1's row.
    let mut holder = postgres::Client::connect(&url(), postgres::NoTls).unwrap();
    let mut tx = holder.transaction().unwrap();
    tx.execute(&format!("SELECT 1 FROM {schema}.tasks FOR UPDATE"), &[])
        .unwrap();
    let (done, answer) = std::sync::mpsc::channel();
    let old = std::thread::spawn(move || {
        let r = leader.apply(&[life.assign("w1", 5)]);
        let _ = done.send(r);
        leader
    });
    let r = answer
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("the fenced batch waited for a row lock: its update ran");
    assert!(matches!(r, Err(StoreError::Fenced { .. })), "{r:?}");
    tx.rollback().unwrap();
    drop(old.join().unwrap());
    drop(standby);
    drop_schema(&schema);
}

/// A commit whose turn has come is one round trip: `BEGIN`, the fence,
/// the statements and `COMMIT` together. One that must wait for its turn
/// is two, the `COMMIT` following once the turn came. A row a statement
/// of the single flight misses aborts it in the server: nothing of the
/// batch is written, and the error names the task as ever.
#[test]
fn a_commit_in_its_turn_is_one_round_trip_and_a_miss_rolls_it_back() {
    let pg = TempPg::new();
    let flights = |batch: &[Change], turn: &dyn crate::Turn| {
        let before = pg.flights();
        let result = pg.apply_when(batch, turn);
        (result, pg.flights() - before)
    };
    // Every statement prepared once, as after a coordinator's first
    // batches (preparing is a round trip of its own).
    let (mut first, mut sixth) = (Life::of(&task(1)), Life::of(&task(6)));
    let warm = [
        submit(task(1)),
        first.assign("w", 5),
        submit(task(6)),
        sixth.assign("w", 5),
    ];
    flights(&warm, &crate::Now).0.unwrap();
    let warm = [
        first.to(State::Running, 6, None, |_| {}),
        sixth.to(State::Running, 6, None, |_| {}),
        sixth.to(State::Succeeded, 6, Some(AttemptOutcome::Succeeded), |_| {}),
    ];
    flights(&warm, &crate::Now).0.unwrap();
    let mut ninth = Life::of(&task(9));
    flights(&[submit(task(9)), ninth.assign("w", 5)], &|| Ok(()))
        .0
        .unwrap();

    let mut second = Life::of(&task(2));
    let batch = [
        submit(task(2)),
        second.assign("w", 7),
        first.to(State::Succeeded, 8, Some(AttemptOutcome::Succeeded), |_| {}),
    ];
    let (result, n) = flights(&batch, &crate::Now);
    result.unwrap();
    assert_eq!(n, 1);
    assert_eq!(pg.get(tid(1)).unwrap().unwrap().status, first.status);
    assert_eq!(pg.get(tid(2)).unwrap().unwrap().status, second.status);
    // Waited for: the statements, then the `COMMIT` (the turn a closure
    // gives is never known to have come).
    let mut third = Life::of(&task(3));
    let (result, n) = flights(&[submit(task(3)), third.assign("w", 9)], &|| Ok(()));
    result.unwrap();
    assert_eq!(n, 2);

    // A new task, and task 1's end again (from `running`, which it
    // left): the compare-and-set misses it. One flight, rolled back;
    // then two that find which task (and a read that it exists), rolled
    // back too. (Twice: the first prepares what the second finds
    // prepared.)
    let stale = [submit(task(4)), batch[2].clone()];
    let mut n = 0;
    for _ in 0..2 {
        let result;
        (result, n) = flights(&stale, &crate::Now);
        assert!(
            matches!(result, Err(StoreError::Conflict { id, expected: State::Running }) if id == tid(1)),
            "{result:?}"
        );
    }
    assert_eq!(n, 1 + 2 + 1);
    assert!(pg.get(tid(4)).unwrap().is_none(), "rolled back");
    assert_eq!(pg.get(tid(1)).unwrap().unwrap().status, first.status);
    // And a duplicate insert, caught by the insert's count.
    let (result, _) = flights(&[submit(task(5)), submit(task(2))], &crate::Now);
    assert!(
        matches!(result, Err(StoreError::Duplicate(id)) if id == tid(2)),
        "{result:?}"
    );
    assert!(pg.get(tid(5)).unwrap().is_none(), "rolled back");
}

/// Two write connections: a batch commits on the second while the first
/// has written its own and waits for its turn, and a batch whose turn is
/// refused is rolled back whole.
#[test]
fn a_second_write_connection_commits_while_the_first_waits_for_its_turn() {
    let pg = TempPg::new();
    let store = pg.store();
    assert_eq!(store.lanes(), 2);
    let (written_tx, written_rx) = std::sync::mpsc::channel();
    let (turn_tx, turn_rx) = std::sync::mpsc::channel::<Result<(), StoreError>>();
    std::thread::scope(|s| {
        let first = s.spawn(move || {
            let ready = || {
                written_tx.send(()).unwrap();
                turn_rx.recv().unwrap()
            };
            store.apply_when(&[submit(task(1))], &ready)
        });
        written_rx.recv().unwrap();
        // The first holds a connection, inside its transaction.
        store.apply(&[submit(task(2))]).unwrap();
        assert!(store.get(tid(2)).unwrap().is_some());
        turn_tx.send(Err(StoreError::Closed)).unwrap();
        assert!(matches!(first.join().unwrap(), Err(StoreError::Closed)));
    });
    assert!(store.get(tid(1)).unwrap().is_none(), "rolled back");
    // Both connections still write.
    store.apply(&[submit(task(1))]).unwrap();
    assert!(store.get(tid(1)).unwrap().is_some());
}

/// A schema at version 5 (an index on state and one on queue) is
/// upgraded in place to the one index on both: its tasks stay, and
/// listing by queue alone or by state still finds them.
#[test]
fn a_version_5_schema_gets_one_index_on_state_and_queue() {
    let store = TempPg::new();
    let schema = store.schema.clone();
    let mut emails = task(2);
    emails.spec.queue = "emails".into();
    store
        .apply(&[submit(task(1)), submit(emails.clone())])
        .unwrap();
    let mut store = store;
    drop(store.store.take());
    let mut c = postgres::Client::connect(&url(), postgres::NoTls).unwrap();
    c.batch_execute(&format!(
        "DROP INDEX {schema}.tasks_state_queue; \
         CREATE INDEX tasks_state ON {schema}.tasks (state); \
         CREATE INDEX tasks_queue ON {schema}.tasks (queue); \
         UPDATE {schema}.taskgrid_schema SET version = 5"
    ))
    .unwrap();
    store.store = Some(PostgresStore::open_in_schema(&url(), &schema).unwrap());
    let indexes: Vec<String> = c
        .query(
            "SELECT indexname::text FROM pg_indexes WHERE schemaname = $1 AND tablename = 'tasks' \
             ORDER BY 1",
            &[&schema],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(indexes, ["tasks_parent", "tasks_pkey", "tasks_state_queue"]);
    let by_queue = store
        .list(&crate::TaskQuery {
            queue: Some("emails".to_owned()),
            limit: 10,
            ..crate::TaskQuery::default()
        })
        .unwrap();
    assert_eq!(by_queue, [emails]);
    let by_state = store
        .list(&crate::TaskQuery {
            state: Some(State::Queued),
            limit: 10,
            ..crate::TaskQuery::default()
        })
        .unwrap();
    assert_eq!(by_state.len(), 2);
}

/// The group-commit writer on PostgreSQL, with its two lanes, fail-stop as
/// the runtime runs it: each task's submit, assignment and end come as
/// three batches, from several threads at once (each waiting for a task's
/// end before its next task, so that commits of different threads' tasks
/// go beside each other); every batch commits and every task ends once,
/// with one attempt. (Which groups may go beside which is tested on a
/// recording store in `writer`.)
#[test]
fn a_writer_with_two_lanes_commits_each_tasks_batches_in_order() {
    const THREADS: u128 = 4;
    const TASKS: u128 = 50;
    let schema = fresh_schema();
    let store = std::sync::Arc::new(PostgresStore::open_in_schema(&url(), &schema).unwrap());
    assert_eq!(store.lanes(), 2);
    let writer = std::sync::Arc::new(crate::Writer::try_spawn_fail_stop(store.clone()).unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (writer, tx) = (writer.clone(), tx.clone());
            s.spawn(move || {
                for i in 0..TASKS {
                    let rec = task(1 + t * TASKS + i);
                    let mut life = Life::of(&rec);
                    let batches = [
                        vec![submit(rec)],
                        vec![life.assign("w", 10)],
                        vec![life.to(
                            State::Succeeded,
                            11,
                            Some(AttemptOutcome::Succeeded),
                            |_| {},
                        )],
                    ];
                    let (ended_tx, ended) = std::sync::mpsc::channel();
                    for (k, batch) in batches.into_iter().enumerate() {
                        let (tx, ended_tx) = (tx.clone(), ended_tx.clone());
                        let done = move |r: Result<(), StoreError>| {
                            tx.send(r).unwrap();
                            if k == 2 {
                                ended_tx.send(()).unwrap();
                            }
                        };
                        writer.submit(batch, Some(Box::new(done))).unwrap();
                    }
                    ended.recv().unwrap();
                }
            });
        }
    });
    writer.flush().unwrap();
    drop(tx);
    let results: Vec<Result<(), StoreError>> = rx.iter().collect();
    assert_eq!(results.len(), (THREADS * TASKS * 3) as usize);
    assert!(
        results.iter().all(Result::is_ok),
        "{:?}",
        results.iter().find(|r| r.is_err())
    );
    let counts = store.count_by_state().unwrap();
    assert!(
        counts.contains(&(State::Succeeded, (THREADS * TASKS) as u64)),
        "{counts:?}"
    );
    for n in [1, TASKS, THREADS * TASKS] {
        let attempts = store.attempts(tid(n)).unwrap();
        assert_eq!(attempts.len(), 1, "task {n}: {attempts:?}");
        assert_eq!(attempts[0].outcome, Some(AttemptOutcome::Succeeded));
    }
    drop(writer);
    drop(store);
    drop_schema(&schema);
}
