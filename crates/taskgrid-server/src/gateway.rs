//! The worker gateway: the gRPC `Session` stream each remote worker keeps
//! open (see `docs/protocol.md`).
//!
//! Decode → one engine command → persist, as thin as the HTTP side. A
//! malformed message is logged and dropped; it never takes the coordinator
//! down. A worker whose stream ends is paused (offered nothing) but keeps
//! its attempts until its heartbeat times out, so a quick reconnect picks
//! up where it left off.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use taskgrid_core::{
    Assignment, AuditRecord, Progress, StopAttempt, TaskId, TaskSpec, WorkerId, WorkerInfo,
};
use taskgrid_proto::worker::worker_gateway_server::{WorkerGateway, WorkerGatewayServer};
use taskgrid_proto::worker::{self, coordinator_message::Msg as Out, worker_message::Msg as In};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use taskgrid_runtime::{Note, Registration, TaskSystem, WorkerError, WorkerLink, WorkerService};

/// Settings of the worker gateway.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Workers must present `Authorization: Bearer <token>`; any worker may
    /// connect when `None` (only allowed on a loopback address).
    pub worker_token: Option<String>,
    /// How often workers send heartbeats.
    pub heartbeat_interval: Duration,
    /// Heartbeats a worker may miss before it is offline.
    pub missed_heartbeats: u32,
    /// How long a new stream may take to send `register`.
    pub register_timeout: Duration,
    /// Most slots one worker may declare.
    pub max_slots: u32,
}

impl GatewayConfig {
    /// Default heartbeat interval: 5 s.
    pub const HEARTBEAT_INTERVAL_DEFAULT: Duration = Duration::from_secs(5);
    /// Default missed heartbeats before offline: 3.
    pub const MISSED_HEARTBEATS_DEFAULT: u32 = 3;
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            worker_token: None,
            heartbeat_interval: Self::HEARTBEAT_INTERVAL_DEFAULT,
            missed_heartbeats: Self::MISSED_HEARTBEATS_DEFAULT,
            register_timeout: Duration::from_secs(10),
            max_slots: 10_000,
        }
    }
}

/// A connected worker's outbound stream: its [`WorkerLink`].
struct Remote {
    tx: Tx,
    worker_id: String,
    heartbeat_interval_ms: u32,
}

impl WorkerLink for Remote {
    fn registered(&self, cancel: &[(TaskId, u32)]) {
        let _ = self.tx.send(Ok(worker::CoordinatorMessage {
            msg: Some(Out::Registered(worker::Registered {
                worker_id: self.worker_id.clone(),
                heartbeat_interval_ms: self.heartbeat_interval_ms,
                cancel: cancel
                    .iter()
                    .map(|&(t, a)| taskgrid_proto::attempt_ref(t, a))
                    .collect(),
                takes_release: true,
            })),
        }));
    }

    fn offer(&self, assignments: Vec<Assignment>) {
        let assignments = assignments
            .iter()
            .map(taskgrid_proto::assignment_from_core)
            .collect();
        // Batches stay well under the 4 MiB message limit whatever the
        // payloads.
        for batch in msg::batches(assignments) {
            let _ = self.tx.send(Ok(batch));
        }
    }

    fn stop(&self, stop: StopAttempt) {
        let _ = self.tx.send(Ok(msg::cancel(&stop)));
    }

    fn replaced(&self) {
        let _ = self.tx.send(Err(Status::aborted(
            "replaced by a new session of this worker",
        )));
    }
}

/// The gRPC service; serve it with [`gateway`].
pub struct Gateway {
    service: WorkerService,
    config: GatewayConfig,
}

/// The worker gateway of `system`, ready to add to a tonic server.
pub fn gateway(system: &TaskSystem, config: GatewayConfig) -> WorkerGatewayServer<Gateway> {
    WorkerGatewayServer::new(Gateway {
        service: system.worker_service(),
        config,
    })
    .max_decoding_message_size(4 << 20)
}

