//! The conformance checks of schedules and their fires.

use taskgrid_core::{Change, FireOutcome, FireRecord, Recurrence, ScheduleRecord, State};

use crate::conformance::fixtures::{
    Life, delete_schedule, fire, fired, plain_schedule, schedule, submit, task, tid, ts, upsert,
};
use crate::{Store, StoreError};

/// A realistic instant (late 2023, in microseconds): fires are scheduled
/// around it.
const T0: u64 = 1_700_000_000_000_000;

fn names(store: &dyn Store) -> Vec<String> {
    store
        .schedules()
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect()
}

fn named(store: &dyn Store, name: &str) -> Option<ScheduleRecord> {
    store
        .schedules()
        .unwrap()
        .into_iter()
        .find(|s| s.name == name)
}

fn all_fires(store: &dyn Store, schedule: &str) -> Vec<FireRecord> {
    store.fires(schedule, None, None, 1_000).unwrap()
}

/// Schedules read back exactly as written (every field), in name order
/// (byte order, as Rust orders strings); a schedule is replaced by name
/// and deleted by name (an unknown name is no error), and the schedule
/// changes of one batch apply in order.
pub fn schedules_round_trip_in_name_order(store: &dyn Store) {
    assert!(store.schedules().unwrap().is_empty());
    let full = schedule("nightly");
    let mut written = vec![full.clone()];
    written.extend(
        ["a_1", "B", "a.1", "a:1", "a-1", "a"]
            .into_iter()
            .map(plain_schedule),
    );
    let changes: Vec<Change> = written.iter().cloned().map(upsert).collect();
    store.apply(&changes).unwrap();
    let mut want = written.clone();
    want.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(store.schedules().unwrap(), want);
    assert_eq!(
        names(store),
        ["B", "a", "a-1", "a.1", "a:1", "a_1", "nightly"],
        "byte order, not a locale's"
    );

    // Replaced by name: the last record wins, within a batch too.
    let mut first_edit = full.clone();
    first_edit.note = Some("first edit".into());
    let mut edited = full.clone();
    edited.spec.recurrence = Recurrence::Cron("*/5 * * * *".into());
    edited.spec.tz = None;
    edited.paused = false;
    edited.note = None;
    edited.updated_at = ts(T0);
    edited.state.runs = 4;
    edited.state.buffered.clear();
    edited.state.active.clear();
    store
        .apply(&[upsert(first_edit), upsert(edited.clone())])
        .unwrap();
    assert_eq!(named(store, "nightly"), Some(edited));
    assert_eq!(store.schedules().unwrap().len(), 7);

    // Deleted by name; an unknown name is no error.
    store
        .apply(&[delete_schedule("a"), delete_schedule("never-was")])
        .unwrap();
    assert_eq!(names(store), ["B", "a-1", "a.1", "a:1", "a_1", "nightly"]);

    // In batch order: deleted then created again leaves the new record;
    // created then deleted leaves nothing.
    let mut recreated = plain_schedule("B");
    recreated.note = Some("recreated".into());
    store
        .apply(&[
            delete_schedule("B"),
            upsert(recreated.clone()),
            upsert(plain_schedule("short-lived")),
            delete_schedule("short-lived"),
        ])
        .unwrap();
    assert_eq!(named(store, "B"), Some(recreated));
    assert_eq!(named(store, "short-lived"), None);
    assert_eq!(store.schedules().unwrap().len(), 6);
}

/// Deleting a schedule deletes its fires and no other schedule's; in a
/// batch, a fire before the delete goes with it and one after it stays
/// (fires need no stored schedule).
pub fn deleting_a_schedule_removes_its_fires(store: &dyn Store) {
    store
        .apply(&[
            upsert(plain_schedule("a")),
            upsert(plain_schedule("b")),
            fired(fire("a", T0 + 100)),
            fired(fire("a", T0 + 200)),
            fired(fire("b", T0 + 100)),
        ])
        .unwrap();
    assert_eq!(all_fires(store, "a").len(), 2);
    store.apply(&[delete_schedule("a")]).unwrap();
    assert!(all_fires(store, "a").is_empty());
    assert_eq!(all_fires(store, "b"), [fire("b", T0 + 100)]);
    assert_eq!(names(store), ["b"]);

    // Created again, it starts with no history: its old times are free.
    store
        .apply(&[upsert(plain_schedule("a")), fired(fire("a", T0 + 100))])
        .unwrap();
    assert_eq!(all_fires(store, "a"), [fire("a", T0 + 100)]);

    store
        .apply(&[
            fired(fire("a", T0 + 300)),
            delete_schedule("a"),
            fired(fire("a", T0 + 400)),
        ])
        .unwrap();
    assert_eq!(all_fires(store, "a"), [fire("a", T0 + 400)]);
    assert_eq!(names(store), ["b"]);

    // A fire of a schedule never stored is recorded all the same.
    store.apply(&[fired(fire("ghost", T0))]).unwrap();
    assert_eq!(all_fires(store, "ghost"), [fire("ghost", T0)]);
    assert_eq!(names(store), ["b"]);
}

