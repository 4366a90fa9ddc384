#![allow(clippy::unwrap_used)]
//! The worker agent against an in-process coordinator over a real socket.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use taskgrid_core::{FailureCode, ShellCommand, ShellSpec, State, TaskKind, TaskSpec, WorkerId};
use taskgrid_proto::worker::worker_message::Msg as In;
use taskgrid_runtime::{SystemConfig, Task, TaskError, TaskHandle, TaskSystem};
use taskgrid_server::{GatewayConfig, gateway};
use taskgrid_worker::{ShellPolicy, Worker, WorkerConfig, WorkerError};
use tokio_stream::wrappers::TcpListenerStream;

const LIMIT: Duration = Duration::from_secs(30);

async fn coordinator() -> (TaskSystem, SocketAddr) {
    coordinator_with(GatewayConfig::default()).await
}

async fn coordinator_with(gateway_config: GatewayConfig) -> (TaskSystem, SocketAddr) {
    let config = SystemConfig {
        check_handlers: false,
        ..SystemConfig::default()
    };
    let sys = TaskSystem::builder().config(config).build().unwrap();
    sys.start().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let svc = gateway(&sys, gateway_config);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    (sys, addr)
}

/// A worker with one slot that holds `prefetch` tasks beyond it (for as
/// long as it takes).
fn one_slot_prefetching(addr: SocketAddr, id: &str, prefetch: u32) -> WorkerConfig {
    let mut c = config(addr, id);
    c.slots = 1;
    c.prefetch = prefetch;
    c.prefetch_hold = Duration::from_secs(3600);
    c
}

fn config(addr: SocketAddr, id: &str) -> WorkerConfig {
    let mut c = WorkerConfig::new(format!("http://{addr}"));
    c.id = id.into();
    c.slots = 2;
    c
}

