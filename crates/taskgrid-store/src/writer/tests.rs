//! Tests of the group-commit writer, against a recording wrapper around
//! [`MemoryStore`] and against SQLite.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use taskgrid_core::{AttemptRecord, Change, OutputChunk, State, TaskId, TaskRecord};

use super::{Done, Writer};
use crate::conformance::{Life, TempSqlite, submit, task, tid};
use crate::{MemoryStore, Store, StoreError, TaskQuery, Turn};

/// A [`MemoryStore`] that records every `apply` call (the ids it touched and
/// whether it succeeded) and can hold the first call until released.
#[derive(Default)]
struct Recording {
    inner: MemoryStore,
    calls: Mutex<Vec<(Vec<TaskId>, bool)>>,
    /// Taken by the first `apply`, which signals `entered` and then waits
    /// for a message.
    gate: Mutex<Option<(Sender<()>, Receiver<()>)>>,
    /// Every `apply` panics.
    explodes: AtomicBool,
    /// Its [`Store::lanes`] (0: one).
    lanes: usize,
    /// Each `apply_when` as it began: the ids it touches and how many
    /// calls had committed by then.
    began: Mutex<Vec<(Vec<TaskId>, usize)>>,
    /// Told the number of `apply_when`s begun, at each, and `0` when one
    /// got its turn.
    begun: Mutex<Option<Sender<usize>>>,
    /// An `apply_when` with this task panics as it begins.
    explodes_on: Option<TaskId>,
    /// Its [`Store::quick_commits`].
    quick: bool,
    /// Its [`Store::next_commit_stalls`].
    stalls: bool,
}

impl Recording {
    /// A store whose commits a caller may make ([`Store::quick_commits`]).
    fn quick() -> Arc<Self> {
        Arc::new(Recording {
            quick: true,
            ..Recording::default()
        })
    }

    fn gated() -> (Arc<Self>, Receiver<()>, Sender<()>) {
        let (store, entered, release, _) = Self::gated_lanes(1);
        (store, entered, release)
    }

    fn calls(&self) -> Vec<(Vec<TaskId>, bool)> {
        self.calls.lock().unwrap().clone()
    }

