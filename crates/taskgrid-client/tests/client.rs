//! The client against the real router, served on 127.0.0.1:0: every
//! method, the error shapes, and both event streams. No sleeps.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use taskgrid_api::{CancelOutcomeKind, EventFilter, ListQuery, SubmitRequest};
use taskgrid_client::{Client, ClientError, FollowItem, ServerEvent};
use taskgrid_core::{State, TaskId};
use taskgrid_runtime::{SystemConfig, TaskContext, TaskError, TaskSystem};
use taskgrid_server::http::{ApiConfig, router};
use tokio::sync::watch;

const LIMIT: Duration = Duration::from_secs(20);

/// Serves `sys` on an OS-chosen loopback port; the base URL.
async fn serve(sys: Arc<TaskSystem>, config: ApiConfig) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds");
    let addr = listener.local_addr().expect("has an address");
    let app = router(sys, config);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

/// A system whose `talk` handler logs its payload's lines, then waits
/// until the test opens `gate`.
fn system(check_handlers: bool, gate: Arc<watch::Sender<bool>>) -> Arc<TaskSystem> {
    let config = SystemConfig {
        check_handlers,
        ..SystemConfig::default()
    };
    let sys = TaskSystem::builder()
        .config(config)
        .handler("talk", move |ctx: TaskContext| {
            let gate = gate.clone();
            async move {
                let lines: Vec<String> = ctx.payload()?;
                for l in &lines {
                    ctx.log(l.clone());
                }
                let _ = gate.subscribe().wait_for(|open| *open).await;
                Ok::<_, TaskError>(json!(lines.len()))
            }
        })
        .build()
        .expect("builds");
    sys.start().expect("starts");
    Arc::new(sys)
}

