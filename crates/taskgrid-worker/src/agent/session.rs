//! One worker's life: connect, register, serve the stream, reconnect with
//! backoff when it breaks, drain on request.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use taskgrid_core::{StopReason, TaskId};
use taskgrid_proto::worker::{
    self, coordinator_message::Msg as Out, worker_gateway_client::WorkerGatewayClient,
    worker_message::Msg as In,
};
use taskgrid_sdk::Handler;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;

use super::{WorkerConfig, WorkerError, WorkerTls, cause};

/// How long a checkpoint or spawn waits for the coordinator's answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// How long `<runtime> version` may take at start-up.
const RUNTIME_PROBE_LIMIT: Duration = Duration::from_secs(10);

/// An attempt this worker has accepted and not yet finished reporting.
pub(super) struct Attempt {
    stop: watch::Sender<Option<StopReason>>,
    /// The coordinator gave it away: stop it and report nothing.
    silenced: bool,
}

/// State shared by the session loop and the attempts it runs.
pub(super) struct Shared {
    pub(super) config: WorkerConfig,
    pub(super) handlers: HashMap<String, Arc<dyn Handler>>,
    attempts: Mutex<HashMap<(TaskId, u32), Attempt>>,
    /// Slots in use, and the assignments held until one frees.
    pub(super) slots: Mutex<super::run::Slots>,
    events: mpsc::UnboundedSender<In>,
    acks: Mutex<HashMap<u64, oneshot::Sender<worker::Ack>>>,
    next_request: AtomicU64,
    /// This process's instance id, the same on every reconnect.
    instance: String,
    /// The coordinator takes a hand-back of held work (`reject.release`):
    /// said at each registration.
    takes_release: AtomicBool,
    /// Starts shell tasks that run in no cgroup, when configured.
    pub(super) spawner: Option<crate::Spawner>,
}

