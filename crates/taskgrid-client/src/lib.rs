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
mod schedules;
mod sse;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use reqwest::{Method, RequestBuilder, Response, StatusCode, header};
use serde::de::DeserializeOwned;
use taskgrid_api::{
    API_PREFIX, BatchRequest, BatchResponse, CancelResponse, CancelTagRequest, CancelTagResponse,
    Coordinators, ErrorBody, EventFilter, LEADER_HEADER, ListQuery, OutputEnd, OutputEntry,
    OutputPage, OutputQuery, SSE_END, SSE_RESET, SSE_SUMMARY, StreamReset, SubmitRequest,
    SubmitResponse, Summary, TaskDetail, TaskEvent, TaskPage, WorkerView,
};
use taskgrid_core::{Explanation, MetricsSnapshot, QueueStats, TaskId};

pub use error::ClientError;
pub use schedules::ScheduleStreamItem;
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

/// How long a call keeps looking for the leading coordinator (through a
/// failover) before it gives up with the last answer.
pub const FAILOVER_WAIT_DEFAULT: Duration = Duration::from_secs(15);

/// Requests are built against this base and sent to the coordinator of the
/// moment: only their path and query are theirs.
const PLACEHOLDER: &str = "http://coordinator.invalid";

/// A connection to a grid's coordinators: one, or the leader and standbys
/// of a grid on PostgreSQL. Cheap to clone; clones share which
/// coordinator they talk to.
///
/// With several URLs, a call that cannot connect tries the next; a standby
/// answers `not_leader` naming the leader, and the call goes there. Only
/// answers that changed nothing are retried so (a refused connection, a
/// standby's refusal), for up to [`FAILOVER_WAIT_DEFAULT`].
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    /// The coordinators given, in order.
    servers: Arc<[String]>,
    /// The one calls go to now: one of `servers`, or the leader one of
    /// them named.
    current: Arc<Mutex<String>>,
    token: Option<String>,
    failover_wait: Duration,
}

impl Client {
    /// A client for the coordinator at `base_url` (e.g.
    /// `http://127.0.0.1:7070`), or the coordinators of a comma-separated
    /// list of them, sending `token` as a bearer token.
    pub fn new(base_url: &str, token: Option<String>) -> Result<Client, ClientError> {
        let mut servers = Vec::new();
        for url in base_url.split(',').map(str::trim) {
            let root = url.trim_end_matches('/').to_owned();
            let parsed = reqwest::Url::parse(&root)
                .map_err(|_| ClientError::InvalidUrl(base_url.to_owned()))?;
            if !matches!(parsed.scheme(), "http" | "https") || parsed.query().is_some() {
                return Err(ClientError::InvalidUrl(base_url.to_owned()));
            }
            servers.push(root);
        }
        let https = servers.iter().any(|s| s.starts_with("https://"));
        let http = http_client(https, None)?;
        Ok(Client {
            http,
            current: Arc::new(Mutex::new(servers[0].clone())),
            servers: servers.into(),
            token,
            failover_wait: FAILOVER_WAIT_DEFAULT,
        })
    }

    /// Trusts the CA certificates in `pem` (besides the system's roots)
    /// for `https://` coordinators: for a coordinator whose certificate a
    /// private CA signed.
    pub fn with_ca_pem(mut self, pem: &[u8]) -> Result<Client, ClientError> {
        self.http = http_client(true, Some(pem))?;
        Ok(self)
    }

    /// How long a call looks for the leader through a failover.
    #[must_use]
    pub fn with_failover_wait(mut self, wait: Duration) -> Client {
        self.failover_wait = wait;
        self
    }

    /// The coordinator calls go to now (`http://HOST:PORT`).
    pub fn server(&self) -> String {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.at(method, &format!("{API_PREFIX}{path}"))
    }

    /// A request of `path` below the root, with the token.
    fn at(&self, method: Method, path: &str) -> RequestBuilder {
        let b = self.http.request(method, format!("{PLACEHOLDER}{path}"));
        match &self.token {
            Some(t) => b.bearer_auth(t),
            None => b,
        }
    }

