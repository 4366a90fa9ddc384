//! Schedules in the engine, on the manual clock: every spec feature, every
//! overlap policy, catch-up and missed fires, restart, trigger, backfill.

use std::collections::HashSet;
use std::time::Duration;

use super::tests::{Harness, h};
use super::*;
use crate::{
    BadSchedule, FireOutcome, FireRecord, Outcome, Overlap, ScheduleRecord, ScheduleSpec, TaskSpec,
};

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// A harness whose clock is on a whole minute.
fn harness() -> Harness {
    let mut t = Harness::new();
    t.now = Timestamp::from_micros(1_800_000_000_000_000);
    t
}

fn every(n: u64, overlap: Overlap) -> ScheduleSpec {
    ScheduleSpec {
        overlap,
        ..ScheduleSpec::every(secs(n))
    }
}

/// Takes the fire records out of the outbox (the rest of it is dropped).
fn fires(t: &mut Harness) -> Vec<FireRecord> {
    std::mem::take(&mut t.out.changes)
        .into_iter()
        .filter_map(|c| match c {
            Change::Fire(f) => Some(*f),
            _ => None,
        })
        .collect()
}

/// The last stored record of a schedule in the outbox (as a restart would
/// read it), leaving the outbox as it is.
fn stored(t: &Harness, name: &str) -> ScheduleRecord {
    t.out
        .changes
        .iter()
        .rev()
        .find_map(|c| match c {
            Change::Schedule(r) if r.name == name => Some((**r).clone()),
            _ => None,
        })
        .expect("a schedule record in the outbox")
}

fn put(t: &mut Harness, name: &str, spec: ScheduleSpec) {
    t.engine
        .put_schedule(name, spec, h("job"), t.now, &mut t.out)
        .expect("a valid schedule");
}

#[test]
fn an_every_second_schedule_fires_once_per_second_with_its_tags() {
    let mut t = harness();
    put(&mut t, "tick", every(1, Overlap::AllowAll));
    let start = t.now;
    assert_eq!(t.engine.next_wake(), Some(start.plus(secs(1))));
    t.advance(Duration::from_millis(999));
    assert!(fires(&mut t).is_empty());
    let mut seen = Vec::new();
    for _ in 0..5 {
        t.advance(secs(1));
        seen.extend(fires(&mut t));
    }
    let at: Vec<Timestamp> = seen.iter().map(|f| f.at).collect();
    assert_eq!(at, (1..=5).map(|s| start.plus(secs(s))).collect::<Vec<_>>());
    for f in &seen {
        assert_eq!(f.outcome, FireOutcome::Submitted);
        let task = t.engine.get(f.task.expect("a task")).expect("held");
        assert!(task.spec.tags.contains(&"schedule:tick".to_owned()));
        assert!(task.spec.tags.iter().any(|g| g.starts_with("scheduled:20")));
    }
    let view = t.engine.schedule("tick").expect("exists");
    assert_eq!(view.record.state.runs, 5);
    assert_eq!(view.next, Some(start.plus(secs(6))));
}

#[test]
fn overlap_skip_records_the_skip_naming_the_live_task() {
    let mut t = harness();
    put(&mut t, "s", every(1, Overlap::Skip));
    t.advance(secs(1));
    let first = fires(&mut t).remove(0).task.expect("submitted");
    t.advance(secs(1));
    let f = fires(&mut t).remove(0);
    assert_eq!(f.outcome, FireOutcome::Skipped);
    assert!(f.reason.unwrap().contains(&first.to_string()));
    assert!(matches!(
        t.engine.explain_schedule("s", t.now).unwrap()[..],
        [ScheduleGate::Overlap { policy: Overlap::Skip, task }] if task == first
    ));
    t.worker("w", 1, &["job"]);
    let a = t.start().remove(0);
    t.report(&a, Outcome::ok()).unwrap();
    t.advance(secs(1));
    assert_eq!(fires(&mut t)[0].outcome, FireOutcome::Submitted);
}

