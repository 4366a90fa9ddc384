//! The web dashboard's files and the queue routes it uses, called without a
//! socket through `tower::ServiceExt::oneshot`. The page itself is tested
//! in a real browser by the workspace's `tests/browser.rs`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use serde_json::{Value, json};
use taskgrid_core::{State, TaskId};
use taskgrid_runtime::{TaskContext, TaskError, TaskSystem};
use taskgrid_server::http::{ApiConfig, router};
use tower::ServiceExt;

const TOKEN: &str = "secret";
const LIMIT: Duration = Duration::from_secs(20);

/// A system with a `noop` handler, behind an API with a client token.
fn app() -> (Arc<TaskSystem>, Router) {
    let sys = TaskSystem::builder()
        .handler("noop", |_ctx: TaskContext| async move {
            Ok::<_, TaskError>(json!(null))
        })
        .build()
        .expect("system builds");
    sys.start().expect("system starts");
    let sys = Arc::new(sys);
    let config = ApiConfig {
        client_token: Some(TOKEN.to_owned()),
        ..ApiConfig::default()
    };
    (sys.clone(), router(sys, config))
}

/// Sends a request; returns status, headers and body bytes.
async fn send(app: &Router, req: Request<Body>) -> (StatusCode, HeaderMap, Vec<u8>) {
    let res = app.clone().oneshot(req).await.expect("infallible");
    let status = res.status();
    let headers = res.headers().clone();
    let body = axum::body::to_bytes(res.into_body(), usize::MAX)
        .await
        .expect("body reads");
    (status, headers, body.to_vec())
}

/// A GET request builder (no token).
fn get(uri: &str) -> axum::http::request::Builder {
    Request::builder().method(Method::GET).uri(uri)
}

