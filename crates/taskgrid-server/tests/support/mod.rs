//! What the coordinator's integration tests share: a gateway on a real
//! socket, a fake worker that speaks the raw protocol (what a worker
//! written in another language would do), and a store whose commits a test
//! can hold back or fail.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use taskgrid_core::{AttemptRecord, Change, OutputChunk, State, TaskId, TaskRecord};
use taskgrid_proto::worker::{
    self, coordinator_message::Msg as Out, worker_gateway_client::WorkerGatewayClient,
    worker_message::Msg as In,
};
use taskgrid_runtime::{SystemConfig, TaskSystem};
use taskgrid_server::{GatewayConfig, gateway};
use taskgrid_store::{MemoryStore, Store, StoreError, TaskQuery};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::Streaming;

pub const LIMIT: Duration = Duration::from_secs(20);

pub fn system() -> TaskSystem {
    let config = SystemConfig {
        check_handlers: false,
        ..SystemConfig::default()
    };
    let sys = TaskSystem::builder().config(config).build().unwrap();
    sys.start().unwrap();
    sys
}

pub async fn serve(sys: &TaskSystem, config: GatewayConfig) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let svc = gateway(sys, config);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    addr
}

/// A system with a gateway, one fake worker `w1` serving `handler`
/// (registered), and one task of `handler` submitted and offered to it.
pub async fn one_offer(
    handler: &str,
    payload: u64,
) -> (
    TaskSystem,
    FakeWorker,
    taskgrid_runtime::TaskHandle,
    worker::Assignment,
) {
    let sys = system();
    let addr = serve(&sys, GatewayConfig::default()).await;
    let mut w = FakeWorker::connect(addr, None, register("w1", &[handler]))
        .await
        .unwrap();
    w.next().await;
    let h = sys
        .submit(taskgrid_runtime::Task::handler(handler, &payload))
        .await
        .unwrap();
    let a = w.next_assignment().await;
    (sys, w, h, a)
}

pub struct FakeWorker {
    pub tx: mpsc::Sender<worker::WorkerMessage>,
    pub rx: Streaming<worker::CoordinatorMessage>,
}

impl FakeWorker {
    pub async fn connect(
        addr: SocketAddr,
        token: Option<&str>,
        reg: worker::Register,
    ) -> Result<Self, tonic::Status> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = WorkerGatewayClient::new(channel);
        let (tx, rx) = mpsc::channel(64);
        tx.send(worker::WorkerMessage {
            msg: Some(In::Register(reg)),
        })
        .await
        .unwrap();
        let mut req = tonic::Request::new(ReceiverStream::new(rx));
        if let Some(t) = token {
            req.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        let rx = client.session(req).await?.into_inner();
        Ok(FakeWorker { tx, rx })
    }
    /// The connection breaks (no clean end of stream): the coordinator
    /// sees an error, as when a network link or the worker process dies.
    pub fn vanish(self) {
        std::mem::forget(self.tx);
        drop(self.rx);
    }
    /// Connects like a real worker: an `ALREADY_EXISTS` (the old session of
    /// the same id not yet torn down) is retried.
    pub async fn reconnect(addr: SocketAddr, reg: worker::Register) -> Self {
        let deadline = tokio::time::Instant::now() + LIMIT;
        loop {
            match FakeWorker::connect(addr, None, reg.clone()).await {
                Ok(w) => return w,
                Err(s)
                    if s.code() == tonic::Code::AlreadyExists
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::task::yield_now().await;
                }
                Err(s) => panic!("reconnect failed: {s}"),
            }
        }
    }
    pub async fn send(&self, msg: In) {
        self.tx
            .send(worker::WorkerMessage { msg: Some(msg) })
            .await
            .unwrap();
    }
    pub async fn next(&mut self) -> Out {
        tokio::time::timeout(LIMIT, self.rx.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
            .msg
            .unwrap()
    }
    pub async fn next_assignment(&mut self) -> worker::Assignment {
        loop {
            if let Out::Assignments(mut a) = self.next().await {
                return a.assignments.remove(0);
            }
        }
    }
}

pub fn register(id: &str, handlers: &[&str]) -> worker::Register {
    worker::Register {
        worker_id: id.into(),
        name: id.into(),
        handlers: handlers.iter().map(|h| h.to_string()).collect(),
        slots: 1,
        instance: format!("{id}-process"),
        ..Default::default()
    }
}

pub fn succeeded(a: &worker::Assignment, json: &str) -> In {
    In::Result(worker::Result {
        attempt: a.attempt.clone(),
        outcome: Some(worker::result::Outcome::Succeeded(worker::Succeeded {
            result_json: json.into(),
        })),
        exit_code: None,
        ..Default::default()
    })
}

