#![allow(clippy::unwrap_used)]
//! The worker gateway over a real socket, with a fake worker that speaks the
//! raw protocol — what a worker written in another language would do.

use std::time::Duration;

mod support;

use support::{FakeWorker, LIMIT, one_offer, register, serve, succeeded, system};
use taskgrid_core::{FailureCode, State, TaskId};
use taskgrid_proto::worker::{self, coordinator_message::Msg as Out, worker_message::Msg as In};
use taskgrid_runtime::Task;
use taskgrid_server::GatewayConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_worker_runs_a_task_and_its_output_and_result_are_stored() {
    let sys = system();
    let addr = serve(&sys, GatewayConfig::default()).await;
    let mut w = FakeWorker::connect(addr, None, register("w1", &["double"]))
        .await
        .unwrap();
    assert!(
        matches!(w.next().await, Out::Registered(r) if r.worker_id == "w1" && r.heartbeat_interval_ms == 5000)
    );
    let h = sys.submit(Task::handler("double", &21)).await.unwrap();
    let a = w.next_assignment().await;
    assert_eq!(a.attempt.as_ref().unwrap().task_id, h.id().to_string());
    assert!(
        matches!(&a.kind, Some(worker::assignment::Kind::Handler(t)) if t.name == "double" && t.payload_json == "21")
    );
    w.send(In::Accept(worker::Accept {
        attempt: a.attempt.clone(),
    }))
    .await;
    w.send(In::Output(worker::Output {
        attempt: a.attempt.clone(),
        stream: 0,
        data: "working\n".into(),
    }))
    .await;
    w.send(succeeded(&a, "42")).await;
    let r = h.wait_timeout(LIMIT).await.unwrap();
    assert_eq!(
        (r.state, r.value::<u64>().unwrap()),
        (State::Succeeded, Some(42))
    );
    assert_eq!(sys.output(h.id()).await.unwrap()[0].data, "working\n");
    assert_eq!(sys.attempts(h.id()).await.unwrap()[0].worker.as_str(), "w1");
    sys.shutdown().await.unwrap();
}

/// A burst of messages sent without waiting (which the gateway may take
/// together, each run of accepts, output and progress under one engine
/// lock): each still counts as if it came alone, in order, and a malformed
/// or refused one among them is dropped while the others are recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_messages_is_recorded_in_order() {
    let (sys, w, h, a) = one_offer("double", 21).await;
    let output = |data: &str| {
        In::Output(worker::Output {
            attempt: a.attempt.clone(),
            stream: 0,
            data: data.into(),
        })
    };
    let mut stale = a.attempt.clone().unwrap();
    stale.attempt += 1;
    let burst = [
        In::Accept(worker::Accept {
            attempt: a.attempt.clone(),
        }),
        output("one\n"),
        In::Accept(worker::Accept { attempt: None }),
        output("two\n"),
        In::Output(worker::Output {
            attempt: Some(stale),
            stream: 0,
            data: "stale\n".into(),
        }),
        In::Progress(worker::Progress {
            attempt: a.attempt.clone(),
            fraction: 0.5,
            message: "half".into(),
        }),
        output("three\n"),
        succeeded(&a, "42"),
    ];
    for m in burst {
        w.send(m).await;
    }
    let r = h.wait_timeout(LIMIT).await.unwrap();
    assert_eq!(r.state, State::Succeeded);
    let output = texts(&sys, h.id()).await;
    assert_eq!(output, ["one\n", "two\n", "three\n"]);
    let rec = sys.get(h.id()).await.unwrap();
    let progress = rec.progress.unwrap();
    assert_eq!(
        (progress.fraction, progress.message.as_deref()),
        (0.5, Some("half"))
    );
    let attempts = sys.attempts(h.id()).await.unwrap();
    assert!(attempts[0].started_at.is_some(), "{attempts:?}");
    sys.shutdown().await.unwrap();
}

