//! The conformance checks: each a function over an empty `&dyn Store`.

use taskgrid_core::{
    AttemptOutcome, Change, FailureCode, OutputChunk, Progress, State, Stream, TaskFailure,
    TaskStatus, WorkerId,
};

use super::fixtures::{Life, full_record, ids, output, state_of, submit, task, tid, ts};
use crate::{Store, StoreError, TaskQuery};

mod retention;
mod schedules;

pub use retention::{
    a_deleted_task_leaves_nothing_behind, audit_entries_are_numbered_paged_and_pruned,
    finished_tasks_are_found_by_their_end,
};
pub use schedules::{
    a_duplicate_fire_fails_the_whole_batch, a_fire_commits_with_its_tasks_submit,
    deleting_a_schedule_removes_its_fires, failed_batch_keeps_schedules_and_fires,
    fires_are_newest_first_within_bounds, schedules_are_read_a_page_at_a_time,
    schedules_round_trip_in_name_order, schedules_survive_reopening,
};

/// A task with every field set reads back exactly as written, from `get`, `list` and `load_active`.
pub fn round_trip_every_field(store: &dyn Store) {
    let rec = full_record();
    store.apply(&[submit(rec.clone())]).unwrap();
    assert_eq!(store.get(rec.id).unwrap(), Some(rec.clone()));
    assert_eq!(store.get(tid(2)).unwrap(), None);
    assert_eq!(
        store.list(&TaskQuery::default()).unwrap(),
        vec![rec.clone()]
    );
    assert_eq!(store.load_active().unwrap(), vec![rec]);
}

/// Submitting an id already stored fails with `Duplicate` and changes nothing.
pub fn duplicate_submit_is_refused(store: &dyn Store) {
    store.apply(&[submit(task(1))]).unwrap();
    let mut again = task(1);
    again.spec.queue = "other".into();
    let err = store.apply(&[submit(task(2)), submit(again)]).unwrap_err();
    assert!(
        matches!(err, StoreError::Duplicate(id) if id == tid(1)),
        "{err:?}"
    );
    assert!(err.is_conflict());
    assert_eq!(store.get(tid(1)).unwrap(), Some(task(1)));
    assert_eq!(
        store.get(tid(2)).unwrap(),
        None,
        "the batch was rolled back"
    );
}

