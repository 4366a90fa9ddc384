//! Engine behaviour, one scenario per test, driven by a manual clock.

use std::time::Duration;

use super::*;
use crate::{LabelReq, Outcome, Progress, RetryHint, RetryPolicy, TaskSpec};

pub(crate) struct Harness {
    pub(crate) engine: Engine,
    pub(crate) now: Timestamp,
    pub(crate) out: Outbox,
    next_id: u128,
}

impl Harness {
    pub(crate) fn new() -> Self {
        Self::with(EngineConfig::default())
    }
    pub(crate) fn with(config: EngineConfig) -> Self {
        Harness {
            engine: Engine::new(config),
            now: Timestamp::from_micros(1_000_000),
            out: Outbox::default(),
            next_id: 1,
        }
    }
    pub(crate) fn id(&mut self) -> TaskId {
        self.next_id += 1;
        TaskId::from_u128(self.next_id)
    }
    pub(crate) fn submit(&mut self, spec: TaskSpec) -> TaskId {
        let id = self.id();
        self.engine
            .submit(id, spec, self.now, &mut self.out)
            .expect("submit")
            .id()
    }
    pub(crate) fn worker(&mut self, name: &str, slots: u32, handlers: &[&str]) -> WorkerId {
        let info = WorkerInfo::local(name, slots, handlers.iter().copied());
        let id = info.id.clone();
        self.engine.register_worker(info, self.now);
        id
    }
    pub(crate) fn advance(&mut self, d: Duration) {
        self.now = self.now.plus(d);
        self.engine.tick(self.now, &mut self.out);
    }
    pub(crate) fn dispatch(&mut self) -> Vec<Assignment> {
        self.engine.dispatch(self.now, &mut self.out);
        std::mem::take(&mut self.out.assignments)
    }
    /// Dispatches and accepts everything offered.
    pub(crate) fn start(&mut self) -> Vec<Assignment> {
        let a = self.dispatch();
        for x in &a {
            self.engine
                .accept(&x.worker, x.id, x.attempt, self.now, &mut self.out)
                .expect("accept");
        }
        a
    }
    pub(crate) fn report(&mut self, a: &Assignment, o: Outcome) -> Result<ReportAck, CommandError> {
        self.engine
            .report(&a.worker, a.id, a.attempt, o, self.now, &mut self.out)
    }
    pub(crate) fn state(&self, id: TaskId) -> State {
        self.engine.get(id).expect("task").status.state
    }
    pub(crate) fn error(&self, id: TaskId) -> TaskFailure {
        self.engine
            .get(id)
            .expect("task")
            .status
            .error
            .clone()
            .expect("error")
    }
}