/// A store in memory whose commits a test can hold at the door (each
/// batch that arrives is recorded, then waits while the gate is closed) or
/// fail, as a full disk would.
#[derive(Default)]
pub struct Gated {
    inner: MemoryStore,
    state: Mutex<GateState>,
    moved: Condvar,
}

#[derive(Default)]
struct GateState {
    closed: bool,
    failing: bool,
    /// Every change that reached `apply`, committed or not.
    arrived: Vec<Change>,
}

impl Gated {
    pub fn new() -> Arc<Self> {
        Arc::new(Gated::default())
    }
    /// Commits from now on wait at the door.
    pub fn close(&self) {
        self.state.lock().unwrap().closed = true;
    }
    /// Lets every waiting and later commit through.
    pub fn open(&self) {
        self.state.lock().unwrap().closed = false;
        self.moved.notify_all();
    }
    /// Every later commit fails, as on a full disk.
    pub fn fail(&self) {
        self.state.lock().unwrap().failing = true;
        self.moved.notify_all();
    }
    /// Whether a change matching `pred` has reached the store's door.
    pub fn has_arrived(&self, pred: impl Fn(&Change) -> bool) -> bool {
        self.state.lock().unwrap().arrived.iter().any(pred)
    }
    /// Waits (on a blocking thread) until a change matching `pred` has
    /// reached the store's door.
    pub async fn arrived(self: &Arc<Self>, pred: impl Fn(&Change) -> bool + Send + 'static) {
        let me = self.clone();
        tokio::time::timeout(
            LIMIT,
            tokio::task::spawn_blocking(move || {
                let mut st = me.state.lock().unwrap();
                while !st.arrived.iter().any(&pred) {
                    st = me.moved.wait(st).unwrap();
                }
            }),
        )
        .await
        .expect("the change reached the store in time")
        .unwrap();
    }
}

impl Store for Gated {
    fn apply(&self, changes: &[Change]) -> Result<(), StoreError> {
        let mut st = self.state.lock().unwrap();
        st.arrived.extend(changes.iter().cloned());
        self.moved.notify_all();
        while st.closed {
            st = self.moved.wait(st).unwrap();
        }
        if st.failing && !changes.is_empty() {
            return Err(StoreError::Io(std::io::Error::other(
                "No space left on device (injected)",
            )));
        }
        drop(st);
        self.inner.apply(changes)
    }
    fn load_active(&self) -> Result<Vec<TaskRecord>, StoreError> {
        self.inner.load_active()
    }
    fn get(&self, id: TaskId) -> Result<Option<TaskRecord>, StoreError> {
        self.inner.get(id)
    }
    fn list(&self, q: &TaskQuery) -> Result<Vec<TaskRecord>, StoreError> {
        self.inner.list(q)
    }
    fn attempts(&self, id: TaskId) -> Result<Vec<AttemptRecord>, StoreError> {
        self.inner.attempts(id)
    }
    fn output(
        &self,
        id: TaskId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<(u64, OutputChunk)>, StoreError> {
        self.inner.output(id, after_seq, limit)
    }
    fn count_by_state(&self) -> Result<Vec<(State, u64)>, StoreError> {
        self.inner.count_by_state()
    }
    fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.inner.meta(key)
    }
    fn audit(
        &self,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<taskgrid_core::AuditEntry>, StoreError> {
        self.inner.audit(before, limit)
    }
    fn finished_before(
        &self,
        cutoff: taskgrid_core::Timestamp,
        after: Option<taskgrid_core::TaskId>,
        limit: usize,
    ) -> Result<taskgrid_store::FinishedScan, StoreError> {
        self.inner.finished_before(cutoff, after, limit)
    }
    fn paused_queues(&self) -> Result<Vec<String>, StoreError> {
        self.inner.paused_queues()
    }
    fn schedules(&self) -> Result<Vec<taskgrid_core::ScheduleRecord>, StoreError> {
        self.inner.schedules()
    }
    fn fires(
        &self,
        schedule: &str,
        from: Option<taskgrid_core::Timestamp>,
        to: Option<taskgrid_core::Timestamp>,
        limit: usize,
    ) -> Result<Vec<taskgrid_core::FireRecord>, StoreError> {
        self.inner.fires(schedule, from, to, limit)
    }
}

/// A started system (no handler checks) on `store`.
pub fn system_on(store: Arc<dyn Store>) -> TaskSystem {
    let config = SystemConfig {
        check_handlers: false,
        ..SystemConfig::default()
    };
    let sys = TaskSystem::builder()
        .config(config)
        .store(store)
        .build()
        .unwrap();
    sys.start().unwrap();
    sys
}

/// Whether `c` moves task `id` into `state`.
pub fn moves(c: &Change, id: TaskId, state: State) -> bool {
    matches!(c, Change::Status { id: i, status, .. } if *i == id && status.state == state)
}