/// A compare-and-set that fails (`Conflict`) undoes every change of its batch.
pub fn conflict_rolls_back_the_whole_batch(store: &dyn Store) {
    let a = task(1);
    store.apply(&[submit(a.clone())]).unwrap();
    let mut life = Life::of(&a);
    let assign = life.assign("w1", 10);
    // `a` is queued, not running: the second status change must fail.
    let stale = Change::Status {
        id: a.id,
        from: State::Running,
        at: ts(11),
        status: Box::new(TaskStatus::new(State::Succeeded)),
        attempt_outcome: Some(AttemptOutcome::Succeeded),
    };
    let err = store.apply(&[submit(task(2)), assign, stale]).unwrap_err();
    match err {
        StoreError::Conflict { id, expected } => {
            assert_eq!((id, expected), (a.id, State::Running));
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(
        store.get(tid(2)).unwrap(),
        None,
        "the earlier insert is gone"
    );
    assert_eq!(
        store.get(a.id).unwrap(),
        Some(a.clone()),
        "the earlier status change is gone"
    );
    assert!(
        store.attempts(a.id).unwrap().is_empty(),
        "the attempt row is gone"
    );

    // The plain CAS: writing from a state the task has left.
    let mut life = Life::of(&a);
    store.apply(&[life.assign("w1", 10)]).unwrap();
    let mut stale = Life::of(&a);
    let err = store.apply(&[stale.assign("w2", 12)]).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Conflict {
                expected: State::Queued,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(state_of(store, a.id), State::Assigned);
}

/// A change to a task that comes before the task's own `Submitted` in a
/// batch fails as it would applied one by one: `NotFound` for a task not
/// stored yet, `Duplicate` (its submit) for one that is; nothing is
/// written either way.
pub fn a_change_before_its_submit_fails_as_one_by_one(store: &dyn Store) {
    let mut life = Life::of(&task(1));
    let err = store
        .apply(&[submit(task(2)), life.assign("w", 1), submit(task(1))])
        .unwrap_err();
    assert!(
        matches!(err, StoreError::NotFound(id) if id == tid(1)),
        "{err:?}"
    );
    assert_eq!(store.get(tid(1)).unwrap(), None);
    assert_eq!(store.get(tid(2)).unwrap(), None);

    store.apply(&[submit(task(1))]).unwrap();
    let mut life = Life::of(&task(1));
    let err = store
        .apply(&[life.assign("w", 1), submit(task(1))])
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Duplicate(id) if id == tid(1)),
        "{err:?}"
    );
    assert_eq!(state_of(store, tid(1)), State::Queued);
}

/// A status change for an unknown task fails with `NotFound`.
pub fn status_of_unknown_task_is_not_found(store: &dyn Store) {
    let mut life = Life::of(&task(1));
    let err = store
        .apply(&[submit(task(2)), life.assign("w", 1)])
        .unwrap_err();
    assert!(
        matches!(err, StoreError::NotFound(id) if id == tid(1)),
        "{err:?}"
    );
    assert_eq!(store.get(tid(2)).unwrap(), None);
}

/// A batch that touches every kind of data and then fails leaves each of
/// them exactly as before.
pub fn failed_batch_leaves_no_trace(store: &dyn Store) {
    let a = task(1);
    let mut life = Life::of(&a);
    store
        .apply(&[
            submit(a.clone()),
            life.assign("w1", 2),
            output(1, 1, "before"),
        ])
        .unwrap();
    let before = (
        store.get(a.id).unwrap(),
        store.attempts(a.id).unwrap(),
        store.output(a.id, 0, 10).unwrap(),
        store.count_by_state().unwrap(),
    );
    let bad = [
        submit(task(2)),
        life.to(State::Running, 3, None, |s| s.started_at = Some(ts(3))),
        Change::Progress {
            id: a.id,
            progress: Progress {
                fraction: 0.5,
                message: None,
            },
        },
        Change::Checkpoint {
            id: a.id,
            data: "{}".into(),
        },
        output(1, 1, "during"),
        life.to(State::Retrying, 4, Some(AttemptOutcome::Failed), |s| {
            s.error = Some(TaskFailure::new(FailureCode::Error, "boom"));
        }),
        Change::Checkpoint {
            id: tid(3),
            data: "{}".into(),
        },
    ];
    let err = store.apply(&bad).unwrap_err();
    assert!(
        matches!(err, StoreError::NotFound(id) if id == tid(3)),
        "{err:?}"
    );
    let after = (
        store.get(a.id).unwrap(),
        store.attempts(a.id).unwrap(),
        store.output(a.id, 0, 10).unwrap(),
        store.count_by_state().unwrap(),
    );
    assert_eq!(after, before);
    assert_eq!(store.get(tid(2)).unwrap(), None);

    // The sequence numbers the failed batch would have used are not skipped
    // in a way that breaks ordering: the next chunk still sorts last.
    store.apply(&[output(1, 1, "after")]).unwrap();
    let data: Vec<String> = store
        .output(a.id, 0, 10)
        .unwrap()
        .into_iter()
        .map(|(_, c)| c.data)
        .collect();
    assert_eq!(data, ["before", "after"]);
}

/// Assignments record attempts; start and end stamps, outcomes, errors and exit codes land on the right one.
pub fn attempts_follow_the_lifecycle(store: &dyn Store) {
    let a = task(1);
    let mut life = Life::of(&a);
    let changes = [
        submit(a.clone()),
        life.assign("w1", 10),
        life.to(State::Running, 11, None, |s| s.started_at = Some(ts(11))),
        life.to(State::Retrying, 12, Some(AttemptOutcome::Failed), |s| {
            s.retries += 1;
            s.error = Some(TaskFailure::new(FailureCode::Error, "exit status 3"));
            s.exit_code = Some(3);
            s.usage = Some(taskgrid_core::Usage {
                cpu_seconds: 0.5,
                peak_rss_bytes: 4096,
                signal: None,
            });
        }),
        life.to(State::Queued, 13, None, |s| s.queued_at = Some(ts(13))),
        life.assign("w2", 14),
        life.to(State::Running, 15, None, |s| s.started_at = Some(ts(15))),
    ];
    // Split over several applies: history is kept across transactions.
    store.apply(&changes[..4]).unwrap();
    store.apply(&changes[4..]).unwrap();
    store
        .apply(&[
            life.to(State::Succeeded, 16, Some(AttemptOutcome::Succeeded), |s| {
                s.error = None;
                s.exit_code = Some(0);
                s.usage = None;
                s.result = Some("42".into());
                s.finished_at = Some(ts(16));
            }),
        ])
        .unwrap();

    let got = store.attempts(a.id).unwrap();
    assert_eq!(got.len(), 2, "{got:#?}");
    let (first, second) = (&got[0], &got[1]);
    assert_eq!(
        (first.task, first.attempt, first.worker.as_str()),
        (a.id, 1, "w1")
    );
    assert_eq!(
        (first.assigned_at, first.started_at, first.finished_at),
        (ts(10), Some(ts(11)), Some(ts(12)))
    );
    assert_eq!(first.outcome, Some(AttemptOutcome::Failed));
    assert_eq!(first.error.as_deref(), Some("exit status 3"));
    assert_eq!(first.exit_code, Some(3));
    assert_eq!(
        first.usage,
        Some(taskgrid_core::Usage {
            cpu_seconds: 0.5,
            peak_rss_bytes: 4096,
            signal: None
        }),
        "each attempt keeps what it cost"
    );
    assert_eq!(second.usage, None);
    assert_eq!((second.attempt, second.worker.as_str()), (2, "w2"));
    assert_eq!(
        (second.assigned_at, second.started_at, second.finished_at),
        (ts(14), Some(ts(15)), Some(ts(16)))
    );
    assert_eq!(second.outcome, Some(AttemptOutcome::Succeeded));
    assert_eq!(
        second.error, None,
        "only failed and timed-out attempts keep the error"
    );
    assert_eq!(second.exit_code, Some(0));

    let rec = store.get(a.id).unwrap().unwrap();
    assert_eq!(rec.status, life.status);
    assert!(store.attempts(tid(2)).unwrap().is_empty());
}

/// An assignment without a worker, or reusing an attempt number, is `Invalid`.
pub fn bad_assignments_are_invalid(store: &dyn Store) {
    let a = task(1);
    let mut life = Life::of(&a);
    store
        .apply(&[submit(a.clone()), life.assign("w1", 1)])
        .unwrap();
    store
        .apply(&[life.to(State::Queued, 2, Some(AttemptOutcome::Rejected), |_| {})])
        .unwrap();

    // The same attempt number again.
    let again = life.to(State::Assigned, 3, None, |s| {
        s.worker = Some(WorkerId::new("w2"))
    });
    let err = store.apply(&[again]).unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");

    // No worker.
    let mut life = Life::of(&store.get(a.id).unwrap().unwrap());
    let err = store
        .apply(&[life.to(State::Assigned, 4, None, |s| {
            s.attempt += 1;
            s.worker = None;
        })])
        .unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");

    assert_eq!(state_of(store, a.id), State::Queued);
    let got = store.attempts(a.id).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].outcome, Some(AttemptOutcome::Rejected));
    assert_eq!(got[0].error, None);
}