/// The text of a task's output chunks, in order.
async fn texts(sys: &taskgrid_runtime::TaskSystem, id: TaskId) -> Vec<String> {
    sys.output(id)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.data)
        .collect()
}

/// The next message, which must be an `ack`.
async fn ack(w: &mut FakeWorker) -> worker::Ack {
    match w.next().await {
        Out::Ack(a) => a,
        other => panic!("expected an ack, got {other:?}"),
    }
}

/// A spawn in either form gives the child the same payload: the API's
/// submit form in `api_spec_json`, or the engine's own in `spec_json` (as
/// workers before `api_spec_json` send it); a bad one is answered with an
/// error naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spawn_in_either_form_makes_the_same_child() {
    let (sys, mut w, h, a) = one_offer("parent", 1).await;
    w.send(In::Accept(worker::Accept {
        attempt: a.attempt.clone(),
    }))
    .await;
    let spawn = |request_id, spec_json: &str, api_spec_json: &str| {
        In::Spawn(worker::Spawn {
            parent: a.attempt.clone(),
            spec_json: spec_json.into(),
            request_id,
            api_spec_json: api_spec_json.into(),
        })
    };
    w.send(spawn(
        1,
        r#"{"kind":{"type":"handler","name":"child","payload":"{\"w\":640}"}}"#,
        "",
    ))
    .await;
    let old = ack(&mut w).await;
    w.send(spawn(
        2,
        "",
        r#"{"kind":{"type":"handler","name":"child","payload":{"w":640}},"timeout_ms":5000}"#,
    ))
    .await;
    let new = ack(&mut w).await;
    for a in [&old, &new] {
        assert!(a.error.is_empty(), "{a:?}");
        let child = sys.get(a.task_id.parse::<TaskId>().unwrap()).await.unwrap();
        assert!(
            matches!(&child.spec.kind, taskgrid_core::TaskKind::Handler { payload, .. } if &**payload == r#"{"w":640}"#),
            "{:?}",
            child.spec.kind
        );
        assert_eq!(child.spec.parent, Some(h.id()));
    }
    w.send(spawn(
        3,
        "",
        r#"{"kind":{"type":"handler","name":"child"},"prio":1}"#,
    ))
    .await;
    let bad = ack(&mut w).await;
    assert!(bad.error.contains("spawn.api_spec_json"), "{bad:?}");
    sys.shutdown().await.unwrap();
}