/// Fires read back exactly as written (every field, every outcome),
/// newest scheduled time first, within inclusive `from`/`to` bounds, at
/// most `limit`, and only the named schedule's.
pub fn fires_are_newest_first_within_bounds(store: &dyn Store) {
    let mut missed = fire("s", T0 + 100);
    missed.outcome = FireOutcome::Missed;
    missed.until = Some(ts(T0 + 400));
    missed.count = 4;
    missed.reason = Some("4 fire(s) due before the catch-up window".into());
    let mut submitted = fire("s", T0 + 500);
    submitted.outcome = FireOutcome::Submitted;
    submitted.task = Some(tid(5));
    submitted.reason = None;
    submitted.manual = true;
    let skipped = fire("s", T0 + 600);
    let mut failed = fire("s", T0 + 700);
    failed.outcome = FireOutcome::Failed;
    failed.reason = Some("queue \"default\" is full: \u{1f980}\n".into());

    assert!(all_fires(store, "s").is_empty());
    // Written out of order, over two batches, beside other schedules'.
    store
        .apply(&[
            fired(submitted.clone()),
            fired(fire("t", T0 + 550)),
            fired(missed.clone()),
            fired(fire("s2", T0 + 800)),
        ])
        .unwrap();
    store
        .apply(&[fired(failed.clone()), fired(skipped.clone())])
        .unwrap();
    let all = vec![failed, skipped, submitted, missed];
    assert_eq!(all_fires(store, "s"), all);

    let fires = |from: Option<u64>, to: Option<u64>, limit: usize| {
        store.fires("s", from.map(ts), to.map(ts), limit).unwrap()
    };
    assert_eq!(fires(None, None, 2), all[..2]);
    assert!(fires(None, None, 0).is_empty());
    assert_eq!(
        fires(Some(T0 + 500), None, 10),
        all[..3],
        "from is inclusive"
    );
    assert_eq!(fires(None, Some(T0 + 600), 10), all[1..], "to is inclusive");
    assert_eq!(fires(Some(T0 + 500), Some(T0 + 600), 10), all[1..3]);
    assert_eq!(fires(None, Some(T0 + 600), 2), all[1..3], "newest in range");
    assert_eq!(fires(Some(T0 + 600), Some(T0 + 600), 10), all[1..2]);
    assert!(fires(Some(T0 + 501), Some(T0 + 599), 10).is_empty());
    assert!(fires(Some(T0 + 701), None, 10).is_empty());
    assert!(fires(None, Some(T0 + 99), 10).is_empty());
    assert!(
        fires(Some(T0 + 700), Some(T0 + 100), 10).is_empty(),
        "a reversed range is empty"
    );
    assert_eq!(all_fires(store, "t"), [fire("t", T0 + 550)]);
    assert_eq!(all_fires(store, "s2"), [fire("s2", T0 + 800)]);
    assert!(all_fires(store, "").is_empty());
    assert!(all_fires(store, "S").is_empty());
}

