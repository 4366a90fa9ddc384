//! The HTTP API, called without a socket through `tower::ServiceExt::oneshot`
//! (and, for the SSE streams, over 127.0.0.1 with the typed client).
//! No sleeps: tests synchronise on events, notifications and `wait()`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use serde_json::{Value, json};
use taskgrid_api::{self as api, EventFilter, SubmitRequest};
use taskgrid_client::{Client, FollowItem, ServerEvent};
use taskgrid_core::State;
use taskgrid_runtime::{SystemConfig, TaskContext, TaskError, TaskSystem};
use taskgrid_server::http::{ApiConfig, router, routes};
use tokio::sync::{Notify, watch};
use tower::ServiceExt;

const LIMIT: Duration = Duration::from_secs(20);

/// A system whose tasks stay queued: no handler is checked, none runs.
fn idle_system(queue_limit: Option<(&str, usize)>) -> Arc<TaskSystem> {
    let config = SystemConfig {
        check_handlers: false,
        ..SystemConfig::default()
    };
    let mut b = TaskSystem::builder().config(config);
    if let Some((q, n)) = queue_limit {
        b = b.queue_limit(q, n);
    }
    let sys = b.build().expect("system builds");
    sys.start().expect("system starts");
    Arc::new(sys)
}

/// A system with an `echo` handler that logs each line of its payload.
fn echo_system() -> Arc<TaskSystem> {
    let sys = TaskSystem::builder()
        .handler("echo", |ctx: TaskContext| async move {
            let lines: Vec<String> = ctx.payload()?;
            for l in &lines {
                ctx.log(l.clone());
            }
            Ok::<_, TaskError>(json!(lines.len()))
        })
        .build()
        .expect("system builds");
    sys.start().expect("system starts");
    Arc::new(sys)
}

struct Api {
    app: Router,
    token: Option<String>,
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Api {
    fn new(sys: &Arc<TaskSystem>) -> Api {
        Api::with(sys, ApiConfig::default())
    }

    fn with(sys: &Arc<TaskSystem>, config: ApiConfig) -> Api {
        Api {
            token: config.client_token.clone(),
            app: router(sys.clone(), config),
        }
    }

    async fn send(&self, req: Request<Body>) -> Reply {
        let res = self.app.clone().oneshot(req).await.expect("infallible");
        let status = res.status();
        let headers = res.headers().clone();
        let bytes = axum::body::to_bytes(res.into_body(), usize::MAX)
            .await
            .expect("body reads");
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            body,
        }
    }

    fn request(&self, method: Method, uri: &str) -> axum::http::request::Builder {
        let mut b = Request::builder().method(method).uri(uri);
        if let Some(t) = &self.token {
            b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        b
    }

    async fn get(&self, uri: &str) -> Reply {
        self.send(
            self.request(Method::GET, uri)
                .body(Body::empty())
                .expect("request"),
        )
        .await
    }

    async fn post(&self, uri: &str, body: Value) -> Reply {
        self.post_raw(uri, body.to_string()).await
    }

    async fn post_raw(&self, uri: &str, body: String) -> Reply {
        let req = self
            .request(Method::POST, uri)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body))
            .expect("request");
        self.send(req).await
    }

    async fn post_empty(&self, uri: &str) -> Reply {
        self.send(
            self.request(Method::POST, uri)
                .body(Body::empty())
                .expect("request"),
        )
        .await
    }

    /// Submits a task and returns its id.
    async fn submit(&self, body: Value) -> String {
        let r = self.post("/api/v1/tasks", body).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        r.body["id"].as_str().expect("an id").to_owned()
    }

    async fn count(&self) -> usize {
        let r = self.get("/api/v1/tasks?limit=1000").await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        r.body["tasks"].as_array().map_or(0, Vec::len)
    }
}

fn handler_task(queue: &str, tag: &str) -> Value {
    json!({"kind": {"type": "handler", "name": "remote", "payload": {"n": 1}},
           "queue": queue, "tags": [tag]})
}

fn error_code(r: &Reply) -> &str {
    r.body["error"]["code"].as_str().unwrap_or("")
}

fn error_message(r: &Reply) -> &str {
    r.body["error"]["message"].as_str().unwrap_or("")
}