    /// Sends a request to the coordinator of the moment, following a
    /// standby to its leader and, with several coordinators, past one that
    /// does not answer; the response, whatever its status.
    async fn send(&self, req: RequestBuilder) -> Result<Response, ClientError> {
        let req = req.build().map_err(ClientError::Transport)?;
        let deadline = tokio::time::Instant::now() + self.failover_wait;
        let mut delay = Duration::from_millis(25);
        loop {
            let root = self.server();
            let mut attempt = req.try_clone().ok_or_else(|| {
                ClientError::Decode("a streaming request body cannot be sent".into())
            })?;
            *attempt.url_mut() = rebased(req.url(), &root)?;
            let res = self.http.execute(attempt).await;
            let redirect = match &res {
                Ok(r) if r.status() == StatusCode::SERVICE_UNAVAILABLE => {
                    r.headers().get(LEADER_HEADER).map(|v| {
                        v.to_str()
                            .unwrap_or_default()
                            .trim_end_matches('/')
                            .to_owned()
                    })
                }
                Err(e) if e.is_connect() && self.servers.len() > 1 => Some(String::new()),
                _ => None,
            };
            let Some(leader) = redirect else {
                return res.map_err(ClientError::Transport);
            };
            if tokio::time::Instant::now() >= deadline {
                return res.map_err(ClientError::Transport);
            }
            let next = if !leader.is_empty() && leader != root && valid_root(&leader) {
                leader
            } else {
                // No leader named (none right now, or it is the one that
                // does not answer): the next coordinator given, after a
                // pause.
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(500));
                let at = self.servers.iter().position(|s| *s == root);
                self.servers[at.map_or(0, |i| (i + 1) % self.servers.len())].clone()
            };
            *self.current.lock().unwrap_or_else(PoisonError::into_inner) = next;
        }
    }

    /// Sends a request and decodes a success as `T`, an error body as
    /// [`ClientError::Api`].
    async fn call<T: DeserializeOwned>(&self, req: RequestBuilder) -> Result<T, ClientError> {
        let res = checked(self.send(req).await?).await?;
        let bytes = res.bytes().await.map_err(ClientError::Transport)?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// Opens an event stream.
    async fn open_stream(&self, req: RequestBuilder) -> Result<Response, ClientError> {
        let req = req.header(header::ACCEPT, "text/event-stream");
        checked(self.send(req).await?).await
    }

    /// Submits a task. `created` is false when a live task with the same
    /// unique key was returned instead.
    pub async fn submit(&self, task: &SubmitRequest) -> Result<SubmitResponse, ClientError> {
        self.call(self.request(Method::POST, "/tasks").json(task))
            .await
    }

    /// Submits tasks all or none; their ids, in order.
    pub async fn submit_batch(&self, tasks: &[SubmitRequest]) -> Result<Vec<TaskId>, ClientError> {
        let body = BatchRequest {
            tasks: tasks.to_vec(),
        };
        let r: BatchResponse = self
            .call(self.request(Method::POST, "/tasks/batch").json(&body))
            .await?;
        Ok(r.ids)
    }

    /// A task and its attempts.
    pub async fn get(&self, id: TaskId) -> Result<TaskDetail, ClientError> {
        self.call(self.request(Method::GET, &format!("/tasks/{id}")))
            .await
    }

    /// A page of tasks; pass `next_cursor` back as `cursor` for the next.
    pub async fn list(&self, query: &ListQuery) -> Result<TaskPage, ClientError> {
        self.call(self.request(Method::GET, "/tasks").query(query))
            .await
    }

    /// Cancels a task.
    pub async fn cancel(&self, id: TaskId) -> Result<CancelResponse, ClientError> {
        self.call(self.request(Method::POST, &format!("/tasks/{id}/cancel")))
            .await
    }

    /// Cancels every live task with `tag`; how many.
    pub async fn cancel_tag(&self, tag: &str) -> Result<usize, ClientError> {
        let body = CancelTagRequest {
            tag: tag.to_owned(),
        };
        let r: CancelTagResponse = self
            .call(self.request(Method::POST, "/tasks/cancel").json(&body))
            .await?;
        Ok(r.cancelled)
    }

    /// Runs a finished task again as a new task.
    pub async fn retry(&self, id: TaskId) -> Result<SubmitResponse, ClientError> {
        self.call(self.request(Method::POST, &format!("/tasks/{id}/retry")))
            .await
    }

    /// Deletes a finished task with its attempts and output (a live one
    /// is refused with `not_finished`).
    pub async fn delete(&self, id: TaskId) -> Result<(), ClientError> {
        checked(
            self.send(self.request(Method::DELETE, &format!("/tasks/{id}")))
                .await?,
        )
        .await?;
        Ok(())
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
        self.call(
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
        let res = self.open_stream(req).await?;
        Ok(SseStream::spawn(res, |raw| match raw.event.as_str() {
            "" | "message" => Some(sse::json(&raw).map(FollowItem::Chunk)),
            SSE_END => Some(sse::json(&raw).map(FollowItem::End)),
            _ => None,
        }))
    }

    /// Why a task is not running, or where it stands.
    pub async fn explain(&self, id: TaskId) -> Result<Explanation, ClientError> {
        self.call(self.request(Method::GET, &format!("/tasks/{id}/explain")))
            .await
    }

    /// A page of the audit log, newest first.
    pub async fn audit(
        &self,
        query: &taskgrid_api::AuditQuery,
    ) -> Result<Vec<taskgrid_core::AuditEntry>, ClientError> {
        self.call(self.request(Method::GET, "/audit").query(query))
            .await
    }

    /// Registered workers.
    pub async fn workers(&self) -> Result<Vec<WorkerView>, ClientError> {
        self.call(self.request(Method::GET, "/workers")).await
    }

    /// Every queue's depth and activity.
    pub async fn queues(&self) -> Result<Vec<QueueStats>, ClientError> {
        self.call(self.request(Method::GET, "/queues")).await
    }

    /// The limited concurrency keys with tasks waiting or running: their
    /// limits and counts.
    pub async fn limits(&self) -> Result<Vec<taskgrid_core::KeyLimitView>, ClientError> {
        self.call(self.request(Method::GET, "/limits")).await
    }

    /// Stops dispatching from `queue` (its tasks are kept and still
    /// accepted); a restart keeps it paused.
    pub async fn pause_queue(&self, queue: &str) -> Result<QueueStats, ClientError> {
        self.call(self.request(Method::POST, &format!("/queues/{queue}/pause")))
            .await
    }

    /// Lets a paused queue dispatch again.
    pub async fn resume_queue(&self, queue: &str) -> Result<QueueStats, ClientError> {
        self.call(self.request(Method::POST, &format!("/queues/{queue}/resume")))
            .await
    }

    /// Counters, rates, latencies and throughput since the coordinator
    /// started, in total and by queue, kind, (queue, kind) and worker.
    pub async fn metrics(&self) -> Result<MetricsSnapshot, ClientError> {
        self.call(self.request(Method::GET, "/metrics")).await
    }

    /// The same figures and the queue and worker gauges in the Prometheus
    /// text exposition format (`/metrics` at the root).
    pub async fn prometheus(&self) -> Result<String, ClientError> {
        let res = checked(self.send(self.at(Method::GET, "/metrics")).await?).await?;
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
        let res = self.open_stream(req).await?;
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
        let res = self.open_stream(req).await?;
        Ok(SseStream::spawn(res, |raw| {
            (raw.event == SSE_SUMMARY).then(|| sse::json(&raw))
        }))
    }

    /// Who leads the grid and who stands by.
    pub async fn coordinators(&self) -> Result<Coordinators, ClientError> {
        self.call(self.request(Method::GET, "/coordinators")).await
    }

    /// Whether the process serves (`/healthz`).
    pub async fn health(&self) -> Result<(), ClientError> {
        self.probe("/healthz").await
    }

    /// Whether the coordinator is ready: its store answers (`/readyz`).
    pub async fn ready(&self) -> Result<(), ClientError> {
        self.probe("/readyz").await
    }

    /// Asks the coordinator of the moment itself, following nobody: a
    /// standby is alive but not ready.
    async fn probe(&self, path: &str) -> Result<(), ClientError> {
        let req = self.http.get(format!("{}{path}", self.server()));
        let res = checked(req.send().await.map_err(ClientError::Transport)?).await?;
        let bytes = res.bytes().await.map_err(ClientError::Transport)?;
        serde_json::from_slice::<serde_json::Value>(&bytes)
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        Ok(())
    }
}

/// `url` (built on [`PLACEHOLDER`]) on the coordinator at `root`.
fn rebased(url: &reqwest::Url, root: &str) -> Result<reqwest::Url, ClientError> {
    let rest = url
        .as_str()
        .strip_prefix(PLACEHOLDER)
        .unwrap_or_else(|| url.path());
    reqwest::Url::parse(&format!("{root}{rest}"))
        .map_err(|_| ClientError::InvalidUrl(root.to_owned()))
}

/// Whether a leader's address is one to send requests to.
fn valid_root(url: &str) -> bool {
    reqwest::Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "http" | "https"))
}

/// The response if it is a success, else its error.
/// The HTTP client: over TLS with rustls on ring, trusting the system's
/// roots (read only when a coordinator is at an `https://` URL) and the CA
/// certificates of `ca_pem`.
fn http_client(https: bool, ca_pem: Option<&[u8]>) -> Result<reqwest::Client, ClientError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    if https {
        let native = rustls_native_certs::load_native_certs();
        // Unreadable system certificates leave the others (and --ca).
        roots.add_parsable_certificates(native.certs);
    }
    if let Some(pem) = ca_pem {
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ClientError::Tls(format!("not a PEM certificate file ({e})")))?;
        if certs.is_empty() {
            return Err(ClientError::Tls(
                "no certificate in the CA file (expected -----BEGIN CERTIFICATE-----)".into(),
            ));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| ClientError::Tls(format!("not a usable CA certificate: {e}")))?;
        }
    }
    // ring, as everywhere in taskgrid (rustls deprecates it for want of
    // post-quantum key exchange; aws-lc-rs needs cmake to build).
    #[allow(deprecated)]
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT_DEFAULT)
        .tls_backend_preconfigured(tls)
        .build()
        .map_err(ClientError::Transport)
}

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
