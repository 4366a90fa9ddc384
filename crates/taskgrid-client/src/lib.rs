//! A typed async client for the taskgrid coordinator's HTTP API
//! (`/api/v1`), used by the CLI, the TUI and tests.
//! It must never depend on gRPC, the runtime or the server: HTTP (reqwest)
//! and the JSON types of `taskgrid-api` only.
//!
//! Every route has a method taking and returning the wire types of
//! [`taskgrid_api`]; the two streaming routes return an
//! [`SseStream`]. Errors keep the server's status, `code` and `message`
//! ([`ClientError::Api`]), so a caller can act on `queue_full` or
//! `not_found` without parsing text.
//!
//! ```no_run
//! # async fn demo() -> Result<(), taskgrid_client::ClientError> {
//! use taskgrid_client::{Client, FollowItem};
//! use taskgrid_api::SubmitRequest;
//!
//! let client = Client::new("http://127.0.0.1:7070", None)?;
//! let task = client.submit(&SubmitRequest::shell(["echo", "hello"])).await?;
//! let mut output = client.follow_output(task.id, 0).await?;
//! while let Some(item) = output.next().await {
//!     match item? {
//!         FollowItem::Chunk(c) => print!("{}", c.data),
//!         FollowItem::End(end) => println!("finished: {}", end.state),
//!     }
//! }
//! # Ok(()) }
//! ```

mod error;
mod sse;

use std::time::Duration;

use reqwest::{Method, RequestBuilder, Response, header};
use serde::de::DeserializeOwned;
use taskgrid_api::{
    API_PREFIX, BatchRequest, BatchResponse, CancelResponse, CancelTagRequest, CancelTagResponse,
    ErrorBody, EventFilter, ListQuery, OutputEnd, OutputEntry, OutputPage, OutputQuery, SSE_END,
    SSE_RESET, SSE_SUMMARY, StreamReset, SubmitRequest, SubmitResponse, Summary, TaskDetail,
    TaskEvent, TaskPage, WorkerView,
};
use taskgrid_core::{Explanation, MetricsSnapshot, QueueStats, TaskId};

pub use error::ClientError;
pub use sse::SseStream;

/// How long connecting may take before the call fails.
pub const CONNECT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);

/// An item of [`Client::follow_output`]: chunks, then the end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FollowItem {
    /// A chunk of output, in order.
    Chunk(OutputEntry),
    /// The task has finished; the stream ends after this.
    End(OutputEnd),
}

/// An item of [`Client::events`].
#[derive(Debug, Clone, PartialEq)]
pub enum ServerEvent {
    /// Something happened to a task.
    Task(TaskEvent),
    /// Events after `after` could not all be replayed: re-read the state
    /// you care about.
    Reset(StreamReset),
}

/// A connection to one coordinator. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    api: String,
    root: String,
    token: Option<String>,
}