#[tokio::test]
async fn submit_then_get_then_list_filtered_and_paginated() {
    let sys = idle_system(None);
    let api = Api::new(&sys);
    let a1 = api.submit(handler_task("a", "x")).await;
    let a2 = api.submit(handler_task("a", "y")).await;
    let b1 = api.submit(handler_task("b", "x")).await;

    let r = api.get(&format!("/api/v1/tasks/{a1}")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["task"]["id"], a1);
    assert_eq!(r.body["task"]["status"]["state"], "queued");
    assert_eq!(r.body["task"]["spec"]["kind"]["payload"], json!({"n": 1}));
    assert_eq!(r.body["attempts"], json!([]));

    let ids = |r: &Reply| -> Vec<String> {
        r.body["tasks"]
            .as_array()
            .map(|ts| {
                ts.iter()
                    .map(|t| t["id"].as_str().unwrap_or("").to_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(
        ids(&api.get("/api/v1/tasks?queue=a").await),
        [a1.as_str(), a2.as_str()]
    );
    assert_eq!(
        ids(&api.get("/api/v1/tasks?tag=x").await),
        [a1.as_str(), b1.as_str()]
    );
    assert_eq!(
        ids(&api.get("/api/v1/tasks?state=queued&queue=b").await),
        [b1.as_str()]
    );
    assert!(ids(&api.get("/api/v1/tasks?state=running").await).is_empty());

    // Two pages of two, then none; a full last page says it is the last.
    let all = api.get("/api/v1/tasks?limit=3").await;
    assert_eq!(all.body["tasks"].as_array().map(Vec::len), Some(3));
    assert!(all.body.get("next_cursor").is_none(), "{}", all.body);
    let p1 = api.get("/api/v1/tasks?limit=2").await;
    assert_eq!(ids(&p1), [a1.as_str(), a2.as_str()]);
    let cursor = p1.body["next_cursor"]
        .as_str()
        .expect("a cursor")
        .to_owned();
    let p2 = api
        .get(&format!("/api/v1/tasks?limit=2&cursor={cursor}"))
        .await;
    assert_eq!(ids(&p2), [b1.as_str()]);
    assert!(p2.body.get("next_cursor").is_none(), "{}", p2.body);

    let r = api.get("/api/v1/tasks?state=bogus").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&r), "invalid_query");
}

#[tokio::test]
async fn relative_times_are_resolved_at_submit() {
    let sys = idle_system(None);
    let api = Api::new(&sys);
    let mut t = handler_task("a", "x");
    t["delay_ms"] = json!(60_000);
    t["expires_in_ms"] = json!(1_000);
    let id = api.submit(t).await;
    let task = &api.get(&format!("/api/v1/tasks/{id}")).await.body["task"];
    assert_eq!(task["status"]["state"], "pending");
    let created = task["created_at"].as_u64().expect("created_at");
    let run_at = task["spec"]["run_at"].as_u64().expect("run_at");
    let expires_at = task["spec"]["expires_at"].as_u64().expect("expires_at");
    assert!(run_at >= created + 60_000_000, "{task}");
    assert_eq!(expires_at, run_at + 1_000_000);
    assert!(task["spec"].get("delay_ms").is_none());
}

#[tokio::test]
async fn a_batch_is_accepted_all_or_none() {
    let sys = idle_system(None);
    let api = Api::new(&sys);
    // A body the server cannot read: nothing stored, the field named.
    let bad = json!({"tasks": [handler_task("a", "x"), {"kind": {"type": "handler", "name": "h"}, "prio": 1}]});
    let r = api.post("/api/v1/tasks/batch", bad).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let msg = error_message(&r);
    assert!(msg.contains("prio") && msg.contains("tasks[1]"), "{msg}");
    // A task the engine refuses: nothing stored either.
    let bad = json!({"tasks": [handler_task("a", "x"), {"kind": {"type": "handler", "name": "h"}, "slots": 0}]});
    let r = api.post("/api/v1/tasks/batch", bad).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&r), "invalid_value");
    // The task refused is named by its place in the batch.
    assert_eq!(r.body["error"]["field"], "tasks[1].slots");
    let msg = error_message(&r);
    assert!(msg.starts_with("tasks[1]: invalid slots"), "{msg}");
    assert_eq!(api.count().await, 0);
    // A batch of one names its task too.
    let bad = json!({"tasks": [{"kind": {"type": "handler", "name": "h"}, "slots": 0}]});
    let r = api.post("/api/v1/tasks/batch", bad).await;
    assert_eq!(r.body["error"]["field"], "tasks[0].slots");

    let good =
        json!({"tasks": [handler_task("a", "1"), handler_task("b", "2"), handler_task("c", "3")]});
    let r = api.post("/api/v1/tasks/batch", good).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let ids = r.body["ids"].as_array().expect("ids").clone();
    assert_eq!(ids.len(), 3);
    for (i, q) in ["a", "b", "c"].iter().enumerate() {
        let id = ids[i].as_str().expect("id");
        let t = api.get(&format!("/api/v1/tasks/{id}")).await;
        assert_eq!(t.body["task"]["spec"]["queue"], *q);
    }
}

#[tokio::test]
async fn a_live_unique_key_returns_the_existing_task() {
    let sys = idle_system(None);
    let api = Api::new(&sys);
    let mut t = handler_task("a", "x");
    t["unique_key"] = json!("report-42");
    let first = api.post("/api/v1/tasks", t.clone()).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(first.body["created"], true);
    let again = api.post("/api/v1/tasks", t).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.body["created"], false);
    assert_eq!(again.body["id"], first.body["id"]);
    assert_eq!(api.count().await, 1);
}

#[tokio::test]
async fn cancel_by_id_and_by_tag() {
    let sys = idle_system(None);
    let api = Api::new(&sys);
    let one = api.submit(handler_task("a", "solo")).await;
    let r = api.post_empty(&format!("/api/v1/tasks/{one}/cancel")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.body,
        json!({"outcome": "cancelled", "state": "cancelled"})
    );
    let r = api.post_empty(&format!("/api/v1/tasks/{one}/cancel")).await;
    assert_eq!(
        r.body,
        json!({"outcome": "already_finished", "state": "cancelled"})
    );

    for _ in 0..2 {
        api.submit(handler_task("a", "batch")).await;
    }
    let keep = api.submit(handler_task("a", "keep")).await;
    let r = api.post_empty("/api/v1/tasks/cancel?tag=batch").await;
    assert_eq!(r.body, json!({"cancelled": 2}));
    let r = api
        .post("/api/v1/tasks/cancel", json!({"tag": "keep"}))
        .await;
    assert_eq!(r.body, json!({"cancelled": 1}));
    let r = api.get(&format!("/api/v1/tasks/{keep}")).await;
    assert_eq!(r.body["task"]["status"]["state"], "cancelled");
    let r = api.post_empty("/api/v1/tasks/cancel").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.body["error"]["field"], "tag");
}

#[tokio::test]
async fn retry_needs_a_finished_task() {
    let sys = idle_system(None);
    let api = Api::new(&sys);
    let id = api.submit(handler_task("a", "x")).await;
    let r = api.post_empty(&format!("/api/v1/tasks/{id}/retry")).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(error_code(&r), "not_finished");
    api.post_empty(&format!("/api/v1/tasks/{id}/cancel")).await;
    let r = api.post_empty(&format!("/api/v1/tasks/{id}/retry")).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_ne!(r.body["id"], json!(id));
    assert_eq!(r.body["state"], "queued");
}