fn relock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// Queues a message for the coordinator; it waits across reconnects.
    pub(super) fn emit(&self, msg: In) {
        let _ = self.events.send(msg);
    }

    /// Sends a request (checkpoint, spawn) and waits for its ack.
    pub(super) async fn request(
        &self,
        make: impl FnOnce(u64) -> In,
    ) -> Result<worker::Ack, String> {
        let id = self.next_request.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = oneshot::channel();
        relock(&self.acks).insert(id, tx);
        self.emit(make(id));
        match tokio::time::timeout(REQUEST_TIMEOUT, rx).await {
            Ok(Ok(ack)) => Ok(ack),
            Ok(Err(_)) => Err("the worker stopped before the coordinator answered".to_owned()),
            Err(_) => {
                relock(&self.acks).remove(&id);
                Err(format!(
                    "no answer from the coordinator within {REQUEST_TIMEOUT:?}"
                ))
            }
        }
    }

    fn running(&self) -> Vec<worker::AttemptRef> {
        relock(&self.attempts)
            .iter()
            .filter(|(_, a)| !a.silenced)
            .map(|((t, n), _)| taskgrid_proto::attempt_ref(*t, *n))
            .collect()
    }

    fn stop(&self, key: (TaskId, u32), reason: StopReason, silence: bool) {
        if let Some(a) = relock(&self.attempts).get_mut(&key) {
            a.silenced |= silence;
            let _ = a.stop.send(Some(reason));
        }
        // Held, never started: it is simply dropped.
        let held = {
            let mut slots = relock(&self.slots);
            let before = slots.held.len();
            slots.held.retain(|h| h.key() != key);
            slots.held.len() != before
        };
        if held {
            self.forget(key);
        }
    }

    fn stop_all(&self, reason: StopReason) {
        self.drop_held();
        for a in relock(&self.attempts).values_mut() {
            a.silenced = true;
            let _ = a.stop.send(Some(reason));
        }
    }

    /// Whether a result should go out, and forgets the attempt either way.
    fn finish(&self, key: (TaskId, u32)) -> bool {
        relock(&self.attempts)
            .remove(&key)
            .is_some_and(|a| !a.silenced)
    }

    /// Forgets an attempt that will report nothing.
    pub(super) fn forget(&self, key: (TaskId, u32)) {
        relock(&self.attempts).remove(&key);
    }

    /// Forgets the held assignments, never started: the coordinator
    /// re-queues them when it hears no more of them.
    fn drop_held(&self) {
        for h in self.take_held() {
            self.forget(h.key());
        }
    }

    /// The held assignments, no longer held.
    fn take_held(&self) -> Vec<super::run::Held> {
        relock(&self.slots).held.drain(..).collect()
    }

    /// Hands the held assignments back to the coordinator (on a drain).
    fn hand_back_held(&self) {
        self.hand_back(self.take_held(), false);
    }

    /// Hands back the held assignments that waited `prefetch_hold` for a
    /// slot.
    fn hand_back_stale(&self) {
        let now = tokio::time::Instant::now();
        let stale = relock(&self.slots).take_stale(self.config.prefetch_hold, now);
        if !stale.is_empty() {
            tracing::debug!(
                n = stale.len(),
                "handing back prefetched tasks that found no slot"
            );
        }
        self.hand_back(stale, true);
    }

    /// Forgets `held` and tells the coordinator: a `release` (not a
    /// refusal) when they only waited too long for a slot.
    fn hand_back(&self, held: Vec<super::run::Held>, release: bool) {
        let reason = if release {
            "held too long without a slot"
        } else {
            "the worker is draining"
        };
        for h in held {
            let (id, attempt) = h.key();
            self.forget((id, attempt));
            self.emit(In::Reject(worker::Reject {
                attempt: Some(taskgrid_proto::attempt_ref(id, attempt)),
                reason: reason.into(),
                release,
            }));
        }
    }

    /// When the oldest held assignment will have waited `prefetch_hold`
    /// (never, with a coordinator that takes no hand-back).
    fn hold_deadline(&self) -> Option<tokio::time::Instant> {
        if !self.takes_release.load(Ordering::Relaxed) {
            return None;
        }
        relock(&self.slots).hold_deadline(self.config.prefetch_hold)
    }

    fn idle(&self) -> bool {
        relock(&self.attempts).is_empty()
    }

    /// Whether prefetched work is held, waiting for a slot.
    fn holding(&self) -> bool {
        !relock(&self.slots).held.is_empty()
    }
}

enum End {
    /// Drained: every attempt is finished or handed back.
    Drained,
    /// No session came about (cannot connect, or no answer to register),
    /// for this reason in words; try again.
    Unreachable(String),
    /// The coordinator has a session of this worker id from another
    /// process; try again within the grace, then give up.
    Duplicate,
    /// The stream broke after registering, for this reason; reconnect.
    Lost(String),
    /// A standby refused the session, naming the leader (`None` while it
    /// knows none): go there.
    NotLeader(Option<String>, String),
    /// Refused for good.
    Refused(WorkerError),
}

