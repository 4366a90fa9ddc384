#![allow(clippy::unwrap_used)]
//! The end-to-end scenarios both workers run, from one list
//! (`sdk/python/tests/scenarios.json`): here the Rust SDK's worker, with
//! the same handlers in Rust, against a real `taskgrid server`; the Python
//! worker runs the same list in `sdk/python/tests/test_scenarios.py`.

mod util;

use std::time::Duration;

use serde_json::{Value, json};
use taskgrid_api::SubmitRequest;
use taskgrid_core::{State, TaskId};
use taskgrid_runtime::{HandlerResult, Task, TaskContext, TaskError};
use taskgrid_worker::{Worker, WorkerConfig};
use util::{Server, await_state, await_worker};

const SCENARIOS: &str = include_str!("../sdk/python/tests/scenarios.json");

/// `{"n": N}` → `{"n": 2N}`.
async fn double(ctx: TaskContext) -> HandlerResult {
    let p: Value = ctx.payload()?;
    Ok(json!({"n": p["n"].as_u64().unwrap_or(0) * 2}))
}

/// The handlers of the scenarios, as `sdk/python/tests/app.py` has them.
fn worker(url: String) -> Worker {
    let mut config = WorkerConfig::new(url);
    config.id = "rust-scenarios".into();
    config.slots = 4;
    Worker::with_config(config)
        // (Python's sync and async handlers are one kind here.)
        .handler("double", double)
        .handler("adouble", double)
        .handler("boom", |_ctx| async move {
            Err::<Value, _>(TaskError::failed("it went wrong"))
        })
        .handler("fatal", |_ctx| async move {
            Err::<Value, _>(TaskError::fatal("no point retrying"))
        })
        .handler("flaky", |ctx| async move {
            if ctx.attempt() == 1 {
                return Err(TaskError::RetryAfter(
                    Duration::from_millis(10),
                    "not yet".into(),
                ));
            }
            Ok(json!({"attempt": ctx.attempt()}))
        })
        .handler("resume", |ctx| async move {
            match ctx.checkpoint::<Value>()? {
                None => {
                    ctx.progress(0.5, "half way");
                    ctx.log("saving");
                    ctx.save_checkpoint(&json!({"done": 21})).await?;
                    Err(TaskError::failed("crashed after the checkpoint"))
                }
                Some(c) => Ok(json!({"resumed_from": c["done"]})),
            }
        })
        .handler("parent", |ctx| async move {
            let child = ctx.spawn(Task::handler("double", &json!({"n": 5}))).await?;
            Ok(json!({"child": child.to_string()}))
        })
        .handler("wait_cancel", |ctx| async move {
            ctx.log("waiting");
            ctx.cancelled().await;
            Ok(json!("stopped"))
        })
}

fn result(d: &Value) -> Value {
    d["task"]["status"]["result"]
        .as_str()
        .map_or(Value::Null, |r| serde_json::from_str(r).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_worker_runs_the_shared_scenarios() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "127.0.0.1:0", &[]);
    let client = server.client(None);
    tokio::spawn(worker(server.url()).run());
    await_worker(&client, "rust-scenarios").await;
    let scenarios: Vec<Value> = serde_json::from_str(SCENARIOS).unwrap();
    assert!(scenarios.len() >= 10);
    for sc in &scenarios {
        let name = sc["name"].as_str().unwrap();
        let req: SubmitRequest = serde_json::from_value(sc["task"].clone()).unwrap();
        let id = client.submit(&req).await.unwrap().id;
        if sc["cancel_when_running"] == json!(true) {
            await_state(&client, id, Some(State::Running)).await;
            client.cancel(id).await.unwrap();
        }
        await_state(&client, id, None).await;
        let d = serde_json::to_value(client.get(id).await.unwrap()).unwrap();
        let (st, want) = (&d["task"]["status"], &sc["expect"]);
        assert_eq!(st["state"], want["state"], "{name}: {d}");
        if let Some(r) = want.get("result") {
            assert_eq!(&result(&d), r, "{name}");
        }
        if let Some(n) = want.get("attempts") {
            assert_eq!(
                d["attempts"].as_array().unwrap().len() as u64,
                n.as_u64().unwrap(),
                "{name}: {d}"
            );
        }
        if let Some(text) = want.get("error_contains").and_then(Value::as_str) {
            let message = st["error"]["message"].as_str().unwrap_or_default();
            assert!(message.contains(text), "{name}: {message}");
        }
        if let Some(code) = want.get("error_code") {
            assert_eq!(&st["error"]["code"], code, "{name}");
        }
        if let Some(p) = want.get("progress") {
            assert_eq!(&d["task"]["progress"]["message"], p, "{name}");
        }
        if let Some(out) = want.get("output") {
            let page = client.output(id, 0, None).await.unwrap();
            let chunks: Vec<Value> = page.chunks.iter().map(|c| json!(c.data)).collect();
            assert_eq!(&Value::Array(chunks), out, "{name}");
        }
        if let Some(child) = want.get("child_result") {
            let cid: TaskId = result(&d)["child"].as_str().unwrap().parse().unwrap();
            await_state(&client, cid, None).await;
            let c = serde_json::to_value(client.get(cid).await.unwrap()).unwrap();
            assert_eq!(&result(&c), child, "{name}");
            assert_eq!(c["task"]["spec"]["parent"], json!(id.to_string()), "{name}");
        }
    }
}