/// `load_active` returns every non-terminal task and no terminal one, in id order.
pub fn load_active_returns_exactly_the_live_tasks(store: &dyn Store) {
    let mut changes = Vec::new();
    let mut live = Vec::new();
    // Submit in reverse id order: results must still come in id order.
    for (n, state) in State::ALL.into_iter().enumerate().rev() {
        let mut rec = task(n as u128);
        rec.status = TaskStatus::new(state);
        if !state.is_terminal() {
            live.push(rec.id);
        }
        changes.push(submit(rec));
    }
    // One more that goes live → terminal through status changes.
    let b = task(50);
    let mut life = Life::of(&b);
    changes.push(submit(b.clone()));
    changes.push(life.to(State::Cancelled, 60, None, |s| s.finished_at = Some(ts(60))));
    store.apply(&changes).unwrap();
    live.sort();

    let active = store.load_active().unwrap();
    assert_eq!(ids(&active), live);
    assert!(active.iter().all(|r| !r.status.state.is_terminal()));
    let pending = active
        .iter()
        .find(|r| r.status.state == State::Pending)
        .unwrap();
    assert_eq!(pending, &store.get(pending.id).unwrap().unwrap());
}

/// `list` applies every filter, pages with `after` both ways, and honours `limit`.
pub fn list_filters_and_paginates(store: &dyn Store) {
    // Ten tasks: even ones in queue "a" with tag "even", the first three the
    // children of task 100, tasks 4..7 assigned to w1 or w2.
    let mut changes = vec![submit(task(100))];
    for n in 0..10u128 {
        let mut rec = task(n);
        if n % 2 == 0 {
            rec.spec.queue = "a".into();
            rec.spec.tags = vec!["even".into(), format!("n{n}")];
        }
        if n < 3 {
            rec.spec.parent = Some(tid(100));
        }
        let mut life = Life::of(&rec);
        changes.push(submit(rec));
        if (4..8).contains(&n) {
            changes.push(life.assign(if n < 6 { "w1" } else { "w2" }, 10));
        }
        if n == 3 {
            // Refused by w1 and back in its queue.
            changes.push(life.assign("w1", 10));
            changes.push(life.to(State::Queued, 11, Some(AttemptOutcome::Rejected), |_| {}));
        }
        if n == 8 {
            // Refused by w1, then assigned to w2: it never ran on w1.
            changes.push(life.assign("w1", 10));
            changes.push(life.to(State::Queued, 11, Some(AttemptOutcome::Rejected), |_| {}));
            changes.push(life.assign("w2", 12));
        }
        if n == 9 {
            // Ran on w1 and was lost with it, then assigned to w2: it ran on both.
            changes.push(life.assign("w1", 10));
            changes.push(life.to(State::Running, 11, None, |_| {}));
            changes.push(life.to(State::Queued, 12, Some(AttemptOutcome::Lost), |_| {}));
            changes.push(life.assign("w2", 13));
        }
    }
    store.apply(&changes).unwrap();
    let list = |q: TaskQuery| ids(&store.list(&q).unwrap());
    let tids = |ns: &[u128]| ns.iter().map(|n| tid(*n)).collect::<Vec<_>>();

    assert_eq!(list(TaskQuery::default()).len(), 11);
    let by_state = list(TaskQuery {
        state: Some(State::Assigned),
        ..TaskQuery::default()
    });
    assert_eq!(by_state, tids(&[4, 5, 6, 7, 8, 9]));
    let by_queue = list(TaskQuery {
        queue: Some("a".into()),
        ..TaskQuery::default()
    });
    assert_eq!(by_queue, tids(&[0, 2, 4, 6, 8]));
    let by_tag = list(TaskQuery {
        tag: Some("even".into()),
        ..TaskQuery::default()
    });
    assert_eq!(by_tag, tids(&[0, 2, 4, 6, 8]));
    let one_tag = list(TaskQuery {
        tag: Some("n4".into()),
        ..TaskQuery::default()
    });
    assert_eq!(one_tag, tids(&[4]));
    let by_parent = list(TaskQuery {
        parent: Some(tid(100)),
        ..TaskQuery::default()
    });
    assert_eq!(by_parent, tids(&[0, 1, 2]));
    let by_worker = list(TaskQuery {
        worker: Some(WorkerId::new("w1")),
        ..TaskQuery::default()
    });
    assert_eq!(by_worker, tids(&[4, 5, 9]), "refused tasks are not listed");
    let by_w2 = list(TaskQuery {
        worker: Some(WorkerId::new("w2")),
        ..TaskQuery::default()
    });
    assert_eq!(by_w2, tids(&[6, 7, 8, 9]));
    let combined = list(TaskQuery {
        state: Some(State::Assigned),
        queue: Some("a".into()),
        worker: Some(WorkerId::new("w2")),
        tag: Some("even".into()),
        ..TaskQuery::default()
    });
    assert_eq!(combined, tids(&[6, 8]));
    let nothing = list(TaskQuery {
        queue: Some("b".into()),
        ..TaskQuery::default()
    });
    assert!(nothing.is_empty());

    // Cursor pagination, with and without a filter, oldest or newest first.
    for newest_first in [false, true] {
        for filter in [None, Some("a")] {
            let mut seen = Vec::new();
            let mut after = None;
            loop {
                let page = list(TaskQuery {
                    queue: filter.map(String::from),
                    after,
                    newest_first,
                    limit: 2,
                    ..TaskQuery::default()
                });
                assert!(page.len() <= 2);
                let Some(last) = page.last().copied() else {
                    break;
                };
                after = Some(last);
                seen.extend(page);
            }
            let mut want = list(TaskQuery {
                queue: filter.map(String::from),
                limit: 1_000,
                ..TaskQuery::default()
            });
            if newest_first {
                want.reverse();
            }
            assert_eq!(seen, want, "newest_first {newest_first}, queue {filter:?}");
            assert!(seen.windows(2).all(|w| (w[0] < w[1]) != newest_first));
        }
    }
    let newest_worker = list(TaskQuery {
        worker: Some(WorkerId::new("w2")),
        newest_first: true,
        limit: 3,
        ..TaskQuery::default()
    });
    assert_eq!(newest_worker, tids(&[9, 8, 7]));
    assert!(
        list(TaskQuery {
            limit: 0,
            ..TaskQuery::default()
        })
        .is_empty()
    );
}