/// `results` carries several results in one message, each taken as if it
/// came alone — a malformed one among them is dropped, the others count;
/// and a result for an attempt never accepted is its accept too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_results_ends_each_attempt() {
    let sys = system();
    let addr = serve(&sys, GatewayConfig::default()).await;
    let two_slots = worker::Register {
        slots: 2,
        ..register("w1", &["double"])
    };
    let mut w = FakeWorker::connect(addr, None, two_slots).await.unwrap();
    w.next().await;
    let (h1, h2) = (
        sys.submit(Task::handler("double", &1)).await.unwrap(),
        sys.submit(Task::handler("double", &2)).await.unwrap(),
    );
    let mut got = Vec::new();
    while got.len() < 2 {
        if let Out::Assignments(a) = w.next().await {
            got.extend(a.assignments);
        }
    }
    let by_task = |h: &taskgrid_runtime::TaskHandle| {
        got.iter()
            .find(|a| a.attempt.as_ref().unwrap().task_id == h.id().to_string())
            .unwrap()
            .clone()
    };
    let (a1, a2) = (by_task(&h1), by_task(&h2));
    let result = |a: &worker::Assignment, json: &str| match succeeded(a, json) {
        In::Result(r) => r,
        _ => unreachable!("succeeded builds a result"),
    };
    let malformed = worker::Result {
        attempt: None,
        ..result(&a1, "0")
    };
    w.send(In::Results(worker::Results {
        results: vec![result(&a1, "2"), malformed, result(&a2, "4")],
    }))
    .await;
    for (h, want) in [(&h1, 2), (&h2, 4)] {
        let r = h.wait_timeout(LIMIT).await.unwrap();
        assert_eq!(
            (r.state, r.value::<u64>().unwrap()),
            (State::Succeeded, Some(want))
        );
    }
    sys.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_is_refused_and_malformed_messages_are_ignored() {
    let sys = system();
    let config = GatewayConfig {
        worker_token: Some("s3cret".into()),
        ..GatewayConfig::default()
    };
    let addr = serve(&sys, config).await;
    for token in [None, Some("wrong")] {
        let err = FakeWorker::connect(addr, token, register("w1", &["x"]))
            .await
            .err()
            .unwrap();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
    }
    assert!(
        sys.workers().is_empty(),
        "a refused worker is not registered"
    );
    let bad = worker::Register {
        slots: 0,
        ..register("w1", &["x"])
    };
    let err = FakeWorker::connect(addr, Some("s3cret"), bad)
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let greedy = worker::Register {
        prefetch: u32::MAX,
        ..register("w1", &["x"])
    };
    let err = FakeWorker::connect(addr, Some("s3cret"), greedy)
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("register.prefetch"), "{err:?}");
    let anonymous = worker::Register {
        instance: String::new(),
        ..register("w1", &["x"])
    };
    let err = FakeWorker::connect(addr, Some("s3cret"), anonymous)
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("register.instance"), "{err:?}");

    let mut w = FakeWorker::connect(addr, Some("s3cret"), register("w1", &["x"]))
        .await
        .unwrap();
    w.next().await;
    let h = sys.submit(Task::handler("x", &1)).await.unwrap();
    let a = w.next_assignment().await;
    // Garbage: an empty message, a bad task id, an attempt 0, a second register.
    w.tx.send(worker::WorkerMessage { msg: None })
        .await
        .unwrap();
    let garbage = worker::AttemptRef {
        task_id: "not-an-id".into(),
        attempt: 1,
    };
    w.send(In::Accept(worker::Accept {
        attempt: Some(garbage),
    }))
    .await;
    let zero = worker::AttemptRef {
        task_id: h.id().to_string(),
        attempt: 0,
    };
    w.send(succeeded(
        &worker::Assignment {
            attempt: Some(zero),
            ..Default::default()
        },
        "1",
    ))
    .await;
    w.send(In::Register(register("w1", &["x"]))).await;
    // The session and the coordinator carry on.
    w.send(In::Accept(worker::Accept {
        attempt: a.attempt.clone(),
    }))
    .await;
    w.send(succeeded(&a, "7")).await;
    assert!(h.wait_timeout(LIMIT).await.unwrap().is_success());
    sys.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_fails_the_task_with_no_capable_worker() {
    let sys = system();
    let addr = serve(&sys, GatewayConfig::default()).await;
    let mut w1 = FakeWorker::connect(addr, None, register("w1", &["gpu-job"]))
        .await
        .unwrap();
    let mut w2 = FakeWorker::connect(addr, None, register("w2", &["gpu-job"]))
        .await
        .unwrap();
    w1.next().await;
    w2.next().await;
    let h = sys.submit(Task::handler("gpu-job", &())).await.unwrap();
    for _ in 0..2 {
        // Whichever worker gets it refuses it.
        let (w, a) = tokio::select! {
            a = w1.next_assignment() => (&w1, a),
            a = w2.next_assignment() => (&w2, a),
        };
        w.send(In::Reject(worker::Reject {
            attempt: a.attempt.clone(),
            reason: "no CUDA".into(),
            release: false,
        }))
        .await;
    }
    let r = h.wait_timeout(LIMIT).await.unwrap();
    assert_eq!(r.state, State::Failed);
    let err = r.error.unwrap();
    assert_eq!(err.code, FailureCode::NoCapableWorker);
    assert!(err.message.contains("no CUDA"), "{}", err.message);
    sys.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_worker_keeps_its_attempt_and_a_silent_one_loses_it() {
    let sys = system();
    let fast = GatewayConfig {
        heartbeat_interval: Duration::from_millis(250),
        ..GatewayConfig::default()
    };
    let addr = serve(&sys, fast).await;
    let mut w = FakeWorker::connect(addr, None, register("w1", &["job"]))
        .await
        .unwrap();
    w.next().await;
    let h = sys.submit(Task::handler("job", &())).await.unwrap();
    let a = w.next_assignment().await;
    w.send(In::Accept(worker::Accept {
        attempt: a.attempt.clone(),
    }))
    .await;
    // The stream breaks; the worker comes back still running the attempt.
    w.vanish();
    let reg = worker::Register {
        running: vec![a.attempt.clone().unwrap()],
        ..register("w1", &["job"])
    };
    let mut w = FakeWorker::reconnect(addr, reg).await;
    let first = w.next().await;
    let attempts = sys.attempts(h.id()).await;
    assert!(
        matches!(&first, Out::Registered(r) if r.cancel.is_empty()),
        "{first:?} {attempts:?}"
    );
    w.send(succeeded(&a, "1")).await;
    assert!(h.wait_timeout(LIMIT).await.unwrap().is_success());

    // A worker that goes silent past 3 heartbeats loses its attempt to
    // another worker, and is told to stop it when it comes back.
    let h2 = sys.submit(Task::handler("job", &())).await.unwrap();
    let a1 = w.next_assignment().await;
    w.send(In::Accept(worker::Accept {
        attempt: a1.attempt.clone(),
    }))
    .await;
    let mut other = FakeWorker::connect(addr, None, register("w2", &["job"]))
        .await
        .unwrap();
    other.next().await;
    let mut beats = tokio::time::interval(Duration::from_millis(50));
    let a2 = loop {
        tokio::select! {
            a = other.next_assignment() => break a,
            _ = beats.tick() => other.send(In::Heartbeat(worker::Heartbeat::default())).await,
        }
    };
    assert_eq!(a2.attempt.as_ref().unwrap().attempt, 2);
    let reg = worker::Register {
        running: vec![a1.attempt.clone().unwrap()],
        ..register("w1", &["job"])
    };
    let mut back = FakeWorker::reconnect(addr, reg).await;
    assert!(
        matches!(back.next().await, Out::Registered(r) if r.cancel == vec![a1.attempt.clone().unwrap()])
    );
    // Its late result is refused by the fencing token; the new attempt's counts.
    back.send(succeeded(&a1, "\"stale\"")).await;
    other
        .send(In::Accept(worker::Accept {
            attempt: a2.attempt.clone(),
        }))
        .await;
    other.send(succeeded(&a2, "\"fresh\"")).await;
    let r = h2.wait_timeout(LIMIT).await.unwrap();
    assert_eq!(r.value::<String>().unwrap().as_deref(), Some("fresh"));
    let attempts = sys.attempts(h2.id()).await.unwrap();
    assert_eq!(attempts.len(), 2);
    assert_eq!(
        attempts[0].outcome,
        Some(taskgrid_core::AttemptOutcome::Lost)
    );
    let _ = TaskId::from_u128(0);
    sys.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_says_goodbye_hands_its_attempts_back_at_once() {
    let sys = system();
    let addr = serve(&sys, GatewayConfig::default()).await;
    let mut w = FakeWorker::connect(addr, None, register("w1", &["job"]))
        .await
        .unwrap();
    w.next().await;
    let h = sys.submit(Task::handler("job", &())).await.unwrap();
    let a = w.next_assignment().await;
    w.send(In::Accept(worker::Accept {
        attempt: a.attempt.clone(),
    }))
    .await;
    // A goodbye (a drained worker), then the end of its side of the stream;
    // like a real worker it reads on until the coordinator ends its side.
    let started = std::time::Instant::now();
    w.send(In::Goodbye(worker::Goodbye {})).await;
    let FakeWorker { tx, mut rx } = w;
    drop(tx);
    while let Ok(Some(_)) = rx.message().await {}
    let mut w2 = FakeWorker::connect(addr, None, register("w2", &["job"]))
        .await
        .unwrap();
    w2.next().await;
    let again = w2.next_assignment().await;
    // No waiting for the heartbeat timeout (15 s here).
    assert!(
        started.elapsed() < GatewayConfig::HEARTBEAT_INTERVAL_DEFAULT,
        "handed back after {:?}",
        started.elapsed()
    );
    assert_eq!(again.attempt.as_ref().unwrap().task_id, h.id().to_string());
    assert_eq!(again.attempt.as_ref().unwrap().attempt, 2);
    sys.cancel(h.id()).await.unwrap();
    sys.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_with_a_connected_workers_id_is_refused() {
    let sys = system();
    let addr = serve(&sys, GatewayConfig::default()).await;
    let mut first = FakeWorker::connect(addr, None, register("twin", &["job"]))
        .await
        .unwrap();
    first.next().await;
    let impostor = worker::Register {
        instance: "another-process".into(),
        ..register("twin", &["job"])
    };
    let err = FakeWorker::connect(addr, None, impostor)
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), tonic::Code::AlreadyExists);
    // The same process reconnecting replaces its own session at once.
    let again = FakeWorker::connect(addr, None, register("twin", &["job"])).await;
    assert!(again.is_ok());
    sys.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accepted_attempt_times_out_on_time_on_a_quiet_coordinator() {
    let sys = system();
    // Heartbeats a minute apart: nothing else wakes the coordinator soon.
    let config = GatewayConfig {
        heartbeat_interval: Duration::from_secs(60),
        ..GatewayConfig::default()
    };
    let addr = serve(&sys, config).await;
    let mut w = FakeWorker::connect(addr, None, register("w1", &["slow"]))
        .await
        .unwrap();
    w.next().await; // registered
    let h = sys
        .submit(Task::handler("slow", &0).timeout(Duration::from_millis(100)))
        .await
        .unwrap();
    let a = w.next_assignment().await;
    let accepted = std::time::Instant::now();
    w.send(In::Accept(worker::Accept {
        attempt: a.attempt.clone(),
    }))
    .await;
    // The accept arms the attempt's deadline; it is enforced at once, not
    // at the next unrelated wake-up.
    let cancel = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Out::Cancel(c) = w.next().await {
                return c;
            }
        }
    })
    .await
    .expect("the timeout is enforced within seconds");
    assert_eq!(cancel.attempt, a.attempt);
    assert_eq!(cancel.reason, worker::cancel::Reason::Timeout as i32);
    assert!(accepted.elapsed() >= Duration::from_millis(100));
    drop(h);
    sys.shutdown().await.unwrap();
}

