//! Concurrency keys: turns between keys, concurrency and rate limits per
//! key, queue caps — and what `explain` says of each.

use std::time::Duration;

use super::tests::{Harness, h};
use super::*;
use crate::Outcome;

fn keyed(key: &str) -> crate::TaskSpec {
    let mut s = h("x");
    s.concurrency_key = Some(key.into());
    s
}

fn limited(limits: Vec<KeyLimit>) -> Harness {
    Harness::with(EngineConfig {
        key_limits: limits,
        ..EngineConfig::default()
    })
}

fn conc(pattern: &str, n: u32) -> KeyLimit {
    KeyLimit {
        pattern: pattern.into(),
        concurrency: Some(n),
        rate: None,
    }
}

fn rate(pattern: &str, starts: u32, per: Duration) -> KeyLimit {
    KeyLimit {
        pattern: pattern.into(),
        concurrency: None,
        rate: Some(Rate { starts, per }),
    }
}

/// A new engine with `limits` rebuilt from `t`'s records of `ids` (as
/// after a restart: what was running is queued again), with worker `w`
/// of 4 slots.
fn restarted(t: &Harness, ids: &[TaskId], limits: Vec<KeyLimit>) -> Harness {
    let records: Vec<crate::TaskRecord> = ids
        .iter()
        .map(|id| t.engine.get(*id).unwrap().clone())
        .collect();
    let mut u = limited(limits);
    u.engine.restore(records, u.now, &mut u.out);
    u.worker("w", 4, &["x"]);
    u
}

/// Starts one task at a time on a one-slot worker and finishes it; the
/// order they ran in.
fn run_one_by_one(t: &mut Harness, n: usize) -> Vec<TaskId> {
    let mut order = Vec::new();
    for _ in 0..n {
        let a = t.start();
        assert_eq!(a.len(), 1, "one task per round");
        order.push(a[0].id);
        t.report(&a[0], Outcome::ok()).unwrap();
    }
    order
}

#[test]
fn a_key_with_many_tasks_does_not_starve_one_with_few() {
    let mut t = Harness::new();
    let big: Vec<TaskId> = (0..1000).map(|_| t.submit(keyed("big"))).collect();
    let small: Vec<TaskId> = (0..10).map(|_| t.submit(keyed("small"))).collect();
    t.worker("w", 1, &["x"]);
    let order = run_one_by_one(&mut t, 20);
    // They take turns: big, small, big, small… each in its own order.
    let expect: Vec<TaskId> = big.iter().zip(&small).flat_map(|(b, s)| [*b, *s]).collect();
    assert_eq!(order, expect);
    // A key that shows up later joins the turns where dispatch is, not
    // behind the 990 tasks of `big` still waiting.
    let late = t.submit(keyed("late"));
    let order = run_one_by_one(&mut t, 2);
    assert!(order.contains(&late), "{order:?}");
}

#[test]
fn tasks_without_a_key_stay_fifo_and_take_turns_as_one_group() {
    let mut t = Harness::new();
    let plain: Vec<TaskId> = (0..3).map(|_| t.submit(h("x"))).collect();
    let k: Vec<TaskId> = (0..3).map(|_| t.submit(keyed("k"))).collect();
    t.worker("w", 1, &["x"]);
    let order = run_one_by_one(&mut t, 6);
    assert_eq!(order, [plain[0], k[0], plain[1], k[1], plain[2], k[2]]);
    // Priority still comes first.
    let low = t.submit(keyed("a"));
    let mut s = keyed("a");
    s.priority = Priority::HIGH;
    let high = t.submit(s);
    assert_eq!(run_one_by_one(&mut t, 2), [high, low]);
    assert_eq!(t.engine.limit_state_sizes(), (0, 0));
}

#[test]
fn a_concurrency_limit_holds_tasks_across_workers_and_they_wait_not_fail() {
    let mut t = limited(vec![conc("cust-*", 2)]);
    t.worker("w1", 4, &["x"]);
    t.worker("w2", 4, &["x"]);
    let a: Vec<TaskId> = (0..5).map(|_| t.submit(keyed("cust-a"))).collect();
    let b: Vec<TaskId> = (0..3).map(|_| t.submit(keyed("cust-b"))).collect();
    let started = t.start();
    // Each customer has its own limit of 2; 8 free slots are not used up.
    let count =
        |ids: &[TaskId], got: &[Assignment]| got.iter().filter(|x| ids.contains(&x.id)).count();
    assert_eq!((count(&a, &started), count(&b, &started)), (2, 2));
    assert_eq!(t.engine.free_slots(), 4);
    // Dispatching again changes nothing while the four run.
    assert!(t.dispatch().is_empty());
    let held = a[2];
    assert_eq!(t.state(held), State::Queued);
    let x = t.engine.explain(held, t.now).unwrap();
    assert!(
        x.gates.iter().any(|g| matches!(g, Gate::ConcurrencyLimit { key, running: 2, limit: 2, ahead: 0 } if key == "cust-a")),
        "{x:?}"
    );
    // One of a's finishes: exactly one more of a's starts, in order.
    let first_a = started.iter().find(|s| a.contains(&s.id)).unwrap().clone();
    t.report(&first_a, Outcome::ok()).unwrap();
    let next = t.start();
    assert_eq!(next.iter().map(|x| x.id).collect::<Vec<_>>(), [a[2]]);
    let views = t.engine.key_limits(t.now);
    let va = views.iter().find(|v| v.key == "cust-a").unwrap();
    assert_eq!((va.running, va.admitted, va.held), (2, 0, 2));
    // Everything runs in the end, and nothing of the limits is left.
    let mut out: Vec<Assignment> = started
        .into_iter()
        .filter(|s| s.id != first_a.id)
        .chain(next)
        .collect();
    while !out.is_empty() {
        for x in std::mem::take(&mut out) {
            t.report(&x, Outcome::ok()).unwrap();
        }
        out = t.start();
    }
    for id in a.iter().chain(&b) {
        assert_eq!(t.state(*id), State::Succeeded, "{id}");
    }
    assert_eq!(t.engine.limit_state_sizes(), (0, 0));
}