/// Compares secrets in time independent of where they differ and of their
/// lengths: the SHA-256 digests of both are compared, every byte.
pub(crate) fn token_matches(given: &str, expected: &str) -> bool {
    use sha2::Digest;
    let (a, b) = (sha2::Sha256::digest(given), sha2::Sha256::digest(expected));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

#[cfg(test)]
mod tests {
    use super::token_matches;

    #[test]
    fn tokens_match_only_when_equal_whatever_their_lengths() {
        assert!(token_matches("s3cret", "s3cret"));
        assert!(!token_matches("s3cret", "s3cres"));
        assert!(!token_matches("s3c", "s3cret"));
        assert!(!token_matches("s3cret-and-more", "s3cret"));
        assert!(!token_matches("", "s3cret"));
    }
}

type SessionStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<worker::CoordinatorMessage, Status>> + Send>>;

#[tonic::async_trait]
impl WorkerGateway for Gateway {
    type SessionStream = SessionStream;

    /// Opens a worker's session, and records in the audit log who
    /// registered (or was refused), from where, before answering.
    async fn session(
        &self,
        request: Request<Streaming<worker::WorkerMessage>>,
    ) -> Result<Response<SessionStream>, Status> {
        let remote = remote_of(&request);
        let mut worker = None;
        let result = self.open_session(request, &mut worker).await;
        let status = match &result {
            Ok(_) => 200,
            Err(s) => match s.code() {
                tonic::Code::Unauthenticated => 401,
                tonic::Code::InvalidArgument => 400,
                tonic::Code::AlreadyExists => 409,
                tonic::Code::DeadlineExceeded => 408,
                _ => 503,
            },
        };
        let record = AuditRecord {
            at: taskgrid_core::Timestamp::from_micros(0),
            actor: worker.map_or_else(|| "worker".to_owned(), |id| format!("worker:{id}")),
            remote: remote.map(|a| a.to_string()),
            action: "worker register".to_owned(),
            status,
            error: result.as_ref().err().map(|s| format!("{:?}", s.code())),
        };
        if let Err(e) = self.service.record_audit(record).await {
            tracing::error!(error = %e, "the audit log could not record a registration");
        }
        result
    }
}

/// Where a worker's stream comes from: its connection's remote address, as
/// axum's server gives it (plain or TLS).
fn remote_of<T>(request: &Request<T>) -> Option<std::net::SocketAddr> {
    use axum::extract::connect_info::ConnectInfo;
    request
        .extensions()
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0)
        .or_else(|| {
            request
                .extensions()
                .get::<ConnectInfo<crate::tls::Peer>>()
                .map(|c| c.0.addr)
        })
}

impl Gateway {
    async fn open_session(
        &self,
        request: Request<Streaming<worker::WorkerMessage>>,
        worker: &mut Option<String>,
    ) -> Result<Response<SessionStream>, Status> {
        if let Some(expected) = &self.config.worker_token {
            let given = request
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(crate::http::auth::bearer);
            if !given.is_some_and(|g| token_matches(g, expected)) {
                return Err(Status::unauthenticated("missing or wrong worker token"));
            }
        }
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(self.config.register_timeout, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no register message in time"))??;
        let Some(worker::WorkerMessage {
            msg: Some(In::Register(reg)),
        }) = first
        else {
            return Err(Status::invalid_argument(
                "the first message must be register",
            ));
        };
        *worker = Some(reg.worker_id.clone());
        let info = self.worker_info(&reg)?;
        let running = reg
            .running
            .iter()
            .map(|r| taskgrid_proto::task_id(Some(r)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Status::invalid_argument(format!("register.running: {e}")))?;
        let id = info.id.clone();
        let (tx, rx) = mpsc::unbounded_channel();
        let link = Arc::new(Remote {
            tx: tx.clone(),
            worker_id: id.to_string(),
            heartbeat_interval_ms: u32::try_from(self.config.heartbeat_interval.as_millis())
                .unwrap_or(u32::MAX),
        });
        let registration = Registration {
            info,
            instance: reg.instance.clone(),
            running,
        };
        let mut session = match self.service.register(registration, link) {
            Ok(s) => s,
            Err(e @ WorkerError::IdInUse(_)) => return Err(Status::already_exists(e.to_string())),
            Err(e) => return Err(Status::unavailable(e.to_string())),
        };
        tracing::info!(worker = %id, conn = session.conn(), "worker registered");
        let service = self.service.clone();
        tokio::spawn(async move {
            // Nothing it says counts before it is registered; if the
            // registration was never committed, the stream just ends.
            if !session.linked().await {
                return;
            }
            // What `ready` found after a batch, handled before waiting again.
            let mut next = None;
            let goodbye = loop {
                let item = match next.take() {
                    Some(item) => item,
                    None => inbound.message().await,
                };
                match item {
                    Ok(Some(m)) if is_goodbye(&m) => break true,
                    Ok(Some(m)) => {
                        // With it, whatever else has arrived already: a
                        // busy worker's accepts are recorded together.
                        let mut batch = vec![m];
                        while batch.len() < READY_BATCH {
                            match ready(&mut inbound) {
                                Some(Ok(Some(m))) if !is_goodbye(&m) => batch.push(m),
                                Some(other) => {
                                    next = Some(other);
                                    break;
                                }
                                None => break,
                            }
                        }
                        handle_all(&service, &id, &tx, batch).await;
                    }
                    // The stream ended without a goodbye: closed, reset or
                    // cancelled by the worker's gRPC library, or broken. The
                    // worker may be back in a moment: keep what it holds.
                    Ok(None) => {
                        tracing::info!(worker = %id, "worker stream ended without a goodbye");
                        break false;
                    }
                    Err(status) => {
                        tracing::warn!(worker = %id, %status, "worker stream failed");
                        break false;
                    }
                }
            };
            service.detach(session, goodbye);
            if goodbye {
                tracing::info!(worker = %id, "worker left");
            } else {
                tracing::info!(worker = %id, "worker disconnected");
            }
        });
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(rx))))
    }
}

