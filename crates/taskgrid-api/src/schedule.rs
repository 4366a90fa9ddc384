//! The schedule routes' JSON: `/schedules`, `/schedules/{name}` and its
//! actions.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use taskgrid_core::{
    FireRecord, Overlap, Recurrence, ScheduleGate, ScheduleSpec, ScheduleView, TaskId, Timestamp,
    duration_millis,
};

use crate::SubmitRequest;

/// A schedule's definition: `POST /schedules` (create; `name` required)
/// and `PUT /schedules/{name}` (create or replace; `name` absent or equal
/// to the path's). Exactly one of `cron` and `every_ms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleRequest {
    /// The schedule's name: its identity (letters, digits, `-_.:`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A cron expression: 5 fields, or 6 with seconds first (`L`, `W`, `#`
    /// and names allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// A fixed interval instead, in milliseconds (at least 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every_ms: Option<u64>,
    /// The interval's offset from the epoch's multiples.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase_ms: Option<u64>,
    /// IANA time zone of the cron expression (default UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tz: Option<String>,
    /// Each fire is delayed by up to this much.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter_ms: Option<u64>,
    /// No fire before this instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<Timestamp>,
    /// No fire after this instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<Timestamp>,
    /// At most this many fires that run a task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_runs: Option<u64>,
    /// What a fire does while the previous task is live: `skip` (default),
    /// `buffer-one`, `buffer-all`, `cancel-previous`, `allow-all`.
    #[serde(default)]
    pub overlap: Overlap,
    /// Fires missed by at most this much are still run (default 60000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catch_up_ms: Option<u64>,
    /// The task each fire submits, as for `POST /tasks` (no `run_at`,
    /// `delay_ms`, `expires_at`, `expires_in_ms`, `after` or `parent`).
    pub task: SubmitRequest,
}

/// A [`ScheduleRequest`] that cannot be a schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadScheduleRequest {
    /// The field at fault.
    pub field: &'static str,
    /// What is wrong.
    pub message: String,
}

impl ScheduleRequest {
    /// The core spec and task template.
    pub fn into_core(self) -> Result<(ScheduleSpec, taskgrid_core::TaskSpec), BadScheduleRequest> {
        let bad = |field, message: &str| BadScheduleRequest {
            field,
            message: message.to_owned(),
        };
        let recurrence = match (self.cron, self.every_ms) {
            (Some(c), None) => {
                if self.phase_ms.is_some() {
                    return Err(bad("phase_ms", "phase_ms goes with every_ms, not cron"));
                }
                Recurrence::Cron(c)
            }
            (None, Some(ms)) => Recurrence::Every {
                every: Duration::from_millis(ms),
                phase: Duration::from_millis(self.phase_ms.unwrap_or(0)),
            },
            (Some(_), Some(_)) => return Err(bad("every_ms", "give cron or every_ms, not both")),
            (None, None) => return Err(bad("cron", "give cron or every_ms")),
        };
        if self.task.delay_ms.is_some() {
            return Err(bad("task.delay_ms", "a task template may not set it"));
        }
        if self.task.expires_in_ms.is_some() {
            return Err(bad("task.expires_in_ms", "a task template may not set it"));
        }
        let (template, _) = self.task.into_spec();
        let spec = ScheduleSpec {
            recurrence,
            tz: self.tz,
            jitter: Duration::from_millis(self.jitter_ms.unwrap_or(0)),
            start: self.start,
            end: self.end,
            max_runs: self.max_runs,
            overlap: self.overlap,
            catch_up: self
                .catch_up_ms
                .map_or(ScheduleSpec::CATCH_UP_DEFAULT, Duration::from_millis),
        };
        Ok((spec, template))
    }

    /// The request that defines `name` as `spec` and `template`.
    pub fn from_core(name: &str, spec: &ScheduleSpec, template: &taskgrid_core::TaskSpec) -> Self {
        let (cron, every_ms, phase_ms) = match &spec.recurrence {
            Recurrence::Cron(c) => (Some(c.clone()), None, None),
            Recurrence::Every { every, phase } => (
                None,
                Some(duration_millis(*every)),
                (!phase.is_zero()).then(|| duration_millis(*phase)),
            ),
        };
        ScheduleRequest {
            name: Some(name.to_owned()),
            cron,
            every_ms,
            phase_ms,
            tz: spec.tz.clone(),
            jitter_ms: (!spec.jitter.is_zero()).then(|| duration_millis(spec.jitter)),
            start: spec.start,
            end: spec.end,
            max_runs: spec.max_runs,
            overlap: spec.overlap,
            catch_up_ms: Some(duration_millis(spec.catch_up)),
            task: SubmitRequest::from_spec(template),
        }
    }
}