#[tokio::test]
async fn explain_says_why_a_task_waits() {
    let sys = idle_system(None);
    let api = Api::new(&sys);
    let id = api.submit(handler_task("a", "x")).await;
    let r = api.get(&format!("/api/v1/tasks/{id}/explain")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["state"], "queued");
    let gates = r.body["gates"].as_array().expect("gates");
    assert!(
        gates.iter().any(|g| g["gate"] == "no_capable_worker"),
        "{}",
        r.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_is_read_a_page_at_a_time() {
    let sys = echo_system();
    let api = Api::new(&sys);
    let id = api
        .submit(json!({"kind": {"type": "handler", "name": "echo", "payload": ["a", "b", "c", "d", "e"]}}))
        .await;
    let task_id = id.parse().expect("task id");
    sys.handle(task_id)
        .wait_timeout(LIMIT)
        .await
        .expect("task ends");

    let mut after = 0;
    let mut seen = Vec::new();
    loop {
        let r = api
            .get(&format!("/api/v1/tasks/{id}/output?after={after}&limit=2"))
            .await;
        assert_eq!(r.status, StatusCode::OK);
        let chunks = r.body["chunks"].as_array().expect("chunks").clone();
        if chunks.is_empty() {
            assert_eq!(r.body["next_after"], after);
            break;
        }
        assert!(chunks.len() <= 2);
        seen.extend(
            chunks
                .iter()
                .map(|c| c["data"].as_str().unwrap_or("").to_owned()),
        );
        after = r.body["next_after"].as_u64().expect("next_after");
    }
    assert_eq!(seen, ["a", "b", "c", "d", "e"]);

    let r = api.get(&format!("/api/v1/tasks/{id}")).await;
    assert_eq!(r.body["task"]["status"]["state"], "succeeded");
    assert_eq!(r.body["attempts"][0]["outcome"], "succeeded");
}

/// A body is JSON under any JSON media type; a bad field, also deep in a
/// batch, is named by its path (the body is decoded a second time, for the
/// error, only when the first decode refuses it); nothing is created.
#[tokio::test]
async fn json_bodies_are_read_under_any_json_media_type_and_bad_fields_are_named_by_path() {
    let sys = idle_system(None);
    let api = Api::new(&sys);
    let post = |media: &'static str, uri: &'static str, body: Value| {
        api.send(
            api.request(Method::POST, uri)
                .header(header::CONTENT_TYPE, media)
                .body(Body::from(body.to_string()))
                .expect("request"),
        )
    };
    for media in [
        "application/json",
        "Application/JSON",
        "application/json; charset=utf-8",
        "application/vnd.taskgrid+json",
    ] {
        let r = post(media, "/api/v1/tasks", handler_task("a", "x")).await;
        assert_eq!(r.status, StatusCode::CREATED, "{media}: {}", r.body);
    }
    assert_eq!(api.count().await, 4);
    let r = post("text/plain", "/api/v1/tasks", handler_task("a", "x")).await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(error_code(&r), "unsupported_media_type");

    let bad = json!({"tasks": [handler_task("a", "x"), {"kind": {"type": "handler", "name": 7}}]});
    for media in ["application/json", "application/json; charset=utf-8"] {
        let r = post(media, "/api/v1/tasks/batch", bad.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{media}");
        assert_eq!(error_code(&r), "invalid_request");
        let msg = error_message(&r);
        assert!(msg.starts_with("tasks[1].kind"), "{media}: {msg}");
    }
    let r = post(
        "application/json",
        "/api/v1/tasks/batch",
        json!({"tasks": [1]}),
    )
    .await;
    assert_eq!(error_code(&r), "invalid_request");
    let msg = error_message(&r);
    assert!(msg.starts_with("tasks[0]"), "{msg}");
    let r = api
        .post_raw("/api/v1/tasks/batch", "{\"tasks\": [".to_owned())
        .await;
    assert_eq!(error_code(&r), "malformed_json");
    assert_eq!(api.count().await, 4, "nothing more was created");
    // A body that may be left out is read the same way.
    let r = post(
        "application/json",
        "/api/v1/schedules/none/pause",
        json!({"note": 7}),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&r), "invalid_request");
    assert!(
        error_message(&r).starts_with("note"),
        "{}",
        error_message(&r)
    );
}

#[tokio::test]
async fn bad_requests_get_clear_errors_and_change_nothing() {
    let sys = idle_system(None);
    let api = Api::with(
        &sys,
        ApiConfig {
            max_body_bytes: 1024,
            ..ApiConfig::default()
        },
    );
    let r = api
        .post_raw("/api/v1/tasks", "{\"kind\": ".to_owned())
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&r), "malformed_json");

    let r = api
        .post(
            "/api/v1/tasks",
            json!({"kind": {"type": "handler", "name": "h"}, "prio": "high"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&r), "invalid_request");
    let msg = error_message(&r);
    assert!(msg.contains("unknown field `prio`"), "{msg}");

    let big = json!({"kind": {"type": "handler", "name": "h", "payload": "x".repeat(2000)}});
    let r = api.post("/api/v1/tasks", big).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_code(&r), "body_too_large");

    let r = api
        .send(
            api.request(Method::POST, "/api/v1/tasks")
                .body(Body::from(handler_task("a", "x").to_string()))
                .expect("request"),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    let r = api
        .post(
            "/api/v1/tasks",
            json!({"kind": {"type": "handler", "name": "h"}, "timeout_ms": 0}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.body["error"]["field"], "timeout_ms");

    assert_eq!(api.count().await, 0);

    let r = api
        .get("/api/v1/tasks/0190a0b0-0000-7000-8000-000000000001")
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&r), "not_found");
    let r = api.get("/api/v1/tasks/not-an-id").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.body["error"]["field"], "id");
    let r = api.get("/api/v1/nothing/here").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&r), "not_found");
    let r = api.get("/api/v1/tasks/cancel").await;
    assert_eq!(
        r.status,
        StatusCode::METHOD_NOT_ALLOWED,
        "cancel by tag is a POST"
    );
    let r = api
        .send(
            api.request(Method::DELETE, "/api/v1/tasks")
                .body(Body::empty())
                .expect("request"),
        )
        .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(error_code(&r), "method_not_allowed");
}

#[tokio::test]
async fn a_full_queue_answers_429_with_retry_after() {
    let sys = idle_system(Some(("tight", 1)));
    let api = Api::new(&sys);
    api.submit(handler_task("tight", "x")).await;
    let r = api.post("/api/v1/tasks", handler_task("tight", "x")).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(error_code(&r), "queue_full");
    assert!(r.headers.contains_key(header::RETRY_AFTER));
    assert_eq!(api.count().await, 1);
}

#[tokio::test]
async fn a_shut_down_system_answers_503() {
    let sys = idle_system(None);
    let api = Api::new(&sys);
    sys.shutdown().await.expect("shuts down");
    let r = api.post("/api/v1/tasks", handler_task("a", "x")).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error_code(&r), "shutting_down");
}

