//! [`TaskEvent`]: what subscribers see, published only after the change it
//! describes has been committed to the store, as a [`SharedEvent`].

use std::borrow::Cow;
use std::ops::Deref;
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};
use taskgrid_api::{self as api, ScheduleEvent, ScheduleEventKind};
use taskgrid_core::{Change, Progress, State, Stream, TaskFailure, TaskId, Timestamp};

/// Something that happened to a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskEvent {
    /// Position in the event stream (the SSE event id): increases by one
    /// per event. A process starts counting from the wall clock's
    /// microseconds at its start, so an id from an earlier process is
    /// below every id of this one and a resuming client is told `reset`.
    pub seq: u64,
    /// The task.
    pub id: TaskId,
    /// When it happened (engine time).
    pub at: Timestamp,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

/// The kinds of [`TaskEvent`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    /// The task was accepted.
    Submitted {
        /// Its queue.
        queue: Arc<str>,
        /// Its first state.
        state: State,
        /// The task that spawned it.
        parent: Option<TaskId>,
    },
    /// The task changed state.
    State {
        /// The state it left.
        from: State,
        /// The state it entered.
        to: State,
        /// The attempt number.
        attempt: u32,
        /// The error, when it failed or is retrying.
        error: Option<TaskFailure>,
        /// The result, when it succeeded.
        result: Option<Box<str>>,
        /// The handler, for terminal and retrying changes.
        #[serde(skip)]
        handler: Option<Arc<str>>,
    },
    /// The task reported progress.
    Progress(Progress),
    /// The task saved a checkpoint.
    Checkpoint,
    /// The task produced output.
    Output {
        /// Which stream.
        stream: Stream,
        /// The text.
        data: String,
    },
}

/// A published [`TaskEvent`], shared by every subscriber and the replay
/// buffer: a clone is a reference count, not a copy of the event, and its
/// wire JSON ([`SharedEvent::wire_json`]) is made once, by the first
/// reader that asks, for every stream that sends it.
#[derive(Debug, Clone)]
pub struct SharedEvent(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    event: TaskEvent,
    json: OnceLock<Wire>,
}

/// What became of an event's wire JSON the first time it was asked for.
#[derive(Debug)]
enum Wire {
    /// Kept for the next reader.
    Kept(Box<str>),
    /// Longer than [`SharedEvent::KEEP_JSON_MAX`]: made again for each
    /// reader (the replay buffer would otherwise hold a second copy of
    /// large output chunks).
    Large,
    /// It cannot be serialized (a value that JSON cannot hold).
    Failed,
}

impl SharedEvent {
    /// The longest wire JSON kept with an event, in bytes. State changes
    /// are a few hundred bytes; output chunks can be up to a worker's chunk
    /// size (16 KiB by default), and are serialized per reader instead.
    pub const KEEP_JSON_MAX: usize = 2048;

    /// Shares `event` (numbered already).
    pub fn new(event: TaskEvent) -> Self {
        SharedEvent(Arc::new(Shared {
            event,
            json: OnceLock::new(),
        }))
    }

    /// The JSON of the event's wire form ([`api::TaskEvent`]), the data of
    /// an `/events` SSE event: serialized on the first call and borrowed
    /// from then on, unless longer than [`Self::KEEP_JSON_MAX`]. `None`
    /// when it cannot be serialized (a value that JSON cannot hold).
    pub fn wire_json(&self) -> Option<Cow<'_, str>> {
        let serialize = || serde_json::to_string(&self.0.event.to_wire()).ok();
        let mut first = None;
        let wire = self.0.json.get_or_init(|| match serialize() {
            Some(json) if json.len() <= Self::KEEP_JSON_MAX => Wire::Kept(json.into()),
            Some(json) => {
                first = Some(json);
                Wire::Large
            }
            None => Wire::Failed,
        });
        match wire {
            Wire::Kept(json) => Some(Cow::Borrowed(json)),
            Wire::Large => first.or_else(serialize).map(Cow::Owned),
            Wire::Failed => None,
        }
    }
}

impl Deref for SharedEvent {
    type Target = TaskEvent;

    fn deref(&self) -> &TaskEvent {
        &self.0.event
    }
}

/// Where this process's event seqs start: the wall clock in microseconds
/// since 1970 (its first event is one more). An earlier process started
/// earlier and, publishing fewer than a million events a second, never
/// reached this number, so its ids read as older than all of this one's.
/// (Should the clock be stepped back across a restart by more than the
/// downtime, old ids could fall in this process's range; SSE clients then
/// resume at the wrong place until they reconnect without an id.)
pub(crate) fn seq_base() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX / 2))
}