impl Gateway {
    fn worker_info(&self, reg: &worker::Register) -> Result<WorkerInfo, Status> {
        let id = reg.worker_id.trim();
        if id.is_empty() || id.len() > 256 || id.chars().any(char::is_control) {
            return Err(Status::invalid_argument(
                "register.worker_id must be 1-256 printable characters",
            ));
        }
        if id == "local" {
            return Err(Status::invalid_argument(
                "register.worker_id \"local\" is reserved",
            ));
        }
        if reg.instance.trim().is_empty() {
            return Err(Status::invalid_argument(
                "register.instance must be set: a random value per worker process \
                 (two processes that both left it empty would take each other's place)",
            ));
        }
        if reg.slots == 0 || reg.slots > self.config.max_slots {
            return Err(Status::invalid_argument(format!(
                "register.slots must be 1-{}",
                self.config.max_slots
            )));
        }
        if reg.prefetch > self.config.max_slots {
            return Err(Status::invalid_argument(format!(
                "register.prefetch must be 0-{}",
                self.config.max_slots
            )));
        }
        let mut labels: Vec<(String, String)> = reg
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        labels.sort();
        Ok(WorkerInfo {
            id: WorkerId::new(id),
            labels,
            handlers: reg.handlers.clone(),
            shell: reg.shell,
            container: reg.container,
            slots: reg.slots,
            prefetch: reg.prefetch,
            queues: reg.queues.clone(),
            heartbeat_timeout: Some(
                self.config.heartbeat_interval * self.config.missed_heartbeats.max(1),
            ),
            memory_bytes: (reg.memory_bytes > 0).then_some(reg.memory_bytes),
            cpus: (reg.cpus.is_finite() && reg.cpus > 0.0).then_some(reg.cpus),
            max_load: (reg.max_load.is_finite() && reg.max_load > 0.0).then_some(reg.max_load),
            health: None,
        })
    }
}

/// What a heartbeat says of the worker's host (0 and negative figures are
/// unknown; the runtime sets the time).
fn health_of(hb: &worker::Heartbeat) -> taskgrid_core::WorkerHealth {
    let known = |n: u64| (n > 0).then_some(n);
    taskgrid_core::WorkerHealth {
        load: (hb.load.is_finite() && hb.load >= 0.0).then_some(hb.load),
        memory_available_bytes: known(hb.memory_available_bytes),
        disk_free_bytes: known(hb.disk_free_bytes),
        at: taskgrid_core::Timestamp::from_micros(0),
    }
}

type Tx = mpsc::UnboundedSender<Result<worker::CoordinatorMessage, Status>>;

fn ack(tx: &Tx, request_id: u64, result: Result<Option<TaskId>, String>) {
    let (error, task_id) = match result {
        Ok(t) => (String::new(), t.map(|t| t.to_string()).unwrap_or_default()),
        Err(e) => (e, String::new()),
    };
    let _ = tx.send(Ok(worker::CoordinatorMessage {
        msg: Some(Out::Ack(worker::Ack {
            request_id,
            error,
            task_id,
        })),
    }));
}

/// The most messages of one stream taken together (see [`handle_all`]).
const READY_BATCH: usize = 1024;

fn is_goodbye(m: &worker::WorkerMessage) -> bool {
    matches!(m.msg, Some(In::Goodbye(_)))
}

/// The stream's next message if it has arrived already (`None`: not yet).
fn ready(
    inbound: &mut Streaming<worker::WorkerMessage>,
) -> Option<Result<Option<worker::WorkerMessage>, Status>> {
    use tokio_stream::Stream;
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match Pin::new(inbound).poll_next(&mut cx) {
        std::task::Poll::Pending => None,
        std::task::Poll::Ready(None) => Some(Ok(None)),
        std::task::Poll::Ready(Some(r)) => Some(r.map(Some)),
    }
}