/// A stream that ends without a goodbye — as when the worker's gRPC library
/// cancels it (HTTP/2 RST_STREAM) or closes it before reconnecting — is a
/// break: the attempt stays the worker's, and a reconnect keeps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_ends_without_a_goodbye_keeps_the_workers_attempts() {
    let sys = system();
    let addr = serve(&sys, GatewayConfig::default()).await;
    for how in ["cancelled", "closed"] {
        let mut w = FakeWorker::connect(addr, None, register("w1", &["job"]))
            .await
            .unwrap();
        w.next().await;
        let mut events = sys.subscribe();
        let h = sys.submit(Task::handler("job", &())).await.unwrap();
        let a = w.next_assignment().await;
        w.send(In::Accept(worker::Accept {
            attempt: a.attempt.clone(),
        }))
        .await;
        // Running, and committed (events are published after the commit).
        loop {
            let ev = events.recv().await.unwrap();
            if ev.id == h.id() && ev.new_state() == Some(State::Running) {
                break;
            }
        }
        match how {
            // Dropping the response stream resets the HTTP/2 stream with
            // CANCEL, as a gRPC library does when a call is cancelled.
            "cancelled" => drop(w.rx),
            // The request side ends cleanly (END_STREAM), no goodbye.
            _ => drop(w.tx),
        }
        // Another worker connects: it is offered nothing, since the task is
        // still held by w1 (a goodbye would have handed it back at once).
        let mut other = FakeWorker::connect(addr, None, register("w2", &["job"]))
            .await
            .unwrap();
        other.next().await;
        let reg = worker::Register {
            running: vec![a.attempt.clone().unwrap()],
            ..register("w1", &["job"])
        };
        let mut back = FakeWorker::reconnect(addr, reg).await;
        assert!(
            matches!(back.next().await, Out::Registered(r) if r.cancel.is_empty()),
            "{how}: the attempt is still w1's"
        );
        back.send(succeeded(&a, "1")).await;
        let r = h.wait_timeout(LIMIT).await.unwrap();
        assert!(r.is_success(), "{how}: {r:?}");
        assert_eq!(r.attempts, 1, "{how}: it never ran again");
        let attempts = sys.attempts(h.id()).await.unwrap();
        assert_eq!(attempts.len(), 1, "{how}: {attempts:?}");
        other.send(In::Goodbye(worker::Goodbye {})).await;
        back.send(In::Goodbye(worker::Goodbye {})).await;
    }
    sys.shutdown().await.unwrap();
}