/// The schedule events of a batch of changes (seq 0: the publisher numbers
/// them), committed at `at`.
pub(crate) fn schedule_events(changes: &[Change], at: Timestamp) -> Vec<ScheduleEvent> {
    changes
        .iter()
        .filter_map(|c| {
            let (schedule, kind) = match c {
                Change::Schedule(r) => (
                    r.name.clone(),
                    ScheduleEventKind::Changed {
                        paused: r.paused,
                        note: r.note.clone(),
                        runs: r.state.runs,
                    },
                ),
                Change::ScheduleDeleted { name } => (name.clone(), ScheduleEventKind::Deleted),
                Change::Fire(f) => (
                    f.schedule.clone(),
                    ScheduleEventKind::Fire {
                        fire: (**f).clone(),
                    },
                ),
                _ => return None,
            };
            Some(ScheduleEvent {
                seq: 0,
                at,
                schedule,
                kind,
            })
        })
        .collect()
}

impl TaskEvent {
    /// The event a committed change produces (none for a queue's change).
    pub(crate) fn from_change(
        c: &Change,
        at: Timestamp,
        handler: impl FnOnce() -> Option<Arc<str>>,
    ) -> Option<Self> {
        let (id, kind) = match c {
            Change::Submitted(r) => (
                r.id,
                EventKind::Submitted {
                    queue: r.spec.queue.clone(),
                    state: r.status.state,
                    parent: r.spec.parent,
                },
            ),
            Change::Status {
                id,
                from,
                status,
                at,
                ..
            } => {
                let to = status.state;
                let notable = to.is_terminal() || to == State::Retrying;
                return Some(TaskEvent {
                    seq: 0,
                    id: *id,
                    at: *at,
                    kind: EventKind::State {
                        from: *from,
                        to,
                        attempt: status.attempt,
                        error: status.error.clone().filter(|_| notable),
                        result: status.result.clone().filter(|_| to == State::Succeeded),
                        handler: if notable { handler() } else { None },
                    },
                });
            }
            Change::Progress { id, progress } => (*id, EventKind::Progress(progress.clone())),
            Change::Checkpoint { id, .. } => (*id, EventKind::Checkpoint),
            Change::Output(o) => (
                o.task,
                EventKind::Output {
                    stream: o.stream,
                    data: o.data.clone(),
                },
            ),
            Change::Queue { .. }
            | Change::Schedule(_)
            | Change::ScheduleDeleted { .. }
            | Change::Fire(_)
            | Change::Deleted { .. }
            | Change::Meta { .. }
            | Change::Audit(_)
            | Change::AuditPruned { .. }
            | Change::OutputDeleted { .. } => return None,
        };
        Some(TaskEvent {
            seq: 0,
            id,
            at,
            kind,
        })
    }

    /// The state this event moved its task into, if any.
    pub fn new_state(&self) -> Option<State> {
        match &self.kind {
            EventKind::Submitted { state, .. } => Some(*state),
            EventKind::State { to, .. } => Some(*to),
            _ => None,
        }
    }

    /// The event as the API sends it (without the handler, which only
    /// this process's hooks use).
    pub fn to_wire(&self) -> api::TaskEvent {
        let kind = match &self.kind {
            EventKind::Submitted {
                queue,
                state,
                parent,
            } => api::EventKind::Submitted {
                queue: queue.to_string(),
                state: *state,
                parent: *parent,
            },
            EventKind::State {
                from,
                to,
                attempt,
                error,
                result,
                ..
            } => api::EventKind::State {
                from: *from,
                to: *to,
                attempt: *attempt,
                error: error.clone(),
                result: result.clone(),
            },
            EventKind::Progress(p) => api::EventKind::Progress(p.clone()),
            EventKind::Checkpoint => api::EventKind::Checkpoint,
            EventKind::Output { stream, data } => api::EventKind::Output {
                stream: *stream,
                data: data.clone(),
            },
        };
        api::TaskEvent {
            seq: self.seq,
            id: self.id,
            at: self.at,
            kind,
        }
    }
}

#[cfg(test)]
mod tests {
    use taskgrid_core::{FailureCode, Progress, Stream, TaskFailure, TaskId, Timestamp};

    use super::*;