/// An empty POST, with the bearer token when given.
fn post(uri: &str, token: Option<&str>) -> Request<Body> {
    let mut b = Request::builder().method(Method::POST).uri(uri);
    if let Some(t) = token {
        b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    b.body(Body::empty()).expect("request")
}

/// The body as JSON (`Null` when it is not).
fn json_of(body: &[u8]) -> Value {
    serde_json::from_slice(body).unwrap_or(Value::Null)
}

/// `/` and `/assets/*`: types, validators, headers; the API stays guarded.
#[tokio::test]
async fn the_page_and_its_assets_are_served_without_the_token() {
    let (_sys, app) = app();
    for (uri, kind) in [
        ("/", "text/html"),
        ("/assets/app.js", "text/javascript"),
        ("/assets/app.css", "text/css"),
    ] {
        let req = get(uri).body(Body::empty()).expect("request");
        let (status, headers, body) = send(&app, req).await;
        assert_eq!(status, StatusCode::OK, "{uri}");
        let ct = headers[header::CONTENT_TYPE].to_str().expect("ascii");
        assert!(ct.starts_with(kind), "{uri}: {ct}");
        assert_eq!(headers[header::CACHE_CONTROL], "no-cache", "{uri}");
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff", "{uri}");
        assert!(
            headers.contains_key(header::CONTENT_SECURITY_POLICY),
            "{uri}"
        );
        assert!(!body.is_empty(), "{uri}");

        // The browser's copy is current: 304, no body.
        let etag = headers[header::ETAG].clone();
        let req = get(uri)
            .header(header::IF_NONE_MATCH, etag)
            .body(Body::empty())
            .expect("request");
        let (status, _, body) = send(&app, req).await;
        assert_eq!(status, StatusCode::NOT_MODIFIED, "{uri}");
        assert!(body.is_empty(), "{uri}");
    }
    let req = get("/assets/nope.js").body(Body::empty()).expect("request");
    let (status, _, body) = send(&app, req).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(json_of(&body)["error"]["code"], "not_found");

    // The data behind the page still needs the token.
    let req = get("/api/v1/queues").body(Body::empty()).expect("request");
    assert_eq!(send(&app, req).await.0, StatusCode::UNAUTHORIZED);
}

/// Pause holds a queue's tasks (others run), resume releases them.
#[tokio::test]
async fn a_paused_queue_accepts_but_does_not_dispatch_until_resumed() {
    let (sys, app) = app();
    let (status, _, _) = send(&app, post("/api/v1/queues/q1/pause", None)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "the token is required");

    let (status, _, body) = send(&app, post("/api/v1/queues/q1/pause", Some(TOKEN))).await;
    assert_eq!(status, StatusCode::OK);
    let stats = json_of(&body);
    assert_eq!(stats["name"], "q1");
    assert_eq!(stats["paused"], true);

    let submit = |queue: &str| {
        Request::builder()
            .method(Method::POST)
            .uri("/api/v1/tasks")
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(
                json!({"kind": {"type": "handler", "name": "noop"}, "queue": queue}).to_string(),
            ))
            .expect("request")
    };
    let id_of = |body: &[u8]| -> TaskId {
        json_of(body)["id"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .expect("an id")
    };
    let (status, _, body) = send(&app, submit("q1")).await;
    assert_eq!(status, StatusCode::CREATED, "a paused queue accepts");
    let held = id_of(&body);
    // A task of another queue runs to the end; the held one has not moved.
    let (_, _, body) = send(&app, submit("q2")).await;
    let other = sys
        .handle(id_of(&body))
        .wait_timeout(LIMIT)
        .await
        .expect("the other queue runs");
    assert_eq!(other.state, State::Succeeded);
    assert_eq!(
        sys.get(held).await.expect("held task").status.state,
        State::Queued
    );

    let (status, _, body) = send(&app, post("/api/v1/queues/q1/resume", Some(TOKEN))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json_of(&body)["paused"], false);
    let done = sys
        .handle(held)
        .wait_timeout(LIMIT)
        .await
        .expect("the resumed queue runs");
    assert_eq!(done.state, State::Succeeded);

    // A name that cannot be a queue is refused.
    let (status, _, body) = send(&app, post("/api/v1/queues/a%01b/pause", Some(TOKEN))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(json_of(&body)["error"]["field"], "name");
}

/// `GET /tasks?order=newest` pages from the newest task down, and
/// `counts=true` adds the grid's tasks per state, whatever the filters.
#[tokio::test]
async fn the_task_list_reads_newest_first_with_the_grids_counts() {
    let (sys, app) = app();
    let (status, _, _) = send(&app, post("/api/v1/queues/held/pause", Some(TOKEN))).await;
    assert_eq!(status, StatusCode::OK);
    let list = |query: &str| {
        let req = get(&format!("/api/v1/tasks?{query}"))
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
            .body(Body::empty())
            .expect("request");
        let app = app.clone();
        async move {
            let (status, _, body) = send(&app, req).await;
            (status, json_of(&body))
        }
    };
    let ids = |page: &Value| -> Vec<String> {
        page["tasks"]
            .as_array()
            .expect("tasks")
            .iter()
            .map(|t| t["id"].as_str().expect("id").to_owned())
            .collect()
    };
    // Three that run to the end, five held in a paused queue.
    for queue in [
        "default", "held", "default", "held", "held", "default", "held", "held",
    ] {
        let req = Request::builder()
            .method(Method::POST)
            .uri("/api/v1/tasks")
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(
                json!({"kind": {"type": "handler", "name": "noop"}, "queue": queue}).to_string(),
            ))
            .expect("request");
        let (status, _, body) = send(&app, req).await;
        assert_eq!(status, StatusCode::CREATED);
        if queue == "default" {
            let id: TaskId = json_of(&body)["id"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .expect("an id");
            let end = sys.handle(id).wait_timeout(LIMIT).await.expect("it ends");
            assert_eq!(end.state, State::Succeeded);
        }
    }

    let (status, oldest) = list("").await;
    assert_eq!(status, StatusCode::OK);
    assert!(oldest.get("counts").is_none(), "counts only when asked");
    let mut newest_first = ids(&oldest);
    newest_first.reverse();
    assert_eq!(newest_first.len(), 8);

    // Pages of three from the newest, each cursor going further back.
    let (mut seen, mut cursor) = (Vec::new(), None::<String>);
    loop {
        let q = cursor.map_or(String::new(), |c| format!("&cursor={c}"));
        let (status, page) = list(&format!("order=newest&limit=3&counts=true{q}")).await;
        assert_eq!(status, StatusCode::OK);
        let counts = &page["counts"];
        assert_eq!(counts.as_object().map(|c| c.len()), Some(10), "{counts}");
        assert_eq!(
            (counts["succeeded"].clone(), counts["queued"].clone()),
            (json!(3), json!(5))
        );
        seen.extend(ids(&page));
        cursor = page["next_cursor"].as_str().map(str::to_owned);
        if cursor.is_none() {
            break;
        }
    }
    assert_eq!(seen, newest_first);

    // A state filter pages the same way; the counts stay the grid's.
    let (_, queued) = list("order=newest&state=queued&queue=held&counts=true").await;
    let mut held: Vec<String> = Vec::new();
    for id in &newest_first {
        let task: TaskId = id.parse().expect("id");
        if sys.get(task).await.expect("task").status.state == State::Queued {
            held.push(id.clone());
        }
    }
    assert_eq!(ids(&queued), held);
    assert_eq!(queued["counts"]["succeeded"], 3);

    let (status, body) = list("order=sideways").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "invalid_query", "{body}");
}