/// Messages that arrived together, in order: each run of accepts, output
/// and progress is recorded in one go ([`WorkerService::notes`]); a bad
/// message is logged and dropped.
async fn handle_all(
    service: &WorkerService,
    worker: &WorkerId,
    tx: &Tx,
    batch: Vec<worker::WorkerMessage>,
) {
    let mut notes = Vec::new();
    for m in batch {
        let Some(msg) = m.msg else {
            ignored(worker, &Ignored::Malformed("empty message".into()));
            continue;
        };
        match note_of(msg) {
            Said::Note(Ok(note)) => notes.push(note),
            Said::Note(Err(e)) => ignored(worker, &e),
            Said::Other(msg) => {
                record(service, worker, std::mem::take(&mut notes));
                if let Err(e) = apply(service, worker, tx, msg).await {
                    ignored(worker, &e);
                }
            }
        }
    }
    record(service, worker, notes);
}

fn ignored(worker: &WorkerId, e: &Ignored) {
    tracing::warn!(worker = %worker, error = %e, "ignored a worker message");
}

/// Records notes that came in a row.
fn record(service: &WorkerService, worker: &WorkerId, notes: Vec<Note>) {
    if notes.is_empty() {
        return;
    }
    for r in service.notes(worker, notes) {
        if let Err(e) = r {
            ignored(worker, &e.into());
        }
    }
}

/// A message sorted: a note (or why it is malformed), or anything else.
enum Said {
    Note(Result<Note, Ignored>),
    Other(In),
}

/// The note a message carries, if it is one.
fn note_of(msg: In) -> Said {
    let attempt = |r: Option<&worker::AttemptRef>| -> Result<(TaskId, u32), Ignored> {
        Ok(taskgrid_proto::task_id(r)?)
    };
    Said::Note(match msg {
        In::Accept(a) => {
            attempt(a.attempt.as_ref()).map(|(id, attempt)| Note::Accept { id, attempt })
        }
        In::Output(o) => attempt(o.attempt.as_ref()).and_then(|(id, attempt)| {
            Ok(Note::Output {
                id,
                attempt,
                stream: taskgrid_proto::stream_to_core(o.stream)?,
                data: o.data,
            })
        }),
        In::Progress(p) => attempt(p.attempt.as_ref()).map(|(id, attempt)| Note::Progress {
            id,
            attempt,
            progress: Progress {
                fraction: p.fraction,
                message: Some(p.message).filter(|m| !m.is_empty()),
            },
        }),
        other => return Said::Other(other),
    })
}

/// Why a worker's message was dropped.
#[derive(Debug, thiserror::Error)]
enum Ignored {
    /// It could not be decoded, or came at the wrong time.
    #[error("{0}")]
    Malformed(String),
    /// The service refused it.
    #[error(transparent)]
    Refused(#[from] WorkerError),
}

impl From<taskgrid_proto::ConvertError> for Ignored {
    fn from(e: taskgrid_proto::ConvertError) -> Self {
        Ignored::Malformed(e.to_string())
    }
}

async fn apply(
    service: &WorkerService,
    worker: &WorkerId,
    tx: &Tx,
    msg: In,
) -> Result<(), Ignored> {
    let attempt = |r: Option<&worker::AttemptRef>| taskgrid_proto::task_id(r);
    let malformed = |what: &str| Ignored::Malformed(what.to_owned());
    match msg {
        In::Register(_) => Err(malformed("register sent twice on one stream")),
        In::Goodbye(_) => Err(malformed("goodbye handled by the session loop")),
        In::Heartbeat(hb) => match service.heartbeat(worker, hb.draining, Some(health_of(&hb))) {
            Err(WorkerError::Dropped) => {
                // Dropped for missed heartbeats: end this stream so the
                // worker registers again (and reconciles what it runs).
                let _ = tx.send(Err(Status::not_found(
                    "this worker was dropped; register again",
                )));
                Err(WorkerError::Dropped.into())
            }
            r => Ok(r?),
        },
        // Recorded by `handle_all`, in runs.
        In::Accept(_) | In::Output(_) | In::Progress(_) => Ok(()),
        In::Reject(r) => {
            let (id, n) = attempt(r.attempt.as_ref())?;
            if r.release {
                Ok(service.release(worker, id, n)?)
            } else {
                Ok(service.reject(worker, id, n, &r.reason)?)
            }
        }
        In::Result(r) => report(service, worker, &r),
        In::Results(rs) => {
            // Each as if it came alone: a malformed one is dropped (and
            // logged), the others still count.
            for r in &rs.results {
                if let Err(e) = report(service, worker, r) {
                    tracing::warn!(%worker, error = ?e, "dropped a result of a batch");
                }
            }
            Ok(())
        }
        In::Checkpoint(c) => {
            let (id, n) = attempt(c.attempt.as_ref())?;
            let r = service
                .checkpoint(worker, id, n, c.data_json.into())
                .await
                .map(|()| None)
                .map_err(|e| e.to_string());
            ack(tx, c.request_id, r);
            Ok(())
        }
        In::Spawn(s) => {
            let (parent, n) = attempt(s.parent.as_ref())?;
            let r = match spawned_spec(&s) {
                Ok(spec) => service
                    .spawn(worker, parent, n, spec)
                    .await
                    .map(Some)
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e),
            };
            ack(tx, s.request_id, r);
            Ok(())
        }
    }
}