    fn shared(kind: EventKind) -> (TaskEvent, SharedEvent) {
        let ev = TaskEvent {
            seq: 41,
            id: TaskId::from_u128(7),
            at: Timestamp::from_micros(1_700_000_000_000_000),
            kind,
        };
        (ev.clone(), SharedEvent::new(ev))
    }

    #[test]
    fn every_clone_of_an_event_shares_one_json_of_its_wire_form() {
        let (ev, one) = shared(EventKind::State {
            from: State::Running,
            to: State::Failed,
            attempt: 2,
            error: Some(TaskFailure::new(FailureCode::Error, "exit 3\nsecond line")),
            result: None,
            handler: Some("mail".into()),
        });
        let other = one.clone();
        assert_eq!(*one, ev);
        let a = one.wire_json().expect("an event serializes");
        let b = other.wire_json().expect("an event serializes");
        // The same bytes, made once: not two equal strings.
        assert!(
            matches!((&a, &b), (Cow::Borrowed(x), Cow::Borrowed(y)) if std::ptr::eq(*x, *y)),
            "each clone serialized the event again"
        );
        let back: api::TaskEvent = serde_json::from_str(&a).expect("the JSON reads back");
        assert_eq!(back, ev.to_wire());
        // The handler is this process's own business, and an SSE data
        // line cannot hold a raw newline.
        assert!(!a.contains("mail") && !a.contains('\n'), "{a}");
    }

    #[test]
    fn the_wire_form_keeps_every_kind_and_field() {
        let kinds = [
            EventKind::Submitted {
                queue: "emails".into(),
                state: State::Queued,
                parent: Some(TaskId::from_u128(3)),
            },
            EventKind::State {
                from: State::Running,
                to: State::Succeeded,
                attempt: 1,
                error: None,
                result: Some("{\"n\":1}".into()),
                handler: None,
            },
            EventKind::Progress(Progress {
                fraction: 0.25,
                message: Some("copying".into()),
            }),
            EventKind::Checkpoint,
            EventKind::Output {
                stream: Stream::Stderr,
                data: "warning: disk".into(),
            },
        ];
        for kind in kinds {
            let (ev, one) = shared(kind);
            let json = one.wire_json().expect("an event serializes");
            let back: api::TaskEvent = serde_json::from_str(&json).expect("the JSON reads back");
            assert_eq!((back.seq, back.id, back.at), (41, ev.id, ev.at));
            assert_eq!(back.new_state(), ev.new_state());
            let same = match (&back.kind, &ev.kind) {
                (
                    api::EventKind::Submitted {
                        queue,
                        state,
                        parent,
                    },
                    EventKind::Submitted {
                        queue: q,
                        state: s,
                        parent: p,
                    },
                ) => **q == **queue && s == state && p == parent,
                (
                    api::EventKind::State {
                        from,
                        to,
                        attempt,
                        error,
                        result,
                    },
                    EventKind::State {
                        from: f,
                        to: t,
                        attempt: a,
                        error: e,
                        result: r,
                        ..
                    },
                ) => f == from && t == to && a == attempt && e == error && r == result,
                (api::EventKind::Progress(p), EventKind::Progress(q)) => p == q,
                (api::EventKind::Checkpoint, EventKind::Checkpoint) => true,
                (
                    api::EventKind::Output { stream, data },
                    EventKind::Output { stream: s, data: d },
                ) => s == stream && d == data,
                _ => false,
            };
            assert!(same, "{json} does not say {ev:?}");
        }
    }

    #[test]
    fn a_large_event_is_serialized_for_each_reader_not_kept() {
        let data = "x".repeat(SharedEvent::KEEP_JSON_MAX);
        let (ev, one) = shared(EventKind::Output {
            stream: Stream::Stdout,
            data,
        });
        let other = one.clone();
        let (a, b) = (one.wire_json(), other.wire_json());
        for json in [&a, &b] {
            let json = json.as_ref().expect("an event serializes");
            assert!(
                matches!(json, Cow::Owned(_)),
                "a large event's JSON was kept"
            );
            let back: api::TaskEvent = serde_json::from_str(json).expect("the JSON reads back");
            assert_eq!(back, ev.to_wire());
        }
        // A small one is kept: every reader borrows it.
        let (_, small) = shared(EventKind::Checkpoint);
        assert!(matches!(small.wire_json(), Some(Cow::Borrowed(_))));
        assert!(matches!(small.clone().wire_json(), Some(Cow::Borrowed(_))));
    }
}
