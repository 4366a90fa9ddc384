//! `GET /events/summary`: the cluster at a glance as server-sent events, a
//! few times a second, for dashboards.
//!
//! `/events` sends every change of every task: at tens of thousands of
//! tasks a second that is more than a browser should draw and costs the
//! coordinator a serialisation and a socket write per event per client.
//! Here one shared *pulse* task follows the event bus, keeps only each
//! task's latest state and progress per interval, and every [`PULSE`]
//! hands the interval to the connections. Each connection sends one
//! [`Summary`](taskgrid_api::Summary) per interval in which something happened: counters, gauges,
//! and the changes of the few tasks it watches (`?watch=ID,ID,…`, the
//! rows a page shows). The first summary of a connection carries every
//! watched task, read from the system, so a page that reads its rows and
//! then connects misses nothing; so does the summary after the pulse fell
//! behind the bus.
//!
//! The pulse starts with the first connection and stops at the first
//! interval with none left, so a coordinator nobody watches pays nothing;
//! it keeps per-task changes only while some connection watches tasks.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use taskgrid_api::{SSE_SUMMARY, SUMMARY_WATCH_MAX, SummaryQuery, WatchedTask};
use taskgrid_core::{Progress, TaskId};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::MissedTickBehavior;
use tokio_stream::wrappers::ReceiverStream;

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::extract::ApiQuery;
use taskgrid_runtime::{EventKind, SharedEvent, TaskSystem};

/// How often summaries are sent, at most.
pub(crate) const PULSE: Duration = Duration::from_millis(500);

/// What changed in a task during one interval.
#[derive(Debug, Clone, Default)]
struct Change {
    state: Option<taskgrid_core::State>,
    progress: Option<Progress>,
}

/// One interval, as the pulse hands it to every connection.
#[derive(Debug, Default)]
struct Interval {
    /// The last event seen before the interval began.
    from: u64,
    /// The last event seen by its end.
    seq: u64,
    /// Each task's latest change in the interval.
    changes: HashMap<TaskId, Change>,
    /// False when the pulse fell behind the bus: changes may be missing.
    complete: bool,
}

/// The shared pulse, started by the first connection.
#[derive(Default)]
pub(crate) struct Pulse {
    running: Mutex<Option<Arc<watch::Sender<Arc<Interval>>>>>,
    /// Connections watching at least one task: with none, the pulse keeps
    /// no per-task changes (an overview, or the bench, watches nothing).
    watching: AtomicUsize,
}

/// Counts a watching connection for as long as it lives.
struct Watching(Arc<Pulse>);