#[test]
fn buffer_one_keeps_one_fire_and_runs_it_when_the_previous_ends() {
    let mut t = harness();
    let start = t.now;
    put(&mut t, "b", every(1, Overlap::BufferOne));
    t.advance(secs(1));
    let first = fires(&mut t).remove(0).task.unwrap();
    t.advance(secs(1)); // buffered
    assert!(fires(&mut t).is_empty());
    t.advance(secs(1)); // skipped: the buffer holds one
    let f = fires(&mut t);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].outcome, FireOutcome::Skipped);
    assert_eq!(f[0].at, start.plus(secs(3)));
    t.engine.cancel(first, t.now, &mut t.out).unwrap();
    let f = fires(&mut t);
    assert_eq!(f.len(), 1, "the buffered fire runs as the first ends");
    assert_eq!(
        (f[0].outcome, f[0].at),
        (FireOutcome::Submitted, start.plus(secs(2)))
    );
}

#[test]
fn buffer_all_runs_every_waiting_fire_in_order() {
    let mut t = harness();
    let start = t.now;
    put(&mut t, "b", every(1, Overlap::BufferAll));
    t.advance(secs(1));
    let mut live = fires(&mut t).remove(0).task.unwrap();
    t.advance(secs(1));
    t.advance(secs(1));
    assert!(fires(&mut t).is_empty());
    assert!(matches!(
        t.engine.explain_schedule("b", t.now).unwrap()[..],
        [_, ScheduleGate::Buffered { count: 2 }]
    ));
    for s in [2, 3] {
        t.engine.cancel(live, t.now, &mut t.out).unwrap();
        let f = fires(&mut t).remove(0);
        assert_eq!(
            (f.outcome, f.at),
            (FireOutcome::Submitted, start.plus(secs(s)))
        );
        live = f.task.unwrap();
    }
}

#[test]
fn cancel_previous_cancels_the_live_task_and_runs_the_new_one() {
    let mut t = harness();
    put(&mut t, "c", every(1, Overlap::CancelPrevious));
    t.advance(secs(1));
    let first = fires(&mut t).remove(0).task.unwrap();
    t.advance(secs(1));
    let f = fires(&mut t).remove(0);
    assert_eq!(f.outcome, FireOutcome::Submitted);
    assert_eq!(t.state(first), State::Cancelled);
    assert_eq!(t.state(f.task.unwrap()), State::Queued);
}

#[test]
fn after_downtime_fires_in_the_window_run_and_older_ones_are_missed() {
    let mut t = harness();
    let spec = ScheduleSpec {
        catch_up: secs(5),
        ..every(1, Overlap::AllowAll)
    };
    put(&mut t, "m", spec);
    t.advance(secs(2));
    let rec = stored(&t, "m");
    let before = fires(&mut t);
    assert_eq!(before.len(), 2);
    let crash_at = t.now;

    // Ten minutes later, a new coordinator rebuilds from the store.
    let mut r = harness();
    r.now = crash_at.plus(secs(600));
    r.engine.restore_schedules(vec![rec], r.now, &mut r.out);
    let after = fires(&mut r);
    let missed = &after[0];
    assert_eq!(missed.outcome, FireOutcome::Missed);
    assert_eq!(missed.at, crash_at.plus(secs(1)));
    // Due before now - 5 s: crash+1 … crash+594.
    assert_eq!(missed.until, Some(crash_at.plus(secs(594))));
    assert_eq!(missed.count, 594);
    let run: Vec<Timestamp> = after[1..].iter().map(|f| f.at).collect();
    assert_eq!(
        run,
        (595..=600)
            .map(|s| crash_at.plus(secs(s)))
            .collect::<Vec<_>>()
    );
    assert!(
        after[1..]
            .iter()
            .all(|f| f.outcome == FireOutcome::Submitted)
    );
    // Every scheduled time is accounted for exactly once.
    assert_eq!(before.len() as u64 + missed.count + run.len() as u64, 602);
}