pub(super) async fn run(
    config: WorkerConfig,
    handlers: HashMap<String, Arc<dyn Handler>>,
    drain: impl Future<Output = ()> + Send,
) -> Result<(), WorkerError> {
    let mut servers = Servers::new(&config.server, &config.tls)?;
    let mut config = config;
    if let Some(rt) = &config.container
        && let Err(why) = rt.probe(RUNTIME_PROBE_LIMIT).await
    {
        tracing::warn!("container tasks disabled: {why}");
        config.container = None;
    }
    let spawner = match config.spawner.as_deref() {
        Some(program) => crate::Spawner::start(program)
            .await
            .inspect_err(|e| {
                tracing::warn!(
                    "cannot start the spawner {}: {e}; the peak memory of tasks in no cgroup \
                     is not measured",
                    program.display()
                );
            })
            .ok(),
        None => None,
    };
    let (events, mut events_rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        spawner,
        config,
        handlers,
        attempts: Mutex::new(HashMap::new()),
        slots: Mutex::default(),
        events,
        acks: Mutex::new(HashMap::new()),
        next_request: AtomicU64::new(0),
        instance: instance_id(),
        takes_release: AtomicBool::new(false),
    });
    tokio::pin!(drain);
    let mut draining = None;
    let mut corked = Corked::default();
    let mut backoff = shared.config.reconnect_min;
    let mut said = cause::Said::default();
    // Since when every register has been answered "this id is connected".
    let mut duplicate_since = None;
    loop {
        let registered_at = tokio::time::Instant::now();
        let server = servers.url().to_owned();
        // Whether to try again soon: some coordinator of the list is still
        // untried this round, or a standby said a leader is coming.
        let mut calm = false;
        let end = session(
            &shared,
            servers.endpoint(),
            (&mut events_rx, &mut corked),
            &mut drain,
            &mut draining,
        )
        .await;
        if !matches!(end, End::Duplicate) {
            duplicate_since = None;
        }
        let (why, always) = match end {
            End::Drained => return Ok(()),
            End::NotLeader(Some(leader), why) if servers.follow(&leader) => {
                // Straight to the leader: no pause.
                tracing::info!("{server} stands by ({why}); following the leader at {leader}");
                continue;
            }
            End::NotLeader(_, why) if draining.is_some() => {
                tracing::warn!(
                    "the coordinator at {server} stands by while draining ({why}); stopping"
                );
                shared.stop_all(StopReason::Cancel);
                return Ok(());
            }
            End::NotLeader(_, why) => {
                // A standby answers: a leader is being elected; try again
                // soon, without backing off.
                servers.next();
                calm = true;
                (
                    format!("the coordinator at {server} does not lead: {why}"),
                    false,
                )
            }
            End::Refused(e) => return Err(e),
            End::Unreachable(why) | End::Lost(why) if draining.is_some() => {
                // Draining with no coordinator to hand back to: stop what is
                // left; the coordinator re-queues it when the heartbeat lapses.
                tracing::warn!("lost the coordinator at {server} while draining ({why}); stopping");
                shared.stop_all(StopReason::Cancel);
                return Ok(());
            }
            End::Duplicate if draining.is_some() => {
                shared.stop_all(StopReason::Cancel);
                return Ok(());
            }
            End::Duplicate => {
                // Another process has this id, or this process's
                // predecessor, just ended, whose stream the coordinator has
                // not seen end yet: wait that out, then give up.
                let grace = shared.config.duplicate_id_grace;
                let since = *duplicate_since.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() >= grace {
                    shared.stop_all(StopReason::Cancel);
                    return Err(WorkerError::DuplicateId(shared.config.id.clone()));
                }
                let why = format!(
                    "worker id {:?} is connected to the coordinator at {server} already \
                     (another process, or this worker's previous one not seen gone yet); \
                     giving up after {grace:?}",
                    shared.config.id
                );
                (why, false)
            }
            End::Unreachable(why) => {
                calm = !servers.next();
                (
                    format!("cannot reach the coordinator at {server}: {why}"),
                    false,
                )
            }
            // Each loss is news, however like the last one it is.
            End::Lost(why) => {
                calm = !servers.next();
                (format!("lost the coordinator at {server}: {why}"), true)
            }
        };
        // Held tasks never started: with no coordinator to accept them, let
        // it give them out again (it re-queues what the next register does
        // not list).
        shared.drop_held();
        if registered_at.elapsed() > shared.config.reconnect_max {
            backoff = shared.config.reconnect_min;
        }
        let pause = if calm {
            shared.config.reconnect_min
        } else {
            backoff
        };
        said.say(&why, always, pause);
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = &mut drain, if draining.is_none() => {
                // Draining with no coordinator: stop everything; the
                // coordinator re-queues it when the heartbeat lapses.
                shared.stop_all(StopReason::Cancel);
                return Ok(());
            }
        }
        if !calm {
            backoff = next_backoff(backoff, &shared.config);
        }
    }
}

/// The delay before the next reconnect after one of `current` failed.
fn next_backoff(current: Duration, config: &WorkerConfig) -> Duration {
    (current * 2).min(config.reconnect_max)
}

