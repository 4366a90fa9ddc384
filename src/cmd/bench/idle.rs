//! The idle-workers run: N simulated workers, each on its own TCP
//! connection and gRPC `Session` stream, register and then only send
//! heartbeats at the interval the coordinator gives (spread evenly over
//! it, as independent machines would be). The coordinator runs as its own
//! process, so its CPU and memory over the window are its alone; the
//! simulated workers' cost (this process) is reported beside it.
//!
//! A simulated worker offers no handlers, no shell and serves a queue no
//! task uses, so nothing is ever assigned to it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use taskgrid_proto::worker::{
    self, coordinator_message::Msg as Out, worker_gateway_client::WorkerGatewayClient,
    worker_message::Msg as In,
};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;

use super::coordinator::Target;
use super::report::IdleReport;
use super::{Plan, note, usage};

/// Workers connecting at once.
const CONNECTING: usize = 64;
/// How long every worker may take to register.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(60);
/// Wait after the last registration before the window opens, so the
/// connection burst is not measured.
const SETTLE: Duration = Duration::from_secs(2);
/// How often memory is sampled in the window.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// The queue simulated workers serve: no task is ever in it.
const IDLE_QUEUE: &str = "taskgrid-bench-idle";

/// Counters the simulated workers share.
#[derive(Default)]
struct Tally {
    /// Workers that registered.
    registered: AtomicUsize,
    /// Workers whose session ended in an error.
    dropped: AtomicUsize,
    /// The heartbeat interval the coordinator gave, in milliseconds.
    interval_ms: AtomicU64,
}

/// Connects `workers` idle workers to a coordinator started for the run
/// and measures it over the plan's window.
pub(super) async fn run(plan: &Plan, workers: u32) -> anyhow::Result<IdleReport> {
    let target = Target::start(plan).await?;
    let outcome = measure(plan, workers, &target).await;
    let stopped = target.stop().await;
    let report = outcome?;
    stopped?;
    Ok(report)
}