pub(crate) fn h(name: &str) -> TaskSpec {
    TaskSpec::new(TaskKind::handler(name, "null"))
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn a_task_runs_to_success_and_every_change_is_recorded() {
    let mut t = Harness::new();
    let w = t.worker("w1", 1, &["echo"]);
    let id = t.submit(h("echo"));
    assert_eq!(t.state(id), State::Queued);
    let a = t.start();
    assert_eq!(
        (a.len(), a[0].id, a[0].attempt, &a[0].worker),
        (1, id, 1, &w)
    );
    assert_eq!(t.state(id), State::Running);
    let ack = t.report(
        &a[0],
        Outcome::Succeeded {
            result: Some("42".into()),
            exit_code: None,
        },
    );
    assert_eq!(
        ack,
        Ok(ReportAck {
            state: State::Succeeded
        })
    );
    let rec = t.engine.get(id).unwrap();
    assert_eq!(rec.status.result.as_deref(), Some("42"));
    let states: Vec<State> = t.out.changes.iter().filter_map(Change::new_state).collect();
    assert_eq!(
        states,
        [
            State::Queued,
            State::Assigned,
            State::Running,
            State::Succeeded
        ]
    );
    assert_eq!(t.engine.free_slots(), 1);
    assert_eq!(t.engine.timer_count(), 0);
    let m = t.engine.metrics().snapshot(t.now);
    assert_eq!(
        (
            m.submitted,
            m.succeeded,
            m.run_time.count,
            m.queue_wait.count
        ),
        (1, 1, 1, 1)
    );
}

/// A task of handler `x` at priority `p`.
fn prio(p: Priority) -> TaskSpec {
    let mut s = h("x");
    s.priority = p;
    s
}

#[test]
fn higher_priority_first_then_fifo() {
    let mut t = Harness::new();
    let low = t.submit(prio(Priority::LOW));
    let n1 = t.submit(prio(Priority::NORMAL));
    let crit = t.submit(prio(Priority::CRITICAL));
    let n2 = t.submit(prio(Priority::NORMAL));
    let num = t.submit(prio(Priority(200)));
    t.worker("w", 1, &["x"]);
    let mut order = Vec::new();
    for _ in 0..5 {
        let a = t.start();
        assert_eq!(a.len(), 1);
        order.push(a[0].id);
        t.report(&a[0], Outcome::ok()).unwrap();
    }
    assert_eq!(order, [crit, num, n1, n2, low]);
}

/// A capped dispatch makes the first assignments a full one would, most
/// urgent first, and the rest stay queued for the next.
#[test]
fn a_capped_dispatch_hands_out_the_most_urgent_first() {
    let mut t = Harness::new();
    let low = t.submit(prio(Priority::LOW));
    let n1 = t.submit(prio(Priority::NORMAL));
    let crit = t.submit(prio(Priority::CRITICAL));
    let n2 = t.submit(prio(Priority::NORMAL));
    t.worker("w", 8, &["x"]);
    let now = t.now;
    assert_eq!(t.engine.dispatch_up_to(now, &mut t.out, 0), 0);
    assert_eq!(t.engine.dispatch_up_to(now, &mut t.out, 2), 2);
    let first: Vec<TaskId> = t.out.assignments.drain(..).map(|a| a.id).collect();
    assert_eq!(first, [crit, n1]);
    assert_eq!(t.engine.free_slots(), 6);
    let rest: Vec<TaskId> = t.dispatch().into_iter().map(|a| a.id).collect();
    assert_eq!(rest, [n2, low]);
}

#[test]
fn run_at_delays_until_its_time() {
    let mut t = Harness::new();
    t.worker("w", 1, &["x"]);
    let mut s = h("x");
    s.run_at = Some(t.now.plus(ms(500)));
    let id = t.submit(s);
    assert_eq!(t.state(id), State::Pending);
    assert_eq!(t.engine.next_wake(), Some(t.now.plus(ms(500))));
    assert!(t.dispatch().is_empty());
    t.advance(ms(499));
    assert_eq!(t.state(id), State::Pending);
    t.advance(ms(1));
    assert_eq!(t.state(id), State::Queued);
    assert_eq!(t.dispatch().len(), 1);
}

#[test]
fn a_task_that_does_not_start_before_expires_at_expires() {
    let mut t = Harness::new();
    let mut s = h("nobody-has-this");
    s.expires_at = Some(t.now.plus(ms(100)));
    let id = t.submit(s);
    t.advance(ms(100));
    assert_eq!(t.state(id), State::Expired);
    assert_eq!(t.error(id).code, FailureCode::Expired);
    assert_eq!(t.engine.timer_count(), 0);
}

#[test]
fn an_attempt_past_its_timeout_is_stopped_and_its_late_report_is_stale() {
    let mut t = Harness::new();
    t.worker("w", 1, &["slow"]);
    let mut s = h("slow");
    s.timeout = Some(ms(200));
    let id = t.submit(s);
    let a = t.start().remove(0);
    t.advance(ms(199));
    assert_eq!(t.state(id), State::Running);
    t.advance(ms(1));
    assert_eq!(t.state(id), State::TimedOut);
    assert_eq!(
        t.out.stops,
        [StopAttempt {
            id,
            attempt: 1,
            worker: a.worker.clone(),
            reason: StopReason::Timeout
        }]
    );
    // The slot stays held until the executor really stops.
    assert_eq!(t.engine.free_slots(), 0);
    let late = t.report(&a, Outcome::ok());
    assert!(matches!(late, Err(CommandError::Stale { .. })), "{late:?}");
    assert_eq!(t.state(id), State::TimedOut);
    assert_eq!(t.engine.free_slots(), 1);
}

#[test]
fn failures_retry_with_capped_jittered_backoff_then_fail() {
    let mut t = Harness::new();
    t.worker("w", 1, &["flaky"]);
    let mut s = h("flaky");
    s.retry = RetryPolicy {
        max_retries: 2,
        initial_backoff: ms(100),
        max_backoff: ms(150),
        multiplier: 2.0,
        jitter: 0.5,
    };
    let id = t.submit(s);
    for (retry, full) in [(1, 100), (2, 150)] {
        let a = t.start().remove(0);
        assert_eq!(a.attempt, retry);
        t.report(&a, Outcome::failed("boom")).unwrap();
        assert_eq!(t.state(id), State::Retrying);
        let wake = t.engine.get(id).unwrap().status.wake_at.unwrap();
        let delay = wake.since(t.now);
        assert!(
            delay <= ms(full) && delay >= ms(full / 2),
            "retry {retry}: {delay:?}"
        );
        t.advance(delay);
        assert_eq!(t.state(id), State::Queued);
    }
    let a = t.start().remove(0);
    t.report(&a, Outcome::failed("still broken")).unwrap();
    assert_eq!(t.state(id), State::Failed);
    let rec = t.engine.get(id).unwrap();
    assert_eq!((rec.status.retries, rec.status.attempt), (2, 3));
    assert_eq!(rec.status.error.as_ref().unwrap().message, "still broken");
    assert_eq!(t.engine.metrics().snapshot(t.now).retried, 2);
}

#[test]
fn a_handler_can_ask_for_a_retry_delay_or_refuse_retries() {
    let mut t = Harness::new();
    t.worker("w", 1, &["x"]);
    let mut s = h("x");
    s.retry = RetryPolicy::retries(5);
    let id = t.submit(s.clone());
    let a = t.start().remove(0);
    let after = Outcome::Failed {
        message: "later".into(),
        retry: RetryHint::After(ms(7)),
        exit_code: None,
    };
    t.report(&a, after).unwrap();
    assert_eq!(
        t.engine.get(id).unwrap().status.wake_at,
        Some(t.now.plus(ms(7)))
    );
    let id2 = t.submit(s);
    t.advance(ms(7));
    let started = t.start();
    let a2 = started.iter().find(|a| a.id == id2).unwrap();
    let never = Outcome::Failed {
        message: "fatal".into(),
        retry: RetryHint::Never,
        exit_code: Some(3),
    };
    t.report(a2, never).unwrap();
    assert_eq!(t.state(id2), State::Failed);
    assert_eq!(t.engine.get(id2).unwrap().status.exit_code, Some(3));
}

#[test]
fn cancel_ends_waiting_tasks_at_once_and_running_ones_when_they_stop() {
    let mut t = Harness::new();
    let queued = t.submit(h("x"));
    assert_eq!(
        t.engine.cancel(queued, t.now, &mut t.out),
        Ok(CancelOutcome::Cancelled)
    );
    assert_eq!(t.state(queued), State::Cancelled);
    assert_eq!(
        t.engine.cancel(queued, t.now, &mut t.out),
        Ok(CancelOutcome::AlreadyFinished(State::Cancelled))
    );

    t.worker("w", 1, &["x"]);
    let running = t.submit(h("x"));
    let a = t.start().remove(0);
    assert_eq!(
        t.engine.cancel(running, t.now, &mut t.out),
        Ok(CancelOutcome::Requested)
    );
    assert_eq!(t.out.stops.last().unwrap().reason, StopReason::Cancel);
    assert_eq!(t.state(running), State::Running);
    t.report(&a, Outcome::ok()).unwrap();
    assert_eq!(t.state(running), State::Cancelled);
    assert_eq!(t.error(running).code, FailureCode::Cancelled);
    let unknown = TaskId::from_u128(999_999);
    assert_eq!(
        t.engine.cancel(unknown, t.now, &mut t.out),
        Err(CommandError::NotFound(unknown))
    );
}

#[test]
fn cancel_by_tag_touches_only_live_tasks_with_the_tag() {
    let mut t = Harness::new();
    let mut tagged = h("x");
    tagged.tags = vec!["batch-7".into()];
    let a = t.submit(tagged.clone());
    let b = t.submit(tagged);
    let c = t.submit(h("x"));
    assert_eq!(t.engine.cancel_tag("batch-7", t.now, &mut t.out), 2);
    assert_eq!(
        (t.state(a), t.state(b), t.state(c)),
        (State::Cancelled, State::Cancelled, State::Queued)
    );
    assert_eq!(t.engine.cancel_tag("batch-7", t.now, &mut t.out), 0);
}

#[test]
fn dependents_run_after_success_and_are_cancelled_naming_a_failed_dependency() {
    let mut t = Harness::new();
    t.worker("w", 4, &["x"]);
    let a = t.submit(h("x"));
    let mut sb = h("x");
    sb.after = vec![a];
    let b = t.submit(sb);
    let mut sc = h("x");
    sc.after = vec![b];
    let c = t.submit(sc);
    assert_eq!((t.state(b), t.state(c)), (State::Pending, State::Pending));
    let run = t.start();
    assert_eq!(run.len(), 1);
    t.report(&run[0], Outcome::ok()).unwrap();
    assert_eq!(t.state(b), State::Queued);
    let run = t.start();
    t.report(&run[0], Outcome::failed("nope")).unwrap();
    assert_eq!(t.state(b), State::Failed);
    assert_eq!(t.state(c), State::Cancelled);
    let err = t.error(c);
    assert_eq!(err.code, FailureCode::DependencyFailed);
    assert!(err.message.contains(&b.to_string()), "{}", err.message);
    // A new task that depends on a task that already failed is cancelled at once.
    let mut sd = h("x");
    sd.after = vec![b];
    let d = t.submit(sd);
    assert_eq!(t.state(d), State::Cancelled);
}

#[test]
fn a_unique_key_returns_the_live_task_and_is_released_when_it_ends() {
    let mut t = Harness::new();
    let mut s = h("x");
    s.unique_key = Some("nightly".into());
    let first = t.submit(s.clone());
    let again = t.id();
    let r = t
        .engine
        .submit(again, s.clone(), t.now, &mut t.out)
        .unwrap();
    assert_eq!(r, Submitted::Existing(first));
    assert!(t.engine.get(again).is_none());
    t.engine.cancel(first, t.now, &mut t.out).unwrap();
    let third = t.submit(s);
    assert_ne!(third, first);
}

#[test]
fn a_full_queue_refuses_the_whole_batch() {
    let mut cfg = EngineConfig::default();
    cfg.queue_limits.insert("small".into(), 2);
    let mut t = Harness::with(cfg);
    let mut s = h("x");
    s.queue = "small".into();
    t.submit(s.clone());
    let batch = vec![(t.id(), s.clone()), (t.id(), s.clone())];
    let before = t.out.changes.len();
    let err = t.engine.submit_batch(batch, t.now, &mut t.out).unwrap_err();
    assert_eq!(
        err,
        SubmitError::QueueFull {
            queue: "small".into(),
            limit: 2
        }
    );
    assert_eq!(t.out.changes.len(), before);
    assert_eq!(t.engine.live_tasks(), 1);
    t.submit(s.clone());
    // Another queue is not affected.
    t.submit(h("x"));
}

#[test]
fn tasks_go_only_to_workers_with_their_labels_and_handler() {
    let mut t = Harness::new();
    let plain = t.worker("plain", 4, &["x"]);
    let mut gpu_info = WorkerInfo::local("gpu", 4, ["x"]);
    gpu_info.labels = vec![("gpu".into(), String::new()), ("os".into(), "linux".into())];
    t.engine.register_worker(gpu_info, t.now);
    let mut s = h("x");
    s.labels = vec![
        "gpu".parse::<LabelReq>().unwrap(),
        "os=linux".parse().unwrap(),
    ];
    for _ in 0..3 {
        t.submit(s.clone());
    }
    let other = t.submit(h("y"));
    let a = t.dispatch();
    assert_eq!(a.len(), 3);
    assert!(a.iter().all(|a| a.worker.as_str() == "gpu"));
    assert_eq!(t.state(other), State::Queued);
    assert_ne!(a[0].worker, plain);
}

#[test]
fn a_refused_task_goes_to_another_worker_and_fails_when_all_refuse() {
    let mut t = Harness::new();
    let w1 = t.worker("w1", 1, &["x"]);
    let w2 = t.worker("w2", 1, &["x"]);
    let id = t.submit(h("x"));
    let a = t.dispatch().remove(0);
    t.engine
        .reject(&a.worker, id, a.attempt, "busy disk", t.now, &mut t.out)
        .unwrap();
    assert_eq!(t.state(id), State::Queued);
    let b = t.dispatch().remove(0);
    assert_ne!(b.worker, a.worker);
    assert_eq!(b.attempt, 2);
    t.engine
        .reject(&b.worker, id, b.attempt, "no docker", t.now, &mut t.out)
        .unwrap();
    assert_eq!(t.state(id), State::Failed);
    let err = t.error(id);
    assert_eq!(err.code, FailureCode::NoCapableWorker);
    assert!(err.message.contains("no docker"));
    assert_eq!(t.engine.free_slots(), 2);
    let _ = (w1, w2);
}

#[test]
fn no_capable_worker_within_the_dispatch_timeout_fails_the_task() {
    let mut t = Harness::new();
    t.worker("w", 1, &["x"]);
    let mut s = h("x");
    s.labels = vec!["arm64".parse().unwrap()];
    s.dispatch_timeout = Some(Duration::from_secs(3));
    let id = t.submit(s.clone());
    t.advance(Duration::from_secs(3));
    assert_eq!(t.state(id), State::Failed);
    let err = t.error(id);
    assert_eq!(err.code, FailureCode::NoCapableWorker);
    assert!(err.message.contains("arm64"), "{}", err.message);
    // A busy capable worker is not "no capable worker".
    let mut busy = h("x");
    busy.dispatch_timeout = Some(Duration::from_secs(3));
    t.submit(h("x"));
    t.start();
    let waits = t.submit(busy);
    t.advance(Duration::from_secs(10));
    assert_eq!(t.state(waits), State::Queued);
}

#[test]
fn a_silent_worker_is_dropped_and_its_tasks_rerun_elsewhere() {
    let mut t = Harness::new();
    let mut info = WorkerInfo::local("flaky", 1, ["x"]);
    info.heartbeat_timeout = Some(Duration::from_secs(15));
    t.engine.register_worker(info, t.now);
    let id = t.submit(h("x"));
    let a = t.start().remove(0);
    t.advance(Duration::from_secs(10));
    t.engine.heartbeat(&a.worker, t.now).unwrap();
    t.advance(Duration::from_secs(14));
    assert_eq!(t.state(id), State::Running);
    t.advance(Duration::from_secs(1));
    assert_eq!(t.state(id), State::Queued);
    assert_eq!(t.engine.worker_count(), 0);
    t.worker("steady", 1, &["x"]);
    let b = t.start().remove(0);
    assert_eq!((b.id, b.attempt, b.worker.as_str()), (id, 2, "steady"));
    assert!(matches!(
        t.report(&a, Outcome::ok()),
        Err(CommandError::Stale { .. })
    ));
    t.report(&b, Outcome::ok()).unwrap();
    assert_eq!(t.state(id), State::Succeeded);
}

#[test]
fn bad_input_is_refused_with_a_typed_error_and_changes_nothing() {
    let mut t = Harness::with(EngineConfig {
        max_payload_bytes: 64,
        ..EngineConfig::default()
    });
    let existing = t.submit(h("x"));
    let changes = t.out.changes.len();
    let mut cases: Vec<(TaskSpec, &str)> = Vec::new();
    let mut s = h("x");
    s.timeout = Some(Duration::ZERO);
    cases.push((s, "invalid timeout: must be positive"));
    let mut s = h("x");
    s.timeout = Some(Duration::from_secs(365 * 24 * 3600));
    cases.push((s, "invalid timeout"));
    cases.push((
        TaskSpec::new(TaskKind::handler("x", "0".repeat(100))),
        "payload of 101 bytes exceeds",
    ));
    let mut s = h("x");
    s.after = vec![TaskId::from_u128(12345)];
    cases.push((s, "unknown dependency"));
    let mut s = h("x");
    s.retry.multiplier = f64::NAN;
    cases.push((s, "retry.multiplier"));
    let mut s = h("x");
    s.queue = "".into();
    cases.push((s, "invalid queue"));
    let mut s = h("x");
    s.expires_at = Some(t.now);
    cases.push((s, "expires_at"));
    for (spec, want) in cases {
        let id = t.id();
        let err = t.engine.submit(id, spec, t.now, &mut t.out).unwrap_err();
        assert!(err.to_string().contains(want), "{err} !~ {want}");
        assert!(t.engine.get(id).is_none());
    }
    // A task depending on itself, and a cycle inside a batch.
    let id = t.id();
    let mut s = h("x");
    s.after = vec![id];
    assert_eq!(
        t.engine.submit(id, s, t.now, &mut t.out),
        Err(SubmitError::CyclicDependency(id))
    );
    let (a, b) = (t.id(), t.id());
    let (mut sa, mut sb) = (h("x"), h("x"));
    sa.after = vec![b];
    sb.after = vec![a, existing];
    let err = t
        .engine
        .submit_batch(vec![(a, sa), (b, sb)], t.now, &mut t.out)
        .unwrap_err();
    assert!(matches!(err, SubmitError::CyclicDependency(_)), "{err}");
    // A longer cycle (e → f → g → e), beside tasks of the batch with no
    // dependency or only on a task outside it.
    let (c, d, e, f, g) = (t.id(), t.id(), t.id(), t.id(), t.id());
    let (mut sd, mut se, mut sf, mut sg) = (h("x"), h("x"), h("x"), h("x"));
    sd.after = vec![existing];
    se.after = vec![f];
    sf.after = vec![existing, g];
    sg.after = vec![c, e];
    let err = t
        .engine
        .submit_batch(
            vec![(c, h("x")), (d, sd), (e, se), (f, sf), (g, sg)],
            t.now,
            &mut t.out,
        )
        .unwrap_err();
    assert!(matches!(err, SubmitError::CyclicDependency(_)), "{err}");
    assert_eq!(
        t.engine.submit(existing, h("x"), t.now, &mut t.out),
        Err(SubmitError::DuplicateId(existing))
    );
    assert_eq!(t.out.changes.len(), changes);
    assert_eq!(t.engine.live_tasks(), 1);
}

#[test]
fn a_batch_may_depend_on_itself_in_order() {
    let mut t = Harness::new();
    let (a, b) = (t.id(), t.id());
    let mut sb = h("x");
    sb.after = vec![a];
    let r = t
        .engine
        .submit_batch(vec![(b, sb), (a, h("x"))], t.now, &mut t.out)
        .unwrap();
    assert_eq!(r, [Submitted::Created(b), Submitted::Created(a)]);
    assert_eq!((t.state(a), t.state(b)), (State::Queued, State::Pending));
}

#[test]
fn restore_requeues_what_was_running_as_a_new_attempt() {
    let mut t = Harness::new();
    t.worker("w", 2, &["x"]);
    let running = t.submit(h("x"));
    t.start();
    let mut s = h("x");
    s.after = vec![running];
    let waiting = t.submit(s);
    let records: Vec<TaskRecord> = [running, waiting]
        .iter()
        .map(|id| t.engine.get(*id).unwrap().clone())
        .collect();

    let mut r = Harness::new();
    r.engine.restore(records, r.now, &mut r.out);
    assert_eq!(r.state(running), State::Queued);
    assert_eq!(r.state(waiting), State::Pending);
    assert!(matches!(
        r.out.changes[0],
        Change::Status {
            attempt_outcome: Some(AttemptOutcome::Lost),
            from: State::Running,
            ..
        }
    ));
    r.worker("w2", 2, &["x"]);
    let a = r.start().remove(0);
    assert_eq!((a.id, a.attempt), (running, 2));
    r.report(&a, Outcome::ok()).unwrap();
    assert_eq!(r.state(waiting), State::Queued);
}

#[test]
fn a_checkpoint_is_handed_to_the_next_attempt() {
    let mut t = Harness::new();
    t.worker("w", 1, &["x"]);
    let mut s = h("x");
    s.retry = RetryPolicy {
        initial_backoff: ms(1),
        ..RetryPolicy::retries(1)
    };
    let id = t.submit(s);
    let a = t.start().remove(0);
    assert_eq!(a.checkpoint, None);
    t.engine
        .checkpoint(&a.worker, id, a.attempt, r#"{"step":3}"#.into(), &mut t.out)
        .unwrap();
    t.report(&a, Outcome::failed("crash")).unwrap();
    t.advance(ms(1));
    let b = t.start().remove(0);
    assert_eq!(b.checkpoint.as_deref(), Some(r#"{"step":3}"#));
    // Progress from the old attempt is stale.
    let p = Progress {
        fraction: 0.5,
        message: None,
    };
    assert!(matches!(
        t.engine.progress(&a.worker, id, a.attempt, p, &mut t.out),
        Err(CommandError::Stale { .. })
    ));
}

#[test]
fn only_the_worker_holding_an_attempt_may_write_into_it() {
    let mut t = Harness::new();
    t.worker("victim", 1, &["x"]);
    let id = t.submit(h("x"));
    let a = t.start().remove(0);
    t.worker("rogue", 1, &["x"]);
    let rogue = WorkerId::new("rogue");
    let before = t.out.changes.len();
    let p = Progress {
        fraction: 0.9,
        message: Some("forged".into()),
    };
    assert!(matches!(
        t.engine.progress(&rogue, id, a.attempt, p, &mut t.out),
        Err(CommandError::Stale { .. })
    ));
    assert!(matches!(
        t.engine
            .checkpoint(&rogue, id, a.attempt, r#"{"forged":1}"#.into(), &mut t.out),
        Err(CommandError::Stale { .. })
    ));
    assert!(matches!(
        t.engine.output(
            &rogue,
            id,
            a.attempt,
            crate::Stream::Stdout,
            "forged".into(),
            &mut t.out
        ),
        Err(CommandError::Stale { .. })
    ));
    assert_eq!(
        t.out.changes.len(),
        before,
        "a refused write changes nothing"
    );
    let rec = t.engine.get(id).unwrap();
    assert_eq!(
        (rec.progress.as_ref(), rec.checkpoint.as_ref()),
        (None, None)
    );
    // The holder still may.
    t.engine
        .output(
            &a.worker,
            id,
            a.attempt,
            crate::Stream::Stdout,
            "ok".into(),
            &mut t.out,
        )
        .unwrap();
}

#[test]
fn min_trust_keeps_tasks_off_untrusted_workers() {
    let mut t = Harness::new();
    t.worker("new", 1, &["x"]);
    let mut s = h("x");
    // A new worker starts at 0.5; each success raises it: 0.67, 0.75, 0.80.
    s.min_trust = Some(0.76);
    let picky = t.submit(s);
    assert!(t.dispatch().is_empty());
    // The worker earns trust on ordinary work.
    for _ in 0..3 {
        t.submit(h("x"));
        let a = t.start().remove(0);
        t.report(&a, Outcome::ok()).unwrap();
    }
    let a = t.dispatch().remove(0);
    assert_eq!(a.id, picky);
}

#[test]
fn a_paused_queue_holds_its_tasks() {
    let mut t = Harness::new();
    t.worker("w", 1, &["x"]);
    t.engine.set_queue_paused("default", true, &mut t.out);
    let id = t.submit(h("x"));
    assert!(t.dispatch().is_empty());
    let stats = t.engine.queue_stats();
    assert_eq!((stats[0].ready, stats[0].paused), (1, true));
    t.engine.set_queue_paused("default", false, &mut t.out);
    assert_eq!(t.dispatch()[0].id, id);
}

#[test]
fn finished_tasks_beyond_the_retention_are_forgotten() {
    let mut t = Harness::with(EngineConfig {
        retain_finished: 2,
        ..EngineConfig::default()
    });
    let ids: Vec<TaskId> = (0..4).map(|_| t.submit(h("x"))).collect();
    for id in &ids {
        t.engine.cancel(*id, t.now, &mut t.out).unwrap();
    }
    // Still there until the next tick: the shell may look them up meanwhile.
    assert!(t.engine.get(ids[0]).is_some());
    t.advance(Duration::ZERO);
    assert!(t.engine.get(ids[0]).is_none() && t.engine.get(ids[1]).is_none());
    assert!(t.engine.get(ids[3]).is_some());
    // A dependency on a forgotten task resolves through note_finished.
    let mut s = h("x");
    s.after = vec![ids[0]];
    assert_eq!(
        t.engine
            .unresolved_dependencies(&s.after)
            .collect::<Vec<_>>(),
        [ids[0]]
    );
    t.engine.note_finished(ids[0], State::Succeeded);
    let id = t.submit(s);
    assert_eq!(t.state(id), State::Queued);
}

#[test]
fn a_queued_task_stays_small() {
    // The engine holds every live task; 1,000,000 queued must stay under
    // 1 KiB each including indexes (see BENCHMARKS.md, rss-core).
    assert!(
        std::mem::size_of::<Entry>() <= 640,
        "Entry grew to {} bytes",
        std::mem::size_of::<Entry>()
    );
    assert_eq!(std::mem::size_of::<TaskId>(), 16);
    assert_eq!(std::mem::align_of::<TaskId>(), 8);
}

#[test]
fn a_reconnecting_worker_keeps_current_attempts_and_stops_stale_ones() {
    let mut t = Harness::new();
    let w = t.worker("w", 3, &["x"]);
    let kept = t.submit(h("x"));
    let forgotten = t.submit(h("x"));
    let a = t.start();
    assert_eq!(a.len(), 2);
    // Disconnected: nothing new is offered.
    t.engine.set_worker_paused(&w, true).unwrap();
    let waiting = t.submit(h("x"));
    assert!(t.dispatch().is_empty());
    // It comes back running `kept` and an attempt it should not have.
    let stale = (TaskId::from_u128(777), 1);
    let stop = t
        .engine
        .reconcile_worker(&w, &[(kept, 1), stale], t.now, &mut t.out);
    assert_eq!(stop, [stale]);
    assert_eq!(t.state(kept), State::Running);
    assert_eq!(
        t.state(forgotten),
        State::Queued,
        "the attempt it lost is re-queued"
    );
    t.engine
        .register_worker(WorkerInfo::local("w", 3, ["x"]), t.now);
    let next: Vec<TaskId> = t.dispatch().iter().map(|a| a.id).collect();
    assert_eq!(next.len(), 2);
    assert!(next.contains(&forgotten) && next.contains(&waiting));
}

#[test]
fn explain_names_every_gate() {
    let mut t = Harness::new();
    // No worker at all: routing is the gate.
    let mut s = h("render");
    s.labels = vec!["gpu".parse().unwrap()];
    let lonely = t.submit(s);
    let x = t.engine.explain(lonely, t.now).unwrap();
    assert!(
        matches!(&x.gates[0], Gate::NoCapableWorker { requirement, labels, .. }
        if requirement == "handler:render" && labels.len() == 1),
        "{x:?}"
    );
    // A busy worker, two tasks ahead, one of them higher priority.
    t.worker("w", 1, &["x"]);
    let running = t.submit(h("x"));
    t.start();
    let mut hi = h("x");
    hi.priority = Priority::HIGH;
    t.submit(h("x"));
    t.submit(hi);
    let last = t.submit(h("x"));
    let x = t.engine.explain(last, t.now).unwrap();
    assert!(
        x.gates
            .iter()
            .any(|g| matches!(g, Gate::WorkersBusy { workers, needs: 1 } if workers[0].1 == 1)),
        "{x:?}"
    );
    assert!(
        x.gates.contains(&Gate::Position {
            queue: "default".into(),
            priority: Priority::NORMAL,
            ahead: 2
        }),
        "{x:?}"
    );
    // A dependency and a run_at.
    let mut later = h("x");
    later.after = vec![running];
    later.run_at = Some(t.now.plus(ms(10)));
    let waiting = t.submit(later);
    let x = t.engine.explain(waiting, t.now).unwrap();
    assert_eq!(
        x.gates[0],
        Gate::RunAt {
            at: t.now.plus(ms(10))
        }
    );
    assert_eq!(
        x.gates[1],
        Gate::Dependency {
            task: running,
            state: Some(State::Running)
        }
    );
    // Running: no gates, and the worker is named.
    let x = t.engine.explain(running, t.now).unwrap();
    assert_eq!(
        (
            x.state,
            x.worker.as_ref().map(|w| w.as_str()),
            x.gates.len()
        ),
        (State::Running, Some("w"), 0)
    );
    t.engine.set_queue_paused("default", true, &mut t.out);
    assert!(
        t.engine
            .explain(last, t.now)
            .unwrap()
            .gates
            .contains(&Gate::QueuePaused {
                queue: "default".into()
            })
    );
    // Finished: the worker that ran its last attempt is named.
    let a = t.engine.get(running).unwrap().status.attempt;
    let assignment = Assignment {
        id: running,
        attempt: a,
        worker: WorkerId::new("w"),
        kind: h("x").kind,
        timeout: None,
        checkpoint: None,
        slots: 1,
        resources: crate::Resources::default(),
        stdin: None,
    };
    t.report(&assignment, Outcome::ok()).unwrap();
    let x = t.engine.explain(running, t.now).unwrap();
    assert_eq!(
        (x.state, x.worker.as_ref().map(|w| w.as_str())),
        (State::Succeeded, Some("w"))
    );
}

#[test]
fn a_lost_attempt_with_a_pending_cancel_ends_cancelled_not_requeued() {
    let mut t = Harness::new();
    let w = t.worker("w", 1, &["x"]);
    let id = t.submit(h("x"));
    t.start();
    assert_eq!(
        t.engine.cancel(id, t.now, &mut t.out),
        Ok(CancelOutcome::Requested)
    );
    t.engine.remove_worker(&w, t.now, &mut t.out);
    assert_eq!(t.state(id), State::Cancelled);
    assert_eq!(t.error(id).code, FailureCode::Cancelled);
}

#[test]
fn a_task_needing_more_slots_than_any_worker_has_no_capable_worker() {
    let mut t = Harness::new();
    t.worker("small", 2, &["x"]);
    let mut big = h("x");
    big.slots = 4;
    big.dispatch_timeout = Some(Duration::from_secs(1));
    let id = t.submit(big);
    // It does not block the tasks behind it.
    let small = t.submit(h("x"));
    assert_eq!(t.dispatch()[0].id, small);
    let x = t.engine.explain(id, t.now).unwrap();
    assert!(
        matches!(&x.gates[0], Gate::NoCapableWorker { detail, .. } if detail.contains("at least 4 slots")),
        "{x:?}"
    );
    t.advance(Duration::from_secs(1));
    assert_eq!(t.state(id), State::Failed);
    assert_eq!(t.error(id).code, FailureCode::NoCapableWorker);
}

#[test]
fn only_the_attempts_worker_can_accept_refuse_or_finish_it() {
    let mut t = Harness::new();
    t.worker("a", 1, &["x"]);
    let b = t.worker("b", 1, &["x"]);
    let id = t.submit(h("x"));
    let a = t.dispatch().remove(0);
    let other = if a.worker == b {
        WorkerId::new("a")
    } else {
        b.clone()
    };
    assert!(matches!(
        t.engine.accept(&other, id, a.attempt, t.now, &mut t.out),
        Err(CommandError::Stale { .. })
    ));
    t.engine
        .accept(&a.worker, id, a.attempt, t.now, &mut t.out)
        .unwrap();
    let forged = t
        .engine
        .report(&other, id, a.attempt, Outcome::ok(), t.now, &mut t.out);
    assert!(matches!(forged, Err(CommandError::Stale { .. })));
    assert_eq!(t.state(id), State::Running);
    assert_eq!(
        t.engine.free_slots(),
        1,
        "the real worker still holds its slot"
    );
    t.report(&a, Outcome::ok()).unwrap();
    assert_eq!(t.state(id), State::Succeeded);
}

#[test]
fn restore_ends_a_cancelled_run_and_never_releases_a_task_whose_dependency_failed() {
    let mut t = Harness::new();
    t.worker("w", 1, &["x"]);
    let running = t.submit(h("x"));
    t.start();
    t.engine.cancel(running, t.now, &mut t.out).unwrap();
    let mut s = h("x");
    s.after = vec![running];
    let dependent = t.submit(s);
    let failed_dep = TaskId::from_u128(4242);
    let mut s2 = h("x");
    s2.after = vec![failed_dep];
    let mut orphan = t.engine.get(dependent).unwrap().clone();
    orphan.id = TaskId::from_u128(4343);
    orphan.spec = s2;
    let records = vec![
        t.engine.get(running).unwrap().clone(),
        t.engine.get(dependent).unwrap().clone(),
        orphan,
    ];

    let mut r = Harness::with(EngineConfig {
        retain_finished: 0,
        ..EngineConfig::default()
    });
    r.engine.note_finished(failed_dep, State::Failed);
    r.engine.restore(records, r.now, &mut r.out);
    let states: Vec<(TaskId, State)> = r
        .out
        .changes
        .iter()
        .filter_map(|c| c.new_state().zip(c.task_id()).map(|(s, id)| (id, s)))
        .collect();
    assert!(states.contains(&(running, State::Cancelled)), "{states:?}");
    assert!(
        states.contains(&(dependent, State::Cancelled)),
        "{states:?}"
    );
    assert!(
        states.contains(&(TaskId::from_u128(4343), State::Cancelled)),
        "{states:?}"
    );
    assert!(
        !states.iter().any(|(_, s)| *s == State::Queued),
        "nothing may be released: {states:?}"
    );
}

#[test]
fn a_draining_worker_hands_work_back_without_counting_as_not_capable() {
    let mut t = Harness::new();
    let w = t.worker("only", 1, &["x"]);
    let id = t.submit(h("x"));
    let a = t.dispatch().remove(0);
    t.engine.set_worker_paused(&w, true).unwrap();
    t.engine
        .reject(&w, id, a.attempt, "draining", t.now, &mut t.out)
        .unwrap();
    assert_eq!(
        t.state(id),
        State::Queued,
        "not failed: the only worker is leaving, not incapable"
    );
    t.engine.set_worker_paused(&w, false).unwrap();
    assert_eq!(
        t.dispatch()[0].id,
        id,
        "and it is not remembered as a refusal"
    );
}

#[test]
fn metrics_break_down_by_queue_kind_and_worker() {
    let mut t = Harness::new();
    t.worker("w1", 4, &["a"]);
    t.worker("w2", 4, &["b"]);
    let in_q2 = |mut s: TaskSpec| {
        s.queue = "q2".into();
        s
    };
    t.submit(h("a"));
    t.submit(in_q2(h("a")));
    let mut slow = in_q2(h("b"));
    slow.timeout = Some(ms(1000));
    t.submit(slow);
    let mut stale = h("nobody");
    stale.expires_at = Some(t.now.plus(ms(1000)));
    t.submit(stale);
    t.advance(ms(10));
    let mut a = t.start();
    a.sort_by_key(|x| x.id);
    assert_eq!(a.len(), 3);
    t.advance(ms(20));
    t.report(&a[0], Outcome::ok()).unwrap();
    t.report(&a[1], Outcome::failed("no")).unwrap();
    // To the slow task's deadline, past the stale one's expiry.
    t.advance(ms(980));

    let m = t.engine.metrics().snapshot(t.now);
    let ends =
        |s: &crate::SeriesSnapshot| (s.submitted, s.succeeded, s.failed, s.timed_out, s.expired);
    assert_eq!(
        (m.submitted, m.succeeded, m.failed, m.timed_out, m.expired),
        (4, 1, 1, 1, 1)
    );
    assert_eq!(ends(&m.queues["default"]), (2, 1, 0, 0, 1));
    assert_eq!(ends(&m.queues["q2"]), (2, 0, 1, 1, 0));
    assert_eq!(ends(&m.kinds["handler:a"]), (2, 1, 1, 0, 0));
    assert_eq!(ends(&m.kinds["handler:b"]), (1, 0, 0, 1, 0));
    assert_eq!(ends(&m.kinds["handler:nobody"]), (1, 0, 0, 0, 1));
    assert_eq!(m.queue_kinds.len(), 4);
    // Workers: `submitted` counts the attempts offered to them.
    assert_eq!(ends(&m.workers["w1"]), (2, 1, 1, 0, 0));
    assert_eq!(ends(&m.workers["w2"]), (1, 0, 0, 1, 0));
    assert_eq!(m.workers["w1"].run_time.max, ms(20));
    assert_eq!(m.workers["w2"].run_time.max, ms(1000));
    assert_eq!(m.queue_wait.count, 3);
    assert_eq!(m.queue_wait.max, ms(10));
    assert_eq!(m.run_time.count, 3);
    assert!(m.throughput.last_1m > 0.0);
}

#[test]
fn a_worker_with_prefetch_is_offered_that_many_more_tasks() {
    let mut t = Harness::new();
    let mut info = WorkerInfo::local("w1", 2, ["echo"]);
    info.prefetch = 1;
    let w = info.id.clone();
    t.engine.register_worker(info, t.now);
    let ids: Vec<TaskId> = (0..4).map(|_| t.submit(h("echo"))).collect();
    // Two slots and one held ready: three offers, the fourth waits.
    let a = t.dispatch();
    assert_eq!(a.iter().map(|x| x.id).collect::<Vec<_>>(), ids[..3]);
    assert!(a.iter().all(|x| x.worker == w && x.slots == 1));
    assert_eq!(t.engine.free_slots(), 0);
    assert_eq!(t.state(ids[3]), State::Queued);
    // The held offer stays assigned, with no deadline, until accepted.
    for x in &a[..2] {
        t.engine
            .accept(&x.worker, x.id, x.attempt, t.now, &mut t.out)
            .unwrap();
    }
    assert_eq!(t.state(ids[2]), State::Assigned);
    t.report(&a[0], Outcome::ok()).unwrap();
    assert_eq!(
        t.dispatch().iter().map(|x| x.id).collect::<Vec<_>>(),
        [ids[3]]
    );
    let (_, used, _, held) = t.engine.workers().next().unwrap();
    assert_eq!((used, held.len()), (3, 3));
}

#[test]
fn a_task_goes_to_an_idle_worker_before_one_that_would_hold_it() {
    let mut t = Harness::new();
    let mut info = WorkerInfo::local("holder", 1, ["echo"]);
    info.prefetch = 2;
    t.engine.register_worker(info, t.now);
    let busy = t.submit(h("echo"));
    assert_eq!(t.start().iter().map(|x| x.id).collect::<Vec<_>>(), [busy]);
    // The holder has more room (2) than the idle worker (1), but could
    // only hold the task: the idle worker gets it.
    let idle = t.worker("idle", 1, &["echo"]);
    let next = t.submit(h("echo"));
    let a = t.dispatch();
    assert_eq!((a.len(), a[0].id, &a[0].worker), (1, next, &idle));
}

/// A worker with `slots` slots that holds `prefetch` more, running `x` and `y`.
fn holder(t: &mut Harness, name: &str, slots: u32, prefetch: u32) -> WorkerId {
    let mut info = WorkerInfo::local(name, slots, ["x", "y"]);
    info.prefetch = prefetch;
    let w = info.id.clone();
    t.engine.register_worker(info, t.now);
    w
}

#[test]
fn a_handed_back_task_keeps_its_place_and_holds_back_what_is_behind_it() {
    let mut t = Harness::new();
    let w = holder(&mut t, "w", 1, 1);
    let long = t.submit(prio(Priority::HIGH));
    let back = t.submit(prio(Priority::HIGH));
    let later = t.submit(prio(Priority::HIGH));
    let a = t.dispatch();
    assert_eq!(a.iter().map(|x| x.id).collect::<Vec<_>>(), [long, back]);
    t.engine
        .accept(&w, long, a[0].attempt, t.now, &mut t.out)
        .unwrap();
    // Handing back a running attempt is refused: it keeps its slot.
    let err = t.engine.release(&w, long, a[0].attempt, t.now, &mut t.out);
    assert!(matches!(err, Err(CommandError::Stale { .. })), "{err:?}");
    // The held one, never started, goes back to its queue: not a refusal.
    t.out.changes.clear();
    t.engine
        .release(&w, back, a[1].attempt, t.now, &mut t.out)
        .unwrap();
    assert_eq!(t.state(back), State::Queued);
    assert!(matches!(
        t.out.changes[..],
        [Change::Status {
            id,
            attempt_outcome: Some(AttemptOutcome::Rejected),
            from: State::Assigned,
            ..
        }] if id == back
    ));
    // The worker has room to hold one, but not a free slot: it holds
    // nothing — neither the task behind it nor lower-priority work of
    // another class — while the task it handed back waits.
    let mut low = h("y");
    low.priority = Priority::LOW;
    let low = t.submit(low);
    assert!(t.dispatch().is_empty());
    assert_eq!(t.engine.free_slots(), 1);
    // A free slot takes it first (it kept its place, ahead of `later`),
    // with a new attempt; then holding resumes.
    t.report(&a[0], Outcome::ok()).unwrap();
    let again = t.dispatch();
    assert_eq!(
        again.iter().map(|x| x.id).collect::<Vec<_>>(),
        [back, later]
    );
    assert_eq!(again[0].attempt, a[1].attempt + 1);
    assert_eq!(t.state(low), State::Queued);
}

#[test]
fn a_handed_back_task_goes_only_into_a_free_slot_of_any_worker() {
    let mut t = Harness::new();
    let busy = holder(&mut t, "busy", 1, 1);
    let first = t.submit(h("x"));
    let second = t.submit(h("x"));
    let a = t.dispatch();
    assert_eq!(
        a.iter().map(|x| (x.id, &x.worker)).collect::<Vec<_>>(),
        [(first, &busy), (second, &busy)]
    );
    t.engine
        .accept(&busy, first, a[0].attempt, t.now, &mut t.out)
        .unwrap();
    let other = holder(&mut t, "other", 1, 1);
    let third = t.submit(h("x"));
    let b = t.start();
    assert_eq!((b[0].id, &b[0].worker), (third, &other));
    // Handed back: both workers have room to hold it, neither a free
    // slot, so it waits, and nothing else is held meanwhile.
    t.engine
        .release(&busy, second, a[1].attempt, t.now, &mut t.out)
        .unwrap();
    let fourth = t.submit(h("x"));
    assert!(t.dispatch().is_empty());
    assert_eq!(t.engine.free_slots(), 2);
    // Explain says what it waits for: a free slot, though both have room.
    let x = t.engine.explain(second, t.now).unwrap();
    assert!(
        x.gates
            .iter()
            .any(|g| matches!(g, Gate::WorkersBusy { workers, needs: 1 } if workers.len() == 2)),
        "{x:?}"
    );
    // The first slot to free takes it.
    t.report(&b[0], Outcome::ok()).unwrap();
    let c = t.dispatch();
    assert_eq!((c[0].id, &c[0].worker), (second, &other));
    assert_eq!(c[1].id, fourth);
}

#[test]
fn requested_memory_never_adds_up_to_more_than_a_worker_has() {
    let mut t = Harness::new();
    let mut info = WorkerInfo::local("w1", 8, ["x"]);
    info.memory_bytes = Some(1 << 30);
    t.engine.register_worker(info, t.now);
    let with_memory = |bytes: u64| {
        let mut s = h("x");
        s.set_resources(crate::Resources {
            cpus: None,
            memory_bytes: Some(bytes),
        });
        s
    };
    let ids: Vec<TaskId> = (0..3).map(|_| t.submit(with_memory(512 << 20))).collect();
    // Eight slots, but 1 GiB: two 512 MiB tasks, the third waits.
    let a = t.start();
    assert_eq!(a.iter().map(|x| x.id).collect::<Vec<_>>(), ids[..2]);
    assert_eq!(a[0].resources.memory_bytes, Some(512 << 20));
    assert_eq!(t.state(ids[2]), State::Queued);
    // A task that asks for nothing is not held back by them.
    let free = t.submit(h("x"));
    assert_eq!(
        t.dispatch().iter().map(|x| x.id).collect::<Vec<_>>(),
        [free]
    );
    // One ends: its memory is free again.
    t.report(&a[0], Outcome::ok()).unwrap();
    assert_eq!(
        t.dispatch().iter().map(|x| x.id).collect::<Vec<_>>(),
        [ids[2]]
    );

    // More than the worker has in all: no capable worker, said so.
    let mut huge = with_memory(2 << 30);
    huge.dispatch_timeout = Some(Duration::from_secs(1));
    let id = t.submit(huge);
    assert!(t.dispatch().is_empty());
    let x = t.engine.explain(id, t.now).unwrap();
    assert!(
        matches!(&x.gates[0], Gate::NoCapableWorker { detail, .. } if detail.contains("2048 MiB of memory")),
        "{x:?}"
    );
    t.advance(Duration::from_secs(1));
    assert_eq!(t.error(id).code, FailureCode::NoCapableWorker);
}

#[test]
fn only_finished_tasks_are_deleted() {
    let mut t = Harness::new();
    let live = t.submit(h("x"));
    let done = t.submit(h("x"));
    t.engine.cancel(done, t.now, &mut t.out).unwrap();
    t.out.changes.clear();
    let unknown = TaskId::from_u128(7);
    let deleted = t.engine.delete_finished(&[live, done, unknown], &mut t.out);
    assert_eq!(deleted, [done, unknown], "the live task is left");
    assert_eq!(
        t.out.changes,
        [
            Change::Deleted { id: done },
            Change::Deleted { id: unknown }
        ]
    );
    assert!(t.engine.get(done).is_none());
    assert_eq!(
        t.engine.get(live).map(|r| r.status.state),
        Some(State::Queued)
    );
    // Forgetting it later (retain_finished) does not count it twice.
    t.advance(Duration::ZERO);
    let counts = t.engine.state_counts();
    assert!(
        counts
            .iter()
            .all(|&(s, n)| n == usize::from(s == State::Queued)),
        "{counts:?}"
    );
}

#[test]
fn trust_survives_a_reconnect_and_a_restart() {
    let trust_of = |e: &Engine, id: &str| {
        e.workers()
            .find(|(w, ..)| w.id.as_str() == id)
            .map(|(_, _, trust, _)| trust)
    };
    let mut t = Harness::new();
    let w = t.worker("w", 1, &["x"]);
    for _ in 0..3 {
        t.submit(h("x"));
        let a = t.start().remove(0);
        t.report(&a, Outcome::ok()).unwrap();
    }
    let earned = trust_of(&t.engine, "w").unwrap();
    assert!(earned > 0.79, "{earned}");
    // It goes away and comes back: the same trust.
    t.engine.remove_worker(&w, t.now, &mut t.out);
    t.worker("w", 1, &["x"]);
    assert_eq!(trust_of(&t.engine, "w"), Some(earned));
    // Saved, and given to a new engine: the worker registering there
    // starts from it; an unknown one from 0.5; nonsense is ignored.
    let saved = t.engine.worker_trust();
    assert_eq!(saved.len(), 1);
    let mut t2 = Harness::new();
    let mut bad = saved.clone();
    bad.push((WorkerId::new("odd"), f64::NAN, -1.0));
    t2.engine.restore_trust(&bad);
    t2.worker("w", 1, &["x"]);
    t2.worker("odd", 1, &["x"]);
    assert_eq!(trust_of(&t2.engine, "w"), Some(earned));
    assert_eq!(trust_of(&t2.engine, "odd"), Some(0.5));
}

fn health(load: f64, at: Timestamp) -> crate::WorkerHealth {
    crate::WorkerHealth {
        load: Some(load),
        memory_available_bytes: Some(1 << 30),
        disk_free_bytes: Some(1 << 34),
        at,
    }
}

#[test]
fn of_equally_free_workers_the_least_loaded_host_gets_the_task() {
    let mut t = Harness::new();
    let busy = t.worker("busy", 1, &["x"]);
    let calm = t.worker("calm", 1, &["x"]);
    t.engine
        .set_worker_health(&busy, health(0.9, t.now))
        .unwrap();
    t.engine
        .set_worker_health(&calm, health(0.1, t.now))
        .unwrap();
    t.submit(h("x"));
    assert_eq!(t.dispatch()[0].worker, calm);
    // Loads change: the next goes to the other (both have a free slot).
    let mut t = Harness::new();
    let busy = t.worker("busy", 1, &["x"]);
    let calm = t.worker("calm", 1, &["x"]);
    t.engine
        .set_worker_health(&busy, health(0.05, t.now))
        .unwrap();
    t.engine
        .set_worker_health(&calm, health(0.5, t.now))
        .unwrap();
    t.submit(h("x"));
    assert_eq!(t.dispatch()[0].worker, busy);
    // Free slots still come first: load only breaks ties.
    let mut t = Harness::new();
    let big = t.worker("big", 4, &["x"]);
    let small = t.worker("small", 1, &["x"]);
    t.engine
        .set_worker_health(&big, health(0.8, t.now))
        .unwrap();
    t.engine
        .set_worker_health(&small, health(0.0, t.now))
        .unwrap();
    t.submit(h("x"));
    assert_eq!(t.dispatch()[0].worker, big);
}

#[test]
fn a_worker_over_its_max_load_is_offered_nothing_until_it_is_under() {
    let mut t = Harness::new();
    let mut info = WorkerInfo::local("w", 2, ["x"]);
    info.max_load = Some(0.75);
    let w = info.id.clone();
    t.engine.register_worker(info, t.now);
    t.engine.set_worker_health(&w, health(1.5, t.now)).unwrap();
    let id = t.submit(h("x"));
    assert!(t.dispatch().is_empty(), "over its max load");
    assert_eq!(t.state(id), State::Queued);
    // Explain names the worker, its load and its threshold.
    let why = t.engine.explain(id, t.now).expect("explained");
    assert!(
        why.gates.iter().any(
            |g| matches!(g, Gate::Overloaded { workers } if workers == &vec![(w.clone(), 1.5, 0.75)])
        ),
        "{:?}",
        why.gates
    );
    // Exactly at the threshold is not over it.
    t.engine.set_worker_health(&w, health(0.75, t.now)).unwrap();
    assert_eq!(t.dispatch()[0].id, id);
    // Over again: the second task waits; under: it goes.
    t.engine.set_worker_health(&w, health(2.0, t.now)).unwrap();
    let second = t.submit(h("x"));
    assert!(t.dispatch().is_empty());
    t.engine.set_worker_health(&w, health(0.2, t.now)).unwrap();
    assert_eq!(t.dispatch()[0].id, second);
    // Health of an unknown worker is an error, not a panic.
    assert!(
        t.engine
            .set_worker_health(&WorkerId::new("ghost"), health(0.1, t.now))
            .is_err()
    );
}