    /// [`gated`](Recording::gated) with `lanes` lanes, telling each
    /// `apply_when` begun on the last receiver.
    fn gated_lanes(lanes: usize) -> (Arc<Self>, Receiver<()>, Sender<()>, Receiver<usize>) {
        let (entered_tx, entered_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel();
        let (begun_tx, begun_rx) = mpsc::channel();
        let store = Recording {
            gate: Mutex::new(Some((entered_tx, release_rx))),
            lanes,
            begun: Mutex::new(Some(begun_tx)),
            // Quick: a caller could commit, were the writer not busy.
            quick: true,
            ..Recording::default()
        };
        (Arc::new(store), entered_rx, release_tx, begun_rx)
    }
}

impl Recording {
    /// The first call to come here says so and waits to be released.
    fn wait_at_gate(&self) {
        // Taken apart from the wait: a group beside must not block on the
        // gate's lock while this one waits at it.
        let gate = self.gate.lock().unwrap().take();
        if let Some((entered, release)) = gate {
            entered.send(()).unwrap();
            release.recv().unwrap();
        }
    }
}

impl Store for Recording {
    fn apply(&self, changes: &[Change]) -> Result<(), StoreError> {
        assert!(!self.explodes.load(Ordering::SeqCst), "the store exploded");
        self.wait_at_gate();
        let result = self.inner.apply(changes);
        let ids = changes.iter().filter_map(Change::task_id).collect();
        self.calls.lock().unwrap().push((ids, result.is_ok()));
        result
    }
    fn lanes(&self) -> usize {
        self.lanes.max(1)
    }
    fn quick_commits(&self) -> bool {
        self.quick
    }
    fn next_commit_stalls(&self) -> bool {
        self.stalls
    }
    /// Records the call, waits at the gate if it is the first, then for
    /// its turn, then applies.
    fn apply_when(&self, changes: &[Change], turn: &dyn Turn) -> Result<(), StoreError> {
        let ids: Vec<TaskId> = changes.iter().filter_map(Change::task_id).collect();
        if let Some(id) = self.explodes_on {
            assert!(!ids.contains(&id), "the store exploded");
        }
        let committed = self.calls().iter().filter(|(_, ok)| *ok).count();
        let begun = {
            let mut began = self.began.lock().unwrap();
            began.push((ids, committed));
            began.len()
        };
        if let Some(tx) = &*self.begun.lock().unwrap() {
            let _ = tx.send(begun);
        }
        self.wait_at_gate();
        turn.wait()?;
        if let Some(tx) = &*self.begun.lock().unwrap() {
            let _ = tx.send(0);
        }
        self.apply(changes)
    }
    fn load_active(&self) -> Result<Vec<TaskRecord>, StoreError> {
        self.inner.load_active()
    }
    fn get(&self, id: TaskId) -> Result<Option<TaskRecord>, StoreError> {
        self.inner.get(id)
    }
    fn list(&self, q: &TaskQuery) -> Result<Vec<TaskRecord>, StoreError> {
        self.inner.list(q)
    }
    fn attempts(&self, id: TaskId) -> Result<Vec<AttemptRecord>, StoreError> {
        self.inner.attempts(id)
    }
    fn output(
        &self,
        id: TaskId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<(u64, OutputChunk)>, StoreError> {
        self.inner.output(id, after_seq, limit)
    }
    fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.inner.meta(key)
    }
    fn audit(
        &self,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<taskgrid_core::AuditEntry>, StoreError> {
        self.inner.audit(before, limit)
    }
    fn finished_before(
        &self,
        cutoff: taskgrid_core::Timestamp,
        after: Option<taskgrid_core::TaskId>,
        limit: usize,
    ) -> Result<crate::FinishedScan, StoreError> {
        self.inner.finished_before(cutoff, after, limit)
    }
    fn paused_queues(&self) -> Result<Vec<String>, StoreError> {
        self.inner.paused_queues()
    }
    fn count_by_state(&self) -> Result<Vec<(State, u64)>, StoreError> {
        self.inner.count_by_state()
    }
    fn schedules(&self) -> Result<Vec<taskgrid_core::ScheduleRecord>, StoreError> {
        self.inner.schedules()
    }
    fn fires(
        &self,
        schedule: &str,
        from: Option<taskgrid_core::Timestamp>,
        to: Option<taskgrid_core::Timestamp>,
        limit: usize,
    ) -> Result<Vec<taskgrid_core::FireRecord>, StoreError> {
        self.inner.fires(schedule, from, to, limit)
    }
}

type Reports = (
    Sender<(usize, Result<(), StoreError>)>,
    Receiver<(usize, Result<(), StoreError>)>,
);

/// A writer held inside its first commit (task 1, reported with tag 0 on
/// the returned channel) until `release` is sent: what is submitted
/// meanwhile queues up.
fn held_in_first_commit() -> (Arc<Recording>, Writer, Sender<()>, Reports) {
    held_in_first_commit_of(Writer::spawn)
}

/// [`held_in_first_commit`] with a writer that `spawn` starts.
fn held_in_first_commit_of(
    spawn: impl FnOnce(Arc<dyn Store>) -> Writer,
) -> (Arc<Recording>, Writer, Sender<()>, Reports) {
    let (store, entered, release) = Recording::gated();
    let writer = spawn(store.clone());
    let (tx, rx) = mpsc::channel();
    writer
        .submit(vec![submit(task(1))], report_to(&tx, 0))
        .unwrap();
    entered.recv().unwrap();
    (store, writer, release, (tx, rx))
}

/// Queues three batches tagged 1–3: task 2; task 3 with a conflicting
/// change of task 1 (queued, said to be running); task 4.
fn queue_good_bad_good(writer: &Writer, tx: &Sender<(usize, Result<(), StoreError>)>) {
    writer
        .submit(vec![submit(task(2))], report_to(tx, 1))
        .unwrap();
    let mut life = Life::of(&task(1));
    let mut bad = life.assign("w", 5);
    if let Change::Status { from, .. } = &mut bad {
        *from = State::Running; // task 1 is queued: a conflict
    }
    writer
        .submit(vec![submit(task(3)), bad], report_to(tx, 2))
        .unwrap();
    writer
        .submit(vec![submit(task(4))], report_to(tx, 3))
        .unwrap();
}

/// Asserts that `writer` refuses a batch (submitting task `n`) as closed.
fn assert_refuses(writer: &Writer, n: u128) {
    assert!(matches!(
        writer.submit(vec![submit(task(n))], None),
        Err(StoreError::Closed)
    ));
}

/// A `done` that sends `(tag, result)` on `tx`.
fn report_to(tx: &Sender<(usize, Result<(), StoreError>)>, tag: usize) -> Option<Done> {
    let tx = tx.clone();
    Some(Box::new(move |r| tx.send((tag, r)).unwrap()))
}

/// Concurrent submitters: every batch commits, in submission order, with
/// one lane and with two.
#[test]
fn concurrent_submitters_all_succeed_in_submission_order() {
    for lanes in [1, 2] {
        concurrent_submitters_in_order(lanes);
    }
}

fn concurrent_submitters_in_order(lanes: usize) {
    const THREADS: usize = 8;
    const TASKS: usize = 150;
    let store = Arc::new(Recording {
        lanes,
        ..Recording::default()
    });
    let writer = Arc::new(Writer::spawn(store.clone()));
    // Submitting under this lock makes the order of `submitted` the
    // submission order.
    let submitted = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::channel();
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (writer, submitted, tx) = (writer.clone(), submitted.clone(), tx.clone());
            thread::spawn(move || {
                for i in 0..TASKS {
                    let rec = task((t * TASKS + i) as u128);
                    let mut life = Life::of(&rec);
                    // Two batches per task: the second only applies after
                    // the first.
                    let mut order = submitted.lock().unwrap();
                    order.push(rec.id);
                    writer.submit(vec![submit(rec)], report_to(&tx, 0)).unwrap();
                    drop(order);
                    writer
                        .submit(vec![life.assign("w", 1)], report_to(&tx, 1))
                        .unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    writer.flush().unwrap();
    drop(tx);
    let results: Vec<_> = rx.iter().collect();
    assert_eq!(results.len(), THREADS * TASKS * 2);
    assert!(
        results.iter().all(|(_, r)| r.is_ok()),
        "every callback gets Ok"
    );

    let applied: Vec<TaskId> = store
        .calls()
        .into_iter()
        .inspect(|(_, ok)| assert!(ok))
        .flat_map(|(ids, _)| ids)
        .collect();
    let mut inserted = Vec::new();
    for id in &applied {
        if !inserted.contains(id) {
            inserted.push(*id);
        }
    }
    assert_eq!(
        inserted,
        *submitted.lock().unwrap(),
        "applied in submission order"
    );
    let counts = store.count_by_state().unwrap();
    assert!(
        counts.contains(&(State::Assigned, (THREADS * TASKS) as u64)),
        "{counts:?}"
    );
}

#[test]
fn a_bad_batch_fails_only_its_own_callback() {
    let (store, writer, release, (tx, rx)) = held_in_first_commit();
    queue_good_bad_good(&writer, &tx);
    release.send(()).unwrap();
    writer.flush().unwrap();
    drop(tx);

    let results: Vec<_> = rx.iter().collect();
    let tags: Vec<usize> = results.iter().map(|(t, _)| *t).collect();
    assert_eq!(tags, [0, 1, 2, 3], "callbacks in submission order");
    for (tag, result) in &results {
        match tag {
            2 => assert!(
                matches!(result, Err(StoreError::Conflict { .. })),
                "{result:?}"
            ),
            _ => assert!(result.is_ok(), "batch {tag}: {result:?}"),
        }
    }
    for (n, present) in [(1, true), (2, true), (3, false), (4, true)] {
        assert_eq!(store.get(tid(n)).unwrap().is_some(), present, "task {n}");
    }
    // One call alone, then the three queued batches in one (failed) group
    // commit, then each on its own.
    let calls: Vec<(usize, bool)> = store
        .calls()
        .into_iter()
        .map(|(ids, ok)| (ids.len(), ok))
        .collect();
    assert_eq!(
        calls,
        [(1, true), (4, false), (1, true), (2, false), (1, true)]
    );
}

/// Fail-stop: the failed commit's batches all get the error, nothing queued
/// after it is applied, and the writer refuses later batches.
#[test]
fn a_fail_stop_writer_applies_nothing_after_a_failed_commit() {
    let (store, writer, release, (tx, rx)) =
        held_in_first_commit_of(|s| Writer::try_spawn_fail_stop(s).unwrap());
    // Queued while the first commit is held: one group of three, the middle
    // one bad.
    queue_good_bad_good(&writer, &tx);
    release.send(()).unwrap();
    let results: Vec<_> = rx.iter().take(4).collect();
    let tags: Vec<usize> = results.iter().map(|(t, _)| *t).collect();
    assert_eq!(tags, [0, 1, 2, 3], "callbacks in submission order");
    assert!(results[0].1.is_ok());
    for (tag, result) in &results[1..] {
        assert!(result.is_err(), "batch {tag} must fail with its commit");
    }
    for (n, present) in [(1, true), (2, false), (3, false), (4, false)] {
        assert_eq!(store.get(tid(n)).unwrap().is_some(), present, "task {n}");
    }
    // Nothing is retried alone, and nothing more is taken.
    assert_eq!(store.calls().len(), 2);
    assert_refuses(&writer, 5);
    assert!(writer.flush().is_err());
}

#[test]
fn a_lazy_batch_rides_in_the_next_commit() {
    let (store, writer, release, (tx, rx)) = held_in_first_commit();
    let mut life = Life::of(&task(1));
    writer
        .submit_lazy(vec![life.assign("w", 1)], report_to(&tx, 1))
        .unwrap();
    writer
        .submit(vec![submit(task(2))], report_to(&tx, 2))
        .unwrap();
    release.send(()).unwrap();
    let tags: Vec<usize> = (0..3).map(|_| rx.recv().unwrap().0).collect();
    assert_eq!(tags, [0, 1, 2], "callbacks in submission order");
    let calls: Vec<Vec<TaskId>> = store.calls().into_iter().map(|(ids, _)| ids).collect();
    assert_eq!(
        calls,
        [vec![tid(1)], vec![tid(1), tid(2)]],
        "the lazy batch and the next one in one commit"
    );
}

#[test]
fn a_lazy_batch_alone_is_committed_after_the_window() {
    let store = Arc::new(Recording::default());
    let writer = Writer::spawn(store.clone());
    writer.submit(vec![submit(task(1))], None).unwrap();
    writer.flush().unwrap();
    let (tx, rx) = mpsc::channel();
    let mut life = Life::of(&task(1));
    let sent = std::time::Instant::now();
    writer
        .submit_lazy(vec![life.assign("w", 1)], report_to(&tx, 0))
        .unwrap();
    let (_, result) = rx.recv().unwrap();
    assert!(result.is_ok());
    assert!(
        sent.elapsed() >= super::LAZY_WINDOW,
        "it waited for company"
    );
    assert_eq!(
        store.get(tid(1)).unwrap().map(|r| r.status.state),
        Some(State::Assigned)
    );
}

#[test]
fn batches_with_windows_share_a_commit_that_starts_when_the_earliest_ends() {
    let store = Arc::new(Recording::default());
    let writer = Writer::spawn(store.clone());
    let (tx, rx) = mpsc::channel();
    let long = Duration::from_secs(600);
    writer
        .submit_within(vec![submit(task(1))], report_to(&tx, 0), long)
        .unwrap();
    writer
        .submit_within(
            vec![submit(task(2))],
            report_to(&tx, 1),
            Duration::from_millis(5),
        )
        .unwrap();
    // Were only the first batch's window counted, this would wait ten minutes.
    let within = Duration::from_secs(60);
    let tags: Vec<usize> = (0..2)
        .map(|_| {
            rx.recv_timeout(within)
                .expect("committed within the short window")
                .0
        })
        .collect();
    assert_eq!(tags, [0, 1]);
    let calls: Vec<Vec<TaskId>> = store.calls().into_iter().map(|(ids, _)| ids).collect();
    assert_eq!(calls, [vec![tid(1), tid(2)]], "one commit for both");
}

/// A writer whose thread (or, with lanes, one of its lanes) panics
/// refuses batches instead of hanging.
#[test]
fn a_dead_writer_thread_refuses_batches_instead_of_hanging() {
    for lanes in [1, 2] {
        let store = Arc::new(Recording {
            explodes: AtomicBool::new(true),
            lanes,
            ..Recording::default()
        });
        let writer = Writer::spawn(store);
        let (tx, rx) = mpsc::channel();
        writer
            .submit(vec![submit(task(1))], report_to(&tx, 0))
            .unwrap();
        drop(tx);
        assert!(
            rx.recv().is_err(),
            "the batch's callback is dropped, not called"
        );
        assert!(matches!(writer.flush(), Err(StoreError::Closed)));
        assert!(matches!(
            writer.submit(vec![submit(task(2))], None),
            Err(StoreError::Closed)
        ));
    }
}

#[test]
fn shutdown_drains_then_refuses() {
    let store = Arc::new(MemoryStore::new());
    let writer = Writer::spawn(store.clone());
    let done = Arc::new(AtomicUsize::new(0));
    for n in 0..500 {
        let done = done.clone();
        let cb: Done = Box::new(move |r| {
            r.unwrap();
            done.fetch_add(1, Ordering::SeqCst);
        });
        writer.submit(vec![submit(task(n))], Some(cb)).unwrap();
    }
    writer.shutdown();
    assert_eq!(done.load(Ordering::SeqCst), 500);
    assert_eq!(
        store
            .list(&TaskQuery {
                limit: 1_000,
                ..TaskQuery::default()
            })
            .unwrap()
            .len(),
        500
    );

    assert!(matches!(
        writer.submit(vec![submit(task(1_000))], None),
        Err(StoreError::Closed)
    ));
    assert!(matches!(writer.flush(), Err(StoreError::Closed)));
    writer.shutdown(); // idempotent
    drop(writer); // and so is the drop after it
    assert!(store.get(tid(1_000)).unwrap().is_none());
}

#[test]
fn dropping_the_writer_commits_what_was_submitted() {
    let store = Arc::new(MemoryStore::new());
    let writer = Writer::spawn(store.clone());
    writer.submit(vec![submit(task(1))], None).unwrap();
    drop(writer);
    assert!(store.get(tid(1)).unwrap().is_some());
}

#[test]
fn a_panicking_callback_does_not_stop_the_writer() {
    let store = Arc::new(MemoryStore::new());
    let writer = Writer::spawn(store.clone());
    writer
        .submit(
            vec![submit(task(1))],
            Some(Box::new(|_| panic!("callback bug"))),
        )
        .unwrap();
    writer.flush().unwrap();
    writer.submit(vec![submit(task(2))], None).unwrap();
    writer.flush().unwrap();
    assert!(store.get(tid(2)).unwrap().is_some());
}

#[test]
fn group_commit_to_sqlite() {
    let store = Arc::new(TempSqlite::new());
    let writer = Arc::new(Writer::spawn(store.clone()));
    let (tx, rx) = mpsc::channel();
    let handles: Vec<_> = (0..4u128)
        .map(|t| {
            let (writer, tx) = (writer.clone(), tx.clone());
            thread::spawn(move || {
                for i in 0..100 {
                    let rec = task(t * 1_000 + i);
                    let mut life = Life::of(&rec);
                    let changes = vec![submit(rec), life.assign("w", 1)];
                    writer.submit(changes, report_to(&tx, 0)).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    writer.flush().unwrap();
    drop(tx);
    assert_eq!(rx.iter().filter(|(_, r)| r.is_ok()).count(), 400);
    let counts = store.count_by_state().unwrap();
    assert!(counts.contains(&(State::Assigned, 400)), "{counts:?}");
}

/// A writer with two lanes whose first commit (task 1, tag 0) is held
/// inside the store until `release` is sent, and the receiver of each
/// `apply_when` begun.
fn held_in_first_lane(
    fail_stop: bool,
) -> (Arc<Recording>, Writer, Sender<()>, Reports, Receiver<usize>) {
    let (store, entered, release, begun) = Recording::gated_lanes(2);
    let writer = if fail_stop {
        Writer::try_spawn_fail_stop(store.clone()).unwrap()
    } else {
        Writer::spawn(store.clone())
    };
    let (tx, rx) = mpsc::channel();
    writer
        .submit(vec![submit(task(1))], report_to(&tx, 0))
        .unwrap();
    entered.recv().unwrap();
    assert_eq!(begun.recv().unwrap(), 1);
    (store, writer, release, (tx, rx), begun)
}

/// Waits (yielding) until the writer's lanes count a group held back by
/// `count` of their waits (for an overlapping group, for its turn), then
/// checks that no `apply_when` got further meanwhile; fails naming
/// `what` after 30 s.
fn assert_held(
    writer: &Writer,
    begun: &Receiver<usize>,
    count: impl Fn((usize, usize)) -> usize,
    what: &str,
) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while count(writer.queue.flight.waits()) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "never saw a group waiting {what}"
        );
        thread::yield_now();
    }
    assert!(
        begun.try_recv().is_err(),
        "a group went on while one waited {what}"
    );
}

/// The next `apply_when` begun, skipping those that got their turn.
fn next_begun(begun: &Receiver<usize>) -> usize {
    begun.iter().find(|n| *n != 0).unwrap()
}

/// With two lanes, a group of other tasks is written while the first is
/// still in the store, and commits (and is reported) only after it.
#[test]
fn a_second_lane_writes_other_tasks_beside_the_first_and_commits_after_it() {
    for fail_stop in [false, true] {
        let (store, writer, release, (tx, rx), begun) = held_in_first_lane(fail_stop);
        writer
            .submit(vec![submit(task(2))], report_to(&tx, 1))
            .unwrap();
        assert_eq!(begun.recv().unwrap(), 2, "the second group begins beside");
        assert_eq!(
            store.began.lock().unwrap()[1],
            (vec![tid(2)], 0),
            "while the first has not committed"
        );
        // Blocked until the first commits: its turn has not come.
        assert_held(&writer, &begun, |(_, turn)| turn, "for its turn");
        release.send(()).unwrap();
        let tags: Vec<usize> = rx
            .iter()
            .take(2)
            .map(|(t, r)| {
                assert!(r.is_ok());
                t
            })
            .collect();
        assert_eq!(tags, [0, 1], "reported in submission order");
        let committed: Vec<Vec<TaskId>> = store.calls().into_iter().map(|(ids, _)| ids).collect();
        assert_eq!(
            committed,
            [vec![tid(1)], vec![tid(2)]],
            "committed in submission order"
        );
        writer.flush().unwrap();
    }
}

/// A group that touches a task of a group in flight, or something shared,
/// begins only once that group has committed.
#[test]
fn a_group_that_overlaps_one_in_flight_waits_for_its_commit() {
    let meta = Change::Meta {
        key: "k".into(),
        value: "v".into(),
    };
    let overlapping = [
        vec![Life::of(&task(1)).assign("w", 5)],
        vec![submit(task(2)), meta],
    ];
    for second in overlapping {
        let (store, writer, release, (tx, rx), begun) = held_in_first_lane(true);
        writer.submit(second, report_to(&tx, 1)).unwrap();
        // Taken from the queue and held back: the leader waits for the
        // group in flight to finish before giving it a ticket.
        assert_held(
            &writer,
            &begun,
            |(overlap, _)| overlap,
            "for one it overlaps",
        );
        release.send(()).unwrap();
        assert_eq!(next_begun(&begun), 2);
        let results: Vec<_> = rx.iter().take(2).collect();
        assert!(results.iter().all(|(_, r)| r.is_ok()), "{results:?}");
        assert_eq!(
            store.began.lock().unwrap()[1].1,
            1,
            "began after the first committed"
        );
    }
}

/// Fail-stop with two lanes: when the first group fails, the one written
/// beside it is rolled back and reported closed, and nothing more is
/// taken.
#[test]
fn a_failed_group_rolls_back_the_one_beside_it_under_fail_stop() {
    let (store, entered, release, begun) = Recording::gated_lanes(2);
    let writer = Writer::try_spawn_fail_stop(store.clone()).unwrap();
    let (tx, rx) = mpsc::channel();
    // Task 9 was never submitted: its assignment fails.
    writer
        .submit(vec![Life::of(&task(9)).assign("w", 5)], report_to(&tx, 0))
        .unwrap();
    entered.recv().unwrap();
    writer
        .submit(vec![submit(task(2))], report_to(&tx, 1))
        .unwrap();
    assert_eq!(next_begun(&begun), 1);
    assert_eq!(next_begun(&begun), 2, "the second group begins beside");
    release.send(()).unwrap();
    let results: Vec<_> = rx.iter().take(2).collect();
    assert!(
        matches!(results[0], (0, Err(StoreError::NotFound(_)))),
        "{results:?}"
    );
    assert!(
        matches!(results[1], (1, Err(StoreError::Closed))),
        "{results:?}"
    );
    assert!(store.get(tid(2)).unwrap().is_none(), "rolled back");
    assert_refuses(&writer, 3);
}

/// With two lanes, a later group whose lane panics stops the writer, but
/// the earlier group in flight still commits and is reported.
#[test]
fn a_later_lane_that_panics_leaves_the_earlier_group_to_commit() {
    let (entered_tx, entered) = mpsc::channel();
    let (release, release_rx) = mpsc::channel();
    let store = Arc::new(Recording {
        gate: Mutex::new(Some((entered_tx, release_rx))),
        lanes: 2,
        explodes_on: Some(tid(2)),
        ..Recording::default()
    });
    let writer = Writer::spawn(store.clone());
    let (tx, rx) = mpsc::channel();
    writer
        .submit(vec![submit(task(1))], report_to(&tx, 0))
        .unwrap();
    entered.recv().unwrap();
    writer
        .submit(vec![submit(task(2))], report_to(&tx, 1))
        .unwrap();
    // The second group's lane panics and stops the writer.
    while writer.submit(Vec::new(), None).is_ok() {
        thread::yield_now();
    }
    release.send(()).unwrap();
    drop(tx);
    let results: Vec<_> = rx.iter().collect();
    assert!(matches!(results[..], [(0, Ok(()))]), "{results:?}");
    assert!(store.get(tid(1)).unwrap().is_some());
    assert!(store.get(tid(2)).unwrap().is_none());
}

/// A callback that drops the writer, on one of its lanes, does not wait
/// for that lane to end.
#[test]
fn dropping_the_writer_from_a_lanes_callback_does_not_hang() {
    let store = Arc::new(Recording {
        lanes: 2,
        ..Recording::default()
    });
    let writer = Arc::new(Mutex::new(Some(Writer::spawn(store.clone()))));
    let (tx, rx) = mpsc::channel();
    let held = writer.clone();
    let done: Done = Box::new(move |r| {
        let dropped = held.lock().unwrap().take();
        drop(dropped);
        tx.send(r).unwrap();
    });
    let submitted = writer
        .lock()
        .unwrap()
        .as_ref()
        .unwrap()
        .submit(vec![submit(task(1))], Some(done));
    submitted.unwrap();
    // Bounded so that the bug fails the test instead of hanging it.
    let result = rx.recv_timeout(Duration::from_secs(30));
    assert!(matches!(result, Ok(Ok(()))), "{result:?}");
    assert!(store.get(tid(1)).unwrap().is_some());
}

/// Runs `f` on a thread of its own and returns what it returns; fails the
/// test if that takes over 30 s (a writer waiting for itself).
fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("{what} did not return"))
}

/// Waits until `writer`'s thread sleeps with nothing to do (so that the
/// next `submit_then_help` leaves its batch); panics after 30 s.
fn until_idle(writer: &Writer) {
    let limit = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            std::time::Instant::now() < limit,
            "the writer thread never slept"
        );
        {
            let st = super::lock(&writer.queue.state);
            if matches!(st.thread, super::Thread::Idle) && st.jobs.is_empty() {
                return;
            }
        }
        thread::yield_now();
    }
}

/// A writer that `spawn` starts over a store with quick commits, once its
/// thread sleeps: the next `submit_then_help` is left for its caller.
fn idle_quick_writer(spawn: impl FnOnce(Arc<dyn Store>) -> Writer) -> (Arc<Recording>, Writer) {
    let store = Recording::quick();
    let writer = spawn(store.clone());
    until_idle(&writer);
    (store, writer)
}

/// A `done` that sends `(tag, result, the thread it ran on)` on `tx`.
fn report_thread_to(
    tx: &Sender<(usize, Result<(), StoreError>, thread::ThreadId)>,
    tag: usize,
) -> Option<Done> {
    let tx = tx.clone();
    Some(Box::new(move |r| {
        tx.send((tag, r, thread::current().id())).unwrap();
    }))
}

/// A batch left for its caller is committed by the caller's `help`, on
/// the caller's thread, together with what others queued meanwhile; until
/// then the writer thread leaves it alone.
#[test]
fn a_helping_caller_commits_its_batch_and_what_queued_behind_it() {
    let (store, writer) = idle_quick_writer(Writer::spawn);
    let (tx, rx) = mpsc::channel();
    writer
        .submit_then_help(vec![submit(task(1))], report_thread_to(&tx, 0))
        .unwrap();
    // Another thread's batch, queued behind it (no wake-up: it waits for
    // the helper too).
    thread::scope(|s| {
        s.spawn(|| {
            writer
                .submit(vec![submit(task(2))], report_thread_to(&tx, 1))
                .unwrap();
        });
    });
    assert!(rx.try_recv().is_err(), "nothing committed before help");
    assert!(store.calls().is_empty());
    writer.help();
    let me = thread::current().id();
    for tag in [0, 1] {
        let (t, r, on) = rx.try_recv().unwrap();
        assert_eq!((t, r.is_ok(), on), (tag, true, me), "batch {tag}");
    }
    // One commit held both, in submission order.
    assert_eq!(store.calls(), [(vec![tid(1), tid(2)], true)]);
    // A second help has nothing to do; the writer thread commits later
    // batches as before.
    writer.help();
    writer
        .submit(vec![submit(task(3))], report_thread_to(&tx, 2))
        .unwrap();
    let (t, r, on) = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!((t, r.is_ok()), (2, true));
    assert_ne!(on, me, "committed by the writer thread");
}

/// The caller commits only where the writer thread sleeps and the store's
/// commits are quick; otherwise `submit_then_help` is a plain submit, the
/// thread commits, and `help` has nothing to do.
#[test]
fn a_busy_writer_or_a_slow_store_commits_on_the_writer_thread() {
    // Busy: held in its first commit.
    let (store, writer, release, (tx, rx)) = held_in_first_commit();
    writer
        .submit_then_help(vec![submit(task(2))], report_to(&tx, 1))
        .unwrap();
    writer.help();
    assert!(store.get(tid(2)).unwrap().is_none(), "help made no commit");
    release.send(()).unwrap();
    let tags: Vec<usize> = rx
        .iter()
        .take(2)
        .map(|(t, r)| r.map(|()| t).unwrap())
        .collect();
    assert_eq!(tags, [0, 1]);
    // Slow commits, lanes, or a next commit that would stall: never the
    // caller's.
    for (lanes, quick, stalls) in [(1, false, false), (2, true, false), (1, true, true)] {
        let store = Arc::new(Recording {
            lanes,
            quick,
            stalls,
            ..Recording::default()
        });
        let writer = Writer::spawn(store.clone());
        until_idle(&writer);
        let (tx, rx) = mpsc::channel();
        writer
            .submit_then_help(vec![submit(task(1))], report_thread_to(&tx, 0))
            .unwrap();
        let (_, r, on) = rx.recv_timeout(Duration::from_secs(30)).unwrap();
        assert!(r.is_ok());
        assert_ne!(
            on,
            thread::current().id(),
            "lanes {lanes}, quick {quick}, stalls {stalls}"
        );
        writer.help();
    }
}

/// A batch whose caller never helps is committed at shutdown, and a flush
/// on the caller's thread helps first instead of waiting for itself.
#[test]
fn a_batch_left_for_help_is_committed_by_flush_or_shutdown() {
    let (store, writer) = idle_quick_writer(Writer::spawn);
    let writer = Arc::new(writer);
    let w = Arc::clone(&writer);
    within("a flush on the claimer's thread", move || {
        w.submit_then_help(vec![submit(task(1))], None).unwrap();
        w.flush()
    })
    .unwrap();
    assert!(store.get(tid(1)).unwrap().is_some());

    let writer = Arc::new(Writer::spawn(store.clone()));
    until_idle(&writer);
    let (tx, rx) = mpsc::channel();
    // Left by a thread that ends without helping.
    thread::scope(|s| {
        s.spawn(|| {
            writer
                .submit_then_help(vec![submit(task(2))], report_to(&tx, 0))
                .unwrap();
        });
    });
    assert!(rx.try_recv().is_err());
    let w = Arc::clone(&writer);
    within("a shutdown with a claim never helped", move || w.shutdown());
    let (tag, r) = rx.try_recv().unwrap();
    assert_eq!((tag, r.is_ok()), (0, true));
    assert!(store.get(tid(2)).unwrap().is_some());
}

/// A helped commit that fails stops a fail-stop writer as the thread's
/// would: its batch and those behind it fail, later ones are refused.
#[test]
fn a_failed_helped_commit_stops_a_fail_stop_writer() {
    let (store, writer) = idle_quick_writer(|s| Writer::try_spawn_fail_stop(s).unwrap());
    let (tx, rx) = mpsc::channel();
    let mut bad = Life::of(&task(1)).assign("w", 5);
    if let Change::Status { from, .. } = &mut bad {
        *from = State::Running; // task 1 does not exist
    }
    writer
        .submit_then_help(vec![submit(task(2)), bad], report_to(&tx, 0))
        .unwrap();
    writer.help();
    let (tag, r) = rx.try_recv().unwrap();
    assert_eq!(tag, 0);
    assert!(r.is_err(), "the bad batch fails");
    assert!(store.get(tid(2)).unwrap().is_none(), "nothing of it stays");
    assert_refuses(&writer, 3);
}

/// A store that panics in a helped commit stops the writer as a panic on
/// its thread does (later batches refused, the thread ends instead of
/// waiting for the helper) and the panic stays there; a caller that
/// unwinds before committing leaves its batch to the thread.
#[test]
fn a_panic_in_or_before_help_leaves_no_writer_waiting() {
    let (store, writer) = idle_quick_writer(Writer::spawn);
    let (tx, rx) = mpsc::channel();
    let caller = thread::scope(|s| {
        let caller = s.spawn(|| {
            /// Helps as it drops, like the runtime's engine guard.
            struct HelpOnDrop<'a>(&'a Writer);
            impl Drop for HelpOnDrop<'_> {
                fn drop(&mut self) {
                    self.0.help();
                }
            }
            let _help = HelpOnDrop(&writer);
            writer
                .submit_then_help(vec![submit(task(1))], report_thread_to(&tx, 0))
                .unwrap();
            std::panic::resume_unwind(Box::new("the caller fails before it helps"));
        });
        let id = caller.thread().id();
        caller.join().unwrap_err();
        id
    });
    let (tag, r, on) = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!((tag, r.is_ok()), (0, true));
    assert_ne!(
        on, caller,
        "the thread committed it, not the unwinding caller"
    );
    assert!(store.get(tid(1)).unwrap().is_some());