#[test]
fn a_restart_resumes_from_the_committed_cursor_without_repeating_a_fire() {
    let mut t = harness();
    put(&mut t, "x", every(1, Overlap::AllowAll));
    let mut all = Vec::new();
    for _ in 0..3 {
        t.advance(secs(1));
    }
    let committed = stored(&t, "x");
    all.extend(fires(&mut t));
    // A crash 300 ms after the third fire; back 2.5 s later, inside the
    // catch-up window.
    let mut r = harness();
    r.now = t.now.plus(Duration::from_millis(2_800));
    r.engine
        .restore_schedules(vec![committed], r.now, &mut r.out);
    all.extend(fires(&mut r));
    for _ in 0..3 {
        r.advance(secs(1));
        all.extend(fires(&mut r));
    }
    let at: Vec<u64> = all.iter().map(|f| f.at.as_micros()).collect();
    let distinct: HashSet<u64> = at.iter().copied().collect();
    assert_eq!(distinct.len(), at.len(), "a fire was made twice: {at:?}");
    let first = at[0];
    let expect: Vec<u64> = (0..at.len() as u64)
        .map(|i| first + i * 1_000_000)
        .collect();
    assert_eq!(at, expect, "a gap in the fires");
}

#[test]
fn a_paused_schedule_does_not_fire_and_resumes_after_now() {
    let mut t = harness();
    let start = t.now;
    put(&mut t, "p", every(10, Overlap::AllowAll));
    t.engine
        .pause_schedule("p", Some("deploy".into()), t.now, &mut t.out)
        .unwrap();
    assert_eq!(t.engine.next_wake(), None);
    t.advance(secs(35));
    assert!(fires(&mut t).is_empty());
    assert_eq!(
        t.engine.explain_schedule("p", t.now).unwrap(),
        vec![ScheduleGate::Paused {
            note: Some("deploy".into())
        }]
    );
    t.engine.resume_schedule("p", t.now, &mut t.out).unwrap();
    assert_eq!(
        t.engine.schedule("p").unwrap().next,
        Some(start.plus(secs(40)))
    );
    t.advance(secs(5));
    assert_eq!(fires(&mut t)[0].at, start.plus(secs(40)));
}

#[test]
fn start_end_and_max_runs_bound_the_fires() {
    let mut t = harness();
    let start = t.now;
    let spec = ScheduleSpec {
        start: Some(start.plus(secs(5))),
        max_runs: Some(3),
        ..every(1, Overlap::AllowAll)
    };
    put(&mut t, "b", spec);
    assert_eq!(
        t.engine.schedule("b").unwrap().next,
        Some(start.plus(secs(5)))
    );
    let mut n = Vec::new();
    for _ in 0..12 {
        t.advance(secs(1));
        n.extend(fires(&mut t));
    }
    let at: Vec<Timestamp> = n.iter().map(|f| f.at).collect();
    assert_eq!(at, (5..=7).map(|s| start.plus(secs(s))).collect::<Vec<_>>());
    assert_eq!(t.engine.schedule("b").unwrap().next, None);
    assert_eq!(
        t.engine.explain_schedule("b", t.now).unwrap(),
        vec![ScheduleGate::MaxRunsReached { max_runs: 3 }]
    );
    let spec = ScheduleSpec {
        end: Some(t.now.plus(secs(2))),
        ..every(1, Overlap::AllowAll)
    };
    put(&mut t, "e", spec);
    for _ in 0..5 {
        t.advance(secs(1));
    }
    assert_eq!(fires(&mut t).len(), 2);
    assert_eq!(
        t.engine.explain_schedule("e", t.now).unwrap(),
        vec![ScheduleGate::Ended]
    );
}

#[test]
fn dst_transitions_on_the_manual_clock_in_two_zones() {
    // 2027-03-27 00:00Z, hour by hour for three days.
    for (tz, expect) in [
        (
            "Europe/Berlin",
            [
                "2027-03-27T01:30:00Z",
                "2027-03-28T01:00:00Z",
                "2027-03-29T00:30:00Z",
            ],
        ),
        (
            "America/New_York",
            [
                "2027-03-27T06:30:00Z",
                "2027-03-28T06:30:00Z",
                "2027-03-29T06:30:00Z",
            ],
        ),
    ] {
        let mut t = Harness::new();
        t.now = Timestamp::from_micros(1_806_105_600_000_000);
        let spec = ScheduleSpec {
            tz: Some(tz.into()),
            ..ScheduleSpec::cron("30 2 * * *")
        };
        put(&mut t, "d", spec);
        let mut got = Vec::new();
        for _ in 0..72 {
            t.advance(secs(3600));
            got.extend(
                fires(&mut t)
                    .into_iter()
                    .map(|f| super::schedules::rfc3339(f.at)),
            );
        }
        assert_eq!(got, expect, "{tz}");
    }
}