/// Hands one `result` to the engine.
fn report(service: &WorkerService, worker: &WorkerId, r: &worker::Result) -> Result<(), Ignored> {
    let (id, n) = taskgrid_proto::task_id(r.attempt.as_ref())?;
    let outcome = taskgrid_proto::outcome_from_result(r)?;
    let measured = r.cpu_seconds > 0.0 || r.peak_rss_bytes > 0 || r.signal.is_some();
    let usage = measured.then_some(taskgrid_core::Usage {
        cpu_seconds: r.cpu_seconds,
        peak_rss_bytes: r.peak_rss_bytes,
        signal: r.signal,
    });
    service.report(worker, id, n, outcome, usage);
    Ok(())
}

/// The spec of a `spawn`: `api_spec_json`, the HTTP API's submit form
/// (`POST /tasks`), its relative times resolved now on the coordinator's
/// clock; or, from a worker that predates it, `spec_json`, the engine's
/// own form. (Each field has one form: a payload is never guessed.)
fn spawned_spec(s: &worker::Spawn) -> Result<TaskSpec, String> {
    if s.api_spec_json.is_empty() {
        return serde_json::from_str::<TaskSpec>(&s.spec_json)
            .map_err(|e| format!("invalid task spec (spawn.spec_json, the engine's form): {e}"));
    }
    let req =
        serde_json::from_str::<taskgrid_api::SubmitRequest>(&s.api_spec_json).map_err(|e| {
            format!("invalid task spec (spawn.api_spec_json, the API's submit form): {e}")
        })?;
    let (mut spec, times) = req.into_spec();
    let now = taskgrid_core::Timestamp::from_micros(taskgrid_core::duration_micros(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default(),
    ));
    if let Some(d) = times.delay {
        spec.run_at = Some(now.plus(d));
    }
    if let Some(d) = times.expires_in {
        spec.expires_at = Some(spec.run_at.unwrap_or(now).plus(d));
    }
    Ok(spec)
}

/// Builders of coordinator messages.
pub(crate) mod msg {
    use taskgrid_core::{StopAttempt, StopReason};
    use taskgrid_proto::worker::{self, coordinator_message::Msg};

    pub(crate) fn assignments(assignments: Vec<worker::Assignment>) -> worker::CoordinatorMessage {
        worker::CoordinatorMessage {
            msg: Some(Msg::Assignments(worker::Assignments { assignments })),
        }
    }

    /// Assignments split into messages of at most ~1 MiB of payload each
    /// (a single larger task still travels alone, under the 4 MiB limit).
    pub(crate) fn batches(all: Vec<worker::Assignment>) -> Vec<worker::CoordinatorMessage> {
        const BUDGET: usize = 1 << 20;
        let mut out = Vec::new();
        let mut batch = Vec::new();
        let mut size = 0;
        for a in all {
            let n = prost::Message::encoded_len(&a);
            if !batch.is_empty() && size + n > BUDGET {
                out.push(assignments(std::mem::take(&mut batch)));
                size = 0;
            }
            size += n;
            batch.push(a);
        }
        if !batch.is_empty() {
            out.push(assignments(batch));
        }
        out
    }

    pub(crate) fn cancel(s: &StopAttempt) -> worker::CoordinatorMessage {
        let reason = match s.reason {
            StopReason::Cancel => worker::cancel::Reason::Cancel,
            StopReason::Timeout => worker::cancel::Reason::Timeout,
        };
        worker::CoordinatorMessage {
            msg: Some(Msg::Cancel(worker::Cancel {
                attempt: Some(taskgrid_proto::attempt_ref(s.id, s.attempt)),
                reason: reason as i32,
            })),
        }
    }
}