/// Connects the workers, waits for them all, measures the window, and
/// disconnects them.
async fn measure(plan: &Plan, workers: u32, target: &Target) -> anyhow::Result<IdleReport> {
    let Some(pid) = target.pid() else {
        bail!("the coordinator's process id is unknown: give --server-pid");
    };
    let before = usage::sample(pid)?;
    note(format_args!(
        "coordinator {} (pid {pid}); connecting {workers} idle workers",
        target.url
    ));
    let tally = Arc::new(Tally::default());
    let (stop, stopped) = watch::channel(false);
    let gate = Arc::new(Semaphore::new(CONNECTING));
    let mut set = JoinSet::new();
    for i in 0..workers {
        let w = Simulated {
            url: target.url.clone(),
            token: target.worker_token.clone(),
            id: format!("bench-{}-idle-{i}", std::process::id()),
            // Beat i of n comes i/n of an interval after the others.
            phase: f64::from(i) / f64::from(workers),
        };
        set.spawn(w.run(tally.clone(), gate.clone(), stopped.clone()));
    }
    let deadline = tokio::time::Instant::now() + REGISTER_TIMEOUT;
    loop {
        let (up, down) = (
            tally.registered.load(Ordering::Relaxed),
            tally.dropped.load(Ordering::Relaxed),
        );
        if up + down >= workers as usize {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("only {up} of {workers} workers registered within {REGISTER_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let connected = tally.registered.load(Ordering::Relaxed);
    if connected < workers as usize {
        // The registered ones stop too; the failed ones have ended.
        let _ = stop.send(true);
        let mut why = String::from("unknown");
        while let Some(joined) = set.join_next().await {
            if let Ok(Err(e)) = joined {
                why = format!("{e:#}");
                break;
            }
        }
        bail!(
            "{} workers could not register; the first error: {why}",
            workers as usize - connected
        );
    }
    tally.dropped.store(0, Ordering::Relaxed);
    note(format_args!(
        "{connected} registered; measuring for {:?}",
        plan.window
    ));
    tokio::time::sleep(SETTLE).await;
    let me = std::process::id();
    let (start, own_start) = (usage::sample(pid)?, usage::sample(me)?);
    let opened = Instant::now();
    let mut rss_max = start.rss_bytes;
    while opened.elapsed() < plan.window {
        let left = plan.window.saturating_sub(opened.elapsed());
        tokio::time::sleep(left.min(SAMPLE_EVERY)).await;
        rss_max = rss_max.max(usage::sample(pid)?.rss_bytes);
    }
    let (end, own_end) = (usage::sample(pid)?, usage::sample(me)?);
    let window_secs = opened.elapsed().as_secs_f64();
    let listed = target
        .client()?
        .workers()
        .await
        .context("listing workers")?
        .iter()
        .filter(|w| w.id.as_str().starts_with(&format!("bench-{me}-idle-")))
        .count();
    let dropped = tally.dropped.load(Ordering::Relaxed);
    let _ = stop.send(true);
    while set.join_next().await.is_some() {}
    let cpu_secs = end.cpu_secs - start.cpu_secs;
    let heartbeat_ms = tally.interval_ms.load(Ordering::Relaxed);
    Ok(IdleReport {
        scope: target.scope(None),
        workers,
        connected,
        dropped,
        listed,
        heartbeat_ms,
        heartbeats_per_sec: connected as f64 * 1000.0 / heartbeat_ms.max(1) as f64,
        window_secs,
        cpu_secs,
        cpu_percent: cpu_secs / window_secs * 100.0,
        rss_before_bytes: before.rss_bytes,
        rss_bytes: end.rss_bytes,
        rss_max_bytes: rss_max.max(end.rss_bytes),
        peak_rss_bytes: end.peak_rss_bytes,
        rss_per_worker_bytes: (end.rss_bytes as f64 - before.rss_bytes as f64)
            / connected.max(1) as f64,
        workers_cpu_percent: (own_end.cpu_secs - own_start.cpu_secs) / window_secs * 100.0,
    })
}

/// One simulated worker.
struct Simulated {
    /// The coordinator.
    url: String,
    /// The worker token to send.
    token: Option<String>,
    /// Its worker id.
    id: String,
    /// Where in the heartbeat interval its beats fall, from 0 to 1.
    phase: f64,
}

impl Simulated {
    /// Connects, registers and beats until `stop`; then closes its side of
    /// the stream, as a leaving worker does.
    async fn run(
        self,
        tally: Arc<Tally>,
        gate: Arc<Semaphore>,
        mut stop: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let r = self.session(&tally, &gate, &mut stop).await;
        if r.is_err() {
            tally.dropped.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    /// One session: connect (at most [`CONNECTING`] at once), register,
    /// beat until `stop`.
    async fn session(
        &self,
        tally: &Tally,
        gate: &Semaphore,
        stop: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let permit = gate.acquire().await?;
        let channel = tonic::transport::Endpoint::from_shared(self.url.clone())
            .with_context(|| format!("bad coordinator url {}", self.url))?
            .connect()
            .await
            .with_context(|| format!("connecting to {}", self.url))?;
        let mut client = WorkerGatewayClient::new(channel);
        let (out, out_rx) = mpsc::channel::<worker::WorkerMessage>(4);
        out.send(message(In::Register(self.register()))).await?;
        let mut request = tonic::Request::new(ReceiverStream::new(out_rx));
        if let Some(t) = &self.token {
            let value = format!("Bearer {t}")
                .parse()
                .context("the worker token has characters not allowed in a header")?;
            request.metadata_mut().insert("authorization", value);
        }
        let mut inbound = client.session(request).await?.into_inner();
        let interval = match inbound.message().await? {
            Some(worker::CoordinatorMessage {
                msg: Some(Out::Registered(r)),
            }) => Duration::from_millis(u64::from(r.heartbeat_interval_ms).max(100)),
            other => bail!("expected registered, got {other:?}"),
        };
        drop(permit);
        let ms = taskgrid_core::duration_millis(interval);
        tally.interval_ms.store(ms, Ordering::Relaxed);
        tally.registered.fetch_add(1, Ordering::Relaxed);
        let first = tokio::time::Instant::now() + interval.mul_f64(self.phase);
        let mut beat = tokio::time::interval_at(first, interval);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = beat.tick() => {
                    let hb = worker::Heartbeat { running: Vec::new(), load: 0.0, draining: false, ..Default::default() };
                    out.send(message(In::Heartbeat(hb))).await?;
                }
                m = inbound.message() => match m? {
                    Some(_) => {}
                    None => bail!("the coordinator closed the stream"),
                },
                _ = stop.changed() => return Ok(()),
            }
        }
    }

    /// Its registration: one slot, nothing it can run.
    fn register(&self) -> worker::Register {
        worker::Register {
            worker_id: self.id.clone(),
            name: self.id.clone(),
            labels: Default::default(),
            handlers: Vec::new(),
            shell: false,
            container: false,
            slots: 1,
            prefetch: 0,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            queues: vec![IDLE_QUEUE.to_owned()],
            running: Vec::new(),
            // One simulated process per id: its reconnects replace itself.
            instance: self.id.clone(),
            ..Default::default()
        }
    }
}

/// A message to the coordinator.
fn message(msg: In) -> worker::WorkerMessage {
    worker::WorkerMessage { msg: Some(msg) }
}