/// Progress and checkpoint changes overwrite; unknown tasks are `NotFound`.
pub fn progress_and_checkpoint_overwrite(store: &dyn Store) {
    let a = task(1);
    store.apply(&[submit(a.clone())]).unwrap();
    let progress = |f: f32| Change::Progress {
        id: a.id,
        progress: Progress {
            fraction: f,
            message: Some(format!("{f}")),
        },
    };
    let checkpoint = |s: &str| Change::Checkpoint {
        id: a.id,
        data: s.into(),
    };
    store
        .apply(&[
            progress(0.1),
            checkpoint("1"),
            progress(0.25),
            checkpoint("2"),
        ])
        .unwrap();
    let rec = store.get(a.id).unwrap().unwrap();
    assert_eq!(
        rec.progress.map(|p| (p.fraction, p.message)),
        Some((0.25, Some("0.25".into())))
    );
    assert_eq!(rec.checkpoint.as_deref(), Some("2"));
    assert_eq!(rec.status, a.status);

    for bad in [
        Change::Progress {
            id: tid(9),
            progress: Progress {
                fraction: 1.0,
                message: None,
            },
        },
        Change::Checkpoint {
            id: tid(9),
            data: "x".into(),
        },
    ] {
        let err = store.apply(&[checkpoint("3"), bad]).unwrap_err();
        assert!(
            matches!(err, StoreError::NotFound(id) if id == tid(9)),
            "{err:?}"
        );
    }
    assert_eq!(
        store.get(a.id).unwrap().unwrap().checkpoint.as_deref(),
        Some("2")
    );
}