fn register(shared: &Shared) -> In {
    let c = &shared.config;
    In::Register(worker::Register {
        worker_id: c.id.clone(),
        name: c.name.clone(),
        labels: c.labels.iter().cloned().collect(),
        handlers: shared.handlers.keys().cloned().collect(),
        shell: !matches!(c.shell, crate::ShellPolicy::Disabled),
        container: c.container.is_some(),
        slots: c.slots,
        prefetch: c.prefetch,
        version: env!("CARGO_PKG_VERSION").to_owned(),
        queues: c.queues.clone(),
        running: shared.running(),
        instance: shared.instance.clone(),
        memory_bytes: crate::exec::machine_memory().unwrap_or(0),
        cpus: std::thread::available_parallelism().map_or(0.0, |n| n.get() as f64),
        max_load: c.max_load.unwrap_or(0.0),
    })
}

/// How long what finished attempts report may wait, while this worker
/// still holds prefetched work, to share one write (and one turn of the
/// coordinator) with the next result. The coordinator need not hear at
/// once: the held work keeps the slots busy meanwhile.
const CORK: Duration = Duration::from_millis(2);

/// Messages taken from the attempts but not sent yet (see [`CORK`]); they
/// are kept across a reconnect and sent first on the next stream.
#[derive(Default)]
struct Corked {
    msgs: Vec<In>,
    /// When they must go at the latest.
    until: Option<tokio::time::Instant>,
}

impl Corked {
    /// Whether everything taken may wait: results, accepts and output,
    /// nothing that anybody waits on an answer to.
    fn may_wait(&self) -> bool {
        self.msgs
            .iter()
            .all(|m| matches!(m, In::Result(_) | In::Accept(_) | In::Output(_)))
    }
}

/// Sends what is corked, in order, settling each result's attempt as it
/// goes (a silenced attempt's result is dropped); false if the stream
/// closed, keeping what was not tried yet (the message whose send failed is
/// lost, like any message in flight when a stream breaks; a lost result's
/// attempt is no longer listed at the next register, so it runs again).
async fn flush<F: Future<Output = bool>>(
    shared: &Shared,
    corked: &mut Corked,
    send: impl Fn(In) -> F,
) -> bool {
    corked.until = None;
    let mut msgs = std::mem::take(&mut corked.msgs).into_iter();
    while let Some(msg) = msgs.next() {
        let deliver = match &msg {
            In::Result(r) => match taskgrid_proto::task_id(r.attempt.as_ref()) {
                Ok(key) => shared.finish(key),
                Err(_) => false,
            },
            _ => true,
        };
        if deliver && !send(msg).await {
            corked.msgs = msgs.collect();
            return false;
        }
    }
    true
}