#[test]
fn a_higher_priority_task_of_a_key_goes_before_those_already_let_through() {
    let mut t = limited(vec![conc("k", 1)]);
    let low1 = t.submit(keyed("k"));
    let low2 = t.submit(keyed("k"));
    let mut s = keyed("k");
    s.priority = Priority::CRITICAL;
    let crit = t.submit(s);
    t.worker("w", 4, &["x"]);
    assert_eq!(run_one_by_one(&mut t, 3), [crit, low1, low2]);
}

#[test]
fn a_rate_limit_spaces_starts_on_the_clock_and_explains_when_the_next_is_due() {
    let mut t = limited(vec![rate("api", 2, Duration::from_secs(1))]);
    t.worker("w", 10, &["x"]);
    let ids: Vec<TaskId> = (0..5).map(|_| t.submit(keyed("api"))).collect();
    // The burst: two at once.
    assert_eq!(t.start().len(), 2);
    assert!(t.dispatch().is_empty());
    let x = t.engine.explain(ids[2], t.now).unwrap();
    let due = x
        .gates
        .iter()
        .find_map(|g| match g {
            Gate::RateLimit {
                key,
                starts: 2,
                per_ms: 1000,
                next_at,
            } if key == "api" => *next_at,
            _ => None,
        })
        .unwrap_or_else(|| panic!("{x:?}"));
    // One token every 500 ms: the engine wakes for it.
    assert_eq!(due, t.now.plus(Duration::from_millis(500)));
    assert_eq!(t.engine.next_wake(), Some(due));
    t.advance(Duration::from_millis(499));
    assert!(t.dispatch().is_empty());
    t.advance(Duration::from_millis(1));
    assert_eq!(t.start().len(), 1);
    t.advance(Duration::from_millis(500));
    assert_eq!(t.start().len(), 1);
    t.advance(Duration::from_millis(500));
    assert_eq!(t.start().len(), 1);
    for id in &ids {
        assert_eq!(t.state(*id), State::Running);
    }
    // The bucket refills while idle, and then the key is forgotten.
    t.advance(Duration::from_secs(2));
    assert_eq!(t.engine.key_limits(t.now)[0].tokens, Some(2));
}

#[test]
fn a_queue_cap_limits_what_runs_from_it_and_explain_names_it() {
    let mut config = EngineConfig::default();
    config.queue_concurrency.insert("slow".into(), 2);
    let mut t = Harness::with(config);
    t.worker("w", 8, &["x"]);
    let slow = |t: &mut Harness| {
        let mut s = h("x");
        s.queue = "slow".into();
        t.submit(s)
    };
    let ids: Vec<TaskId> = (0..4).map(|_| slow(&mut t)).collect();
    let other = t.submit(h("x"));
    let got = t.start();
    assert_eq!(got.len(), 3, "two of `slow` and the other one");
    assert!(got.iter().any(|a| a.id == other));
    let x = t.engine.explain(ids[3], t.now).unwrap();
    assert!(
        x.gates.iter().any(|g| matches!(g, Gate::QueueConcurrency { queue, running: 2, limit: 2 } if queue == "slow")),
        "{x:?}"
    );
    let stats = t.engine.queue_stats();
    assert_eq!(
        stats.iter().find(|q| q.name == "slow").unwrap().concurrency,
        Some(2)
    );
    let first = got.iter().find(|a| a.id != other).unwrap().clone();
    t.report(&first, Outcome::ok()).unwrap();
    assert_eq!(t.start().len(), 1);
}

#[test]
fn limits_are_rebuilt_after_a_restart() {
    let limits = vec![conc("k", 1)];
    let mut t = limited(limits.clone());
    t.worker("w", 4, &["x"]);
    let ids: Vec<TaskId> = (0..3).map(|_| t.submit(keyed("k"))).collect();
    assert_eq!(t.start().len(), 1);
    // A new engine from the store's records: the running attempt died
    // with the old process and is queued again; still one at a time.
    let mut u = restarted(&t, &ids, limits);
    // (One per round on a four-slot worker: the limit holds.) The lost
    // attempt goes to the back of its key's line, as any lost attempt does.
    let order = run_one_by_one(&mut u, 3);
    assert_eq!(order, [ids[1], ids[2], ids[0]]);
    assert_eq!(u.engine.limit_state_sizes().1, 0);
}

