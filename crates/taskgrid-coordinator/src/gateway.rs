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
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use taskgrid_core::{Outbox, Progress, TaskId, TaskSpec, WorkerId, WorkerInfo};
use taskgrid_proto::worker::worker_gateway_server::{WorkerGateway, WorkerGatewayServer};
use taskgrid_proto::worker::{self, coordinator_message::Msg as Out, worker_message::Msg as In};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::executor::{Completion, Report};
use crate::inner::{Effects, Inner, relock};
use crate::{Task, TaskSystem};

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

/// A worker's current session, recorded when it registers (before the
/// registration is committed and its link published).
pub(crate) struct Session {
    conn: u64,
    /// The worker process's instance id (see `Register.instance`).
    instance: String,
}

/// A connected worker's outbound stream.
pub(crate) struct Link {
    conn: u64,
    pub(crate) tx: mpsc::UnboundedSender<Result<worker::CoordinatorMessage, Status>>,
}

/// The gRPC service; serve it with [`gateway`].
pub struct Gateway {
    inner: Arc<Inner>,
    config: GatewayConfig,
    conns: AtomicU64,
}

/// The worker gateway of `system`, ready to add to a tonic server.
pub fn gateway(system: &TaskSystem, config: GatewayConfig) -> WorkerGatewayServer<Gateway> {
    WorkerGatewayServer::new(Gateway {
        inner: system.inner.clone(),
        config,
        conns: AtomicU64::new(0),
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

    async fn session(
        &self,
        request: Request<Streaming<worker::WorkerMessage>>,
    ) -> Result<Response<SessionStream>, Status> {
        if let Some(expected) = &self.config.worker_token {
            let given = request
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
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
        let info = self.worker_info(&reg)?;
        let running = reg
            .running
            .iter()
            .map(|r| taskgrid_proto::task_id(Some(r)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Status::invalid_argument(format!("register.running: {e}")))?;
        let id = info.id.clone();
        let instance = reg.instance.clone();
        let conn = self.conns.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = mpsc::unbounded_channel();
        // Told once the registration is committed and the link published;
        // dropped (so the stream ends) if the commit fails.
        let (linked_tx, linked) = tokio::sync::oneshot::channel::<()>();
        {
            let inner = &self.inner;
            let now = inner.clock.now();
            let mut engine = inner.lock();
            {
                // One session per worker id: the same process reconnecting
                // (its old stream dead or about to be) replaces its old
                // session; another process with a connected worker's id is
                // refused.
                let mut sessions = relock(&inner.sessions);
                if let Some(old) = sessions.get(&id)
                    && engine.has_worker(&id)
                    && old.instance != instance
                {
                    return Err(Status::already_exists(format!(
                        "a worker with id {id:?} is connected; give each worker its own --id"
                    )));
                }
                sessions.insert(
                    id.clone(),
                    Session {
                        conn,
                        instance: instance.clone(),
                    },
                );
            }
            let mut out = Outbox::default();
            engine.register_worker(info, now);
            let stale = engine.reconcile_worker(&id, &running, now, &mut out);
            // Cancels issued while it was away are sent again.
            let pending: Vec<(TaskId, u32)> = running
                .iter()
                .copied()
                .filter(|k| !stale.contains(k) && engine.cancel_pending(k.0))
                .collect();
            // The answer, and the cancels it missed, go on the stream once
            // the reconciliation is committed, before the link is
            // published: from then on the driver may send it assignments,
            // which must not overtake `registered` (a worker whose first
            // message is not the answer starts over). Assignments to it
            // are committed after this batch, so they are sent after it.
            let registered = worker::Registered {
                worker_id: id.to_string(),
                heartbeat_interval_ms: u32::try_from(self.config.heartbeat_interval.as_millis())
                    .unwrap_or(u32::MAX),
                cancel: stale
                    .into_iter()
                    .map(|(t, a)| taskgrid_proto::attempt_ref(t, a))
                    .collect(),
            };
            let (link_id, link_tx) = (id.clone(), tx.clone());
            let then = Box::new(move |inner: &Inner| {
                let _ = link_tx.send(Ok(worker::CoordinatorMessage {
                    msg: Some(Out::Registered(registered)),
                }));
                for (task, attempt) in pending {
                    let stop = taskgrid_core::StopAttempt {
                        id: task,
                        attempt,
                        worker: link_id.clone(),
                        reason: taskgrid_core::StopReason::Cancel,
                    };
                    let _ = link_tx.send(Ok(msg::cancel(&stop)));
                }
                let old = relock(&inner.links).insert(link_id.clone(), Link { conn, tx: link_tx });
                if let Some(old) = old.filter(|o| o.conn != conn) {
                    let _ = old.tx.send(Err(Status::aborted(
                        "replaced by a new session of this worker",
                    )));
                }
                // The old session of a reconnecting worker may have ended
                // between this registration and its commit, and paused the
                // worker as it detached: this session is its link now.
                let _ = inner.lock().set_worker_paused(&link_id, false);
                inner.wake.notify_one();
                let _ = linked_tx.send(());
            });
            let effects = Effects {
                stops: out.stops,
                then: Some(then),
                ..Effects::default()
            };
            inner.persist_then(&engine, out.changes, Duration::ZERO, effects, None);
        }
        tracing::info!(worker = %id, conn, "worker registered");
        self.inner.wake.notify_one();
        let inner = self.inner.clone();
        tokio::spawn(async move {
            // Nothing it says counts before it is registered; if the
            // registration was never committed, the stream just ends.
            if linked.await.is_err() {
                return;
            }
            let goodbye = loop {
                match inbound.message().await {
                    Ok(Some(worker::WorkerMessage {
                        msg: Some(In::Goodbye(_)),
                    })) => break true,
                    Ok(Some(m)) => handle(&inner, &id, &tx, m).await,
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
            detach(&inner, &id, conn, goodbye);
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
        })
    }
}

/// The stream ended. After a goodbye message the worker is removed and
/// what it held goes back to the queue at once; after anything else it is
/// offered nothing until it comes back or its heartbeat times out.
fn detach(inner: &Inner, id: &WorkerId, conn: u64, goodbye: bool) {
    {
        // Under the engine lock, like a registration: a newer session of
        // the same worker either registered before (and owns it now) or
        // registers after this.
        let mut engine = inner.lock();
        let mut sessions = relock(&inner.sessions);
        if sessions.get(id).is_none_or(|s| s.conn != conn) {
            return; // a newer session of the same worker owns it now
        }
        sessions.remove(id);
        drop(sessions);
        if !goodbye {
            let _ = engine.set_worker_paused(id, true);
        }
    }
    {
        let mut links = relock(&inner.links);
        if links.get(id).is_some_and(|l| l.conn == conn) {
            links.remove(id);
        }
    }
    if goodbye {
        // Through the driver's channel, after the results sent before it;
        // ignored if the worker has registered again by then.
        let _ = inner.completions.send(Report::Left(id.clone()));
        inner.wake.notify_one();
        tracing::info!(worker = %id, "worker left");
    } else {
        tracing::info!(worker = %id, "worker disconnected");
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

/// One message from a worker; a bad one is logged and dropped.
async fn handle(inner: &Arc<Inner>, worker: &WorkerId, tx: &Tx, m: worker::WorkerMessage) {
    if let Err(e) = apply(inner, worker, tx, m).await {
        tracing::warn!(worker = %worker, error = %e, "ignored a worker message");
    }
}

async fn apply(
    inner: &Arc<Inner>,
    worker: &WorkerId,
    tx: &Tx,
    m: worker::WorkerMessage,
) -> Result<(), String> {
    let now = inner.clock.now();
    let attempt =
        |r: Option<&worker::AttemptRef>| taskgrid_proto::task_id(r).map_err(|e| e.to_string());
    match m.msg.ok_or("empty message")? {
        In::Register(_) => Err("register sent twice on one stream".into()),
        In::Goodbye(_) => Err("goodbye handled by the session loop".into()),
        In::Heartbeat(hb) => {
            let alive = {
                let mut engine = inner.lock();
                let alive = engine.heartbeat(worker, now).is_ok();
                if alive && hb.draining {
                    let _ = engine.set_worker_paused(worker, true);
                }
                alive
            };
            if !alive {
                // Dropped for missed heartbeats: end this stream so the
                // worker registers again (and reconciles what it runs).
                let _ = tx.send(Err(Status::not_found(
                    "this worker was dropped; register again",
                )));
                return Err("heartbeat from a dropped worker".into());
            }
            Ok(())
        }
        In::Accept(a) => {
            let (id, n) = attempt(a.attempt.as_ref())?;
            inner.note(|e, out| e.accept(worker, id, n, now, out))
        }
        In::Reject(r) => {
            let (id, n) = attempt(r.attempt.as_ref())?;
            inner.command(|e, out| e.reject(worker, id, n, &r.reason, now, out))
        }
        In::Output(o) => {
            let (id, n) = attempt(o.attempt.as_ref())?;
            let stream = taskgrid_proto::stream_to_core(o.stream).map_err(|e| e.to_string())?;
            inner.note(|e, out| e.output(worker, id, n, stream, o.data, out))
        }
        In::Progress(p) => {
            let (id, n) = attempt(p.attempt.as_ref())?;
            let message = Some(p.message).filter(|m| !m.is_empty());
            inner.note(|e, out| {
                e.progress(
                    worker,
                    id,
                    n,
                    Progress {
                        fraction: p.fraction,
                        message,
                    },
                    out,
                )
            })
        }
        In::Result(r) => {
            let (id, n) = attempt(r.attempt.as_ref())?;
            let outcome = taskgrid_proto::outcome_from_result(&r).map_err(|e| e.to_string())?;
            let measured = r.cpu_seconds > 0.0 || r.peak_rss_bytes > 0 || r.signal.is_some();
            let usage = measured.then_some(taskgrid_core::Usage {
                cpu_seconds: r.cpu_seconds,
                peak_rss_bytes: r.peak_rss_bytes,
                signal: r.signal,
            });
            let _ = inner.completions.send(Report::Attempt(Completion {
                worker: worker.clone(),
                id,
                attempt: n,
                outcome,
                usage,
            }));
            Ok(())
        }
        In::Checkpoint(c) => {
            let (id, n) = attempt(c.attempt.as_ref())?;
            let r = inner.checkpoint(worker, id, n, c.data_json.into()).await;
            ack(tx, c.request_id, r.map(|_| None).map_err(|e| e.to_string()));
            Ok(())
        }
        In::Spawn(s) => {
            let (parent, n) = attempt(s.parent.as_ref())?;
            if !inner.lock().attempt_is_live(worker, parent, n) {
                ack(
                    tx,
                    s.request_id,
                    Err(format!(
                        "attempt {n} of {parent} is not running on this worker"
                    )),
                );
                return Ok(());
            }
            let r = match serde_json::from_str::<TaskSpec>(&s.spec_json) {
                Ok(mut spec) => {
                    spec.parent = Some(parent);
                    inner
                        .submit(vec![Task::from_spec(spec)])
                        .await
                        .map(|ids| ids.first().copied())
                        .map_err(|e| e.to_string())
                }
                Err(e) => Err(format!("invalid task spec: {e}")),
            };
            ack(tx, s.request_id, r);
            Ok(())
        }
    }
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