async fn session(
    shared: &Arc<Shared>,
    endpoint: &tonic::transport::Endpoint,
    (events, corked): (&mut mpsc::UnboundedReceiver<In>, &mut Corked),
    drain: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    draining: &mut Option<tokio::time::Instant>,
) -> End {
    let host = endpoint.uri().host().unwrap_or_default();
    let url = endpoint.uri().to_string();
    let url = url.trim_end_matches('/');
    let channel = match endpoint.connect().await {
        Ok(c) => c,
        Err(e) => return unreachable(url, cause::of_error(&e, host)).await,
    };
    let mut client = WorkerGatewayClient::new(channel).max_decoding_message_size(64 << 20);
    let (out, out_rx) = mpsc::channel::<worker::WorkerMessage>(1024);
    let _ = out
        .send(worker::WorkerMessage {
            msg: Some(register(shared)),
        })
        .await;
    let mut request = tonic::Request::new(ReceiverStream::new(out_rx));
    if let Some(token) = &shared.config.token {
        match format!("Bearer {token}").parse() {
            Ok(v) => {
                request.metadata_mut().insert("authorization", v);
            }
            Err(_) => {
                return End::Refused(WorkerError::Refused(
                    "the token has characters not allowed in a header".into(),
                ));
            }
        }
    }
    let mut inbound = match client.session(request).await {
        Ok(r) => r.into_inner(),
        Err(s) => return tls_checked(url, refused(shared, &s, host)).await,
    };
    let heartbeat = match inbound.message().await {
        Ok(Some(worker::CoordinatorMessage {
            msg: Some(Out::Registered(r)),
        })) => {
            for c in &r.cancel {
                if let Ok(key) = taskgrid_proto::task_id(Some(c)) {
                    shared.stop(key, StopReason::Cancel, true);
                }
            }
            shared
                .takes_release
                .store(r.takes_release, Ordering::Relaxed);
            tracing::info!(worker = %r.worker_id, "registered");
            Duration::from_millis(u64::from(r.heartbeat_interval_ms).max(100))
        }
        Ok(_) => return End::Unreachable("the coordinator did not answer register".into()),
        Err(s) => return tls_checked(url, refused(shared, &s, host)).await,
    };
    let mut beat = tokio::time::interval(heartbeat);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let send = |msg: In| {
        let out = out.clone();
        async move {
            out.send(worker::WorkerMessage { msg: Some(msg) })
                .await
                .is_ok()
        }
    };
    if !flush(shared, corked, send).await {
        return End::Lost("the stream closed".into());
    }
    loop {
        if draining.is_some() && shared.idle() && events.is_empty() {
            // A goodbye hands back whatever is left (a stream that merely
            // ends is a break the coordinator waits out). Then close our
            // side and wait (briefly) for the coordinator to close its own,
            // so the goodbye is delivered before this process may exit.
            // (`send` only borrows `out`: dropping `out` closes our side.)
            let _ = out
                .send(worker::WorkerMessage {
                    msg: Some(In::Goodbye(worker::Goodbye {})),
                })
                .await;
            drop(out);
            let _ = tokio::time::timeout(Duration::from_secs(3), async {
                while let Ok(Some(_)) = inbound.message().await {}
            })
            .await;
            return End::Drained;
        }
        let deadline = *draining;
        let hold = shared.hold_deadline().filter(|_| deadline.is_none());
        tokio::select! {
            m = inbound.message() => match m {
                Ok(Some(m)) => {
                    if let Some(msg) = m.msg {
                        handle(shared, msg, draining.is_some());
                    }
                }
                Ok(None) => return End::Lost("the coordinator closed the stream".into()),
                Err(s) => return End::Lost(cause::of_status(&s, host)),
            },
            Some(msg) = events.recv() => {
                corked.msgs.push(msg);
                while let Ok(msg) = events.try_recv() {
                    corked.msgs.push(msg);
                }
                if draining.is_none() && shared.holding() && corked.may_wait() {
                    let at = tokio::time::Instant::now() + CORK;
                    corked.until.get_or_insert(at);
                } else if !flush(shared, corked, send).await {
                    return End::Lost("the stream closed".into());
                }
            }
            _ = tokio::time::sleep_until(corked.until.unwrap_or_else(tokio::time::Instant::now)), if corked.until.is_some() => {
                if !flush(shared, corked, send).await {
                    return End::Lost("the stream closed".into());
                }
            }
            _ = beat.tick() => {
                if !flush(shared, corked, send).await {
                    return End::Lost("the stream closed".into());
                }
                let hb = In::Heartbeat(beat_of(shared, draining.is_some()));
                if !send(hb).await {
                    return End::Lost("the stream closed".into());
                }
            }
            _ = &mut *drain, if draining.is_none() => {
                tracing::info!(grace = ?shared.config.drain_grace, "draining");
                *draining = Some(tokio::time::Instant::now() + shared.config.drain_grace);
                // Tell the coordinator at once (after what was held back),
                // so it offers nothing more, then hand back what was held
                // but never started.
                let hb = In::Heartbeat(beat_of(shared, true));
                if !flush(shared, corked, send).await || !send(hb).await {
                    return End::Lost("the stream closed".into());
                }
                shared.hand_back_held();
            }
            _ = tokio::time::sleep_until(hold.unwrap_or_else(tokio::time::Instant::now)), if hold.is_some() => {
                shared.hand_back_stale();
            }
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() => {
                // Grace over: stop what is left and hand it back.
                shared.stop_all(StopReason::Cancel);
                *draining = Some(tokio::time::Instant::now() + Duration::from_secs(3600));
            }
        }
    }
}