/// Output, progress and a checkpoint about an attempt are taken only from
/// the worker that holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_worker_cannot_write_into_an_attempt() {
    let sys = system();
    let addr = serve(&sys, GatewayConfig::default()).await;
    let mut victim = FakeWorker::connect(addr, None, register("victim", &["job"]))
        .await
        .unwrap();
    victim.next().await;
    let h = sys.submit(Task::handler("job", &())).await.unwrap();
    let a = victim.next_assignment().await;
    victim
        .send(In::Accept(worker::Accept {
            attempt: a.attempt.clone(),
        }))
        .await;
    let mut rogue = FakeWorker::connect(addr, None, register("rogue", &["other"]))
        .await
        .unwrap();
    rogue.next().await;
    rogue
        .send(In::Output(worker::Output {
            attempt: a.attempt.clone(),
            stream: worker::Stream::Stdout as i32,
            data: "forged\n".into(),
        }))
        .await;
    rogue
        .send(In::Progress(worker::Progress {
            attempt: a.attempt.clone(),
            fraction: 0.99,
            message: "forged".into(),
        }))
        .await;
    rogue
        .send(In::Checkpoint(worker::Checkpoint {
            attempt: a.attempt.clone(),
            data_json: r#"{"forged":true}"#.into(),
            request_id: 7,
        }))
        .await;
    // The checkpoint is answered with a refusal; what came before it on
    // the stream has been handled by then.
    match rogue.next().await {
        Out::Ack(ack) => {
            assert_eq!(ack.request_id, 7);
            assert!(!ack.error.is_empty(), "the rogue's checkpoint is refused");
        }
        other => panic!("{other:?}"),
    }
    victim
        .send(In::Output(worker::Output {
            attempt: a.attempt.clone(),
            stream: worker::Stream::Stdout as i32,
            data: "real\n".into(),
        }))
        .await;
    victim.send(succeeded(&a, "1")).await;
    assert!(h.wait_timeout(LIMIT).await.unwrap().is_success());
    let rec = sys.get_committed(h.id()).await.unwrap();
    assert_eq!(rec.progress, None);
    assert_eq!(rec.checkpoint, None);
    let output = texts(&sys, h.id()).await;
    assert_eq!(output, ["real\n"]);
    sys.shutdown().await.unwrap();
}