#[test]
fn jitter_delays_the_fire_but_not_its_scheduled_time() {
    let mut t = harness();
    let start = t.now;
    let spec = ScheduleSpec {
        jitter: secs(30),
        ..every(60, Overlap::AllowAll)
    };
    put(&mut t, "j", spec.clone());
    let due = t.engine.schedule("j").unwrap().next_due.unwrap();
    let at = start.plus(secs(60));
    assert_eq!(due, at.plus(spec.jitter_for("j", at)));
    t.now = due;
    t.advance(Duration::from_micros(0));
    let f = fires(&mut t);
    assert_eq!((f.len(), f[0].at), (1, at));
}

#[test]
fn trigger_runs_now_whatever_the_policy_and_is_recorded_as_manual() {
    let mut t = harness();
    put(&mut t, "t", every(3600, Overlap::Skip));
    let a = t.engine.trigger_schedule("t", t.now, &mut t.out).unwrap();
    let b = t.engine.trigger_schedule("t", t.now, &mut t.out).unwrap();
    assert_eq!(
        (a.outcome, b.outcome),
        (FireOutcome::Submitted, FireOutcome::Submitted)
    );
    assert!(a.manual && b.manual);
    assert!(
        b.at > a.at,
        "two triggers at one instant get distinct times"
    );
    assert_eq!(t.engine.schedule("t").unwrap().live.len(), 2);
}

#[test]
fn backfill_runs_past_fires_once() {
    let mut t = harness();
    let start = t.now;
    put(&mut t, "bf", every(60, Overlap::Skip));
    t.now = start.plus(secs(600));
    t.advance(Duration::ZERO);
    fires(&mut t);
    // 10 past fires; the store says two were backfilled already.
    let done: HashSet<Timestamp> = [start.plus(secs(120)), start.plus(secs(180))].into();
    let times = t
        .engine
        .backfill_times("bf", start, start.plus(secs(10_000)), &done)
        .unwrap();
    // start, start + 60 s, … start + 600 s (the cursor), less the two done.
    assert_eq!(times.len(), 9, "{times:?}");
    let ran = t
        .engine
        .backfill_schedule("bf", &times, t.now, &mut t.out)
        .unwrap();
    assert!(
        ran.iter()
            .all(|f| f.manual && f.outcome == FireOutcome::Submitted)
    );
    let again = t
        .engine
        .backfill_times("bf", start, start.plus(secs(600)), &done)
        .unwrap();
    assert!(again.is_empty());
    let e = t
        .engine
        .backfill_times("bf", start.plus(secs(60)), start, &done)
        .unwrap_err();
    assert!(matches!(
        e,
        ScheduleError::Bad(BadSchedule { field: "to", .. })
    ));
}

