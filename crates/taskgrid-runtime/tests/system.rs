//! The embedded TaskSystem end to end: handlers on the tokio runtime, a real
//! SQLite file, and explicit synchronisation (no sleeps).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::json;
use taskgrid_core::{
    CancelOutcome, FailureCode, RetryPolicy, State, SubmitError, TaskFailure, TaskId, Timestamp,
};
use taskgrid_runtime::{
    Error, EventKind, Handler, HandlerResult, SystemConfig, Task, TaskContext, TaskError,
    TaskSystem,
};
use taskgrid_store::{SqliteOptions, TaskQuery};
use tokio::sync::mpsc;

const LIMIT: Duration = Duration::from_secs(20);

fn fast_retry(n: u32) -> RetryPolicy {
    RetryPolicy {
        initial_backoff: Duration::from_millis(5),
        ..RetryPolicy::retries(n)
    }
}

fn double()
-> impl Fn(TaskContext) -> std::pin::Pin<Box<dyn std::future::Future<Output = HandlerResult> + Send>>
{
    |ctx| {
        Box::pin(async move {
            let n: u64 = ctx.payload()?;
            Ok(json!(n * 2))
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_tasks_run_and_their_results_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let sys = TaskSystem::builder()
        .sqlite(dir.path().join("t.db"), SqliteOptions::default())
        .handler("double", double())
        .build()
        .unwrap();
    sys.start().unwrap();
    let mut events = sys.subscribe();
    let h = sys.submit(Task::handler("double", &21)).await.unwrap();
    let r = h.wait_timeout(LIMIT).await.unwrap();
    assert_eq!(r.state, State::Succeeded);
    assert_eq!(r.value::<u64>().unwrap(), Some(42));
    assert_eq!(h.status().await.unwrap(), State::Succeeded);
    // Every state change, in order, only after it was committed.
    let mut seen = Vec::new();
    while seen.last() != Some(&State::Succeeded) {
        let ev = events.recv().await.unwrap();
        if ev.id == h.id()
            && let Some(s) = ev.new_state()
        {
            seen.push(s);
        }
    }
    assert_eq!(
        seen,
        [
            State::Queued,
            State::Assigned,
            State::Running,
            State::Succeeded
        ]
    );
    let attempts = sys.attempts(h.id()).await.unwrap();
    assert_eq!(attempts.len(), 1);
    let m = sys.metrics();
    assert_eq!((m.submitted, m.succeeded), (1, 1));
    sys.shutdown().await.unwrap();
    sys.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_sees_the_checkpoint_of_the_failed_attempt() {
    let sys = TaskSystem::builder()
        .handler("resumable", |ctx| async move {
            let step: Option<u32> = ctx.checkpoint()?;
            match step {
                None => {
                    ctx.save_checkpoint(&7u32).await?;
                    Err(TaskError::failed("crashed after step 7"))
                }
                Some(s) => Ok(json!({ "resumed_from": s, "attempt": ctx.attempt() })),
            }
        })
        .build()
        .unwrap();
    sys.start().unwrap();
    let h = sys
        .submit(Task::handler("resumable", &()).retry(fast_retry(2)))
        .await
        .unwrap();
    let r = h.wait_timeout(LIMIT).await.unwrap();
    assert_eq!(
        r.value::<serde_json::Value>().unwrap(),
        Some(json!({"resumed_from": 7, "attempt": 2}))
    );
    assert_eq!(r.attempts, 2);
    sys.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_retried_then_fail_and_fatal_errors_are_not_retried() {
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let sys = TaskSystem::builder()
        .handler("flaky", move |ctx| {
            let c = c.clone();
            async move {
                c.fetch_add(1, Ordering::SeqCst);
                let fatal: bool = ctx.payload()?;
                if fatal {
                    Err(TaskError::fatal("bad input"))
                } else {
                    Err(TaskError::failed("try again"))
                }
            }
        })
        .build()
        .unwrap();
    sys.start().unwrap();
    let r = sys
        .submit(Task::handler("flaky", &false).retry(fast_retry(2)))
        .await
        .unwrap();
    let r = r.wait_timeout(LIMIT).await.unwrap();
    assert_eq!((r.state, r.attempts), (State::Failed, 3));
    assert_eq!(r.error.unwrap().message, "try again");
    let f = sys
        .submit(Task::handler("flaky", &true).retry(fast_retry(5)))
        .await
        .unwrap();
    let f = f.wait_timeout(LIMIT).await.unwrap();
    assert_eq!((f.state, f.attempts), (State::Failed, 1));
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    sys.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_task_is_cancelled_when_its_handler_notices() {
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let sys = TaskSystem::builder()
        .handler("polite", move |ctx| {
            let started_tx = started_tx.clone();
            async move {
                let _ = started_tx.send(ctx.id());
                ctx.cancelled().await;
                assert!(ctx.is_cancelled());
                Ok(json!("stopped cleanly"))
            }
        })
        .build()
        .unwrap();
    sys.start().unwrap();
    let h = sys.submit(Task::handler("polite", &())).await.unwrap();
    assert_eq!(started.recv().await, Some(h.id()));
    assert_eq!(h.cancel().await.unwrap(), CancelOutcome::Requested);
    let r = h.wait_timeout(LIMIT).await.unwrap();
    assert_eq!(r.state, State::Cancelled);
    assert_eq!(r.error.unwrap().code, FailureCode::Cancelled);
    assert_eq!(
        h.cancel().await.unwrap(),
        CancelOutcome::AlreadyFinished(State::Cancelled)
    );
    sys.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_ignores_cancel_is_dropped_after_the_grace() {
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let config = SystemConfig {
        cancel_grace: Duration::from_millis(50),
        concurrency: 1,
        ..SystemConfig::default()
    };
    let sys = TaskSystem::builder()
        .config(config)
        .concurrency(1)
        .handler("stubborn", move |_ctx| {
            let started_tx = started_tx.clone();
            async move {
                let _ = started_tx.send(());
                std::future::pending::<()>().await;
                Ok(json!(null))
            }
        })
        .build()
        .unwrap();
    sys.start().unwrap();
    let h = sys.submit(Task::handler("stubborn", &())).await.unwrap();
    started.recv().await.unwrap();
    h.cancel().await.unwrap();
    assert_eq!(h.wait_timeout(LIMIT).await.unwrap().state, State::Cancelled);
    // The slot came back: another task runs.
    let h2 = sys.submit(Task::handler("stubborn", &())).await.unwrap();
    started.recv().await.unwrap();
    assert_eq!(h2.status().await.unwrap(), State::Running);
    assert_eq!(sys.cancel_tag("none").await.unwrap(), 0);
    h2.cancel().await.unwrap();
    sys.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_past_its_timeout_times_out() {
    let sys = TaskSystem::builder()
        .handler("hang", |_ctx| async move {
            std::future::pending::<()>().await;
            Ok(json!(null))
        })
        .build()
        .unwrap();
    sys.start().unwrap();
    let h = sys
        .submit(Task::handler("hang", &()).timeout(Duration::from_millis(30)))
        .await
        .unwrap();
    let r = h.wait_timeout(LIMIT).await.unwrap();
    assert_eq!(r.state, State::TimedOut);
    assert_eq!(r.error.unwrap().code, FailureCode::Timeout);
    assert_eq!(sys.metrics().timed_out, 1);
    sys.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_fails_its_task_and_the_system_goes_on() {
    let sys = TaskSystem::builder()
        .handler("panic", |_ctx| async move { panic!("kaboom") })
        .handler("double", double())
        .build()
        .unwrap();
    sys.start().unwrap();
    let r = sys
        .submit(Task::handler("panic", &()))
        .await
        .unwrap()
        .wait_timeout(LIMIT)
        .await
        .unwrap();
    assert_eq!(r.state, State::Failed);
    assert!(r.error.unwrap().message.contains("kaboom"));
    let ok = sys
        .submit(Task::handler("double", &1))
        .await
        .unwrap()
        .wait_timeout(LIMIT)
        .await
        .unwrap();
    assert!(ok.is_success());
    sys.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_logs_and_subtasks_are_recorded() {
    let (go_tx, go_rx) = tokio::sync::watch::channel(false);
    let (reported_tx, mut reported) = mpsc::unbounded_channel();
    let sys = TaskSystem::builder()
        .handler("parent", move |ctx| {
            let (mut go, reported_tx) = (go_rx.clone(), reported_tx.clone());
            async move {
                ctx.progress(0.5, "halfway");
                ctx.log("spawning a child");
                let child = ctx.spawn(Task::handler("double", &5)).await?;
                let _ = reported_tx.send(child);
                let _ = go.wait_for(|g| *g).await;
                Ok(json!({ "child": child.to_string() }))
            }
        })
        .handler("double", double())
        .build()
        .unwrap();
    sys.start().unwrap();
    let h = sys.submit(Task::handler("parent", &())).await.unwrap();
    let child = reported.recv().await.unwrap();
    let p = h.progress().await.unwrap().unwrap();
    assert_eq!((p.fraction, p.message.as_deref()), (0.5, Some("halfway")));
    go_tx.send(true).unwrap();
    let r = h.wait_timeout(LIMIT).await.unwrap();
    assert_eq!(
        r.value::<serde_json::Value>().unwrap(),
        Some(json!({"child": child.to_string()}))
    );
    let c = sys.handle(child).wait_timeout(LIMIT).await.unwrap();
    assert_eq!(c.value::<u64>().unwrap(), Some(10));
    let children = sys.children(h.id()).await.unwrap();
    assert_eq!(children.iter().map(|c| c.id).collect::<Vec<_>>(), [child]);
    assert_eq!(children[0].spec.parent, Some(h.id()));
    let out = sys.output(h.id()).await.unwrap();
    assert_eq!(
        out.iter().map(|o| o.data.as_str()).collect::<Vec<_>>(),
        ["spawning a child"]
    );
    sys.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dependencies_unique_keys_and_callbacks() {
    let sys = TaskSystem::builder()
        .handler("double", double())
        .build()
        .unwrap();
    let a = sys.submit(Task::handler("double", &1)).await.unwrap();
    let b = sys
        .submit(Task::handler("double", &2).after(a.id()))
        .await
        .unwrap();
    assert_eq!(b.status().await.unwrap(), State::Pending);
    let u1 = sys
        .submit(Task::handler("double", &3).unique_key("k"))
        .await
        .unwrap();
    let u2 = sys
        .submit(Task::handler("double", &4).unique_key("k"))
        .await
        .unwrap();
    assert_eq!(u1.id(), u2.id());
    let (tx, mut rx) = mpsc::unbounded_channel();
    b.on_success(move |r| {
        let _ = tx.send(r.value::<u64>().unwrap());
    });
    sys.start().unwrap();
    assert_eq!(rx.recv().await, Some(Some(4)));
    assert!(a.wait().await.unwrap().is_success());
    sys.shutdown().await.unwrap();
}

#[derive(Default)]
struct Hooked {
    calls: AtomicU32,
    retries: AtomicU32,
    failures: AtomicU32,
    successes: AtomicU32,
}

struct HookedHandler(Arc<Hooked>);

impl Handler for HookedHandler {
    fn call(&self, ctx: TaskContext) -> taskgrid_runtime::BoxFuture<HandlerResult> {
        let n = self.0.calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            let succeed_on: u32 = ctx.payload()?;
            if ctx.attempt() >= succeed_on {
                Ok(json!(n))
            } else {
                Err(TaskError::failed("not yet"))
            }
        })
    }
    fn on_success(&self, _: TaskId, _: Option<&str>) {
        self.0.successes.fetch_add(1, Ordering::SeqCst);
    }
    fn on_failure(&self, _: TaskId, _: &TaskFailure) {
        self.0.failures.fetch_add(1, Ordering::SeqCst);
    }
    fn on_retry(&self, _: TaskId, _: u32, _: &TaskFailure) {
        self.0.retries.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_hooks_run_after_the_outcome_is_stored() {
    let hooks = Arc::new(Hooked::default());
    let sys = TaskSystem::builder()
        .handler_impl("hooked", HookedHandler(hooks.clone()))
        .build()
        .unwrap();
    sys.start().unwrap();
    let mut events = sys.subscribe();
    let ok = sys
        .submit(Task::handler("hooked", &2).retry(fast_retry(3)))
        .await
        .unwrap();
    let bad = sys
        .submit(Task::handler("hooked", &9).retry(fast_retry(1)))
        .await
        .unwrap();
    ok.wait_timeout(LIMIT).await.unwrap();
    bad.wait_timeout(LIMIT).await.unwrap();
    // Hooks run on the publisher before the event reaches subscribers.
    let mut finished = 0;
    while finished < 2 {
        if let EventKind::State { to, .. } = events.recv().await.unwrap().kind
            && to.is_terminal()
        {
            finished += 1;
        }
    }
    assert_eq!(hooks.successes.load(Ordering::SeqCst), 1);
    assert_eq!(hooks.failures.load(Ordering::SeqCst), 1);
    assert_eq!(hooks.retries.load(Ordering::SeqCst), 2);
    sys.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_submits_are_refused_and_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let sys = TaskSystem::builder()
        .sqlite(dir.path().join("t.db"), SqliteOptions::default())
        .queue_limit("tiny", 1)
        .handler("double", double())
        .build()
        .unwrap();
    sys.start().unwrap();
    let err = sys.submit(Task::handler("nope", &1)).await.unwrap_err();
    assert!(
        matches!(&err, Error::UnknownHandler(h) if h == "nope"),
        "{err}"
    );
    let err = sys
        .submit(Task::handler("double", &1).timeout(Duration::ZERO))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("timeout"), "{err}");
    let err = sys
        .submit(Task::handler("double", &"x".repeat(2 << 20)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Submit(SubmitError::PayloadTooLarge { .. })),
        "{err}"
    );
    let ghost = TaskId::from_u128(7);
    let err = sys
        .submit(Task::handler("double", &1).after(ghost))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Submit(SubmitError::UnknownDependency(id)) if id == ghost),
        "{err}"
    );
    let mut map = std::collections::HashMap::new();
    map.insert(vec![1u8], 1);
    let err = sys.submit(Task::handler("double", &map)).await.unwrap_err();
    assert!(matches!(err, Error::InvalidPayload(_)), "{err}");
    sys.flush().unwrap();
    assert_eq!(sys.list(&TaskQuery::default()).await.unwrap().len(), 0);
    // Backpressure: a paused-by-nature full queue refuses the next one.
    sys.submit(
        Task::handler("double", &1)
            .queue("tiny")
            .delay(Duration::from_secs(3600)),
    )
    .await
    .unwrap();
    let err = sys
        .submit(Task::handler("double", &1).queue("tiny"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Submit(SubmitError::QueueFull { .. })),
        "{err}"
    );
    sys.shutdown().await.unwrap();
    let err = sys.submit(Task::handler("double", &1)).await.unwrap_err();
    assert!(matches!(err, Error::ShutDown));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_hands_running_tasks_back_and_a_restart_runs_them() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.db");
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let config = SystemConfig {
        shutdown_grace: Duration::from_millis(20),
        concurrency: 2,
        ..SystemConfig::default()
    };
    let sys = TaskSystem::builder()
        .sqlite(&db, SqliteOptions::default())
        .config(config)
        .handler("work", move |_ctx| {
            let started_tx = started_tx.clone();
            async move {
                let _ = started_tx.send(());
                std::future::pending::<()>().await;
                Ok(json!(null))
            }
        })
        .build()
        .unwrap();
    sys.start().unwrap();
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(sys.submit(Task::handler("work", &i)).await.unwrap().id());
    }
    started.recv().await.unwrap();
    started.recv().await.unwrap();
    sys.shutdown().await.unwrap();
    drop(sys);

    let again = TaskSystem::builder()
        .sqlite(&db, SqliteOptions::default())
        .handler("work", |ctx| async move { Ok(json!(ctx.attempt())) })
        .build()
        .unwrap();
    again.start().unwrap();
    let mut second_attempts = 0;
    for id in ids {
        let r = again.handle(id).wait_timeout(LIMIT).await.unwrap();
        assert!(r.is_success());
        second_attempts += u32::from(r.attempts == 2);
    }
    assert_eq!(
        second_attempts, 2,
        "the two running tasks were handed back as a new attempt"
    );
    again.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_can_be_paused_and_the_executor_serves_only_its_queues() {
    let sys = TaskSystem::builder()
        .queues(["fast", "slow"])
        .handler("double", double())
        .build()
        .unwrap();
    sys.start().unwrap();
    sys.pause_queue("slow").await.unwrap();
    let held = sys
        .submit(Task::handler("double", &1).queue("slow"))
        .await
        .unwrap();
    let other = sys
        .submit(Task::handler("double", &2).queue("elsewhere"))
        .await
        .unwrap();
    let runs = sys
        .submit(Task::handler("double", &3).queue("fast"))
        .await
        .unwrap();
    assert!(runs.wait_timeout(LIMIT).await.unwrap().is_success());
    // The driver has dispatched everything it could: the others wait.
    assert_eq!(
        (held.status().await.unwrap(), other.status().await.unwrap()),
        (State::Queued, State::Queued)
    );
    let stats = sys.queue_stats();
    let slow = stats.iter().find(|q| q.name == "slow").unwrap();
    assert!(slow.paused);
    assert_eq!(slow.ready, 1);
    sys.resume_queue("slow").await.unwrap();
    assert!(held.wait_timeout(LIMIT).await.unwrap().is_success());
    assert_eq!(other.status().await.unwrap(), State::Queued);
    other.cancel().await.unwrap();
    sys.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_replay_retry_workers_and_explain() {
    let sys = TaskSystem::builder()
        .concurrency(3)
        .handler("double", double())
        .build()
        .unwrap();
    sys.start().unwrap();
    let mut events = sys.subscribe();
    let h = sys.submit(Task::handler("double", &4)).await.unwrap();
    // Published events are numbered n+1, n+2, n+3… (n: this process's
    // zero) and the replay buffer has them.
    while events.recv().await.unwrap().new_state() != Some(State::Succeeded) {}
    let (events, _) = sys.events_since(0);
    let zero = events[0].seq - 1;
    assert!(sys.issued_event(zero));
    let (events, complete) = sys.events_since(zero);
    assert!(complete);
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (zero + 1..=zero + seqs.len() as u64).collect::<Vec<_>>()
    );
    let (tail, _) = sys.events_since(zero + 2);
    assert_eq!(tail.first().map(|e| e.seq), Some(zero + 3));
    // An id this process never gave out.
    assert!(!sys.issued_event(zero - 1));
    // Retry makes a new task with the same spec.
    let again = sys.retry(h.id()).await.unwrap();
    assert_ne!(again.id(), h.id());
    assert_eq!(
        again
            .wait_timeout(LIMIT)
            .await
            .unwrap()
            .value::<u64>()
            .unwrap(),
        Some(8)
    );
    let pending = sys
        .submit(Task::handler("double", &1).delay(Duration::from_secs(3600)))
        .await
        .unwrap();
    assert!(matches!(
        sys.retry(pending.id()).await,
        Err(Error::NotFinished(_, State::Pending))
    ));
    // Explain: a delayed task names its run_at; a finished one has no gates.
    let x = sys.explain(pending.id()).await.unwrap();
    assert!(
        matches!(x.gates[0], taskgrid_core::Gate::RunAt { .. }),
        "{x:?}"
    );
    assert!(sys.explain(h.id()).await.unwrap().gates.is_empty());
    let workers = sys.workers();
    assert_eq!(workers.len(), 1);
    assert_eq!(
        (workers[0].id.as_str(), workers[0].slots, workers[0].used),
        ("local", 3, 0)
    );
    pending.cancel().await.unwrap();
    sys.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_right_after_dispatch_reaches_the_handler() {
    // No grace would end the task in time: only the handler seeing the
    // cancel does.
    let config = SystemConfig {
        cancel_grace: Duration::from_secs(3600),
        ..SystemConfig::default()
    };
    let sys = TaskSystem::builder()
        .config(config)
        .handler("waits", |ctx| async move {
            ctx.cancelled().await;
            Ok(json!(null))
        })
        .build()
        .unwrap();
    sys.start().unwrap();
    // The cancel races the handler's start; it must never be lost.
    for _ in 0..50 {
        let h = sys.submit(Task::handler("waits", &())).await.unwrap();
        while h.status().await.unwrap() != State::Running {
            tokio::task::yield_now().await;
        }
        h.cancel().await.unwrap();
        assert_eq!(h.wait_timeout(LIMIT).await.unwrap().state, State::Cancelled);
    }
    sys.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_waiter_gets_the_result_and_wait_idle_returns_after_a_cancel() {
    let (go_tx, go_rx) = tokio::sync::watch::channel(false);
    let sys = TaskSystem::builder()
        .handler("gate", move |_ctx| {
            let mut go = go_rx.clone();
            async move {
                let _ = go.wait_for(|g| *g).await;
                Ok(json!(1))
            }
        })
        .build()
        .unwrap();
    sys.start().unwrap();
    let h = sys.submit(Task::handler("gate", &())).await.unwrap();
    let waiters: Vec<_> = (0..5)
        .map(|_| {
            let h = h.clone();
            tokio::spawn(async move { h.wait().await })
        })
        .collect();
    go_tx.send(true).unwrap();
    // A late waiter after the end must not disturb the others.
    let late = h.wait().await.unwrap();
    assert!(late.is_success());
    for w in waiters {
        assert!(w.await.unwrap().unwrap().is_success());
    }
    let delayed = sys
        .submit(Task::handler("gate", &()).delay(Duration::from_secs(3600)))
        .await
        .unwrap();
    let idle = tokio::spawn({
        let h = delayed.clone();
        async move { h.wait().await }
    });
    delayed.cancel().await.unwrap();
    tokio::time::timeout(LIMIT, sys.wait_idle())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(idle.await.unwrap().unwrap().state, State::Cancelled);
    sys.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_system_refuses_what_it_could_never_run() {
    let sys = TaskSystem::builder()
        .concurrency(2)
        .handler("double", double())
        .build()
        .unwrap();
    sys.start().unwrap();
    let shell = taskgrid_core::TaskSpec::new(taskgrid_core::TaskKind::Shell(Box::new(
        taskgrid_core::ShellSpec {
            command: taskgrid_core::ShellCommand::Script("true".into()),
            env: vec![],
            cwd: None,
        },
    )));
    for (task, want) in [
        (Task::from_spec(shell), "only handler tasks"),
        (
            Task::handler("double", &1).label("gpu".parse().unwrap()),
            "no labels",
        ),
        (Task::handler("double", &1).slots(3), "needs 3 slots"),
    ] {
        let err = sys.submit(task).await.unwrap_err();
        assert!(
            matches!(&err, Error::NotRunnable(m) if m.contains(want)),
            "{err}"
        );
    }
    assert_eq!(sys.live_tasks(), 0);
    sys.shutdown().await.unwrap();
}

/// A schedule whose last fire was long before the coordinator started:
/// the fires within the catch-up window run, the older ones are recorded
/// as one missed range, and `explain_schedule` says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_behind_its_catch_up_window_records_and_explains_the_missed_range() {
    use taskgrid_core::{
        Change, FireOutcome, ScheduleGate, ScheduleRecord, ScheduleSpec, ScheduleState, TaskKind,
        TaskSpec, Timestamp,
    };
    use taskgrid_store::{MemoryStore, Store};
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    // Whole minutes, so the counts below do not depend on the second.
    let minute = now.as_secs() / 60 * 60;
    let ten_ago = Timestamp::from_micros((minute - 600) * 1_000_000);
    let mut spec = ScheduleSpec::every(Duration::from_secs(60));
    spec.catch_up = Duration::from_secs(150);
    spec.overlap = taskgrid_core::Overlap::AllowAll;
    let store = Arc::new(MemoryStore::new());
    store
        .apply(&[Change::Schedule(Box::new(ScheduleRecord {
            name: "minutely".into(),
            spec,
            template: TaskSpec::new(TaskKind::handler("double", "1")),
            created_at: ten_ago,
            updated_at: ten_ago,
            paused: false,
            note: None,
            state: ScheduleState {
                cursor: ten_ago,
                ..ScheduleState::default()
            },
        }))])
        .unwrap();
    let sys = TaskSystem::builder()
        .store(store)
        .handler("double", double())
        .build()
        .unwrap();
    sys.start().unwrap();
    // The catch-up is decided at start, and committed by this flush.
    sys.flush().unwrap();
    let fires = sys.schedule_fires("minutely", 100).await.unwrap();
    let missed: Vec<_> = fires
        .iter()
        .filter(|f| f.outcome == FireOutcome::Missed)
        .collect();
    assert_eq!(missed.len(), 1, "{fires:?}");
    let ran = fires
        .iter()
        .filter(|f| f.outcome == FireOutcome::Submitted)
        .count();
    // The minutes since ten_ago are due when the system started (10, or
    // 11 had the minute turned since `now` was read): those at most 150 s
    // old run (2 or 3 of them, by where in the minute the start is), the
    // rest are one range.
    let started = fires.iter().map(|f| f.fired_at).min().unwrap();
    let due = (started.since(ten_ago).as_secs() / 60) as usize;
    assert!((10..=11).contains(&due), "{fires:?}");
    assert!((2..=3).contains(&ran), "{fires:?}");
    assert_eq!(missed[0].count as usize + ran, due, "{fires:?}");
    let gates = sys.explain_schedule("minutely").await.unwrap();
    assert!(
        gates.contains(&ScheduleGate::Missed {
            at: missed[0].at,
            until: missed[0].until.unwrap(),
            count: missed[0].count,
        }),
        "{gates:?}"
    );
    assert_eq!(missed[0].at, ten_ago.plus(Duration::from_secs(60)));
}

/// An audit entry of a client's call `action` (its time is the system's).
fn audit_record(action: &str) -> taskgrid_core::AuditRecord {
    taskgrid_core::AuditRecord {
        at: Timestamp::from_micros(0),
        actor: "client".into(),
        remote: None,
        action: action.into(),
        status: 200,
        error: None,
    }
}

/// `delete` removes a finished task with its attempts and refuses a live
/// one; `prune` deletes what finished before its cutoff and leaves the
/// rest; the background retention does the same on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_tasks_are_deleted_on_demand_and_by_retention() {
    let dir = tempfile::tempdir().unwrap();
    let config = SystemConfig {
        retention: None,
        ..SystemConfig::default()
    };
    let sys = TaskSystem::builder()
        .sqlite(dir.path().join("tg.db"), SqliteOptions::default())
        .config(config)
        .handler("double", double())
        .queues(["work"])
        .build()
        .unwrap();
    sys.start().unwrap();
    let mut done = Vec::new();
    for n in 0..5u64 {
        let h = sys
            .submit(Task::handler("double", &n).queue("work"))
            .await
            .unwrap();
        let r = tokio::time::timeout(LIMIT, h.wait())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.state, State::Succeeded);
        done.push(h.id());
    }
    // Nobody serves "idle": this one stays queued.
    let live = sys
        .submit(Task::handler("double", &9).queue("idle"))
        .await
        .unwrap()
        .id();

    assert!(matches!(
        sys.delete(live).await,
        Err(Error::NotFinished(_, State::Queued))
    ));
    sys.delete(done[0]).await.unwrap();
    assert!(matches!(sys.get(done[0]).await, Err(Error::NotFound(_))));
    assert!(sys.attempts(done[0]).await.unwrap().is_empty());
    assert!(matches!(sys.delete(done[0]).await, Err(Error::NotFound(_))));

    // A cutoff before they ended deletes nothing; one after, all of them.
    let first_end = sys.get(done[1]).await.unwrap().status.finished_at.unwrap();
    assert_eq!(sys.prune(first_end).await.unwrap(), 0);
    let later = Timestamp::from_micros(first_end.as_micros() + 3_600_000_000);
    assert_eq!(sys.prune(later).await.unwrap(), 4);
    for id in &done {
        assert!(matches!(sys.get(*id).await, Err(Error::NotFound(_))));
    }
    assert_eq!(sys.get(live).await.unwrap().status.state, State::Queued);
    assert_eq!(sys.prune(later).await.unwrap(), 0);
    // Audit entries: stamped by the system, read newest first.
    for action in ["first", "second"] {
        sys.record_audit(audit_record(action)).await.unwrap();
    }
    let log = sys.audit_log(None, 10).await.unwrap();
    let actions: Vec<&str> = log.iter().map(|e| e.record.action.as_str()).collect();
    assert_eq!(actions, ["second", "first"]);
    assert!(log[1].record.at >= first_end, "stamped at commit: {log:?}");
    sys.shutdown().await.unwrap();
    drop(sys);

    // Reopened with a retention of zero, checked every 10 ms: a task that
    // finishes is deleted by the background sweep, the queued one stays.
    let config = SystemConfig {
        retention: Some(Duration::ZERO),
        retention_every: Duration::from_millis(10),
        ..SystemConfig::default()
    };
    let sys = TaskSystem::builder()
        .sqlite(dir.path().join("tg.db"), SqliteOptions::default())
        .config(config)
        .handler("double", double())
        .queues(["work"])
        .build()
        .unwrap();
    sys.start().unwrap();
    let h = sys
        .submit(Task::handler("double", &1).queue("work"))
        .await
        .unwrap();
    tokio::time::timeout(LIMIT, h.wait())
        .await
        .unwrap()
        .unwrap();
    // The sweep (every 10 ms) says when it has deleted it.
    let mut swept = sys.retention_stats();
    tokio::time::timeout(LIMIT, swept.wait_for(|s| s.tasks_deleted >= 1))
        .await
        .expect("retention deletes the finished task")
        .unwrap();
    assert!(matches!(sys.get(h.id()).await, Err(Error::NotFound(_))));
    assert_eq!(sys.get(live).await.unwrap().status.state, State::Queued);
    // The audit log goes with the tasks: the entries recorded before are
    // older than this sweep's cutoff.
    assert_eq!(sys.audit_log(None, 10).await.unwrap(), Vec::new());
    sys.shutdown().await.unwrap();
}

/// A queue's own retention replaces the default for its tasks: with the
/// default forever and "short" kept for zero, the sweep deletes the
/// finished task of "short" and keeps the one of "long" (and the audit
/// log, kept as long as the default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_retention_replaces_the_default_for_its_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let config = SystemConfig {
        retention: None,
        queue_retention: [("short".to_owned(), Some(Duration::ZERO))].into(),
        retention_every: Duration::from_millis(10),
        ..SystemConfig::default()
    };
    let sys = TaskSystem::builder()
        .sqlite(dir.path().join("tg.db"), SqliteOptions::default())
        .config(config)
        .handler("double", double())
        .build()
        .unwrap();
    sys.start().unwrap();
    sys.record_audit(audit_record("kept")).await.unwrap();
    let ids = [
        run_double_in(&sys, 1, "long").await,
        run_double_in(&sys, 1, "short").await,
    ];
    let mut swept = sys.retention_stats();
    tokio::time::timeout(LIMIT, swept.wait_for(|s| s.tasks_deleted >= 1))
        .await
        .expect("retention deletes the task of the short queue")
        .unwrap();
    assert!(matches!(sys.get(ids[1]).await, Err(Error::NotFound(_))));
    assert_eq!(
        sys.get(ids[0]).await.unwrap().status.state,
        State::Succeeded
    );
    // Later sweeps keep it too.
    let seen = swept.borrow().sweeps;
    tokio::time::timeout(LIMIT, swept.wait_for(|s| s.sweeps >= seen + 2))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        sys.get(ids[0]).await.unwrap().status.state,
        State::Succeeded
    );
    assert_eq!(swept.borrow().tasks_deleted, 1);
    assert_eq!(sys.audit_log(None, 10).await.unwrap().len(), 1);
    sys.shutdown().await.unwrap();
}

/// The metrics count on across a restart (saved at shutdown, read back at
/// start-up), and deleting tasks does not lower them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_survive_a_restart_and_deletion() {
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        let sys = TaskSystem::builder()
            .sqlite(dir.path().join("tg.db"), SqliteOptions::default())
            .handler("double", double())
            .build()
            .unwrap();
        sys.start().unwrap();
        sys
    };
    let sys = open();
    let first = run_double(&sys, 1).await;
    run_double(&sys, 2).await;
    let before = sys.metrics();
    assert_eq!(
        (before.total.counts.submitted, before.total.counts.succeeded),
        (2, 2)
    );
    let trust_of = |sys: &TaskSystem| {
        sys.workers()
            .into_iter()
            .find(|w| w.id.as_str() == "local")
            .map(|w| w.trust)
    };
    let trust = trust_of(&sys).expect("the local worker");
    assert!(trust > 0.7, "two successes: {trust}");
    sys.shutdown().await.unwrap();
    drop(sys);

    let sys = open();
    let after = sys.metrics();
    assert_eq!(
        after.total.counts, before.total.counts,
        "counted on from where it was"
    );
    assert_eq!(trust_of(&sys), Some(trust), "trust is kept");
    assert_eq!(after.total.run_time.count, 2, "{:?}", after.total.run_time);
    run_double(&sys, 3).await;
    sys.delete(first).await.unwrap();
    let now = sys.metrics();
    assert_eq!(
        (now.total.counts.submitted, now.total.counts.succeeded),
        (3, 3)
    );
    assert_eq!(now.queues["default"].counts.succeeded, 3);
    sys.shutdown().await.unwrap();
}

/// Runs one `double` task to its end; its id.
async fn run_double(sys: &TaskSystem, n: u64) -> TaskId {
    run_double_in(sys, n, taskgrid_core::DEFAULT_QUEUE).await
}

/// Runs `double` of `n` in `queue` and checks that it succeeded; its id.
async fn run_double_in(sys: &TaskSystem, n: u64, queue: &str) -> TaskId {
    let h = sys
        .submit(Task::handler("double", &n).queue(queue))
        .await
        .expect("submit");
    let r = tokio::time::timeout(LIMIT, h.wait())
        .await
        .expect("the task ends in time")
        .expect("its result");
    assert_eq!(r.state, State::Succeeded);
    h.id()
}

/// A pending task whose dependency succeeded and was then deleted is not
/// cancelled by a restart: a dependency missing from the store succeeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_dependency_does_not_cancel_its_dependent_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        let sys = TaskSystem::builder()
            .sqlite(dir.path().join("tg.db"), SqliteOptions::default())
            .handler("double", double())
            .queues(["work"])
            .build()
            .unwrap();
        sys.start().unwrap();
        sys
    };
    let sys = open();
    let a = sys
        .submit(Task::handler("double", &1).queue("work"))
        .await
        .unwrap();
    tokio::time::timeout(LIMIT, a.wait())
        .await
        .unwrap()
        .unwrap();
    // Nobody serves "idle": c stays queued, so b stays pending.
    let c = sys
        .submit(Task::handler("double", &2).queue("idle"))
        .await
        .unwrap();
    let b = sys
        .submit(
            Task::handler("double", &3)
                .queue("work")
                .after(a.id())
                .after(c.id()),
        )
        .await
        .unwrap();
    assert_eq!(sys.get(b.id()).await.unwrap().status.state, State::Pending);
    sys.delete(a.id()).await.unwrap();
    // A new task can no longer name the deleted one.
    let err = sys
        .submit(Task::handler("double", &4).after(a.id()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("dependency"), "{err}");
    let b_id = b.id();
    sys.shutdown().await.unwrap();
    // The handles hold the system (and its store) too.
    drop((a, b, c, sys));

    let sys = open();
    assert_eq!(sys.get(b_id).await.unwrap().status.state, State::Pending);
    sys.shutdown().await.unwrap();
}

/// With an output retention shorter than the task's, a finished task's
/// output goes and the task (and its attempts) stays; the output of a
/// task that lived longer than the output retention is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_retention_deletes_output_and_keeps_the_task() {
    let config = SystemConfig {
        retention: None,
        // `done` is read by sweeps (every 10 ms) until it was created more
        // than this before the cutoff, so it is deleted however long its
        // run takes under load, up to a second.
        output_retention: Some(Duration::from_secs(1)),
        retention_every: Duration::from_millis(10),
        ..SystemConfig::default()
    };
    let (release, gate) = tokio::sync::watch::channel(false);
    let sys = TaskSystem::builder()
        .config(config)
        .handler("talk", move |ctx: TaskContext| {
            let mut gate = gate.clone();
            async move {
                ctx.log("hello");
                let wait: bool = ctx.payload()?;
                if wait {
                    let _ = gate.wait_for(|open| *open).await;
                }
                Ok(json!(null))
            }
        })
        .build()
        .unwrap();
    sys.start().unwrap();
    let running = sys.submit(Task::handler("talk", &true)).await.unwrap();
    let done = sys.submit(Task::handler("talk", &false)).await.unwrap();
    tokio::time::timeout(LIMIT, done.wait())
        .await
        .unwrap()
        .unwrap();
    // The sweep (every 10 ms) says when it has deleted its output.
    let mut swept = sys.retention_stats();
    tokio::time::timeout(LIMIT, swept.wait_for(|s| s.outputs_deleted >= 1))
        .await
        .expect("the finished task's output is deleted")
        .unwrap();
    assert!(sys.output(done.id()).await.unwrap().is_empty());
    assert_eq!(
        sys.get(done.id()).await.unwrap().status.state,
        State::Succeeded
    );
    assert_eq!(sys.attempts(done.id()).await.unwrap().len(), 1);
    // The running one was live when the sweep read it: its output stays.
    let out = sys.output(running.id()).await.unwrap();
    assert_eq!(out.len(), 1, "{out:?}");
    release.send(true).unwrap();
    tokio::time::timeout(LIMIT, running.wait())
        .await
        .unwrap()
        .unwrap();
    sys.shutdown().await.unwrap();
}