/// A schedule as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleInfo {
    /// Its name.
    pub name: String,
    /// Its definition (as a `PUT` would give it).
    pub definition: ScheduleRequest,
    /// When it was created.
    pub created_at: Timestamp,
    /// When its definition last changed.
    pub updated_at: Timestamp,
    /// Paused: it does not fire.
    pub paused: bool,
    /// The pause's note.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Fires that ran a task.
    pub runs: u64,
    /// Every scheduled time up to this one has been dealt with.
    pub cursor: Timestamp,
    /// Scheduled times waiting for the previous task to end.
    #[serde(default)]
    pub buffered: Vec<Timestamp>,
    /// Its tasks that are not finished.
    #[serde(default)]
    pub live: Vec<TaskId>,
    /// The last task a fire ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_task: Option<TaskId>,
    /// The next scheduled time it fires for (none while paused or ended).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<Timestamp>,
    /// When that fire happens (with its jitter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_due: Option<Timestamp>,
    /// The next scheduled times (up to 5).
    #[serde(default)]
    pub upcoming: Vec<Timestamp>,
}

impl ScheduleInfo {
    /// The API view of the engine's.
    pub fn from_view(v: &ScheduleView) -> Self {
        let r = &v.record;
        let upcoming = if v.next.is_some() {
            let mut u = r.spec.upcoming(r.state.cursor, 5);
            if let Some(max) = r.spec.max_runs {
                u.truncate(usize::try_from(max.saturating_sub(r.state.runs)).unwrap_or(usize::MAX));
            }
            u
        } else {
            Vec::new()
        };
        ScheduleInfo {
            name: r.name.clone(),
            definition: ScheduleRequest::from_core(&r.name, &r.spec, &r.template),
            created_at: r.created_at,
            updated_at: r.updated_at,
            paused: r.paused,
            note: r.note.clone(),
            runs: r.state.runs,
            cursor: r.state.cursor,
            buffered: r.state.buffered.clone(),
            live: v.live.clone(),
            last_task: r.state.last_task,
            next: v.next,
            next_due: v.next_due,
            upcoming,
        }
    }
}

/// `GET /schedules`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleList {
    /// Every schedule, in name order.
    pub schedules: Vec<ScheduleInfo>,
}

/// `GET /schedules/{name}`: the schedule, its last fires and why it is
/// not firing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleDetail {
    /// The schedule.
    pub schedule: ScheduleInfo,
    /// Its last fires (up to 20), newest first.
    pub fires: Vec<FireRecord>,
    /// What holds it back (empty when it fires as planned).
    pub gates: Vec<ScheduleGate>,
}

/// `POST /schedules/{name}/pause`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PauseRequest {
    /// Why (shown with the schedule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// `POST /schedules/{name}/backfill`: run the past fires of `from..=to`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackfillRequest {
    /// The first scheduled time to consider.
    pub from: Timestamp,
    /// The last.
    pub to: Timestamp,
}

/// The fires an action made (`trigger`, `backfill`) or the history
/// (`GET /schedules/{name}/fires`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FireList {
    /// The fires, newest first for the history.
    pub fires: Vec<FireRecord>,
}

/// One message of `GET /schedules/events` (the SSE id is its `seq`):
/// something committed about a schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleEvent {
    /// Position in this coordinator's schedule stream: increases by one per
    /// event (counted from the wall clock's microseconds at its start, like
    /// the task stream's).
    pub seq: u64,
    /// When it was committed (engine time).
    pub at: Timestamp,
    /// The schedule.
    pub schedule: String,
    /// What happened.
    #[serde(flatten)]
    pub kind: ScheduleEventKind,
}

/// The kinds of [`ScheduleEvent`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ScheduleEventKind {
    /// Created, edited, paused, resumed, or its bookkeeping moved on (a
    /// fire, a buffered time released): re-read it for the details.
    Changed {
        /// Whether it is paused now.
        paused: bool,
        /// The pause's note.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note: Option<String>,
        /// Fires that ran a task so far.
        runs: u64,
    },
    /// Deleted, with its history.
    Deleted,
    /// A fire was recorded: a task submitted, or a time skipped, missed or
    /// failed.
    Fire {
        /// The fire.
        fire: FireRecord,
    },
}

/// `GET /schedules/events?schedule=NAME`: only that schedule's events.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleEventFilter {
    /// The schedule's name.
    #[serde(default)]
    pub schedule: Option<String>,
}