/// Output chunks come back in order with their sequence numbers, paged by `after_seq`.
pub fn output_is_ordered_and_paged(store: &dyn Store) {
    store.apply(&[submit(task(1)), submit(task(2))]).unwrap();
    store
        .apply(&[output(1, 1, "a"), output(2, 1, "x"), output(1, 1, "err b")])
        .unwrap();
    store
        .apply(&[output(1, 2, "c"), output(2, 1, "y")])
        .unwrap();
    let log = Change::Output(Box::new(OutputChunk {
        task: tid(1),
        attempt: 2,
        stream: Stream::Log,
        data: "d\n".into(),
    }));
    store.apply(&[log]).unwrap();

    let all = store.output(tid(1), 0, 100).unwrap();
    let data: Vec<&str> = all.iter().map(|(_, c)| c.data.as_str()).collect();
    assert_eq!(data, ["a", "err b", "c", "d\n"]);
    assert!(
        all.windows(2).all(|w| w[0].0 < w[1].0),
        "sequence numbers increase"
    );
    assert!(all.iter().all(|(seq, c)| *seq > 0 && c.task == tid(1)));
    assert_eq!(all[1].1.stream, Stream::Stderr);
    assert_eq!((all[3].1.stream, all[3].1.attempt), (Stream::Log, 2));

    let page1 = store.output(tid(1), 0, 2).unwrap();
    assert_eq!(page1, all[..2]);
    let page2 = store.output(tid(1), page1[1].0, 2).unwrap();
    assert_eq!(page2, all[2..]);
    assert!(store.output(tid(1), all[3].0, 2).unwrap().is_empty());
    let other: Vec<String> = store
        .output(tid(2), 0, 100)
        .unwrap()
        .into_iter()
        .map(|(_, c)| c.data)
        .collect();
    assert_eq!(other, ["x", "y"]);
    assert!(store.output(tid(3), 0, 100).unwrap().is_empty());

    let err = store
        .apply(&[output(1, 2, "e"), output(3, 1, "lost")])
        .unwrap_err();
    assert!(
        matches!(err, StoreError::NotFound(id) if id == tid(3)),
        "{err:?}"
    );
    assert_eq!(store.output(tid(1), 0, 100).unwrap(), all);
}