    until_idle(&writer);
    let (tx, rx) = mpsc::channel();
    writer
        .submit_then_help(vec![submit(task(2))], report_to(&tx, 1))
        .unwrap();
    drop(tx);
    store.explodes.store(true, Ordering::SeqCst);
    writer.help();
    assert!(rx.recv().is_err(), "its callback was dropped: closed");
    assert_refuses(&writer, 3);
    // The thread ended instead of waiting for a helper.
    within("a shutdown after the helper's panic", move || {
        writer.shutdown()
    });
}

/// A helped commit takes at most 64 changes: a large batch queued behind
/// the caller's is the writer thread's. A `done` callback of a helped
/// commit may shut the writer down without waiting for itself.
#[test]
fn a_helped_commit_stays_small_and_may_shut_the_writer_down() {
    let (store, writer) = idle_quick_writer(Writer::spawn);
    let (tx, rx) = mpsc::channel();
    let writer = Arc::new(writer);
    let shut = {
        let writer = Arc::clone(&writer);
        let tx = tx.clone();
        Box::new(move |r: Result<(), StoreError>| {
            tx.send((0, r, thread::current().id())).unwrap();
            writer.shutdown();
        })
    };
    writer
        .submit_then_help(vec![submit(task(1))], Some(shut))
        .unwrap();
    let large: Vec<Change> = (2..=70).map(|n| submit(task(n))).collect();
    writer.submit(large, report_thread_to(&tx, 1)).unwrap();
    writer.help();
    let me = thread::current().id();
    let (tag, r, on) = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!((tag, r.is_ok(), on), (0, true, me));
    // The shutdown the callback began still commits the large batch, on
    // the writer thread.
    let (tag, r, on) = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!((tag, r.is_ok()), (1, true));
    assert_ne!(on, me);
    assert_eq!(store.calls().len(), 2, "two commits: 1 change, then 69");
    assert_refuses(&writer, 71);
}