impl Watching {
    fn new(pulse: &Arc<Pulse>) -> Self {
        pulse.watching.fetch_add(1, Ordering::SeqCst);
        Watching(pulse.clone())
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        self.0.watching.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The data behind a lock, even if a holder panicked: every change to it
/// is one assignment, so it is never half-changed.
fn relock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Pulse {
    /// A receiver of intervals, starting the pulse if it is not running.
    fn subscribe(self: &Arc<Self>, system: &Arc<TaskSystem>) -> watch::Receiver<Arc<Interval>> {
        let mut running = relock(&self.running);
        if let Some(tx) = &*running {
            return tx.subscribe();
        }
        let seq = system.summary().seq;
        let (tx, rx) = watch::channel(Arc::new(Interval {
            from: seq,
            seq,
            complete: true,
            changes: HashMap::new(),
        }));
        let tx = Arc::new(tx);
        *running = Some(tx.clone());
        tokio::spawn(beat(self.clone(), tx, system.subscribe(), seq));
        rx
    }
}

/// Follows the bus and hands out an interval every [`PULSE`], until an
/// interval ends with no connection left.
async fn beat(
    pulse: Arc<Pulse>,
    tx: Arc<watch::Sender<Arc<Interval>>>,
    mut bus: broadcast::Receiver<SharedEvent>,
    seq: u64,
) {
    let mut ticks = tokio::time::interval(PULSE);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // The first tick is immediate: the interval it closes is empty.
    let mut now = Interval {
        from: seq,
        seq,
        complete: true,
        changes: HashMap::new(),
    };
    loop {
        tokio::select! {
            biased;
            _ = ticks.tick() => {
                {
                    let mut running = relock(&pulse.running);
                    if tx.receiver_count() == 0 {
                        *running = None;
                        return;
                    }
                }
                let next = Interval {
                    from: now.seq,
                    seq: now.seq,
                    complete: true,
                    changes: HashMap::with_capacity(now.changes.len()),
                };
                tx.send_replace(Arc::new(std::mem::replace(&mut now, next)));
            }
            ev = bus.recv() => match ev {
                Ok(ev) => {
                    // Events are numbered before they are sent: one may
                    // arrive after a later one.
                    now.seq = now.seq.max(ev.seq);
                    if pulse.watching.load(Ordering::SeqCst) == 0 {
                        continue;
                    }
                    match &ev.kind {
                        EventKind::Submitted { state, .. } | EventKind::State { to: state, .. } => {
                            now.changes.entry(ev.id).or_default().state = Some(*state);
                        }
                        EventKind::Progress(p) => {
                            now.changes.entry(ev.id).or_default().progress = Some(p.clone());
                        }
                        EventKind::Checkpoint | EventKind::Output { .. } => {}
                    }
                }
                Err(RecvError::Lagged(_)) => now.complete = false,
                Err(RecvError::Closed) => {
                    *relock(&pulse.running) = None;
                    return;
                }
            },
        }
    }
}

/// The stream of summaries.
pub(crate) async fn summary(
    State(s): State<AppState>,
    ApiQuery(query): ApiQuery<SummaryQuery>,
) -> ApiResult<Response> {
    let watched = parse_watch(query.watch.as_deref())?;
    let (tx, rx) = mpsc::channel(4);
    let intervals = s.pulse.subscribe(&s.system);
    // Counted before the first summary reads the watched tasks, so every
    // change after that read is kept for the next one.
    let watching = (!watched.is_empty()).then(|| Watching::new(&s.pulse));
    tokio::spawn(async move {
        follow(s.system.clone(), watched, intervals, tx).await;
        drop(watching);
    });
    Ok(Sse::new(ReceiverStream::new(rx))
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// The ids of `?watch=`: comma-separated, at most [`SUMMARY_WATCH_MAX`].
fn parse_watch(watch: Option<&str>) -> Result<HashSet<TaskId>, ApiError> {
    let Some(list) = watch.filter(|w| !w.is_empty()) else {
        return Ok(HashSet::new());
    };
    let ids = list
        .split(',')
        .map(|id| {
            id.trim()
                .parse::<TaskId>()
                .map_err(|e| ApiError::invalid("watch", format!("watch: {e} (in {:?})", id.trim())))
        })
        .collect::<Result<HashSet<_>, _>>()?;
    if ids.len() > SUMMARY_WATCH_MAX {
        return Err(ApiError::invalid(
            "watch",
            format!(
                "watch names {} tasks; at most {SUMMARY_WATCH_MAX}",
                ids.len()
            ),
        ));
    }
    Ok(ids)
}

/// One connection: a summary now, then one per interval in which
/// something happened, until the client goes.
async fn follow(
    system: Arc<TaskSystem>,
    watched: HashSet<TaskId>,
    mut intervals: watch::Receiver<Arc<Interval>>,
    tx: mpsc::Sender<Result<Event, Infallible>>,
) {
    // The seq of the last interval sent; None before the first summary.
    let mut sent: Option<u64> = None;
    loop {
        let interval = intervals.borrow_and_update().clone();
        if sent != Some(interval.seq) || !interval.complete {
            let mut summary = system.summary();
            summary.seq = interval.seq;
            // The watched tasks are read afresh on connecting, when the
            // pulse fell behind the bus, and when this connection skipped
            // an interval (only the latest is kept for it): their changes
            // in what was skipped are unknown.
            summary.tasks = if sent != Some(interval.from) || !interval.complete {
                current(&system, watched.iter().copied()).await
            } else {
                changed(&system, &watched, &interval).await
            };
            sent = Some(interval.seq);
            let Ok(ev) = Event::default().event(SSE_SUMMARY).json_data(&summary) else {
                return;
            };
            if tx.send(Ok(ev)).await.is_err() {
                return;
            }
        }
        tokio::select! {
            changed = intervals.changed() => if changed.is_err() { return },
            _ = tx.closed() => return,
        }
    }
}

/// The watched tasks that changed in `interval`.
async fn changed(
    system: &TaskSystem,
    watched: &HashSet<TaskId>,
    interval: &Interval,
) -> BTreeMap<TaskId, WatchedTask> {
    let mut changed = BTreeMap::new();
    for id in watched {
        let Some(change) = interval.changes.get(id) else {
            continue;
        };
        // Only progress moved: the state is the system's.
        let state = match change.state {
            Some(state) => state,
            None => match system.get(*id).await {
                Ok(r) => r.status.state,
                Err(_) => continue,
            },
        };
        changed.insert(
            *id,
            WatchedTask {
                state,
                progress: change.progress.clone(),
            },
        );
    }
    changed
}

/// Where `ids` stand now, read from the system (unknown ids are left out).
async fn current(
    system: &TaskSystem,
    ids: impl Iterator<Item = TaskId>,
) -> BTreeMap<TaskId, WatchedTask> {
    let mut current = BTreeMap::new();
    for id in ids {
        if let Ok(r) = system.get(id).await {
            current.insert(
                id,
                WatchedTask {
                    state: r.status.state,
                    progress: r.progress,
                },
            );
        }
    }
    current
}
