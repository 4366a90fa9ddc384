#![allow(clippy::unwrap_used)]
//! The commit discipline (docs/engine.md): nothing leaves the coordinator before
//! the change it reflects is committed. Each test holds the store's commit
//! at the door (the `Gated` store) once the change has reached it, checks
//! that nothing got out meanwhile, then lets the commit through and sees it
//! get out. The `held` checks give the forbidden thing 200 ms to happen: the
//! code under test can never do it while the commit is held, so they cannot
//! pass by luck, only fail if the discipline breaks.

mod support;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::{Value, json};
use support::{FakeWorker, Gated, LIMIT, moves, register, serve, system_on};
use taskgrid_api::SubmitRequest;
use taskgrid_core::{Change, State, TaskId};
use taskgrid_proto::worker::coordinator_message::Msg as Out;
use taskgrid_runtime::{Task, TaskContext, TaskError, TaskSystem};
use taskgrid_server::GatewayConfig;
use taskgrid_server::http::{ApiConfig, router};
use taskgrid_store::Store;
use tokio::task::JoinHandle;
use tower::ServiceExt;

/// How long a held commit must keep something from getting out.
const HELD: Duration = Duration::from_millis(200);

async fn call(
    app: &axum::Router,
    method: Method,
    uri: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(uri);
    let body = match body {
        Some(v) => {
            req = req.header("content-type", "application/json");
            Body::from(v.to_string())
        }
        None => Body::empty(),
    };
    let res = app.clone().oneshot(req.body(body).unwrap()).await.unwrap();
    let status = res.status();
    let bytes = axum::body::to_bytes(res.into_body(), usize::MAX)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// `call` on a task of its own, so the test can watch it not finish.
fn spawn_call(
    app: &axum::Router,
    method: Method,
    uri: String,
    body: Option<Value>,
) -> JoinHandle<(StatusCode, Value)> {
    let app = app.clone();
    tokio::spawn(async move { call(&app, method, &uri, body).await })
}

/// Asserts `h` does not finish while the commit is held.
async fn held<T: std::fmt::Debug>(h: &mut JoinHandle<T>, what: &str) {
    if let Ok(r) = tokio::time::timeout(HELD, h).await {
        panic!("{what} got out before its commit: {r:?}");
    }
}

async fn finish<T>(h: JoinHandle<T>) -> T {
    tokio::time::timeout(LIMIT, h).await.unwrap().unwrap()
}

fn api(sys: &Arc<TaskSystem>) -> axum::Router {
    router(sys.clone(), ApiConfig::default())
}

/// A system on a `Gated` store, and its HTTP API.
fn gated_api() -> (Arc<Gated>, Arc<TaskSystem>, axum::Router) {
    let store = Gated::new();
    let sys = Arc::new(system_on(store.clone()));
    let app = api(&sys);
    (store, sys, app)
}

/// The body of a submit of a `job` handler task to `queue` with `tags`.
fn job(queue: &str, tags: &[&str]) -> Value {
    let mut req = SubmitRequest::handler("job", json!(null));
    req.queue = queue.to_owned();
    req.tags = tags.iter().map(|t| t.to_string()).collect();
    serde_json::to_value(req).unwrap()
}

/// Waits until the engine has decided to move task `id` into `state` (its
/// commit may still be held). Nothing is published before a commit, so
/// there is no event to wait for: this looks at the engine's live view,
/// bounded by `LIMIT`.
async fn decided(sys: &TaskSystem, id: TaskId, state: State) {
    tokio::time::timeout(LIMIT, async {
        while sys.get(id).await.unwrap().status.state != state {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("the engine decided in time");
}

async fn submit(app: &axum::Router, queue: &str) -> TaskId {
    let (status, body) = call(app, Method::POST, "/api/v1/tasks", Some(job(queue, &[]))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["id"].as_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_is_answered_and_shown_only_once_committed() {
    let (store, sys, app) = gated_api();
    let id = submit(&app, "nobody-serves-this").await;
    let tagged = {
        let (_, body) = call(&app, Method::POST, "/api/v1/tasks", Some(job("q", &["t"]))).await;
        body["id"].as_str().unwrap().parse::<TaskId>().unwrap()
    };

    store.close();
    let mut cancel = spawn_call(
        &app,
        Method::POST,
        format!("/api/v1/tasks/{id}/cancel"),
        None,
    );
    store.arrived(move |c| moves(c, id, State::Cancelled)).await;
    held(&mut cancel, "the cancel's answer").await;
    // A read of the task waits for the same commit: it must not show a
    // cancel a crash could take back.
    let mut read = spawn_call(&app, Method::GET, format!("/api/v1/tasks/{id}"), None);
    held(&mut read, "a read of the cancelled task").await;
    // So does the cancel by tag.
    let mut by_tag = spawn_call(
        &app,
        Method::POST,
        "/api/v1/tasks/cancel?tag=t".into(),
        None,
    );
    decided(&sys, tagged, State::Cancelled).await;
    held(&mut by_tag, "the cancel by tag's answer").await;

    store.open();
    let (status, body) = finish(cancel).await;
    assert_eq!(
        (status, body["outcome"].as_str()),
        (StatusCode::OK, Some("cancelled"))
    );
    let (status, body) = finish(read).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["task"]["status"]["state"], "cancelled");
    let (status, body) = finish(by_tag).await;
    assert_eq!(
        (status, body["cancelled"].as_u64()),
        (StatusCode::OK, Some(1))
    );
    sys.shutdown().await.unwrap();
}

/// A submit's audit entry is committed with the submit (one task or a
/// batch), one commit before the answer instead of the submit's and then
/// the entry's, and it is recorded once; so is a submit answered 200 (a
/// live task with its unique key); a refused submit is recorded as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submit_and_its_audit_entry_are_one_commit() {
    let (store, sys, app) = gated_api();
    // Each in a queue of its own, to know its submit's changes.
    let submits = [
        ("/api/v1/tasks", "one", job("one", &[])),
        (
            "/api/v1/tasks/batch",
            "two",
            json!({ "tasks": [job("two", &[]), job("two", &[])] }),
        ),
    ];
    for (uri, queue, body) in submits {
        store.close();
        let mut submit = spawn_call(&app, Method::POST, uri.into(), Some(body));
        store
            .arrived(move |c| matches!(c, Change::Submitted(r) if &*r.spec.queue == queue))
            .await;
        // Nothing has committed yet: an entry made after the submit's
        // commit could not have reached the store.
        let together = store.has_arrived(|c| {
            matches!(
                c,
                Change::Audit(r) if r.action == format!("POST {uri}") && r.status == 201
            )
        });
        held(&mut submit, "the submit's answer").await;
        store.open();
        assert!(
            together,
            "{uri}: the audit entry came after the submit's commit"
        );
        let (status, body) = finish(submit).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let mut unique = job("q", &[]);
    unique["unique_key"] = json!("once");
    for expected in [StatusCode::CREATED, StatusCode::OK] {
        let (status, body) = call(&app, Method::POST, "/api/v1/tasks", Some(unique.clone())).await;
        assert_eq!(status, expected, "{body}");
    }
    let (status, body) = call(
        &app,
        Method::POST,
        "/api/v1/tasks",
        Some(json!({ "kind": "handler" })),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (_, log) = call(&app, Method::GET, "/api/v1/audit", None).await;
    let entries: Vec<(String, u64, String, Option<String>)> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_owned(),
                e["status"].as_u64().unwrap(),
                e["actor"].as_str().unwrap().to_owned(),
                e["error"].as_str().map(str::to_owned),
            )
        })
        .collect();
    let anonymous = |action: &str, status: StatusCode, error: Option<&str>| {
        (
            action.to_owned(),
            u64::from(status.as_u16()),
            "anonymous".to_owned(),
            error.map(str::to_owned),
        )
    };
    assert_eq!(
        entries,
        [
            anonymous(
                "POST /api/v1/tasks",
                StatusCode::BAD_REQUEST,
                Some("invalid_request")
            ),
            anonymous("POST /api/v1/tasks", StatusCode::OK, None),
            anonymous("POST /api/v1/tasks", StatusCode::CREATED, None),
            anonymous("POST /api/v1/tasks/batch", StatusCode::CREATED, None),
            anonymous("POST /api/v1/tasks", StatusCode::CREATED, None),
        ]
    );
    sys.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_pause_is_answered_once_committed() {
    let (store, sys, app) = gated_api();
    store.close();
    let mut pause = spawn_call(
        &app,
        Method::POST,
        "/api/v1/queues/emails/pause".into(),
        None,
    );
    store
        .arrived(|c| matches!(c, Change::Queue { name, paused: true } if name == "emails"))
        .await;
    held(&mut pause, "the pause's answer").await;
    store.open();
    let (status, body) = finish(pause).await;
    assert_eq!(
        (status, body["paused"].as_bool()),
        (StatusCode::OK, Some(true))
    );
    sys.shutdown().await.unwrap();
}

/// The assignment, with its attempt number, is committed before it is
/// sent: a crash can then never hand the same attempt number out twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assignment_reaches_a_worker_only_once_committed() {
    let store = Gated::new();
    let sys = system_on(store.clone());
    let addr = serve(&sys, GatewayConfig::default()).await;
    let mut w = FakeWorker::connect(addr, None, register("w1", &["job"]))
        .await
        .unwrap();
    assert!(matches!(w.next().await, Out::Registered(_)));
    sys.pause_queue("default").await.unwrap();
    let h = sys.submit(Task::handler("job", &())).await.unwrap();
    store.close();
    // Resuming lets the driver assign the task; its commit waits.
    let resume = {
        let sys = Arc::new(sys);
        let s = sys.clone();
        (
            tokio::spawn(async move { s.resume_queue("default").await }),
            sys,
        )
    };
    let (resume, sys) = resume;
    let id = h.id();
    decided(&sys, id, State::Assigned).await;
    if let Ok(m) = tokio::time::timeout(HELD, w.rx.message()).await {
        panic!("the worker heard before the commit: {m:?}");
    }
    store.open();
    finish(resume).await.unwrap();
    let a = w.next_assignment().await;
    assert_eq!(a.attempt.as_ref().unwrap().attempt, 1);
    let stored = sys.attempts(id).await.unwrap();
    assert_eq!(stored.len(), 1, "the attempt was stored before it was sent");
    sys.shutdown().await.unwrap();
}

/// The local executor too starts a handler only once its attempt is
/// committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_handler_starts_only_once_its_attempt_is_committed() {
    let store = Gated::new();
    let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel();
    let sys = TaskSystem::builder()
        .store(store.clone())
        .handler("job", move |ctx: TaskContext| {
            let started = started_tx.clone();
            async move {
                let _ = started.send(ctx.attempt());
                Ok::<_, TaskError>(json!(null))
            }
        })
        .build()
        .unwrap();
    sys.start().unwrap();
    let sys = Arc::new(sys);
    sys.pause_queue("default").await.unwrap();
    let h = sys.submit(Task::handler("job", &())).await.unwrap();
    store.close();
    let s = sys.clone();
    let resume = tokio::spawn(async move { s.resume_queue("default").await });
    let id = h.id();
    decided(&sys, id, State::Running).await;
    if let Ok(a) = tokio::time::timeout(HELD, started.recv()).await {
        panic!("attempt {a:?} started before its commit");
    }
    store.open();
    finish(resume).await.unwrap();
    assert_eq!(started.recv().await, Some(1));
    assert!(h.wait_timeout(LIMIT).await.unwrap().is_success());
    sys.shutdown().await.unwrap();
}

/// The first failing commit (a full disk) answers 503 `store_failed`, and
/// from then on the coordinator says it cannot take work: `/readyz` is 503
/// with the reason while `/healthz` stays 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_commit_answers_503_and_readyz_says_why() {
    let (store, sys, app) = gated_api();
    let kept = submit(&app, "q").await;
    let (status, _) = call(&app, Method::GET, "/readyz", None).await;
    assert_eq!(status, StatusCode::OK);

    store.fail();
    let (status, body) = call(&app, Method::POST, "/api/v1/tasks", Some(job("q", &[]))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "store_failed", "{body}");

    let (status, body) = call(&app, Method::GET, "/readyz", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let why = body["status"].as_str().unwrap();
    assert!(why.contains("No space left on device"), "{why}");
    let (status, _) = call(&app, Method::GET, "/healthz", None).await;
    assert_eq!(status, StatusCode::OK);
    // Every later change is refused the same way, reads of the engine too
    // (it may hold what failed to commit)…
    for (method, uri) in [
        (Method::POST, format!("/api/v1/tasks/{kept}/cancel")),
        (Method::POST, "/api/v1/queues/q/pause".to_owned()),
        (Method::GET, format!("/api/v1/tasks/{kept}")),
    ] {
        let (status, body) = call(&app, method, &uri, None).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{uri}: {body}");
        assert_eq!(body["error"]["code"], "store_failed", "{uri}: {body}");
    }
    // …and what was committed before is still there.
    assert_eq!(sys.list(&Default::default()).await.unwrap().len(), 1);
    assert!(sys.failure().is_some());
}

/// Once a commit failed (the disk filled), a flush and the shutdown's
/// final flush say that failure, not only that the writer stopped; the
/// shutdown still stops everything and leaves what was committed before
/// as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_final_flush_still_shuts_down_and_says_why() {
    let (store, sys, app) = gated_api();
    let kept = submit(&app, "q").await;
    store.fail();
    // A commit fails for certain: the writer has stopped on it, so every
    // flush from here on finds it closed.
    let (status, body) = call(&app, Method::POST, "/api/v1/tasks", Some(job("q", &[]))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let flushed = sys.flush().expect_err("the writer stopped");
    assert!(
        flushed.to_string().contains("No space left on device"),
        "a flush names the store's failure: {flushed}"
    );
    let err = tokio::time::timeout(LIMIT, sys.shutdown())
        .await
        .expect("the shutdown ended in time")
        .expect_err("the final flush failed");
    assert!(
        err.to_string().contains("No space left on device"),
        "the error names the store's failure: {err}"
    );
    let stored = store.get(kept).unwrap().expect("the committed task stays");
    assert_eq!(stored.status.state, State::Queued);
    let refused = sys.submit(Task::handler("job", &())).await;
    assert!(refused.is_err(), "a stopped system takes no work");
    // A second shutdown finds it stopped.
    tokio::time::timeout(LIMIT, sys.shutdown())
        .await
        .expect("the second shutdown ended in time")
        .unwrap();
}
