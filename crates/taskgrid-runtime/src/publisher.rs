//! [`Publisher`]: what subscribers, waiters and handler hooks hear, once a
//! batch is committed, in commit order — and the replay buffer a resuming
//! subscriber reads from.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use taskgrid_api::ScheduleEvent;
use taskgrid_core::{State, TaskId};
use taskgrid_sdk::Handler;
use tokio::sync::{broadcast, oneshot};

use crate::TaskResult;
use crate::event::{EventKind, SharedEvent, TaskEvent};
use crate::sync::relock;

/// The handlers whose hooks hear of their tasks' ends.
pub(crate) type Handlers = HashMap<Arc<str>, Arc<dyn Handler>>;

/// Schedule events a subscriber may fall behind by before it is told it
/// lagged.
const SCHEDULE_CAPACITY: usize = 1_024;

/// Waiters for a task's end, answered after the end is committed.
type Waiters = HashMap<TaskId, Vec<oneshot::Sender<TaskResult>>>;

/// Publishes committed events; owns the subscribers' channel, the waiters
/// and the replay buffer.
pub(crate) struct Publisher {
    events: broadcast::Sender<SharedEvent>,
    waiters: Mutex<Waiters>,
    /// The seq before this process's first event (see `event::seq_base`).
    event_base: u64,
    /// The last seq published and the last events, for resuming subscribers.
    recent: Mutex<(u64, VecDeque<SharedEvent>)>,
    replay_capacity: usize,
    /// Schedule events: their own stream, numbered from the same base.
    schedules: broadcast::Sender<ScheduleEvent>,
    /// The seq of the last schedule event published.
    schedule_seq: AtomicU64,
}

impl Publisher {
    pub(crate) fn new(event_capacity: usize, replay_capacity: usize) -> Self {
        let (events, _) = broadcast::channel(event_capacity.max(1));
        let event_base = crate::event::seq_base();
        Publisher {
            events,
            waiters: Mutex::new(HashMap::new()),
            event_base,
            recent: Mutex::new((event_base, VecDeque::new())),
            replay_capacity,
            schedules: broadcast::channel(SCHEDULE_CAPACITY).0,
            schedule_seq: AtomicU64::new(event_base),
        }
    }

    /// A receiver of every event published from now on.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<SharedEvent> {
        self.events.subscribe()
    }

    /// A receiver of every schedule event published from now on, and the
    /// seq of the last one published before it (read after subscribing:
    /// every later event reaches the receiver).
    pub(crate) fn subscribe_schedules(&self) -> (broadcast::Receiver<ScheduleEvent>, u64) {
        let rx = self.schedules.subscribe();
        (rx, self.schedule_seq.load(Ordering::SeqCst))
    }

    /// Publishes committed schedule events (from the publisher task only,
    /// in commit order).
    pub(crate) fn publish_schedules(&self, events: Vec<ScheduleEvent>) {
        for mut ev in events {
            ev.seq = self.schedule_seq.fetch_add(1, Ordering::SeqCst) + 1;
            if self.schedules.receiver_count() > 0 {
                let _ = self.schedules.send(ev);
            }
        }
    }

    /// The seq of the last event published.
    pub(crate) fn last_seq(&self) -> u64 {
        relock(&self.recent).0
    }

    /// Events after `seq` still buffered, and whether the buffer reached
    /// back that far (see `TaskSystem::events_since`).
    pub(crate) fn events_since(&self, seq: u64) -> (Vec<SharedEvent>, bool) {
        let recent = relock(&self.recent);
        if seq < self.event_base || seq > recent.0 {
            return (recent.1.iter().cloned().collect(), false);
        }
        let complete = recent.1.front().is_none_or(|first| first.seq <= seq + 1);
        let events = recent.1.iter().filter(|e| e.seq > seq).cloned().collect();
        (events, complete)
    }

    /// Whether this process gave out `seq` (or the zero it counts from).
    pub(crate) fn issued(&self, seq: u64) -> bool {
        seq >= self.event_base && seq <= relock(&self.recent).0
    }

    /// Registers a waiter for the end of `id`.
    pub(crate) fn waiter(&self, id: TaskId) -> oneshot::Receiver<TaskResult> {
        let (tx, rx) = oneshot::channel();
        relock(&self.waiters).entry(id).or_default().push(tx);
        rx
    }

    /// Removes one waiter (and only that one) that is no longer needed.
    pub(crate) fn drop_waiter(&self, id: TaskId, rx: oneshot::Receiver<TaskResult>) {
        drop(rx);
        let mut waiters = relock(&self.waiters);
        if let Some(ws) = waiters.get_mut(&id) {
            ws.retain(|w| !w.is_closed());
            if ws.is_empty() {
                waiters.remove(&id);
            }
        }
    }

    /// Publishes committed events: to subscribers, waiters and hooks.
    /// Each event is shared, not copied, by the replay buffer and every
    /// subscriber.
    pub(crate) fn publish(&self, events: Vec<TaskEvent>, handlers: &Handlers) {
        let events: Vec<SharedEvent> = {
            let mut recent = relock(&self.recent);
            let cap = self.replay_capacity;
            events
                .into_iter()
                .map(|mut ev| {
                    recent.0 += 1;
                    ev.seq = recent.0;
                    let ev = SharedEvent::new(ev);
                    if cap > 0 {
                        if recent.1.len() == cap {
                            recent.1.pop_front();
                        }
                        recent.1.push_back(ev.clone());
                    }
                    ev
                })
                .collect()
        };
        for ev in events {
            if let EventKind::State {
                to,
                attempt,
                error,
                result,
                handler,
                ..
            } = &ev.kind
            {
                if to.is_terminal() {
                    let waiters = relock(&self.waiters).remove(&ev.id);
                    if let Some(ws) = waiters {
                        let r = TaskResult {
                            id: ev.id,
                            state: *to,
                            result: result.clone(),
                            error: error.clone(),
                            attempts: *attempt,
                        };
                        for w in ws {
                            let _ = w.send(r.clone());
                        }
                    }
                }
                if let Some(h) = handler.as_ref().and_then(|h| handlers.get(h)) {
                    run_hook(|| match (to, error) {
                        (State::Succeeded, _) => h.on_success(ev.id, result.as_deref()),
                        (State::Retrying, Some(e)) => h.on_retry(ev.id, *attempt, e),
                        (_, Some(e)) => h.on_failure(ev.id, e),
                        _ => {}
                    });
                }
            }
            if self.events.receiver_count() > 0 {
                let _ = self.events.send(ev);
            }
        }
    }
}

fn run_hook(f: impl FnOnce()) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err() {
        tracing::warn!("a handler hook panicked");
    }
}