/// [`End::Unreachable`] for `why`, unless TLS is set up wrong for `url`:
/// then refused for good, saying what to change.
async fn unreachable(url: &str, why: String) -> End {
    match cause::tls_mismatch(url, &why).await {
        Some(e) => End::Refused(e),
        None => End::Unreachable(why),
    }
}

/// `end`, or refused for good if its reason says that TLS is set up wrong
/// for `url`.
async fn tls_checked(url: &str, end: End) -> End {
    match end {
        End::Unreachable(why) => unreachable(url, why).await,
        other => other,
    }
}

/// A heartbeat: what runs here, and what the host is like now.
fn beat_of(shared: &Shared, draining: bool) -> worker::Heartbeat {
    let host = super::host::sample();
    worker::Heartbeat {
        running: shared.running(),
        load: host.load.unwrap_or(-1.0),
        draining,
        memory_available_bytes: host.memory_available_bytes.unwrap_or(0),
        disk_free_bytes: host.disk_free_bytes.unwrap_or(0),
    }
}

/// What the coordinator's answer `s` to a register means.
fn refused(shared: &Shared, s: &tonic::Status, host: &str) -> End {
    let server = shared.config.server.clone();
    if s.code() == tonic::Code::Unauthenticated && s.message().contains("client certificate") {
        return End::Refused(WorkerError::Tls(format!(
            "the coordinator at {server} refused this worker: {}",
            s.message()
        )));
    }
    if let Some(leader) = s.metadata().get(taskgrid_proto::LEADER_METADATA) {
        let leader = leader.to_str().unwrap_or_default().trim_end_matches('/');
        let leader = (!leader.is_empty()).then(|| leader.to_owned());
        return End::NotLeader(leader, s.message().to_owned());
    }
    match s.code() {
        tonic::Code::Unauthenticated if shared.config.token.is_some() => {
            End::Refused(WorkerError::WrongToken(server))
        }
        tonic::Code::Unauthenticated => End::Refused(WorkerError::TokenRequired(server)),
        tonic::Code::InvalidArgument => End::Refused(WorkerError::Refused(s.message().to_owned())),
        // Sent only to another instance than the one that holds the id
        // (the same process reconnecting replaces its old session).
        tonic::Code::AlreadyExists => End::Duplicate,
        _ => End::Unreachable(cause::of_status(s, host)),
    }
}

/// One message from the coordinator.
fn handle(shared: &Arc<Shared>, msg: Out, draining: bool) {
    match msg {
        Out::Assignments(a) => {
            for a in a.assignments {
                super::run::start(shared, a, draining);
            }
        }
        Out::Cancel(c) => {
            if let Ok(key) = taskgrid_proto::task_id(c.attempt.as_ref()) {
                let reason = match worker::cancel::Reason::try_from(c.reason) {
                    Ok(worker::cancel::Reason::Timeout) => StopReason::Timeout,
                    _ => StopReason::Cancel,
                };
                shared.stop(key, reason, false);
            }
        }
        Out::Ack(ack) => {
            if let Some(tx) = relock(&shared.acks).remove(&ack.request_id) {
                let _ = tx.send(ack);
            }
        }
        Out::Drain(_) | Out::Registered(_) => {}
    }
}

impl Shared {
    /// Records an accepted attempt; returns its stop signal.
    pub(super) fn track(&self, key: (TaskId, u32)) -> watch::Receiver<Option<StopReason>> {
        let (stop, rx) = watch::channel(None);
        relock(&self.attempts).insert(
            key,
            Attempt {
                stop,
                silenced: false,
            },
        );
        rx
    }
}

/// A random id for this process: its pid and the start time.
fn instance_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{}-{nanos:x}", std::process::id())
}