/// Waits for task `id` to enter `want`, on a subscription taken before it
/// was submitted.
async fn reach(
    events: &mut tokio::sync::broadcast::Receiver<taskgrid_runtime::SharedEvent>,
    id: taskgrid_core::TaskId,
    want: State,
) {
    tokio::time::timeout(LIMIT, async {
        loop {
            let ev = events.recv().await.unwrap();
            if ev.id == id && ev.new_state() == Some(want) {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("task {id} never reached {want}"));
}

/// Waits until each `(task, state)` has been entered, in any order.
async fn reach_all(
    events: &mut tokio::sync::broadcast::Receiver<taskgrid_runtime::SharedEvent>,
    want: &[(taskgrid_core::TaskId, State)],
) {
    let mut left: Vec<_> = want.to_vec();
    tokio::time::timeout(LIMIT, async {
        while !left.is_empty() {
            let ev = events.recv().await.expect("the event bus keeps up");
            left.retain(|(id, st)| !(ev.id == *id && ev.new_state() == Some(*st)));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("never reached {want:?}"));
}

fn script(s: &str) -> Task {
    Task::from_spec(TaskSpec::new(TaskKind::Shell(Box::new(ShellSpec {
        command: ShellCommand::Script(s.into()),
        env: vec![],
        cwd: None,
    }))))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_tasks_run_remotely_with_output_and_exit_codes() {
    let (sys, addr) = coordinator().await;
    tokio::spawn(Worker::with_config(config(addr, "w1")).run());
    let ok = sys
        .submit(script("echo hello; echo oops >&2"))
        .await
        .unwrap();
    let r = ok.wait_timeout(LIMIT).await.unwrap();
    assert_eq!(r.state, State::Succeeded);
    let out: Vec<(taskgrid_core::Stream, String)> = sys
        .output(ok.id())
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.stream, c.data))
        .collect();
    assert!(
        out.contains(&(taskgrid_core::Stream::Stdout, "hello\n".into())),
        "{out:?}"
    );
    assert!(
        out.contains(&(taskgrid_core::Stream::Stderr, "oops\n".into())),
        "{out:?}"
    );
    let bad = sys.submit(script("exit 3")).await.unwrap();
    let r = bad.wait_timeout(LIMIT).await.unwrap();
    assert_eq!(r.state, State::Failed);
    assert_eq!(sys.get(bad.id()).await.unwrap().status.exit_code, Some(3));
    // Each attempt records what it cost, measured by the worker.
    let usage = sys.attempts(bad.id()).await.unwrap()[0]
        .usage
        .expect("usage recorded");
    // A task without limits runs in no cgroup: its peak memory is not
    // measured (0) rather than this process's size, which a forked child's
    // `ru_maxrss` starts from.
    assert!(
        usage.peak_rss_bytes == 0 && usage.cpu_seconds >= 0.0,
        "{usage:?}"
    );
    assert!(r.error.unwrap().message.contains("code 3"));
    sys.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_handler_reports_progress_logs_checkpoints_and_spawns() {
    let (sys, addr) = coordinator().await;
    let worker = Worker::with_config(config(addr, "w1"))
        .handler("parent", |ctx| async move {
            ctx.progress(0.5, "half");
            ctx.log("about to spawn");
            ctx.save_checkpoint(&json!({"step": 1})).await?;
            let child = ctx.spawn(Task::handler("double", &4)).await?;
            Ok(json!({ "child": child.to_string() }))
        })
        .handler("double", |ctx| async move {
            let n: u64 = ctx.payload()?;
            if n == 0 {
                return Err(TaskError::fatal("zero"));
            }
            Ok(json!(n * 2))
        });
    tokio::spawn(worker.run());
    let h = sys.submit(Task::handler("parent", &())).await.unwrap();
    let r = h.wait_timeout(LIMIT).await.unwrap();
    assert!(r.is_success(), "{r:?}");
    let rec = sys.get(h.id()).await.unwrap();
    assert_eq!(rec.progress.unwrap().message.as_deref(), Some("half"));
    assert_eq!(rec.checkpoint.as_deref(), Some(r#"{"step":1}"#));
    assert_eq!(sys.output(h.id()).await.unwrap()[0].data, "about to spawn");
    let children = sys.children(h.id()).await.unwrap();
    assert_eq!(children.len(), 1);
    let c = sys
        .handle(children[0].id)
        .wait_timeout(LIMIT)
        .await
        .unwrap();
    assert_eq!(c.value::<u64>().unwrap(), Some(8));
    let f = sys
        .submit(Task::handler("double", &0).retries(3))
        .await
        .unwrap()
        .wait_timeout(LIMIT)
        .await
        .unwrap();
    assert_eq!(
        (f.state, f.attempts),
        (State::Failed, 1),
        "a fatal error is not retried"
    );
    sys.shutdown().await.unwrap();
}

fn alive(pid: i32) -> bool {
    // Killed children of a reaper-less PID 1 linger as zombies: dead.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            stat.rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next())
                != Some("Z")
        }
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_shell_task_kills_its_process_group() {
    let (sys, addr) = coordinator().await;
    tokio::spawn(Worker::with_config(config(addr, "w1")).run());
    let mut events = sys.subscribe();
    // The script starts a grandchild and prints both pids, then waits.
    let h = sys
        .submit(script("sleep 1000 & echo $$ $!; wait"))
        .await
        .unwrap();
    let pids: Vec<i32> = loop {
        let ev = tokio::time::timeout(LIMIT, events.recv())
            .await
            .unwrap()
            .unwrap();
        if let taskgrid_runtime::EventKind::Output { data, .. } = &ev.kind
            && ev.id == h.id()
        {
            break data
                .split_whitespace()
                .map(|p| p.parse().unwrap())
                .collect();
        }
    };
    assert!(pids.iter().all(|p| alive(*p)));
    h.cancel().await.unwrap();
    let r = h.wait_timeout(LIMIT).await.unwrap();
    assert_eq!(r.state, State::Cancelled);
    assert!(pids.iter().all(|p| !alive(*p)), "no orphan left: {pids:?}");
    sys.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_worker_hands_unfinished_work_back_and_refusals_fail_the_task() {
    let (sys, addr) = coordinator().await;
    let mut c = config(addr, "drainer");
    c.drain_grace = Duration::from_millis(100);
    let (drain_tx, drain_rx) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(Worker::with_config(c).run_until(async move {
        let _ = drain_rx.await;
    }));
    let mut events = sys.subscribe();
    let long = sys.submit(script("sleep 1000")).await.unwrap();
    reach(&mut events, long.id(), State::Running).await;
    drain_tx.send(()).unwrap();
    agent.await.unwrap().unwrap();
    // Handed back at once (not after a heartbeat timeout): queued again.
    loop {
        let ev = tokio::time::timeout(LIMIT, events.recv())
            .await
            .unwrap()
            .unwrap();
        if ev.id == long.id()
            && ev.new_state() == Some(State::Queued)
            && long.record().await.unwrap().status.attempt == 1
        {
            break;
        }
    }
    // Only a worker without a shell is left: it is never offered the task,
    // which fails "no capable worker" when its dispatch timeout passes.
    let mut no_shell = config(addr, "no-shell");
    no_shell.shell = ShellPolicy::Disabled;
    let ns = sys
        .submit(script("true").dispatch_timeout(Duration::from_millis(300)))
        .await
        .unwrap();
    long.cancel().await.unwrap();
    tokio::spawn(
        Worker::with_config(no_shell)
            .handler("x", |_| async { Ok(json!(null)) })
            .run(),
    );
    let r = ns.wait_timeout(LIMIT).await.unwrap();
    assert_eq!(r.state, State::Failed);
    assert_eq!(r.error.unwrap().code, FailureCode::NoCapableWorker);
    sys.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_outside_the_allow_list_is_refused_and_offered_elsewhere() {
    let (sys, addr) = coordinator().await;
    let mut strict = config(addr, "strict");
    strict.shell = ShellPolicy::AllowList(vec!["echo".into()]);
    tokio::spawn(Worker::with_config(strict).run());
    let argv = |args: &[&str]| {
        Task::from_spec(TaskSpec::new(TaskKind::Shell(Box::new(ShellSpec {
            command: ShellCommand::Argv(args.iter().map(|a| a.to_string()).collect()),
            env: vec![],
            cwd: None,
        }))))
    };
    assert!(
        sys.submit(argv(&["echo", "ok"]))
            .await
            .unwrap()
            .wait_timeout(LIMIT)
            .await
            .unwrap()
            .is_success()
    );
    // The only capable worker refuses `true`: the task fails, naming why.
    let refused = sys
        .submit(argv(&["true"]))
        .await
        .unwrap()
        .wait_timeout(LIMIT)
        .await
        .unwrap();
    assert_eq!(refused.state, State::Failed);
    let err = refused.error.unwrap();
    assert_eq!(err.code, FailureCode::NoCapableWorker);
    assert!(err.message.contains("true"), "{}", err.message);
    // With a permissive worker connected, a refused task runs there instead.
    let mut open = config(addr, "open");
    open.slots = 1;
    tokio::spawn(Worker::with_config(open).run());
    tokio::time::timeout(LIMIT, async {
        while sys.workers().len() < 2 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    // The strict worker has more free slots, so it is offered first.
    let t = sys.submit(argv(&["true"])).await.unwrap();
    let r = t.wait_timeout(LIMIT).await.unwrap();
    assert!(r.is_success(), "{r:?}");
    let attempts = sys.attempts(t.id()).await.unwrap();
    assert_eq!(attempts.last().unwrap().worker.as_str(), "open");
    sys.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_finishes_running_work_and_leaves_queued_work_queued() {
    let (sys, addr) = coordinator().await;
    let mut c = config(addr, "drainer");
    c.slots = 1;
    c.drain_grace = Duration::from_secs(20);
    let (drain_tx, drain_rx) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(Worker::with_config(c).run_until(async move {
        let _ = drain_rx.await;
    }));
    // One short task runs; two more wait behind it (one slot).
    let marker = tempfile::NamedTempFile::new().unwrap();
    let gate = format!(
        "while [ -s {} ]; do :; done; echo done",
        marker.path().display()
    );
    std::fs::write(marker.path(), "hold").unwrap();
    let mut events = sys.subscribe();
    let running = sys.submit(script(&gate)).await.unwrap();
    let queued: Vec<_> = vec![
        sys.submit(script("echo a")).await.unwrap(),
        sys.submit(script("echo b")).await.unwrap(),
    ];
    reach(&mut events, running.id(), State::Running).await;
    drain_tx.send(()).unwrap();
    // Let the running task finish during the drain.
    std::fs::write(marker.path(), "").unwrap();
    agent.await.unwrap().unwrap();
    let r = running.wait_timeout(LIMIT).await.unwrap();
    assert_eq!(
        (r.state, r.attempts),
        (State::Succeeded, 1),
        "its result counts; it is not run again"
    );
    for q in &queued {
        let rec = q.record().await.unwrap();
        assert_eq!(
            rec.status.state,
            State::Queued,
            "a drain must not fail waiting tasks: {:?}",
            rec.status.error
        );
        q.cancel().await.unwrap();
    }
    sys.shutdown().await.unwrap();
}

/// Waits until, of three tasks given to a one-slot worker with a prefetch of
/// two, the first runs and the other two are held.
async fn one_runs_two_are_held(
    events: &mut tokio::sync::broadcast::Receiver<taskgrid_runtime::SharedEvent>,
    [first, second, third]: [&TaskHandle; 3],
) {
    let want = [
        (first.id(), State::Running),
        (second.id(), State::Assigned),
        (third.id(), State::Assigned),
    ];
    reach_all(events, &want).await;
}

/// Submits a task gated on `gate` and a `true` task to a one-slot worker
/// with a prefetch of one, and waits until the first runs and the second
/// is held: (running, held).
async fn one_runs_one_is_held(
    sys: &TaskSystem,
    events: &mut tokio::sync::broadcast::Receiver<taskgrid_runtime::SharedEvent>,
    gate: &std::path::Path,
) -> (TaskHandle, TaskHandle) {
    let running = sys.submit(gated(gate)).await.unwrap();
    let held = sys.submit(script("true")).await.unwrap();
    reach_all(
        events,
        &[(running.id(), State::Running), (held.id(), State::Assigned)],
    )
    .await;
    (running, held)
}

/// A shell task that waits for `gate` to exist.
fn gated(gate: &std::path::Path) -> Task {
    gated_then(gate, "true")
}

/// Waits for `gate` to exist, then runs `then`.
fn gated_then(gate: &std::path::Path, then: &str) -> Task {
    script(&format!("{}; {then}", wait_for(gate)))
}

/// A shell loop that ends once `gate` exists.
fn wait_for(gate: &std::path::Path) -> String {
    format!(
        "while [ ! -e {g} ]; do sleep 0.02; done",
        g = gate.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetched_tasks_wait_for_a_slot_and_a_cancelled_one_never_runs() {
    let (sys, addr) = coordinator().await;
    let dir = tempfile::tempdir().unwrap();
    let c = one_slot_prefetching(addr, "prefetcher", 2);
    tokio::spawn(Worker::with_config(c).run());
    let mut events = sys.subscribe();
    let (gate1, gate2) = (dir.path().join("gate1"), dir.path().join("gate2"));
    let mark = |n: &str| dir.path().join(n);
    let touch = |n: &str| script(&format!("touch {}", mark(n).display()));
    let first = sys.submit(gated(&gate1)).await.unwrap();
    let touch_second = format!("touch {}", mark("second").display());
    let second = sys.submit(gated_then(&gate2, &touch_second)).await.unwrap();
    let third = sys.submit(touch("third")).await.unwrap();
    one_runs_two_are_held(&mut events, [&first, &second, &third]).await;
    // One slot, two held: offered and assigned, but not started.
    for h in [&second, &third] {
        let rec = h.record().await.unwrap();
        assert_eq!(rec.status.state, State::Assigned, "held, not running");
        assert_eq!(rec.status.worker, Some(WorkerId::new("prefetcher")));
    }
    let w = sys
        .workers()
        .into_iter()
        .find(|w| w.id == WorkerId::new("prefetcher"))
        .unwrap();
    assert_eq!((w.slots, w.prefetch, w.used), (1, 2, 3));

    // A held task cancelled is dropped by the worker. (Its stop goes out
    // before the first gate opens: long before the slot could reach it.)
    third.cancel().await.unwrap();
    assert_eq!(
        third.wait_timeout(LIMIT).await.unwrap().state,
        State::Cancelled
    );
    // The next held task starts once the slot frees, not before.
    std::fs::write(&gate1, b"").unwrap();
    reach(&mut events, second.id(), State::Running).await;
    assert_eq!(
        first.wait_timeout(LIMIT).await.unwrap().state,
        State::Succeeded
    );
    std::fs::write(&gate2, b"").unwrap();
    assert_eq!(
        second.wait_timeout(LIMIT).await.unwrap().state,
        State::Succeeded
    );
    assert!(mark("second").exists());
    // Held tasks start in the order they came, so a task submitted now
    // finishes after the cancelled one would have run.
    let fourth = sys.submit(touch("fourth")).await.unwrap();
    assert_eq!(
        fourth.wait_timeout(LIMIT).await.unwrap().state,
        State::Succeeded
    );
    assert!(!mark("third").exists(), "the cancelled task never ran");
    sys.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_held_too_long_is_handed_back_and_runs_on_a_free_worker() {
    let (sys, addr) = coordinator().await;
    let dir = tempfile::tempdir().unwrap();
    let mut c = one_slot_prefetching(addr, "busy", 1);
    c.prefetch_hold = Duration::from_millis(100);
    tokio::spawn(Worker::with_config(c).run());
    let mut events = sys.subscribe();
    let gate = dir.path().join("gate");
    let (long, next) = one_runs_one_is_held(&sys, &mut events, &gate).await;
    // The busy worker hands it back unstarted, and is not offered it again
    // while its slot is taken.
    reach(&mut events, next.id(), State::Queued).await;
    let held = next.record().await.unwrap().status;
    assert_eq!(held.state, State::Queued);
    // A worker with a free slot runs it, while the long task still runs.
    tokio::spawn(Worker::with_config(config(addr, "free")).run());
    let done = next.wait_timeout(LIMIT).await.unwrap();
    assert_eq!(done.state, State::Succeeded);
    let rec = next.record().await.unwrap();
    assert_eq!(rec.status.worker, Some(WorkerId::new("free")));
    assert_eq!(
        rec.status.attempt,
        held.attempt + 1,
        "handed back once, not passed around"
    );
    assert_eq!(long.record().await.unwrap().status.state, State::Running);
    std::fs::write(&gate, b"").unwrap();
    assert_eq!(
        long.wait_timeout(LIMIT).await.unwrap().state,
        State::Succeeded
    );
    sys.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_held_back_for_company_still_goes_out_on_its_own() {
    // Heartbeats so rare that none can carry the result out during the test.
    let (sys, addr) = coordinator_with(GatewayConfig {
        heartbeat_interval: Duration::from_secs(3600),
        ..GatewayConfig::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let c = one_slot_prefetching(addr, "corker", 2);
    tokio::spawn(Worker::with_config(c).run());
    let mut events = sys.subscribe();
    let (gate1, gate2) = (dir.path().join("gate1"), dir.path().join("gate2"));
    let first = sys.submit(gated(&gate1)).await.unwrap();
    let second = sys.submit(gated(&gate2)).await.unwrap();
    let third = sys.submit(script("true")).await.unwrap();
    one_runs_two_are_held(&mut events, [&first, &second, &third]).await;
    // The first ends while the worker still holds the third: its result
    // may wait for the second's company, but not for the second to end.
    std::fs::write(&gate1, b"").unwrap();
    assert_eq!(
        first.wait_timeout(LIMIT).await.unwrap().state,
        State::Succeeded
    );
    assert!(
        !second.status().await.unwrap().is_terminal(),
        "the second is still gated"
    );
    std::fs::write(&gate2, b"").unwrap();
    for h in [&second, &third] {
        assert_eq!(h.wait_timeout(LIMIT).await.unwrap().state, State::Succeeded);
    }
    sys.shutdown().await.unwrap();
}

/// A TCP proxy to `target` whose open connections can be cut (new ones are
/// still let through): a broken stream without stopping either side.
struct Proxy {
    addr: SocketAddr,
    links: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    /// Connections accepted so far, cut or not.
    accepted: tokio::sync::watch::Receiver<usize>,
}

impl Proxy {
    async fn to(target: SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let links = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let held = links.clone();
        let (count, accepted) = tokio::sync::watch::channel(0);
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                count.send_modify(|n| *n += 1);
                let link = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                held.lock().unwrap().push(link);
            }
        });
        Proxy {
            addr,
            links,
            accepted,
        }
    }

    /// Waits until `n` connections in all have been accepted.
    async fn accepted(&self, n: usize) {
        let mut rx = self.accepted.clone();
        tokio::time::timeout(LIMIT, rx.wait_for(|c| *c >= n))
            .await
            .unwrap_or_else(|_| panic!("fewer than {n} connections"))
            .unwrap();
    }

    /// Drops every open connection (both sockets close).
    fn cut(&self) {
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_loses_its_stream_drops_held_work_which_is_offered_again_and_runs_once() {
    let (sys, addr) = coordinator().await;
    let proxy = Proxy::to(addr).await;
    let dir = tempfile::tempdir().unwrap();
    let mut c = one_slot_prefetching(proxy.addr, "cut-off", 2);
    c.reconnect_min = Duration::from_millis(20);
    tokio::spawn(Worker::with_config(c).run());
    let mut events = sys.subscribe();
    let gate = dir.path().join("gate");
    // Each task appends a line to its own file: a count of its runs.
    let runs = |n: &str| dir.path().join(n);
    let counted = |n: &str| script(&format!("echo run >> {}", runs(n).display()));
    let count_first = format!("echo run >> {}", runs("first").display());
    let first = sys.submit(gated_then(&gate, &count_first)).await.unwrap();
    let second = sys.submit(counted("second")).await.unwrap();
    let third = sys.submit(counted("third")).await.unwrap();
    one_runs_two_are_held(&mut events, [&first, &second, &third]).await;
    let attempt_before = second.record().await.unwrap().status.attempt;

    proxy.cut();
    // The worker reconnects and registers what runs: the first only. The
    // held two were dropped, unrun, so the coordinator offers them again.
    reach_all(
        &mut events,
        &[
            (second.id(), State::Assigned),
            (third.id(), State::Assigned),
        ],
    )
    .await;
    assert_eq!(first.status().await.unwrap(), State::Running, "kept across");
    std::fs::write(&gate, b"").unwrap();
    for h in [&first, &second, &third] {
        assert_eq!(h.wait_timeout(LIMIT).await.unwrap().state, State::Succeeded);
    }
    assert!(
        second.record().await.unwrap().status.attempt > attempt_before,
        "given out again as a new attempt"
    );
    for n in ["first", "second", "third"] {
        let lines = std::fs::read_to_string(runs(n)).unwrap();
        assert_eq!(lines.lines().count(), 1, "{n} ran once");
    }
    sys.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_hands_held_tasks_back_at_once() {
    let (sys, addr) = coordinator().await;
    let dir = tempfile::tempdir().unwrap();
    let mut c = one_slot_prefetching(addr, "holder", 1);
    c.drain_grace = LIMIT;
    let (drain_tx, drain_rx) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(Worker::with_config(c).run_until(async move {
        let _ = drain_rx.await;
    }));
    let mut events = sys.subscribe();
    let gate = dir.path().join("gate");
    let (running, held) = one_runs_one_is_held(&sys, &mut events, &gate).await;
    drain_tx.send(()).unwrap();
    // The held task goes back to the queue while the running one still runs.
    reach(&mut events, held.id(), State::Queued).await;
    assert_eq!(running.record().await.unwrap().status.state, State::Running);
    std::fs::write(&gate, b"").unwrap();
    agent.await.unwrap().unwrap();
    assert_eq!(
        running.wait_timeout(LIMIT).await.unwrap().state,
        State::Succeeded
    );
    assert_eq!(held.record().await.unwrap().status.state, State::Queued);
    sys.shutdown().await.unwrap();
}

/// Waits until worker `id`, the only one labelled `gen=value`, is
/// registered and serving: a task that needs that label runs to success.
async fn listed_as(sys: &TaskSystem, id: &str, value: &str) {
    let mut spec = TaskSpec::new(TaskKind::Shell(Box::new(ShellSpec {
        command: ShellCommand::Argv(vec!["true".into()]),
        env: vec![],
        cwd: None,
    })));
    spec.labels = vec![format!("gen={value}").parse().unwrap()];
    let h = sys.submit(Task::from_spec(spec)).await.unwrap();
    let end = h.wait_timeout(LIMIT).await;
    assert_eq!(
        end.map(|r| r.state).ok(),
        Some(State::Succeeded),
        "{id} never served gen={value}"
    );
    let listed = sys.workers();
    assert!(listed.iter().any(|w| w.id.as_str() == id), "{listed:?}");
}

fn generation(addr: SocketAddr, id: &str, value: &str) -> WorkerConfig {
    let mut c = config(addr, id);
    c.labels = vec![("gen".into(), value.into())];
    c.reconnect_min = Duration::from_millis(20);
    c.reconnect_max = Duration::from_millis(50);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_with_a_connected_id_gives_up_and_the_first_keeps_working() {
    let (sys, addr) = coordinator().await;
    let first = tokio::spawn(Worker::with_config(generation(addr, "twin", "a")).run());
    listed_as(&sys, "twin", "a").await;
    let mut second = generation(addr, "twin", "b");
    second.duplicate_id_grace = Duration::from_millis(200);
    let end = tokio::time::timeout(LIMIT, Worker::with_config(second).run())
        .await
        .expect("the second worker gives up");
    match end {
        Err(WorkerError::DuplicateId(id)) => assert_eq!(id, "twin"),
        other => panic!("{other:?}"),
    }
    assert!(!first.is_finished());
    listed_as(&sys, "twin", "a").await;
    let h = sys.submit(script("true")).await.unwrap();
    assert_eq!(h.wait_timeout(LIMIT).await.unwrap().state, State::Succeeded);
    sys.shutdown().await.unwrap();
}

/// A worker restarted while its predecessor's session is still open (as
/// when a process is killed and started again at once) is told the id is
/// connected, tries again, and takes over once the old session is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successor_waits_out_its_predecessors_session_and_takes_over() {
    let (sys, addr) = coordinator().await;
    let (drain_tx, drain_rx) = tokio::sync::oneshot::channel::<()>();
    let old = tokio::spawn(
        Worker::with_config(generation(addr, "phoenix", "old")).run_until(async move {
            let _ = drain_rx.await;
        }),
    );
    listed_as(&sys, "phoenix", "old").await;
    let proxy = Proxy::to(addr).await;
    let mut new = generation(proxy.addr, "phoenix", "new");
    new.duplicate_id_grace = LIMIT;
    let successor = tokio::spawn(Worker::with_config(new).run());
    // The first was answered "connected already": the successor tries again.
    proxy.accepted(2).await;
    drain_tx.send(()).unwrap();
    old.await.unwrap().unwrap();
    listed_as(&sys, "phoenix", "new").await;
    assert!(!successor.is_finished());
    sys.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_or_missing_token_stops_the_worker_saying_which() {
    let (sys, addr) = coordinator_with(GatewayConfig {
        worker_token: Some("s3cret".into()),
        ..GatewayConfig::default()
    })
    .await;
    let server = format!("http://{addr}");
    let run = |token: Option<&str>| {
        let mut c = config(addr, "locked-out");
        c.token = token.map(str::to_owned);
        tokio::time::timeout(LIMIT, Worker::with_config(c).run())
    };
    match run(Some("guess")).await.expect("it stops") {
        Err(WorkerError::WrongToken(s)) => assert_eq!(s, server),
        other => panic!("{other:?}"),
    }
    match run(None).await.expect("it stops") {
        Err(e @ WorkerError::TokenRequired(_)) => {
            assert!(e.to_string().contains("requires a worker token"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    sys.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_runtime_that_does_not_answer_is_not_advertised() {
    let (sys, addr) = coordinator().await;
    let dir = tempfile::tempdir().unwrap();
    // Answers `version` only. Installed by `install`, whose process
    // closes it before it runs (no "text file busy" from a fork here).
    let source = dir.path().join("fake-docker.src");
    std::fs::write(&source, "#!/bin/sh\n[ \"$1\" = version ]\n").unwrap();
    let fake = dir.path().join("fake-docker");
    let status = std::process::Command::new("install")
        .args(["-m", "755"])
        .arg(&source)
        .arg(&fake)
        .status()
        .unwrap();
    assert!(status.success());
    for (id, program, advertised) in [
        ("no-runtime", dir.path().join("missing"), false),
        ("fake-runtime", fake.clone(), true),
    ] {
        let mut c = generation(addr, id, id);
        c.container = Some(taskgrid_worker::ContainerRuntime::new(program));
        tokio::spawn(Worker::with_config(c).run());
        listed_as(&sys, id, id).await;
        let w = sys.workers().into_iter().find(|w| w.id.as_str() == id);
        assert_eq!(w.map(|w| w.container), Some(advertised), "{id}");
    }
    sys.shutdown().await.unwrap();
}

/// A stand-in coordinator: answers a register with `registered` (saying
/// `takes_release` or not), then offers two gated shell tasks to a
/// one-slot worker (noting when), and passes on everything the worker
/// says with when it came.
struct Offering {
    takes_release: bool,
    gate: std::path::PathBuf,
    offered: std::sync::Arc<std::sync::OnceLock<tokio::time::Instant>>,
    said: tokio::sync::mpsc::UnboundedSender<(tokio::time::Instant, In)>,
}

type Offers = std::pin::Pin<
    Box<
        dyn tokio_stream::Stream<
                Item = Result<taskgrid_proto::worker::CoordinatorMessage, tonic::Status>,
            > + Send,
    >,
>;

#[tonic::async_trait]
impl taskgrid_proto::worker::worker_gateway_server::WorkerGateway for Offering {
    type SessionStream = Offers;

    async fn session(
        &self,
        request: tonic::Request<tonic::Streaming<taskgrid_proto::worker::WorkerMessage>>,
    ) -> Result<tonic::Response<Offers>, tonic::Status> {
        use taskgrid_proto::worker::{
            Assignment, Assignments, CoordinatorMessage, Registered, ShellTask, assignment,
            coordinator_message::Msg as Out, shell_task,
        };
        let mut inbound = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let (said, offered) = (self.said.clone(), self.offered.clone());
        let script = wait_for(&self.gate);
        let offer = |n: u8| Assignment {
            attempt: Some(taskgrid_proto::attempt_ref(
                taskgrid_core::TaskId::from_bytes([n; 16]),
                1,
            )),
            kind: Some(assignment::Kind::Shell(ShellTask {
                command: Some(shell_task::Command::Script(script.clone())),
                ..ShellTask::default()
            })),
            slots: 1,
            ..Assignment::default()
        };
        let (registered, offers) = (
            Registered {
                worker_id: "held".into(),
                heartbeat_interval_ms: 100,
                cancel: Vec::new(),
                takes_release: self.takes_release,
            },
            Assignments {
                assignments: vec![offer(1), offer(2)],
            },
        );
        tokio::spawn(async move {
            while let Ok(Some(m)) = inbound.message().await {
                let Some(msg) = m.msg else { continue };
                let register = matches!(msg, In::Register(_));
                let _ = said.send((tokio::time::Instant::now(), msg));
                if register {
                    let _ = offered.set(tokio::time::Instant::now());
                    for msg in [
                        Out::Registered(registered.clone()),
                        Out::Assignments(offers.clone()),
                    ] {
                        let _ = tx.send(Ok(CoordinatorMessage { msg: Some(msg) })).await;
                    }
                }
            }
        });
        Ok(tonic::Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// The hold of the worker in [`said_while_holding`].
const HOLD: Duration = Duration::from_millis(50);

/// What a one-slot worker holding a second task (prefetch 1, a hold of
/// [`HOLD`]) says until it hands something back, or until its fifth
/// heartbeat (100 ms apart: long past the hold); each with how long after
/// the offers it came.
async fn said_while_holding(takes_release: bool) -> Vec<(Duration, In)> {
    let dir = tempfile::tempdir().unwrap();
    let (said, mut heard) = tokio::sync::mpsc::unbounded_channel();
    let gate = dir.path().join("gate");
    let offered = std::sync::Arc::new(std::sync::OnceLock::new());
    let coordinator = Offering {
        takes_release,
        gate: gate.clone(),
        offered: offered.clone(),
        said,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // No Nagle: the offers must reach the worker when they are noted as
    // sent (a second small write would wait ~40 ms for an ACK).
    let incoming = tokio_stream::StreamExt::map(TcpListenerStream::new(listener), |s| {
        s.and_then(|s| s.set_nodelay(true).map(|()| s))
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(
                taskgrid_proto::worker::worker_gateway_server::WorkerGatewayServer::new(
                    coordinator,
                ),
            )
            .serve_with_incoming(incoming),
    );
    let mut c = one_slot_prefetching(addr, "held", 1);
    c.prefetch_hold = HOLD;
    let worker = tokio::spawn(Worker::with_config(c).run());
    let mut out = Vec::new();
    let mut beats = 0;
    tokio::time::timeout(LIMIT, async {
        while beats < 5 {
            let (at, msg) = heard.recv().await.unwrap();
            beats += usize::from(matches!(msg, In::Heartbeat(_)));
            let reject = matches!(msg, In::Reject(_));
            // Before the offers (the register, an early heartbeat): 0.
            let since = offered
                .get()
                .map_or(Duration::ZERO, |o| at.saturating_duration_since(*o));
            out.push((since, msg));
            if reject {
                break;
            }
        }
    })
    .await
    .expect("a hand-back or five heartbeats");
    std::fs::write(&gate, b"").unwrap();
    worker.abort();
    out
}

/// With a coordinator that takes hand-backs, a held task is handed back;
/// with one that does not say so (built before them: it would count the
/// hand-back as a refusal), never.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_hands_back_only_to_a_coordinator_that_takes_it() {
    let accepted = |said: &[(Duration, In)]| said.iter().any(|(_, m)| matches!(m, In::Accept(_)));
    let said = said_while_holding(true).await;
    assert!(accepted(&said), "{said:?}");
    let back: Vec<_> = said
        .iter()
        .filter_map(|(since, m)| match m {
            In::Reject(r) if r.release => Some((*since, r)),
            _ => None,
        })
        .collect();
    assert_eq!(back.len(), 1, "{said:?}");
    // The held one (the second offer), and not before the hold was up.
    let (since, r) = back[0];
    let second = taskgrid_proto::attempt_ref(taskgrid_core::TaskId::from_bytes([2; 16]), 1);
    assert_eq!(r.attempt.as_ref(), Some(&second), "{said:?}");
    assert!(since >= HOLD, "handed back {since:?} after the offer");
    let said = said_while_holding(false).await;
    assert!(accepted(&said), "{said:?}");
    assert!(
        !said.iter().any(|(_, m)| matches!(m, In::Reject(_))),
        "nothing handed back: {said:?}"
    );
}
