//! Checks of what retention relies on: finding finished tasks by when they
//! ended, and deleting a task with everything it left behind.

use taskgrid_core::{AttemptOutcome, Change, State, TaskId, Timestamp};

use super::super::fixtures::{Life, audit, output, state_of, submit, task, tid, ts};
use crate::{FinishedScan, FinishedTask, Store, TaskQuery};

/// Past the creation time of every fixture id (their UUIDv7 milliseconds
/// are 0x0192_0000_0000).
fn cutoff() -> Timestamp {
    ts(0x0192_0000_0001 * 1000)
}

/// Submits 1 (succeeded at 10, tagged, with an attempt and output), 2
/// (queued) and 3 (cancelled just after the cutoff).
fn three_tasks(store: &dyn Store) {
    let mut a = task(1);
    a.spec.tags = vec!["keep".into(), "x".into()];
    // A NUL in the payload: valid JSON text, but not valid PostgreSQL jsonb.
    a.spec.kind = taskgrid_core::TaskKind::handler("echo", r#"{"s":"a\u0000b"}"#);
    let mut la = Life::of(&a);
    let c = task(3);
    let mut lc = Life::of(&c);
    let late = cutoff().plus(std::time::Duration::from_micros(1));
    store
        .apply(&[
            submit(a),
            submit(task(2)),
            submit(c),
            la.assign("w", 5),
            la.to(State::Running, 6, None, |s| s.started_at = Some(ts(6))),
            output(1, 1, "hi"),
            la.to(State::Succeeded, 10, Some(AttemptOutcome::Succeeded), |s| {
                s.finished_at = Some(ts(10));
            }),
            lc.to(State::Cancelled, late.as_micros(), None, |s| {
                s.finished_at = Some(late);
            }),
        ])
        .unwrap();
}

/// `finished_before` reports the terminal tasks that ended before the
/// cutoff among those created before it, in id order, paged by `after`.
pub fn finished_tasks_are_found_by_their_end(store: &dyn Store) {
    three_tasks(store);
    assert_eq!(
        store.finished_before(cutoff(), None, 10).unwrap(),
        FinishedScan {
            finished: vec![FinishedTask {
                id: tid(1),
                queue: taskgrid_core::DEFAULT_QUEUE.into(),
                finished_at: ts(10),
            }],
            last: Some(tid(3)),
        }
    );
    // Page by page: one task read at a time.
    let mut after: Option<TaskId> = None;
    let mut found = Vec::new();
    let mut reads = 0;
    loop {
        let scan = store.finished_before(cutoff(), after, 1).unwrap();
        let Some(last) = scan.last else { break };
        found.extend(scan.finished.into_iter().map(|f| f.id));
        after = Some(last);
        reads += 1;
    }
    assert_eq!((found, reads), (vec![tid(1)], 3));
    // Nothing was created before an early cutoff.
    assert_eq!(
        store.finished_before(ts(1_000), None, 10).unwrap(),
        FinishedScan::default()
    );
}

/// A task's output can be deleted alone. A deleted task is gone with its
/// tags, attempts and output; the others
/// stay; an unknown id is no error; a deletion in a failed batch is rolled
/// back.
pub fn a_deleted_task_leaves_nothing_behind(store: &dyn Store) {
    three_tasks(store);
    // Output retention first: the chunks go, the task and attempts stay.
    assert_eq!(store.output(tid(1), 0, 10).unwrap().len(), 1);
    store
        .apply(&[Change::OutputDeleted { id: tid(1) }])
        .unwrap();
    assert!(store.output(tid(1), 0, 10).unwrap().is_empty());
    assert!(store.get(tid(1)).unwrap().is_some());
    assert_eq!(store.attempts(tid(1)).unwrap().len(), 1);
    store
        .apply(&[
            Change::Deleted { id: tid(1) },
            Change::Deleted { id: tid(99) },
        ])
        .unwrap();
    assert!(store.get(tid(1)).unwrap().is_none());
    assert!(store.attempts(tid(1)).unwrap().is_empty());
    assert!(store.output(tid(1), 0, 10).unwrap().is_empty());
    for tag in ["keep", "x"] {
        let q = TaskQuery {
            tag: Some(tag.into()),
            ..TaskQuery::default()
        };
        assert!(store.list(&q).unwrap().is_empty(), "tag {tag}");
    }
    let counts = store.count_by_state().unwrap();
    assert!(counts.contains(&(State::Succeeded, 0)), "{counts:?}");
    assert!(counts.contains(&(State::Queued, 1)), "{counts:?}");
    assert_eq!(state_of(store, tid(3)), State::Cancelled);

    // Deleting 3 in a batch that fails (2 exists) changes nothing.
    let err = store.apply(&[Change::Deleted { id: tid(3) }, submit(task(2))]);
    assert!(err.is_err());
    assert_eq!(state_of(store, tid(3)), State::Cancelled);
    assert_eq!(
        store
            .finished_before(ts(u64::MAX / 2), None, 10)
            .unwrap()
            .finished
            .into_iter()
            .map(|f| f.id)
            .collect::<Vec<_>>(),
        [tid(3)]
    );
}

/// Audit entries get increasing numbers in commit order, are read newest
/// first a page at a time, leave with a failed batch, and retention
/// deletes those older than its cutoff only; a number is never given
/// twice, even after every entry was pruned.
pub fn audit_entries_are_numbered_paged_and_pruned(store: &dyn Store) {
    assert!(store.audit(None, 10).unwrap().is_empty());
    store
        .apply(&[audit(10, "POST /api/v1/tasks"), audit(20, "DELETE /x")])
        .unwrap();
    let mut refused = audit(30, "POST /api/v1/queues/q/pause");
    if let Change::Audit(r) = &mut refused {
        r.status = 404;
        r.error = Some("not_found".into());
    }
    store.apply(&[refused.clone()]).unwrap();
    // A failed batch leaves no entry behind.
    assert!(
        store
            .apply(&[audit(35, "lost"), output(99, 1, "x")])
            .is_err()
    );
    let all = store.audit(None, 10).unwrap();
    let actions: Vec<&str> = all.iter().map(|e| e.record.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "POST /api/v1/queues/q/pause",
            "DELETE /x",
            "POST /api/v1/tasks"
        ]
    );
    assert!(all.windows(2).all(|w| w[0].seq > w[1].seq), "newest first");
    assert_eq!(all[0].record.error.as_deref(), Some("not_found"));
    assert_eq!(all[0].record.status, 404);
    assert_eq!(all[2].record.remote.as_deref(), Some("127.0.0.1:5000"));
    let page = store.audit(Some(all[0].seq), 1).unwrap();
    assert_eq!(page, vec![all[1].clone()]);

    store
        .apply(&[Change::AuditPruned { before: ts(20) }])
        .unwrap();
    let left: Vec<u64> = store
        .audit(None, 10)
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(
        left,
        vec![all[0].seq, all[1].seq],
        "only the entry before 20 went"
    );
    // Numbers are never given twice, not even once every entry is gone.
    store.apply(&[audit(40, "later")]).unwrap();
    let later = store.audit(None, 1).unwrap()[0].seq;
    assert!(later > all[0].seq);
    store
        .apply(&[Change::AuditPruned { before: ts(1000) }])
        .unwrap();
    assert!(store.audit(None, 10).unwrap().is_empty(), "all pruned");
    store.apply(&[audit(50, "after the prune")]).unwrap();
    let next = store.audit(None, 10).unwrap();
    assert_eq!(next.len(), 1);
    assert!(
        next[0].seq > later,
        "number {} given after {later} was",
        next[0].seq
    );
}