/// The coordinators a worker may reach: those given (`--server`, a
/// comma-separated list) and a leader one of them named. A worker talks to
/// one at a time; it moves on to the next given one when that one cannot
/// be reached or does not lead, and to a leader when a standby names it.
struct Servers {
    tls: WorkerTls,
    given: Vec<(String, tonic::transport::Endpoint)>,
    /// Which given one is current, unless `leader` is set.
    at: usize,
    /// A leader a standby named that is not among those given.
    leader: Option<(String, tonic::transport::Endpoint)>,
}

impl Servers {
    fn new(list: &str, tls: &WorkerTls) -> Result<Servers, WorkerError> {
        let mut given = Vec::new();
        for url in list.split(',').map(str::trim) {
            let url = url.trim_end_matches('/').to_owned();
            let endpoint = cause::endpoint(&url, tls)?;
            given.push((url, endpoint));
        }
        Ok(Servers {
            tls: tls.clone(),
            given,
            at: 0,
            leader: None,
        })
    }

    fn current(&self) -> &(String, tonic::transport::Endpoint) {
        self.leader.as_ref().unwrap_or(&self.given[self.at])
    }

    fn url(&self) -> &str {
        &self.current().0
    }

    fn endpoint(&self) -> &tonic::transport::Endpoint {
        &self.current().1
    }

    /// The next given coordinator (after a leader that failed: the first
    /// one after the last given one tried); true when every given one has
    /// been tried since the list was last started over.
    fn next(&mut self) -> bool {
        if self.leader.take().is_none() {
            self.at = (self.at + 1) % self.given.len();
        }
        self.at == 0
    }

    /// Goes to `leader`; false if it is the current one already or no
    /// address a worker can use (then the caller moves on as from a
    /// failure).
    fn follow(&mut self, leader: &str) -> bool {
        if leader == self.url() {
            return false;
        }
        if let Some(i) = self.given.iter().position(|(u, _)| u == leader) {
            self.at = i;
            self.leader = None;
            return true;
        }
        match cause::endpoint(leader, &self.tls) {
            Ok(e) => {
                self.leader = Some((leader.to_owned(), e));
                true
            }
            Err(e) => {
                tracing::warn!("the leader named is no address to connect to: {e}");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnects_come_at_least_once_a_second_however_long_the_outage() {
        let config = WorkerConfig::new("http://127.0.0.1:1");
        let mut delay = config.reconnect_min;
        let mut total = Duration::ZERO;
        for _ in 0..50 {
            assert!(delay <= Duration::from_secs(1), "{delay:?}");
            total += delay;
            delay = next_backoff(delay, &config);
        }
        assert!(total <= Duration::from_secs(50));
        // Within the first 2 s of an outage it has tried 5 times already.
        let mut delay = config.reconnect_min;
        let mut waited = Duration::ZERO;
        for _ in 0..4 {
            waited += delay;
            delay = next_backoff(delay, &config);
        }
        assert!(waited <= Duration::from_secs(2), "{waited:?}");
    }

    /// A list is walked in order and round again; a leader named is
    /// followed, one of the list by its place in it; losing a followed
    /// leader goes on with the list; an address that cannot work is not
    /// followed.
    #[test]
    fn servers_walk_the_list_and_follow_a_named_leader() {
        let mut s =
            super::Servers::new("http://a:1, http://b:2/,http://c:3", &WorkerTls::default())
                .unwrap();
        assert_eq!(s.url(), "http://a:1");
        assert!(!s.next());
        assert_eq!(s.url(), "http://b:2");
        assert!(!s.next());
        assert!(s.next(), "a whole round tried");
        assert_eq!(s.url(), "http://a:1");
        assert!(s.follow("http://c:3"));
        assert_eq!(s.url(), "http://c:3");
        assert!(!s.follow("http://c:3"), "already there");
        assert!(s.follow("http://elsewhere:9"));
        assert_eq!(s.url(), "http://elsewhere:9");
        s.next();
        assert_eq!(s.url(), "http://c:3", "back to the list where it was");
        assert!(!s.follow("ftp://x"));
        assert!(super::Servers::new("http://a:1,nonsense", &WorkerTls::default()).is_err());
    }
}