/// `count_by_state` lists every state in `State::ALL` order, zeros included.
pub fn count_by_state_counts_every_state(store: &dyn Store) {
    let zeros: Vec<(State, u64)> = State::ALL.into_iter().map(|s| (s, 0)).collect();
    assert_eq!(store.count_by_state().unwrap(), zeros);

    let a = task(1);
    let mut life = Life::of(&a);
    let mut pending = task(2);
    pending.status = TaskStatus::new(State::Pending);
    store
        .apply(&[
            submit(a),
            submit(pending),
            submit(task(3)),
            life.assign("w", 5),
        ])
        .unwrap();
    let want: Vec<(State, u64)> = State::ALL
        .into_iter()
        .map(|s| {
            let n = match s {
                State::Pending | State::Queued | State::Assigned => 1,
                _ => 0,
            };
            (s, n)
        })
        .collect();
    assert_eq!(store.count_by_state().unwrap(), want);
}

/// Applying no changes succeeds and changes nothing.
pub fn empty_apply_is_a_no_op(store: &dyn Store) {
    store.apply(&[]).unwrap();
    assert!(store.load_active().unwrap().is_empty());
    assert!(store.list(&TaskQuery::default()).unwrap().is_empty());
}

/// A queue's pause is kept until it is resumed; a failed batch takes a
/// pause back with the rest.
pub fn queue_pauses_are_kept(store: &dyn Store) {
    let pause = |name: &str, paused| Change::Queue {
        name: name.to_owned(),
        paused,
    };
    assert!(store.paused_queues().unwrap().is_empty());
    store
        .apply(&[
            pause("emails", true),
            pause("batch", true),
            pause("emails", true),
        ])
        .unwrap();
    assert_eq!(store.paused_queues().unwrap(), ["batch", "emails"]);
    store
        .apply(&[pause("batch", false), pause("never", false)])
        .unwrap();
    assert_eq!(store.paused_queues().unwrap(), ["emails"]);
    // All or nothing: the failing checkpoint takes the pauses back.
    let err = store
        .apply(&[
            pause("reports", true),
            pause("emails", false),
            Change::Checkpoint {
                id: tid(9),
                data: "{}".into(),
            },
        ])
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    assert_eq!(store.paused_queues().unwrap(), ["emails"]);
}