#[tokio::test]
async fn the_token_guards_every_api_route_but_not_health() {
    let sys = idle_system(None);
    let config = ApiConfig {
        client_token: Some("s3cret".to_owned()),
        ..ApiConfig::default()
    };
    let api = Api::with(&sys, config.clone());
    let anonymous = Api {
        app: router(sys.clone(), config.clone()),
        token: None,
    };
    let wrong = Api {
        app: router(sys.clone(), config),
        token: Some("guess".to_owned()),
    };
    for caller in [&anonymous, &wrong] {
        let r = caller.post("/api/v1/tasks", handler_task("a", "x")).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert_eq!(error_code(&r), "unauthorized");
        assert!(r.headers.contains_key(header::WWW_AUTHENTICATE));
        let r = caller.post("/api/v1/tasks/cancel?tag=x", json!({})).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        let r = caller.get("/api/v1/tasks").await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert_eq!(caller.get("/healthz").await.status, StatusCode::OK);
    }
    assert_eq!(api.count().await, 0);
    api.submit(handler_task("a", "x")).await;
    assert_eq!(api.count().await, 1);
}

#[tokio::test]
async fn cross_origin_writes_are_refused() {
    let sys = idle_system(None);
    let api = Api::new(&sys);
    let req = api
        .request(Method::POST, "/api/v1/tasks")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::HOST, "127.0.0.1:7070")
        .header(header::ORIGIN, "https://elsewhere.example")
        .body(Body::from(handler_task("a", "x").to_string()))
        .expect("request");
    let r = api.send(req).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(api.count().await, 0);
    // The same host in another scheme is another origin…
    let post = |origin: &str, proto: Option<&str>| {
        let mut b = api
            .request(Method::POST, "/api/v1/tasks")
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::HOST, "127.0.0.1:7070")
            .header(header::ORIGIN, origin);
        if let Some(p) = proto {
            b = b.header("x-forwarded-proto", p);
        }
        b.body(Body::from(handler_task("a", "x").to_string()))
            .expect("request")
    };
    let r = api.send(post("https://127.0.0.1:7070", None)).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    assert_eq!(api.count().await, 0);
    // …unless a TLS-terminating proxy says the page was served over https.
    let r = api
        .send(post("https://127.0.0.1:7070", Some("https")))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let r = api.send(post("http://127.0.0.1:7070", None)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
}

#[tokio::test]
async fn health_readiness_workers_queues_and_metrics() {
    let sys = echo_system();
    let api = Api::new(&sys);
    assert_eq!(api.get("/healthz").await.body, json!({"status": "ok"}));
    assert_eq!(api.get("/readyz").await.status, StatusCode::OK);
    let id = api
        .submit(json!({"kind": {"type": "handler", "name": "echo", "payload": []}}))
        .await;
    sys.handle(id.parse().expect("id"))
        .wait_timeout(LIMIT)
        .await
        .expect("ends");
    let w = api.get("/api/v1/workers").await;
    assert_eq!(w.body[0]["id"], "local");
    assert_eq!(w.body[0]["handlers"], json!(["echo"]));
    let q = api.get("/api/v1/queues").await;
    assert_eq!(q.status, StatusCode::OK);
    assert!(q.body.is_array());
    let m = api.get("/api/v1/metrics").await;
    assert_eq!(m.body["submitted"], 1);
    assert_eq!(m.body["succeeded"], 1);
}

#[tokio::test]
async fn openapi_describes_every_route_the_router_serves() {
    let sys = idle_system(None);
    let api = Api::new(&sys);
    let r = api.get("/api/v1/openapi.json").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.body["openapi"].as_str().map(|v| v.starts_with("3.1")),
        Some(true)
    );
    let paths = r.body["paths"].as_object().expect("paths");
    let served = routes();
    for (method, path) in &served {
        let m = method.as_str().to_ascii_lowercase();
        assert!(
            paths.get(path).and_then(|p| p.get(&m)).is_some(),
            "{method} {path} is not in openapi.json"
        );
        // The table is what the router serves: no route is a 404 or 405.
        let uri = path.replace("{id}", "0190a0b0-0000-7000-8000-000000000001");
        let req = api
            .request(method.clone(), &uri)
            .body(Body::empty())
            .expect("request");
        // Only the status: an event stream's body never ends.
        let status = api
            .app
            .clone()
            .oneshot(req)
            .await
            .expect("infallible")
            .status();
        let known_task_missing = uri.contains("0190a0b0") && status == StatusCode::NOT_FOUND;
        assert!(
            known_task_missing
                || (status != StatusCode::NOT_FOUND && status != StatusCode::METHOD_NOT_ALLOWED),
            "{method} {uri}: {status}"
        );
    }
    for (path, item) in paths {
        for m in item.as_object().expect("path item").keys() {
            assert!(
                served
                    .iter()
                    .any(|(sm, sp)| sp == path && sm.as_str().eq_ignore_ascii_case(m)),
                "openapi.json documents {m} {path}, which is not served"
            );
        }
    }
}

#[tokio::test]
async fn a_held_task_blocks_nothing() {
    // A handler that waits for the test: the API still answers meanwhile.
    let gate = Arc::new(Notify::new());
    let g = gate.clone();
    let sys = TaskSystem::builder()
        .handler("hold", move |_ctx: TaskContext| {
            let g = g.clone();
            async move {
                g.notified().await;
                Ok::<_, TaskError>(json!(null))
            }
        })
        .build()
        .expect("builds");
    sys.start().expect("starts");
    let sys = Arc::new(sys);
    let api = Api::new(&sys);
    let mut events = sys.subscribe();
    let id = api
        .submit(json!({"kind": {"type": "handler", "name": "hold"}}))
        .await;
    let task_id: taskgrid_core::TaskId = id.parse().expect("id");
    loop {
        let ev = events.recv().await.expect("event");
        if ev.id == task_id && ev.new_state() == Some(State::Running) {
            break;
        }
    }
    let r = api.post_empty(&format!("/api/v1/tasks/{id}/cancel")).await;
    assert_eq!(r.body["outcome"], "requested");
    gate.notify_one();
    let end = sys.handle(task_id).wait_timeout(LIMIT).await.expect("ends");
    assert!(end.state.is_terminal());
}