fn talk(lines: &[&str]) -> SubmitRequest {
    SubmitRequest::handler("talk", json!(lines))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_unary_call_round_trips() {
    let gate = Arc::new(watch::Sender::new(false));
    let sys = system(true, gate.clone());
    let client =
        Client::new(&serve(sys.clone(), ApiConfig::default()).await, None).expect("client");
    client.health().await.expect("healthy");
    client.ready().await.expect("ready");

    let mut waiting = SubmitRequest::handler("talk", json!([]));
    waiting.queue = "elsewhere".to_owned();
    waiting.tags = vec!["later".to_owned()];
    waiting.delay_ms = Some(3_600_000);
    let first = client.submit(&waiting).await.expect("submits");
    assert!(first.created);
    assert_eq!(first.state, State::Pending);

    let ids = client
        .submit_batch(&[waiting.clone(), waiting.clone()])
        .await
        .expect("batch");
    assert_eq!(ids.len(), 2);
    let page = client
        .list(&ListQuery {
            tag: Some("later".to_owned()),
            limit: Some(2),
            ..ListQuery::default()
        })
        .await
        .expect("lists");
    assert_eq!(page.tasks.len(), 2);
    assert_eq!(page.tasks[0].id, first.id);
    let rest = client
        .list(&ListQuery {
            tag: Some("later".to_owned()),
            cursor: page.next_cursor,
            ..ListQuery::default()
        })
        .await
        .expect("lists");
    assert_eq!(rest.tasks.len(), 1);

    let detail = client.get(first.id).await.expect("gets");
    assert_eq!(detail.task.spec.queue, "elsewhere");
    let why = client.explain(first.id).await.expect("explains");
    assert_eq!(why.state, State::Pending);
    assert!(!why.gates.is_empty());

    let c = client.cancel(first.id).await.expect("cancels");
    assert_eq!(c.outcome, CancelOutcomeKind::Cancelled);
    assert_eq!(client.cancel_tag("later").await.expect("cancels"), 2);
    let again = client.retry(first.id).await.expect("retries");
    assert!(again.created && again.id != first.id);

    // A task that runs, for output, workers, queues and metrics.
    let running = client
        .submit(&talk(&["one", "two"]))
        .await
        .expect("submits");
    gate.send_replace(true);
    sys.handle(running.id)
        .wait_timeout(LIMIT)
        .await
        .expect("ends");
    let out = client.output(running.id, 0, Some(1)).await.expect("output");
    assert_eq!(out.chunks.len(), 1);
    assert_eq!(out.chunks[0].data, "one");
    let out = client
        .output(running.id, out.next_after, None)
        .await
        .expect("output");
    assert_eq!(out.chunks.len(), 1);
    assert_eq!(out.chunks[0].data, "two");

    let workers = client.workers().await.expect("workers");
    assert_eq!(workers[0].id.as_str(), "local");
    client.queues().await.expect("queues");
    assert!(client.metrics().await.expect("metrics").succeeded >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_keep_the_servers_code_and_status() {
    let sys = system(true, Arc::new(watch::Sender::new(false)));
    let config = ApiConfig {
        client_token: Some("t0ken".to_owned()),
        ..ApiConfig::default()
    };
    let base = serve(sys, config).await;
    let client = Client::new(&base, Some("t0ken".to_owned())).expect("client");

    let missing = TaskId::from_u128(1);
    let e = client.get(missing).await.expect_err("no such task");
    assert_eq!((e.status(), e.code()), (Some(404), Some("not_found")));

    let e = client
        .submit(&SubmitRequest::handler("nobody", json!(1)))
        .await
        .expect_err("unknown handler");
    assert!(
        matches!(&e, ClientError::Api { status: 400, code, field: Some(f), .. } if code == "unknown_handler" && f == "kind.name"),
        "{e:?}"
    );

    let intruder = Client::new(&base, Some("wrong".to_owned())).expect("client");
    let e = intruder
        .list(&ListQuery::default())
        .await
        .expect_err("refused");
    assert_eq!((e.status(), e.code()), (Some(401), Some("unauthorized")));
    // Health needs no token.
    intruder.health().await.expect("healthy");

    assert!(matches!(
        Client::new("not a url", None),
        Err(ClientError::InvalidUrl(_))
    ));
    // Nothing listens on a port just released.
    let addr = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binds");
        l.local_addr().expect("address")
    };
    let nowhere = Client::new(&format!("http://{addr}"), None).expect("client");
    let e = nowhere.health().await.expect_err("refused");
    assert!(matches!(e, ClientError::Transport(_)), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn following_output_streams_lines_then_the_end() {
    let gate = Arc::new(watch::Sender::new(false));
    let sys = system(true, gate.clone());
    let client = Client::new(&serve(sys, ApiConfig::default()).await, None).expect("client");
    let task = client
        .submit(&talk(&["first", "second"]))
        .await
        .expect("submits");
    let mut follow = client.follow_output(task.id, 0).await.expect("follows");
    let mut lines = Vec::new();
    while lines.len() < 2 {
        match follow.next().await.expect("an item").expect("no error") {
            FollowItem::Chunk(c) => lines.push(c.data),
            FollowItem::End(e) => panic!("ended early: {e:?}"),
        }
    }
    assert_eq!(lines, ["first", "second"]);
    // Only now may the task finish.
    gate.send_replace(true);
    match follow.next().await.expect("an item").expect("no error") {
        FollowItem::End(end) => {
            assert_eq!(end.state, State::Succeeded);
            assert_eq!(end.result.as_deref(), Some("2"));
        }
        other => panic!("expected the end, got {other:?}"),
    }
    assert!(
        follow.next().await.is_none(),
        "the stream closes after the end"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_delivered_in_order_and_resume_without_duplicates() {
    let gate = Arc::new(watch::Sender::new(false));
    let sys = system(true, gate.clone());
    let client = Client::new(&serve(sys, ApiConfig::default()).await, None).expect("client");
    let filter = EventFilter {
        tag: Some("watched".to_owned()),
        ..EventFilter::default()
    };
    let mut events = client.events(&filter, None).await.expect("subscribes");
    // Another task's events are filtered out.
    let mut other = talk(&[]);
    other.queue = "other".to_owned();
    other.delay_ms = Some(3_600_000);
    client.submit(&other).await.expect("submits");
    let mut req = talk(&[]);
    req.tags = vec!["watched".to_owned()];
    let task = client.submit(&req).await.expect("submits");
    gate.send_replace(true);

    let mut states = Vec::new();
    let mut seqs = Vec::new();
    while states.last() != Some(&State::Succeeded) {
        let ServerEvent::Task(ev) = events.next().await.expect("an event").expect("ok") else {
            panic!("no reset expected");
        };
        assert_eq!(ev.id, task.id);
        seqs.push(ev.seq);
        if let Some(s) = ev.new_state() {
            states.push(s);
        }
    }
    assert_eq!(
        states,
        [
            State::Queued,
            State::Assigned,
            State::Running,
            State::Succeeded
        ]
    );
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");

    // Resume after the second event: the rest, once each, in order.
    let resume = seqs[1];
    let mut again = client
        .events(
            &EventFilter {
                task: Some(task.id),
                ..EventFilter::default()
            },
            Some(resume),
        )
        .await
        .expect("resumes");
    let mut replayed = Vec::new();
    while replayed.len() < seqs.len() - 2 {
        match again.next().await.expect("an event").expect("ok") {
            ServerEvent::Task(ev) => replayed.push(ev.seq),
            ServerEvent::Reset(r) => panic!("unexpected reset {r:?}"),
        }
    }
    assert_eq!(replayed, seqs[2..]);
}