#[test]
fn a_bad_concurrency_key_is_refused_and_changes_nothing() {
    let mut t = Harness::new();
    for (key, why) in [
        ("", "must not be empty"),
        ("a\nb", "control characters"),
        (&"k".repeat(300)[..], "longer than 256 bytes"),
    ] {
        let id = t.id();
        let err = t
            .engine
            .submit(id, keyed(key), t.now, &mut t.out)
            .unwrap_err();
        assert!(
            matches!(&err, SubmitError::Invalid { field: "concurrency_key", reason } if reason.contains(why)),
            "{err:?}"
        );
        assert!(t.engine.get(id).is_none());
    }
    assert!(t.out.changes.is_empty());
}

#[test]
fn a_task_of_a_key_that_cannot_be_dispatched_does_not_hold_its_key_back() {
    let mut t = limited(vec![conc("k", 1)]);
    t.worker("w", 4, &["x"]);
    let in_queue = |t: &mut Harness, q: &str| {
        let mut s = keyed("k");
        s.queue = q.into();
        t.submit(s)
    };
    // The first in line is in a paused queue: the key's one place goes to
    // the next, in a queue that dispatches.
    t.engine.set_queue_paused("q1", true, &mut t.out);
    let held = in_queue(&mut t, "q1");
    let runs = in_queue(&mut t, "q2");
    let got = t.start();
    assert_eq!(got.iter().map(|a| a.id).collect::<Vec<_>>(), [runs]);
    // Resumed, it waits for the key's limit, not for the pause.
    t.engine.set_queue_paused("q1", false, &mut t.out);
    assert!(t.dispatch().is_empty());
    let x = t.engine.explain(held, t.now).unwrap();
    assert!(
        x.gates
            .iter()
            .any(|g| matches!(g, Gate::ConcurrencyLimit { running: 1, .. })),
        "{x:?}"
    );
    t.report(&got[0], Outcome::ok()).unwrap();
    let second = t.start();
    assert_eq!(second.iter().map(|a| a.id).collect::<Vec<_>>(), [held]);

    // The same for a task no connected worker can run: it neither holds
    // the key back nor waits past its dispatch timeout.
    let mut s = keyed("k");
    s.kind = crate::TaskKind::handler("nobody", "null");
    s.dispatch_timeout = Some(Duration::from_secs(5));
    let orphan = t.submit(s);
    let next = t.submit(keyed("k"));
    t.report(&second[0], Outcome::ok()).unwrap();
    assert_eq!(t.start().iter().map(|a| a.id).collect::<Vec<_>>(), [next]);
    t.advance(Duration::from_secs(5));
    assert_eq!(t.state(orphan), State::Failed);
}

#[test]
fn the_last_capable_worker_leaving_starts_a_held_tasks_dispatch_timeout() {
    let mut t = limited(vec![conc("k", 1)]);
    let w = t.worker("w", 4, &["x"]);
    let first = t.submit(keyed("k"));
    let mut s = keyed("k");
    s.dispatch_timeout = Some(Duration::from_secs(5));
    let held = t.submit(s);
    assert_eq!(t.start().len(), 1);
    // The only worker goes: the running task is queued again, and the
    // held one has nowhere to run — its dispatch timeout counts.
    t.engine.remove_worker(&w, t.now, &mut t.out);
    t.advance(Duration::from_secs(5));
    assert_eq!(t.state(held), State::Failed);
    assert_eq!(t.state(first), State::Queued);
}

#[test]
fn turns_stay_fair_when_another_priority_dispatches_late_turns() {
    let mut t = Harness::new();
    let big: Vec<TaskId> = (0..100).map(|_| t.submit(keyed("big"))).collect();
    let mut s = keyed("big");
    s.priority = Priority::HIGH;
    let urgent = t.submit(s);
    t.worker("w", 1, &["x"]);
    assert_eq!(run_one_by_one(&mut t, 1), [urgent]);
    let small: Vec<TaskId> = (0..3).map(|_| t.submit(keyed("small"))).collect();
    let order = run_one_by_one(&mut t, 6);
    assert_eq!(
        order,
        [big[0], small[0], big[1], small[1], big[2], small[2]],
        "the late turn of the urgent task does not send `small` to the back"
    );
}

#[test]
fn a_restart_does_not_spend_tokens_again_for_what_was_running() {
    let limits = vec![rate("api", 2, Duration::from_secs(3600))];
    let mut t = limited(limits.clone());
    t.worker("w", 4, &["x"]);
    let ids: Vec<TaskId> = (0..2).map(|_| t.submit(keyed("api"))).collect();
    assert_eq!(t.start().len(), 2);
    let mut u = restarted(&t, &ids, limits);
    assert_eq!(
        u.start().len(),
        2,
        "a new process starts with a full bucket"
    );
}