/// Several state changes of one task in one batch are applied as if one
/// by one: the task ends in the last state, every attempt stamp is kept,
/// and a change that does not follow on from the one before it fails the
/// whole batch.
pub fn chained_changes_in_one_batch(store: &dyn Store) {
    let a = task(1);
    let mut life = Life::of(&a);
    store
        .apply(&[
            submit(a.clone()),
            life.assign("w1", 2),
            life.to(State::Running, 3, None, |s| s.started_at = Some(ts(3))),
            life.to(State::Succeeded, 4, Some(AttemptOutcome::Succeeded), |s| {
                s.finished_at = Some(ts(4))
            }),
        ])
        .unwrap();
    let rec = store.get(a.id).unwrap().unwrap();
    assert_eq!(rec.status.state, State::Succeeded);
    let attempts = store.attempts(a.id).unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].started_at, Some(ts(3)));
    assert_eq!(attempts[0].outcome, Some(AttemptOutcome::Succeeded));
    assert_eq!(
        store.count_by_state().unwrap()[state_position(State::Succeeded)].1,
        1
    );

    // Two tasks' chains interleaved, each started in the batch that ends
    // it (the commit an accept and its result share), after its assign
    // was committed alone: every stamp lands on its own attempt.
    let (c, d) = (task(3), task(4));
    let (mut lc, mut ld) = (Life::of(&c), Life::of(&d));
    store
        .apply(&[
            submit(c.clone()),
            submit(d.clone()),
            lc.assign("w1", 10),
            ld.assign("w2", 11),
        ])
        .unwrap();
    let running =
        |l: &mut Life, at: u64| l.to(State::Running, at, None, |s| s.started_at = Some(ts(at)));
    let end = |l: &mut Life, at: u64, outcome: AttemptOutcome, state: State| {
        l.to(state, at, Some(outcome), |s| s.finished_at = Some(ts(at)))
    };
    store
        .apply(&[
            running(&mut lc, 12),
            running(&mut ld, 13),
            end(&mut ld, 14, AttemptOutcome::Failed, State::Queued),
            end(&mut lc, 15, AttemptOutcome::Succeeded, State::Succeeded),
            ld.assign("w1", 16),
            running(&mut ld, 17),
        ])
        .unwrap();
    let stamps = |id| {
        store
            .attempts(id)
            .unwrap()
            .into_iter()
            .map(|a| {
                (
                    a.attempt,
                    a.assigned_at,
                    a.started_at,
                    a.finished_at,
                    a.outcome,
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        stamps(c.id),
        [(
            1,
            ts(10),
            Some(ts(12)),
            Some(ts(15)),
            Some(AttemptOutcome::Succeeded)
        )]
    );
    assert_eq!(
        stamps(d.id),
        [
            (
                1,
                ts(11),
                Some(ts(13)),
                Some(ts(14)),
                Some(AttemptOutcome::Failed)
            ),
            (2, ts(16), Some(ts(17)), None, None),
        ]
    );
    assert_eq!(
        store.get(c.id).unwrap().unwrap().status.state,
        State::Succeeded
    );
    assert_eq!(
        store.get(d.id).unwrap().unwrap().status.state,
        State::Running
    );

    // A chain with a link that does not follow: nothing of it is written.
    let b = task(2);
    let mut life = Life::of(&b);
    store.apply(&[submit(b.clone())]).unwrap();
    let assign = life.assign("w1", 5);
    let mut skip = life.to(State::Running, 6, None, |_| {});
    if let Change::Status { from, .. } = &mut skip {
        *from = State::Pending; // it is assigned by then
    }
    let err = store.apply(&[assign, skip]).unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict { id, expected: State::Pending } if id == b.id),
        "{err:?}"
    );
    assert_eq!(
        store.get(b.id).unwrap().unwrap().status.state,
        State::Queued
    );
    assert!(store.attempts(b.id).unwrap().is_empty());
}

fn state_position(s: State) -> usize {
    State::ALL.iter().position(|x| *x == s).unwrap()
}

/// Free text from programs — output, checkpoints, an attempt's error — can
/// hold any character, a NUL included, and reads back exactly.
pub fn any_text_round_trips(store: &dyn Store) {
    let odd = "nul:\0 tab:\t newline:\n emoji:\u{1f980} high:\u{10ffff}";
    let a = task(1);
    let mut life = Life::of(&a);
    store
        .apply(&[
            submit(a.clone()),
            life.assign("w1", 10),
            life.to(State::Running, 11, None, |s| s.started_at = Some(ts(11))),
            output(1, 1, odd),
            Change::Checkpoint {
                id: a.id,
                data: odd.into(),
            },
            life.to(State::Failed, 12, Some(AttemptOutcome::Failed), |s| {
                s.error = Some(TaskFailure::new(FailureCode::Error, odd));
            }),
        ])
        .unwrap();
    let out = store.output(a.id, 0, 10).unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].1.data, odd);
    let rec = store.get(a.id).unwrap().unwrap();
    assert_eq!(rec.checkpoint.as_deref(), Some(odd));
    assert_eq!(rec.status.error.map(|e| e.message), Some(odd.to_owned()));
    let attempts = store.attempts(a.id).unwrap();
    assert_eq!(attempts[0].error.as_deref(), Some(odd));
}