impl Client {
    /// A client for the coordinator at `base_url` (e.g.
    /// `http://127.0.0.1:7070`), sending `token` as a bearer token.
    pub fn new(base_url: &str, token: Option<String>) -> Result<Client, ClientError> {
        let root = base_url.trim_end_matches('/').to_owned();
        reqwest::Url::parse(&root).map_err(|_| ClientError::InvalidUrl(base_url.to_owned()))?;
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT_DEFAULT)
            .build()
            .map_err(ClientError::Transport)?;
        Ok(Client {
            http,
            api: format!("{root}{API_PREFIX}"),
            root,
            token,
        })
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let b = self.http.request(method, format!("{}{path}", self.api));
        match &self.token {
            Some(t) => b.bearer_auth(t),
            None => b,
        }
    }

    /// Submits a task. `created` is false when a live task with the same
    /// unique key was returned instead.
    pub async fn submit(&self, task: &SubmitRequest) -> Result<SubmitResponse, ClientError> {
        call(self.request(Method::POST, "/tasks").json(task)).await
    }

    /// Submits tasks all or none; their ids, in order.
    pub async fn submit_batch(&self, tasks: &[SubmitRequest]) -> Result<Vec<TaskId>, ClientError> {
        let body = BatchRequest {
            tasks: tasks.to_vec(),
        };
        let r: BatchResponse = call(self.request(Method::POST, "/tasks/batch").json(&body)).await?;
        Ok(r.ids)
    }

    /// A task and its attempts.
    pub async fn get(&self, id: TaskId) -> Result<TaskDetail, ClientError> {
        call(self.request(Method::GET, &format!("/tasks/{id}"))).await
    }

    /// A page of tasks; pass `next_cursor` back as `cursor` for the next.
    pub async fn list(&self, query: &ListQuery) -> Result<TaskPage, ClientError> {
        call(self.request(Method::GET, "/tasks").query(query)).await
    }

    /// Cancels a task.
    pub async fn cancel(&self, id: TaskId) -> Result<CancelResponse, ClientError> {
        call(self.request(Method::POST, &format!("/tasks/{id}/cancel"))).await
    }

    /// Cancels every live task with `tag`; how many.
    pub async fn cancel_tag(&self, tag: &str) -> Result<usize, ClientError> {
        let body = CancelTagRequest {
            tag: tag.to_owned(),
        };
        let r: CancelTagResponse =
            call(self.request(Method::POST, "/tasks/cancel").json(&body)).await?;
        Ok(r.cancelled)
    }

    /// Runs a finished task again as a new task.
    pub async fn retry(&self, id: TaskId) -> Result<SubmitResponse, ClientError> {
        call(self.request(Method::POST, &format!("/tasks/{id}/retry"))).await
    }

    /// A page of a task's output after sequence number `after`.
    pub async fn output(
        &self,
        id: TaskId,
        after: u64,
        limit: Option<usize>,
    ) -> Result<OutputPage, ClientError> {
        let q = OutputQuery {
            after: Some(after),
            limit,
            follow: None,
        };
        call(
            self.request(Method::GET, &format!("/tasks/{id}/output"))
                .query(&q),
        )
        .await
    }

    /// A task's output after `after` as it is produced, then its end.
    pub async fn follow_output(
        &self,
        id: TaskId,
        after: u64,
    ) -> Result<SseStream<FollowItem>, ClientError> {
        let q = OutputQuery {
            after: Some(after),
            limit: None,
            follow: Some(true),
        };
        let req = self
            .request(Method::GET, &format!("/tasks/{id}/output"))
            .query(&q);
        let res = open_stream(req).await?;
        Ok(SseStream::spawn(res, |raw| match raw.event.as_str() {
            "" | "message" => Some(sse::json(&raw).map(FollowItem::Chunk)),
            SSE_END => Some(sse::json(&raw).map(FollowItem::End)),
            _ => None,
        }))
    }

    /// Why a task is not running, or where it stands.
    pub async fn explain(&self, id: TaskId) -> Result<Explanation, ClientError> {
        call(self.request(Method::GET, &format!("/tasks/{id}/explain"))).await
    }

    /// Registered workers.
    pub async fn workers(&self) -> Result<Vec<WorkerView>, ClientError> {
        call(self.request(Method::GET, "/workers")).await
    }

    /// Every queue's depth and activity.
    pub async fn queues(&self) -> Result<Vec<QueueStats>, ClientError> {
        call(self.request(Method::GET, "/queues")).await
    }

    /// Counters, rates, latencies and throughput since the coordinator
    /// started, in total and by queue, kind, (queue, kind) and worker.
    pub async fn metrics(&self) -> Result<MetricsSnapshot, ClientError> {
        call(self.request(Method::GET, "/metrics")).await
    }

    /// The same figures and the queue and worker gauges in the Prometheus
    /// text exposition format (`/metrics` at the root).
    pub async fn prometheus(&self) -> Result<String, ClientError> {
        let req = self.http.get(format!("{}/metrics", self.root));
        let req = match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let res = checked(req.send().await.map_err(ClientError::Transport)?).await?;
        res.text().await.map_err(ClientError::Transport)
    }

    /// Task events as they are committed, filtered; resumed after
    /// `last_event_id` (a [`TaskEvent::seq`]) without gaps or duplicates
    /// when given. To reconnect, pass the last `seq` you received.
    pub async fn events(
        &self,
        filter: &EventFilter,
        last_event_id: Option<u64>,
    ) -> Result<SseStream<ServerEvent>, ClientError> {
        let mut req = self.request(Method::GET, "/events").query(filter);
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id.to_string());
        }
        let res = open_stream(req).await?;
        Ok(SseStream::spawn(res, |raw| match raw.event.as_str() {
            "" | "message" => Some(sse::json(&raw).map(ServerEvent::Task)),
            SSE_RESET => Some(sse::json(&raw).map(ServerEvent::Reset)),
            _ => None,
        }))
    }

    /// The cluster at a glance, a few times a second while something
    /// happens (`/events/summary`), with the state of the `watch`ed tasks
    /// when they change (all of them in the first summary).
    pub async fn summary(&self, watch: &[TaskId]) -> Result<SseStream<Summary>, ClientError> {
        let mut req = self.request(Method::GET, "/events/summary");
        if !watch.is_empty() {
            let ids: Vec<String> = watch.iter().map(TaskId::to_string).collect();
            req = req.query(&[("watch", ids.join(","))]);
        }
        let res = open_stream(req).await?;
        Ok(SseStream::spawn(res, |raw| {
            (raw.event == SSE_SUMMARY).then(|| sse::json(&raw))
        }))
    }

    /// Whether the process serves (`/healthz`).
    pub async fn health(&self) -> Result<(), ClientError> {
        self.probe("/healthz").await
    }

    /// Whether the coordinator is ready: its store answers (`/readyz`).
    pub async fn ready(&self) -> Result<(), ClientError> {
        self.probe("/readyz").await
    }

    async fn probe(&self, path: &str) -> Result<(), ClientError> {
        let req = self.http.get(format!("{}{path}", self.root));
        let _: serde_json::Value = call(req).await?;
        Ok(())
    }
}

/// Sends a request and decodes a success as `T`, an error body as
/// [`ClientError::Api`].
async fn call<T: DeserializeOwned>(req: RequestBuilder) -> Result<T, ClientError> {
    let res = checked(req.send().await.map_err(ClientError::Transport)?).await?;
    let bytes = res.bytes().await.map_err(ClientError::Transport)?;
    serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))
}

/// Opens an event stream.
async fn open_stream(req: RequestBuilder) -> Result<Response, ClientError> {
    let req = req.header(header::ACCEPT, "text/event-stream");
    checked(req.send().await.map_err(ClientError::Transport)?).await
}

/// The response if it is a success, else its error.
async fn checked(res: Response) -> Result<Response, ClientError> {
    let status = res.status();
    if status.is_success() {
        return Ok(res);
    }
    let bytes = res.bytes().await.map_err(ClientError::Transport)?;
    Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
        Ok(body) => ClientError::Api {
            status: status.as_u16(),
            code: body.error.code,
            message: body.error.message,
            field: body.error.field,
        },
        Err(_) => ClientError::Api {
            status: status.as_u16(),
            code: format!("http_{}", status.as_u16()),
            message: String::from_utf8_lossy(&bytes).chars().take(200).collect(),
            field: None,
        },
    })
}