#[test]
fn bad_schedules_are_refused_and_change_nothing() {
    let mut t = harness();
    let cases: Vec<(ScheduleSpec, TaskSpec, &str)> = vec![
        (ScheduleSpec::cron("61 * * * *"), h("x"), "cron"),
        (
            ScheduleSpec {
                tz: Some("Nowhere/City".into()),
                ..ScheduleSpec::cron("0 * * * *")
            },
            h("x"),
            "tz",
        ),
        (
            ScheduleSpec::cron("0 * * * *"),
            TaskSpec {
                run_at: Some(t.now),
                ..h("x")
            },
            "template.run_at",
        ),
    ];
    for (spec, template, field) in cases {
        let e = t
            .engine
            .put_schedule("bad", spec, template, t.now, &mut t.out)
            .unwrap_err();
        match e {
            ScheduleError::Bad(b) => assert_eq!(b.field, field),
            other => panic!("{other:?}"),
        }
    }
    let e = t
        .engine
        .put_schedule(
            "a b",
            ScheduleSpec::cron("0 * * * *"),
            h("x"),
            t.now,
            &mut t.out,
        )
        .unwrap_err();
    assert!(matches!(
        e,
        ScheduleError::Bad(BadSchedule { field: "name", .. })
    ));
    let mut big = h("x");
    big.slots = 0;
    assert!(matches!(
        t.engine
            .put_schedule("z", ScheduleSpec::cron("0 * * * *"), big, t.now, &mut t.out),
        Err(ScheduleError::Template(_))
    ));
    assert!(t.out.changes.is_empty());
    assert_eq!(t.engine.schedule_count(), 0);
    assert_eq!(t.engine.next_wake(), None);
    assert!(matches!(
        t.engine.delete_schedule("none", &mut t.out),
        Err(ScheduleError::NotFound(_))
    ));
}

#[test]
fn an_edit_keeps_the_history_and_never_makes_a_past_fire_due() {
    let mut t = harness();
    let start = t.now;
    put(&mut t, "e", every(60, Overlap::AllowAll));
    t.advance(secs(90));
    assert_eq!(fires(&mut t).len(), 1);
    // Every 10 s now: 70, 80 are past; the next is 100.
    put(&mut t, "e", every(10, Overlap::AllowAll));
    assert!(fires(&mut t).is_empty());
    let v = t.engine.schedule("e").unwrap();
    assert_eq!(v.record.state.runs, 1);
    assert_eq!(v.next, Some(start.plus(secs(100))));
    t.engine.delete_schedule("e", &mut t.out).unwrap();
    assert_eq!(t.engine.next_wake(), None);
    assert!(matches!(
        t.out.changes.last(),
        Some(Change::ScheduleDeleted { .. })
    ));
}

#[test]
fn a_kept_schedule_fits_the_640_byte_size_class() {
    // 100,000 schedules must cost under 1 KiB each (see BENCHMARKS.md,
    // schedule-rss-core): the boxed entry is most of it, and one byte more
    // than 640 puts it in the allocator's 768-byte class.
    let size = std::mem::size_of::<schedules::Kept>();
    assert!(size <= 640, "a kept schedule grew to {size} bytes");
}

#[test]
fn schedule_templates_share_one_copy_of_their_queue_and_handler_names() {
    let names = |t: &Harness, name: &str| {
        let v = t.engine.schedule(name).expect("defined");
        let handler = match &v.record.template.kind {
            crate::TaskKind::Handler { name, .. } => name.clone(),
            other => panic!("a handler template, not {other:?}"),
        };
        (v.record.template.queue.clone(), handler)
    };
    let mut t = harness();
    // Each template built on its own: equal strings, separate allocations.
    put(&mut t, "a", every(60, Overlap::Skip));
    put(&mut t, "b", every(60, Overlap::Skip));
    let (qa, ha) = names(&t, "a");
    let (qb, hb) = names(&t, "b");
    assert!(Arc::ptr_eq(&qa, &qb), "one queue name for both");
    assert!(Arc::ptr_eq(&ha, &hb), "one handler name for both");

    // A restart's records are decoded one by one (each with its own
    // strings, as a store's JSON gives them): shared as well.
    let decoded = |name: &str| -> ScheduleRecord {
        let json = serde_json::to_string(&stored(&t, name)).expect("encode");
        serde_json::from_str(&json).expect("decode")
    };
    let recs = vec![decoded("a"), decoded("b")];
    assert!(!Arc::ptr_eq(
        &recs[0].template.queue,
        &recs[1].template.queue
    ));
    let mut r = harness();
    r.engine.restore_schedules(recs, r.now, &mut r.out);
    let (qa, ha) = names(&r, "a");
    let (qb, hb) = names(&r, "b");
    assert!(Arc::ptr_eq(&qa, &qb) && Arc::ptr_eq(&ha, &hb));
    // Shared, and still what the template said.
    assert_eq!(&*qa, crate::DEFAULT_QUEUE);
    assert_eq!(&*ha, "job");
}