/// A second fire of one schedule at one scheduled time fails the whole
/// batch with `Invalid`, naming the schedule and the time: nothing of the
/// batch is written (a task's submit and schedule upserts included),
/// whether the first fire was stored before or is in the same batch.
pub fn a_duplicate_fire_fails_the_whole_batch(store: &dyn Store) {
    let name = "nightly-report";
    let original = fire(name, T0 + 100);
    store
        .apply(&[upsert(plain_schedule(name)), fired(original.clone())])
        .unwrap();
    let schedules = store.schedules().unwrap();

    let mut again = fire(name, T0 + 100);
    again.outcome = FireOutcome::Submitted;
    again.task = Some(tid(1));
    again.fired_at = ts(T0 + 150);
    let mut edited = plain_schedule(name);
    edited.state.runs = 1;
    edited.state.last_task = Some(tid(1));
    let err = store
        .apply(&[
            submit(task(1)),
            upsert(edited),
            upsert(plain_schedule("new")),
            delete_schedule("never-was"),
            fired(fire(name, T0 + 200)),
            fired(again),
        ])
        .unwrap_err();
    match &err {
        StoreError::Invalid(msg) => {
            assert!(msg.contains(name), "the schedule is named: {msg}");
            assert!(
                msg.contains(&(T0 + 100).to_string()),
                "the time is named: {msg}"
            );
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
    assert_eq!(store.get(tid(1)).unwrap(), None, "the submit is gone");
    assert_eq!(
        store.schedules().unwrap(),
        schedules,
        "the upserts are gone"
    );
    assert_eq!(all_fires(store, name), std::slice::from_ref(&original));

    // Both in one batch, the duplicate before a submit.
    let err = store
        .apply(&[
            fired(fire(name, T0 + 300)),
            fired(fire(name, T0 + 300)),
            submit(task(2)),
        ])
        .unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");
    assert_eq!(store.get(tid(2)).unwrap(), None);
    assert_eq!(all_fires(store, name), [original]);
    assert!(
        store.count_by_state().unwrap().iter().all(|(_, n)| *n == 0),
        "no task was written"
    );

    // The same time is no duplicate for another schedule, nor once the
    // schedule and its fires were deleted.
    store.apply(&[fired(fire("other", T0 + 100))]).unwrap();
    store
        .apply(&[delete_schedule(name), fired(fire(name, T0 + 100))])
        .unwrap();
    assert_eq!(all_fires(store, name), [fire(name, T0 + 100)]);

    // A manual fire (trigger, backfill) at a recurrence fire's time is
    // another fire; it reads first at that time; a second is a duplicate.
    let mut manual = fire(name, T0 + 100);
    manual.manual = true;
    store.apply(&[fired(manual.clone())]).unwrap();
    assert_eq!(
        all_fires(store, name),
        [manual.clone(), fire(name, T0 + 100)]
    );
    let err = store.apply(&[fired(manual)]).unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");
}

/// A batch with schedule changes that fails on something else (an
/// unknown task) leaves every schedule and fire as it was, a deleted one
/// included.
pub fn failed_batch_keeps_schedules_and_fires(store: &dyn Store) {
    let mut nightly = schedule("nightly");
    nightly.paused = false;
    store
        .apply(&[
            upsert(nightly),
            upsert(plain_schedule("hourly")),
            fired(fire("nightly", T0)),
            fired(fire("nightly", T0 + 1)),
            fired(fire("hourly", T0)),
        ])
        .unwrap();
    let snapshot = |store: &dyn Store| {
        (
            store.schedules().unwrap(),
            all_fires(store, "nightly"),
            all_fires(store, "hourly"),
            all_fires(store, "new"),
        )
    };
    let before = snapshot(store);
    let mut edited = plain_schedule("hourly");
    edited.paused = true;
    let err = store
        .apply(&[
            delete_schedule("nightly"),
            upsert(edited),
            upsert(plain_schedule("new")),
            fired(fire("hourly", T0 + 5)),
            fired(fire("new", T0)),
            fired(fire("nightly", T0 + 2)),
            Change::Checkpoint {
                id: tid(9),
                data: "{}".into(),
            },
        ])
        .unwrap_err();
    assert!(
        matches!(err, StoreError::NotFound(id) if id == tid(9)),
        "{err:?}"
    );
    assert_eq!(snapshot(store), before);
}

/// A fire and the submit of its task in one batch (in either order, with
/// the schedule's new state) are all written together.
pub fn a_fire_commits_with_its_tasks_submit(store: &dyn Store) {
    let hourly = plain_schedule("hourly");
    store.apply(&[upsert(hourly.clone())]).unwrap();

    let mut first = fire("hourly", T0);
    first.outcome = FireOutcome::Submitted;
    first.task = Some(tid(1));
    first.reason = None;
    let mut after = hourly.clone();
    after.state.cursor = ts(T0);
    after.state.runs = 1;
    after.state.active = vec![tid(1)];
    after.state.last_task = Some(tid(1));
    store
        .apply(&[submit(task(1)), fired(first.clone()), upsert(after.clone())])
        .unwrap();
    assert_eq!(store.get(tid(1)).unwrap(), Some(task(1)));
    assert_eq!(all_fires(store, "hourly"), [first.clone()]);
    assert_eq!(store.schedules().unwrap(), [after.clone()]);

    // The fire first, then its task, which moves on in the same batch.
    let mut second = first.clone();
    second.at = ts(T0 + 300_000_000);
    second.fired_at = ts(T0 + 300_000_010);
    second.task = Some(tid(2));
    let mut later = after.clone();
    later.state.cursor = second.at;
    later.state.runs = 2;
    later.state.active = vec![tid(1), tid(2)];
    later.state.last_task = Some(tid(2));
    let b = task(2);
    let mut life = Life::of(&b);
    store
        .apply(&[
            fired(second.clone()),
            submit(b.clone()),
            upsert(later.clone()),
            life.assign("w1", T0 + 300_000_020),
        ])
        .unwrap();
    assert_eq!(
        store.get(tid(2)).unwrap().map(|t| t.status.state),
        Some(State::Assigned)
    );
    assert_eq!(all_fires(store, "hourly"), [second, first]);
    assert_eq!(store.schedules().unwrap(), [later]);
}

/// Schedules and fires survive closing the store and opening it again:
/// a check for durable backends, which `conformance_tests!` does not run
/// (it needs the same store twice). `open` opens the same database each
/// time it is called; the check drops each store before opening the
/// next.
pub fn schedules_survive_reopening(open: &mut dyn FnMut() -> Box<dyn Store>) {
    let store = open();
    let mut submitted = fire("nightly", T0 + 200);
    submitted.outcome = FireOutcome::Submitted;
    submitted.task = Some(tid(1));
    submitted.reason = None;
    store
        .apply(&[
            upsert(schedule("nightly")),
            upsert(plain_schedule("hourly")),
            upsert(plain_schedule("gone")),
            submit(task(1)),
            fired(fire("nightly", T0 + 100)),
            fired(submitted),
            fired(fire("hourly", T0)),
            fired(fire("gone", T0)),
        ])
        .unwrap();
    store.apply(&[delete_schedule("gone")]).unwrap();
    let snapshot = |store: &dyn Store| {
        (
            store.schedules().unwrap(),
            all_fires(store, "nightly"),
            all_fires(store, "hourly"),
            all_fires(store, "gone"),
        )
    };
    let before = snapshot(&*store);
    assert_eq!(before.0.len(), 2);
    assert_eq!(before.1.len(), 2);
    drop(store);

    let store = open();
    assert_eq!(snapshot(&*store), before);
    // The uniqueness of a fire is stored too.
    let err = store
        .apply(&[fired(fire("nightly", T0 + 100))])
        .unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");
    store.apply(&[fired(fire("nightly", T0 + 300))]).unwrap();
    assert_eq!(all_fires(&*store, "nightly").len(), 3);
}

/// `schedules_after` pages through the schedules in name order (byte
/// order), after a name that need not exist.
pub fn schedules_are_read_a_page_at_a_time(store: &dyn Store) {
    for name in ["d", "b", "a", "c", "B"] {
        store.apply(&[upsert(plain_schedule(name))]).unwrap();
    }
    let names = |after: Option<&str>, limit: usize| -> Vec<String> {
        store
            .schedules_after(after, limit)
            .unwrap()
            .into_iter()
            .map(|r| r.name)
            .collect()
    };
    assert_eq!(names(None, 2), ["B", "a"]);
    assert_eq!(names(Some("a"), 2), ["b", "c"]);
    assert_eq!(names(Some("c"), 2), ["d"]);
    assert!(names(Some("d"), 2).is_empty());
    assert_eq!(names(Some("bb"), 10), ["c", "d"]);
    assert_eq!(names(None, 100).len(), 5);
    assert_eq!(
        store.schedules_after(None, 100).unwrap(),
        store.schedules().unwrap()
    );
}