/// Serves `sys` on an OS-chosen loopback port; a client for it.
async fn serve(sys: &Arc<TaskSystem>) -> Client {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds");
    let addr = listener.local_addr().expect("has an address");
    let app = router(sys.clone(), ApiConfig::default());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Client::new(&format!("http://{addr}"), None).expect("client")
}

/// A system whose `talk` handler logs its payload's lines, then waits
/// until the test opens `gate`.
fn gated_system(gate: &Arc<watch::Sender<bool>>, config: SystemConfig) -> Arc<TaskSystem> {
    let gate = gate.clone();
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
                Ok::<_, TaskError>(json!(null))
            }
        })
        .build()
        .expect("builds");
    sys.start().expect("starts");
    Arc::new(sys)
}

fn talk(lines: &[&str], queue: &str) -> SubmitRequest {
    let mut r = SubmitRequest::handler("talk", json!(lines));
    r.queue = queue.to_owned();
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn following_output_delivers_the_lines_then_the_end() {
    let gate = Arc::new(watch::Sender::new(false));
    let sys = gated_system(&gate, SystemConfig::default());
    let client = serve(&sys).await;
    let task = client
        .submit(&talk(&["one", "two", "three"], "default"))
        .await
        .expect("submits");
    let mut follow = client.follow_output(task.id, 0).await.expect("follows");
    let mut seen = Vec::new();
    while seen.len() < 3 {
        match follow.next().await.expect("an item").expect("ok") {
            FollowItem::Chunk(c) => seen.push((c.seq, c.data)),
            FollowItem::End(e) => panic!("ended before the task did: {e:?}"),
        }
    }
    let data: Vec<&str> = seen.iter().map(|(_, d)| d.as_str()).collect();
    assert_eq!(data, ["one", "two", "three"]);
    gate.send_replace(true);
    match follow.next().await.expect("an item").expect("ok") {
        FollowItem::End(end) => assert_eq!(end.state, State::Succeeded),
        other => panic!("expected the end, got {other:?}"),
    }
    assert!(follow.next().await.is_none());

    // Following a finished task from the middle: the rest, then the end.
    let mut late = client
        .follow_output(task.id, seen[0].0)
        .await
        .expect("follows");
    let mut rest = Vec::new();
    while let FollowItem::Chunk(c) = late.next().await.expect("an item").expect("ok") {
        rest.push(c.data);
    }
    assert_eq!(rest, ["two", "three"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_give_every_state_change_in_order_and_resume_from_last_event_id() {
    let gate = Arc::new(watch::Sender::new(true));
    let sys = gated_system(&gate, SystemConfig::default());
    let client = serve(&sys).await;
    let filter = EventFilter {
        queue: Some("watched".to_owned()),
        ..EventFilter::default()
    };
    let mut events = client.events(&filter, None).await.expect("subscribes");
    client
        .submit(&talk(&[], "unwatched"))
        .await
        .expect("submits");
    let task = client
        .submit(&talk(&["line"], "watched"))
        .await
        .expect("submits");

    let mut all = Vec::new();
    while all.last().and_then(|e: &api::TaskEvent| e.new_state()) != Some(State::Succeeded) {
        match events.next().await.expect("an event").expect("ok") {
            ServerEvent::Task(ev) => {
                assert_eq!(ev.id, task.id, "only the watched queue");
                all.push(ev);
            }
            ServerEvent::Reset(r) => panic!("unexpected reset {r:?}"),
        }
    }
    let states: Vec<State> = all.iter().filter_map(api::TaskEvent::new_state).collect();
    assert_eq!(
        states,
        [
            State::Queued,
            State::Assigned,
            State::Running,
            State::Succeeded
        ]
    );
    assert!(
        all.iter()
            .any(|e| matches!(&e.kind, api::EventKind::Output { data, .. } if data == "line"))
    );
    assert!(all.windows(2).all(|w| w[0].seq < w[1].seq));

    // Reconnect after the first event: everything after it, once, in order.
    let mut resumed = client
        .events(&filter, Some(all[0].seq))
        .await
        .expect("resumes");
    let mut again = Vec::new();
    while again.len() < all.len() - 1 {
        match resumed.next().await.expect("an event").expect("ok") {
            ServerEvent::Task(ev) => again.push(ev),
            ServerEvent::Reset(r) => panic!("the buffer reaches back: {r:?}"),
        }
    }
    assert_eq!(again, all[1..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_the_buffer_cannot_serve_starts_with_reset() {
    let config = SystemConfig {
        check_handlers: false,
        replay_capacity: 2,
        ..SystemConfig::default()
    };
    let gate = Arc::new(watch::Sender::new(false));
    let sys = gated_system(&gate, config);
    let client = serve(&sys).await;
    let mut live = client
        .events(&EventFilter::default(), None)
        .await
        .expect("subscribes");
    // Tasks for a handler nobody has: they wait, one event each.
    for _ in 0..3 {
        client
            .submit(&SubmitRequest::handler("nobody", json!(null)))
            .await
            .expect("submits");
    }
    // The three submits are three consecutive seqs; wait until all are
    // published.
    let mut seqs = Vec::new();
    while seqs.len() < 3 {
        if let ServerEvent::Task(ev) = live.next().await.expect("an event").expect("ok") {
            seqs.push(ev.seq);
        }
    }
    assert_eq!(seqs, [seqs[0], seqs[0] + 1, seqs[0] + 2]);
    // Resuming from before the first: it has left the buffer of 2.
    let zero = seqs[0] - 1;
    let mut s = client
        .events(&EventFilter::default(), Some(zero))
        .await
        .expect("resumes");
    assert_eq!(
        s.next().await.expect("an item").expect("ok"),
        ServerEvent::Reset(api::StreamReset { after: zero })
    );
    for want in [seqs[1], seqs[2]] {
        match s.next().await.expect("an item").expect("ok") {
            ServerEvent::Task(ev) => assert_eq!(ev.seq, want),
            other => panic!("{other:?}"),
        }
    }
    // An id this process never gave out (below its first, or beyond any
    // sent): reset, then this process's buffered events.
    for foreign in [1_000, seqs[2] + 1_000] {
        let mut s = client
            .events(&EventFilter::default(), Some(foreign))
            .await
            .expect("resumes");
        assert_eq!(
            s.next().await.expect("an item").expect("ok"),
            ServerEvent::Reset(api::StreamReset { after: foreign })
        );
        match s.next().await.expect("an item").expect("ok") {
            ServerEvent::Task(ev) => assert_eq!(ev.seq, seqs[1]),
            other => panic!("{other:?}"),
        }
    }
}

/// Event ids survive a restart: an id the previous process gave out is
/// never taken for one of the new process's, however many events the new
/// one has published since.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_id_from_before_a_restart_gets_reset() {
    let open = || {
        let sys = TaskSystem::builder()
            .config(SystemConfig {
                check_handlers: false,
                ..SystemConfig::default()
            })
            .build()
            .expect("builds");
        sys.start().expect("starts");
        Arc::new(sys)
    };
    let submit_and_read = |client: Client, n: usize| async move {
        let mut live = client
            .events(&EventFilter::default(), None)
            .await
            .expect("subscribes");
        for _ in 0..n {
            client
                .submit(&SubmitRequest::handler("nobody", json!(null)))
                .await
                .expect("submits");
        }
        let mut last = 0;
        for _ in 0..n {
            if let ServerEvent::Task(ev) = live.next().await.expect("an event").expect("ok") {
                last = ev.seq;
            }
        }
        last
    };
    let first = open();
    let old_id = submit_and_read(serve(&first).await, 2).await;
    first.shutdown().await.expect("shuts down");
    drop(first);
    let second = open();
    let client = serve(&second).await;
    // More events than the old process published, so counting from 1
    // again would have reached the old id.
    let newest = submit_and_read(client.clone(), 5).await;
    assert!(newest > old_id, "{newest} > {old_id}");
    let mut s = client
        .events(&EventFilter::default(), Some(old_id))
        .await
        .expect("resumes");
    assert_eq!(
        s.next().await.expect("an item").expect("ok"),
        ServerEvent::Reset(api::StreamReset { after: old_id })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_summary_counts_everything_and_follows_the_watched_tasks() {
    let gate = Arc::new(watch::Sender::new(false));
    let sys = gated_system(&gate, SystemConfig::default());
    let client = serve(&sys).await;
    let watched = client
        .submit(&talk(&["x"], "default"))
        .await
        .expect("submits")
        .id;
    let other = client
        .submit(&talk(&[], "default"))
        .await
        .expect("submits")
        .id;
    let mut summaries = client.summary(&[watched]).await.expect("subscribes");

    // The first summary: where the watched task stands, and only it.
    let first = summaries.next().await.expect("a summary").expect("ok");
    assert_eq!(first.tasks.keys().copied().collect::<Vec<_>>(), [watched]);
    assert!(!first.tasks[&watched].state.is_terminal());
    assert_eq!(first.totals.submitted, 2);
    assert_eq!(first.waiting + first.running, 2);

    // Then the watched task's changes, until both tasks have succeeded.
    gate.send_replace(true);
    let mut last = first.tasks[&watched].state;
    let end = tokio::time::timeout(LIMIT, async {
        loop {
            let s = summaries.next().await.expect("a summary").expect("ok");
            assert!(!s.tasks.contains_key(&other), "only watched tasks");
            if let Some(t) = s.tasks.get(&watched) {
                last = t.state;
            }
            if s.totals.succeeded == 2 && last == State::Succeeded {
                return s;
            }
        }
    })
    .await
    .expect("the watched task's success is summarised");
    assert_eq!((end.waiting, end.running, end.used), (0, 0, 0));
    assert!(end.workers >= 1 && end.slots >= 1, "the local executor");
    assert!(end.seq >= first.seq);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_costs_a_few_summaries_not_an_event_each() {
    let gate = Arc::new(watch::Sender::new(true));
    let sys = gated_system(&gate, SystemConfig::default());
    let client = serve(&sys).await;
    let mut summaries = client.summary(&[]).await.expect("subscribes");
    let first = summaries.next().await.expect("a summary").expect("ok");
    assert!(first.tasks.is_empty());
    let started = std::time::Instant::now();
    let burst = vec![talk(&[], "default"); 2_000];
    client.submit_batch(&burst).await.expect("submits");
    let mut messages = 0u128;
    tokio::time::timeout(LIMIT, async {
        loop {
            let s = summaries.next().await.expect("a summary").expect("ok");
            messages += 1;
            if s.totals.succeeded == 2_000 {
                return;
            }
        }
    })
    .await
    .expect("the burst is summarised to its end");
    // ~8,000 events, but one summary per pulse at most.
    let pulses = started.elapsed().as_millis() / 500 + 1;
    assert!(
        messages <= pulses,
        "{messages} summaries in {pulses} pulses"
    );
}

#[tokio::test]
async fn a_bad_watch_list_is_refused_by_name() {
    let sys = idle_system(None);
    let api = Api::new(&sys);
    let r = api.get("/api/v1/events/summary?watch=not-an-id").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.body["error"]["field"], "watch");
    assert!(
        r.body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("not-an-id")),
        "{:?}",
        r.body
    );
    let many: Vec<String> = (1..=201)
        .map(|n| taskgrid_core::TaskId::from_u128(n).to_string())
        .collect();
    let r = api
        .get(&format!("/api/v1/events/summary?watch={}", many.join(",")))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.body["error"]["field"], "watch");
    let r = api.get("/api/v1/events/summary?wach=x").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_keeps_up_with_ten_thousand_tasks() {
    const LOAD: usize = 10_000;
    // A replay buffer that holds the whole load: a connection that falls
    // behind the bus refills from it instead of resetting.
    let config = SystemConfig {
        replay_capacity: 5 * LOAD,
        ..SystemConfig::default()
    };
    let sys = TaskSystem::builder()
        .config(config)
        .handler("noop", |_ctx: TaskContext| async {
            Ok::<_, TaskError>(json!(null))
        })
        .build()
        .expect("builds");
    sys.start().expect("starts");
    let sys = Arc::new(sys);
    let client = serve(&sys).await;
    let mut events = client
        .events(&EventFilter::default(), None)
        .await
        .expect("subscribes");
    let batch = vec![SubmitRequest::handler("noop", json!(null)); LOAD / 5];
    let mut ids = std::collections::HashSet::new();
    for _ in 0..5 {
        ids.extend(client.submit_batch(&batch).await.expect("submits"));
    }
    let mut finished = std::collections::HashSet::new();
    let mut last_seq = 0;
    tokio::time::timeout(Duration::from_secs(120), async {
        while finished.len() < LOAD {
            match events.next().await.expect("an event").expect("ok") {
                ServerEvent::Task(ev) => {
                    assert!(ev.seq > last_seq, "in order, none twice");
                    last_seq = ev.seq;
                    if ev.new_state() == Some(State::Succeeded) {
                        assert!(ids.contains(&ev.id));
                        assert!(finished.insert(ev.id), "one end per task");
                    }
                }
                ServerEvent::Reset(r) => panic!("the stream fell behind: {r:?}"),
            }
        }
    })
    .await
    .expect("every task's end arrives");
}

#[tokio::test]
async fn schedules_are_created_read_fired_paused_and_deleted() {
    let sys = idle_system(None);
    let api = Api::new(&sys);
    let mut events = sys.subscribe();
    let def = json!({
        "name": "tick",
        "every_ms": 1000,
        "overlap": "allow-all",
        "task": {"kind": {"type": "handler", "name": "job"}, "queue": "cron", "tags": ["mine"]}
    });
    let r = api.post("/api/v1/schedules", def.clone()).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["definition"]["every_ms"], 1000);
    assert_eq!(r.body["upcoming"].as_array().map(Vec::len), Some(5));
    let r = api.post("/api/v1/schedules", def).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    assert_eq!(r.body["error"]["code"], "schedule_exists");

    // The first fire, a second later: its task is committed and announced.
    let id = tokio::time::timeout(LIMIT, async {
        loop {
            let e = events.recv().await.expect("events");
            if matches!(e.kind, taskgrid_runtime::EventKind::Submitted { .. }) {
                return e.id;
            }
        }
    })
    .await
    .expect("the schedule fired");
    let task = api.get(&format!("/api/v1/tasks/{id}")).await;
    let tags = task.body["task"]["spec"]["tags"].to_string();
    assert!(
        tags.contains("schedule:tick") && tags.contains("mine"),
        "{tags}"
    );
    let by_tag = api.get("/api/v1/tasks?tag=schedule:tick").await;
    assert!(!by_tag.body["tasks"].as_array().expect("tasks").is_empty());

    let r = api.post("/api/v1/schedules/tick/trigger", json!({})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["fires"][0]["manual"], true);
    assert_eq!(r.body["fires"][0]["outcome"], "submitted");

    let r = api
        .post(
            "/api/v1/schedules/tick/pause",
            json!({"note": "maintenance"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["paused"], true);
    assert!(r.body.get("next").is_none(), "{}", r.body);
    let d = api.get("/api/v1/schedules/tick").await;
    assert_eq!(d.status, StatusCode::OK, "{}", d.body);
    assert_eq!(d.body["gates"][0]["reason"], "paused");
    assert_eq!(d.body["gates"][0]["note"], "maintenance");
    let fires = d.body["fires"].as_array().expect("fires");
    assert!(fires.iter().any(|f| f["task"] == json!(id)), "{}", d.body);
    let r = api.post_empty("/api/v1/schedules/tick/resume").await;
    assert_eq!(
        (r.status, &r.body["paused"]),
        (StatusCode::OK, &json!(false))
    );

    let list = api.get("/api/v1/schedules").await;
    assert_eq!(list.body["schedules"][0]["name"], "tick");
    let r = api
        .send(
            api.request(Method::DELETE, "/api/v1/schedules/tick")
                .body(Body::empty())
                .expect("request"),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = api.get("/api/v1/schedules/tick").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
}

#[tokio::test]
async fn a_bad_schedule_is_refused_naming_the_field_and_changes_nothing() {
    let sys = idle_system(None);
    let api = Api::new(&sys);
    let task = json!({"kind": {"type": "handler", "name": "job"}});
    for (body, field) in [
        (
            json!({"name": "a", "cron": "0 25 * * *", "task": task}),
            "cron",
        ),
        (
            json!({"name": "a", "cron": "0 * * * *", "tz": "Mars/Base", "task": task}),
            "tz",
        ),
        (
            json!({"name": "a", "every_ms": 10, "task": task}),
            "every_ms",
        ),
        (json!({"name": "a", "task": task}), "cron"),
        (
            json!({"name": "a b", "cron": "0 * * * *", "task": task}),
            "name",
        ),
        (
            json!({"name": "a", "cron": "0 * * * *", "task": {"kind": {"type": "handler", "name": "job"}, "delay_ms": 5}}),
            "task.delay_ms",
        ),
        (
            json!({"name": "a", "cron": "0 * * * *", "task": {"kind": {"type": "handler", "name": "job"}, "slots": 0}}),
            "task.slots",
        ),
    ] {
        let r = api.post("/api/v1/schedules", body.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.body);
        assert_eq!(r.body["error"]["field"], field, "{body}: {}", r.body);
    }
    let r = api
        .post(
            "/api/v1/schedules",
            json!({"name": "a", "cron": "0 * * * *", "crn": "x", "task": task}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert!(r.body["error"]["message"].to_string().contains("crn"));
    let r = api.post_empty("/api/v1/schedules/none/trigger").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    let list = api.get("/api/v1/schedules").await;
    assert_eq!(list.body["schedules"], json!([]));
}

#[tokio::test]
async fn a_backfill_of_a_range_still_to_come_runs_nothing() {
    let sys = idle_system(None);
    let api = Api::new(&sys);
    let r = api
        .post(
            "/api/v1/schedules",
            json!({"name": "later", "cron": "0 3 * * *", "task": {"kind": {"type": "handler", "name": "job"}}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let cursor = r.body["cursor"].as_u64().expect("a cursor");
    let day = 86_400_000_000u64;
    let r = api
        .post(
            "/api/v1/schedules/later/backfill",
            json!({"from": cursor + day, "to": cursor + 3 * day}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["fires"], json!([]));
    let r = api
        .post(
            "/api/v1/schedules/later/backfill",
            json!({"from": cursor, "to": cursor - day}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert_eq!(r.body["error"]["field"], "to");
}

/// `/events/schedules`: creation, a fire with its task, a pause with its
/// note and a deletion arrive after they are committed, in commit order,
/// filtered by schedule; a resume from anything but the last id starts
/// with `reset`.
#[tokio::test]
async fn schedule_events_announce_changes_and_fires() {
    use taskgrid_api::ScheduleEventKind as K;
    use taskgrid_client::ScheduleStreamItem as Item;
    let sys = idle_system(None);
    let client = serve(&sys).await;
    let mut all = client.schedule_events(None, None).await.expect("stream");
    let mut only_b = client
        .schedule_events(Some("b"), None)
        .await
        .expect("stream");
    let def = |name: &str| {
        serde_json::from_value::<api::ScheduleRequest>(json!({
            "cron": "0 0 1 1 *",
            "task": {"kind": {"type": "handler", "name": "job"}, "queue": "cron"}
        }))
        .map(|mut r| {
            r.name = Some(name.to_owned());
            r
        })
        .expect("request")
    };
    async fn next(s: &mut taskgrid_client::SseStream<Item>) -> taskgrid_api::ScheduleEvent {
        match tokio::time::timeout(LIMIT, s.next()).await {
            Ok(Some(Ok(Item::Event(e)))) => e,
            other => panic!("expected a schedule event, got {other:?}"),
        }
    }
    client.put_schedule("a", &def("a"), false).await.expect("a");
    client.put_schedule("b", &def("b"), false).await.expect("b");
    let fire = client.trigger_schedule("a").await.expect("trigger");
    let task = fire[0].task.expect("the fire's task");
    client
        .pause_schedule("a", Some("window".into()))
        .await
        .expect("pause");
    client.delete_schedule("a").await.expect("delete");

    let e = next(&mut all).await;
    assert_eq!(
        (e.schedule.as_str(), &e.kind),
        (
            "a",
            &K::Changed {
                paused: false,
                note: None,
                runs: 0
            }
        )
    );
    let first = e.seq;
    let e = next(&mut all).await;
    assert_eq!(e.schedule, "b");
    assert_eq!(e.seq, first + 1, "seq counts one per event");
    // The fire, and its task is committed by the time it is announced.
    let mut seen_fire = false;
    let mut last;
    loop {
        let e = next(&mut all).await;
        last = e.seq;
        assert_eq!(e.schedule, "a");
        match e.kind {
            K::Fire { fire } => {
                assert_eq!(fire.task, Some(task));
                assert!(fire.manual);
                sys.get(task).await.expect("the fire's task is there");
                seen_fire = true;
            }
            K::Changed {
                paused: true, note, ..
            } => {
                assert!(seen_fire, "the fire comes before the pause");
                assert_eq!(note.as_deref(), Some("window"));
            }
            K::Changed { .. } => {}
            K::Deleted => break,
        }
    }
    assert!(seen_fire);
    // The filtered stream saw b only.
    let e = next(&mut only_b).await;
    assert_eq!(e.schedule, "b");
    client
        .put_schedule("b", &def("b"), true)
        .await
        .expect("b again");
    let e = next(&mut only_b).await;
    assert_eq!(e.schedule, "b");

    // Resuming from the last id: live, no reset; from an older one: reset.
    let last = last + 1; // the second put of b
    let mut live = client
        .schedule_events(None, Some(last))
        .await
        .expect("stream");
    let mut stale = client
        .schedule_events(None, Some(last - 1))
        .await
        .expect("stream");
    match tokio::time::timeout(LIMIT, stale.next()).await {
        Ok(Some(Ok(Item::Reset(r)))) => assert_eq!(r.after, last - 1),
        other => panic!("expected reset, got {other:?}"),
    }
    client.pause_schedule("b", None).await.expect("pause b");
    let e = next(&mut live).await;
    assert_eq!((e.seq, e.schedule.as_str()), (last + 1, "b"));
    let e = next(&mut stale).await;
    assert_eq!(e.seq, last + 1);
}

/// `pause` takes an empty body as "no note"; a body that is there must be
/// the JSON of a pause.
#[tokio::test]
async fn pause_takes_an_empty_body_and_refuses_a_bad_one() {
    let sys = idle_system(None);
    let api = Api::new(&sys);
    let r = api
        .post(
            "/api/v1/schedules",
            json!({"name": "p", "every_ms": 60000,
                   "task": {"kind": {"type": "handler", "name": "job"}}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let r = api.post_empty("/api/v1/schedules/p/pause").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["paused"], true);
    assert!(r.body.get("note").is_none(), "{}", r.body);
    let r = api.post_empty("/api/v1/schedules/p/resume").await;
    assert_eq!(r.body["paused"], false);
    let r = api
        .post("/api/v1/schedules/p/pause", json!({"nope": 1}))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    let d = api.get("/api/v1/schedules/p").await;
    assert_eq!(
        d.body["schedule"]["paused"], false,
        "a refused pause changes nothing"
    );
}

/// `DELETE /tasks/{id}`: a finished task goes with its attempts and
/// output (204); a live one is refused (409 `not_finished`) and stays; an
/// unknown id is 404, a malformed one 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_task_is_deleted_and_a_live_one_is_refused() {
    let sys = echo_system();
    let api = Api::new(&sys);
    let done = api
        .submit(json!({"kind": {"type": "handler", "name": "echo", "payload": ["a"]}}))
        .await;
    sys.handle(done.parse().expect("task id"))
        .wait_timeout(LIMIT)
        .await
        .expect("task ends");
    let live = api
        .submit(
            json!({"kind": {"type": "handler", "name": "echo", "payload": ["b"]},
                       "queue": "nobody-serves-this", "delay_ms": 3_600_000}),
        )
        .await;
    let del = |id: String| {
        let api = &api;
        async move {
            api.send(
                api.request(Method::DELETE, &format!("/api/v1/tasks/{id}"))
                    .body(Body::empty())
                    .expect("request"),
            )
            .await
        }
    };
    let r = del(live.clone()).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    assert_eq!(error_code(&r), "not_finished");
    assert_eq!(
        api.get(&format!("/api/v1/tasks/{live}")).await.status,
        StatusCode::OK
    );
    let r = del(done.clone()).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    for path in ["", "/output"] {
        let r = api.get(&format!("/api/v1/tasks/{done}{path}")).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}: {}", r.body);
    }
    assert_eq!(del(done).await.status, StatusCode::NOT_FOUND);
    assert_eq!(del("nope".into()).await.status, StatusCode::BAD_REQUEST);
}
