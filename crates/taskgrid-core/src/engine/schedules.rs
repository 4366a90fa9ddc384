//! Schedules in the engine: their timers beside the task timers, their
//! fires, overlap policies, catch-up after downtime, trigger and backfill.
//!
//! Exactly once, by construction: a fire's task, its [`FireRecord`] and the
//! schedule's advanced cursor are changes of one [`Outbox`], so one commit.
//! A coordinator rebuilt from the store (a restart, a standby taking over)
//! starts from the committed cursor: a fire that was committed is never
//! made again, one that was not is made now (within the catch-up window)
//! or recorded as missed.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{
    BadSchedule, Change, FireOutcome, FireRecord, Overlap, ScheduleRecord, ScheduleSpec,
    ScheduleState, SubmitError, TaskId, TaskKind, TaskSpec, Timestamp, check_schedule_name,
};

use super::{Engine, Outbox, Submitted};

/// Most fires one backfill may run.
pub const BACKFILL_MAX: usize = 1000;
/// Most fires a `buffer-all` schedule keeps waiting; later ones are skipped.
pub const BUFFER_MAX: usize = 1000;
/// Missed fires counted one by one before a missed range's count says "at
/// least".
const MISSED_COUNT_MAX: u64 = 100_000;

/// A schedule command the engine refused; nothing was changed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ScheduleError {
    /// No schedule has this name.
    #[error("no schedule named {0:?}")]
    NotFound(String),
    /// A schedule with this name exists already.
    #[error("a schedule named {0:?} exists already")]
    Exists(String),
    /// The spec or the name is not valid.
    #[error(transparent)]
    Bad(#[from] BadSchedule),
    /// The task template is not valid.
    #[error("invalid task template: {0}")]
    Template(SubmitError),
}

/// The engine's view of one schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleView {
    /// The stored record.
    pub record: ScheduleRecord,
    /// The next scheduled time it fires for, if it will (not paused, not
    /// ended).
    pub next: Option<Timestamp>,
    /// When that fire happens (the scheduled time plus its jitter).
    pub next_due: Option<Timestamp>,
    /// Its tasks that are not finished yet.
    pub live: Vec<TaskId>,
}

/// Why a schedule is not firing, or what its next fire will do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum ScheduleGate {
    /// Paused by an operator.
    Paused {
        /// The note given with the pause.
        note: Option<String>,
    },
    /// Its `end` has passed, or its recurrence has no further fire.
    Ended,
    /// It has run `max_runs` tasks.
    MaxRunsReached {
        /// The limit.
        max_runs: u64,
    },
    /// It may not fire before its `start`.
    NotStarted {
        /// Its start.
        start: Timestamp,
    },
    /// Its previous task is still live: the next fire will be skipped
    /// (overlap `skip`) or buffered.
    Overlap {
        /// The policy.
        policy: Overlap,
        /// The live task.
        task: TaskId,
    },
    /// Fires waiting for the previous task to end.
    Buffered {
        /// How many.
        count: usize,
    },
    /// Among its recent fires, scheduled times that were due longer ago
    /// than the catch-up window when the coordinator could act on them
    /// (it was down or paused): they were recorded as missed, not run.
    /// (Read from the fire history in the store: the engine's own
    /// explain leaves it out, the task system's adds it.)
    Missed {
        /// The first missed scheduled time of the newest missed range.
        at: Timestamp,
        /// Its last.
        until: Timestamp,
        /// How many scheduled times it holds.
        count: u64,
    },
}

/// How many distinct queue and handler names schedule templates share
/// (see `Engine::intern_template`).
const TEMPLATE_NAMES_MAX: usize = 4096;

/// A schedule in the engine: boxed, so the map's nodes stay small.
#[derive(Debug)]
pub(super) struct Sched {
    rec: Box<Kept>,
}

/// A [`ScheduleRecord`] as the engine keeps it, with its timer: no name
/// (the map's key has it) and the note as a `Box<str>`, so that the whole
/// fits an allocator size class of 640 bytes (the record with a timer
/// beside it would take 768). [`Kept::record`] gives the record back.
#[derive(Debug)]
pub(super) struct Kept {
    spec: ScheduleSpec,
    template: TaskSpec,
    created_at: Timestamp,
    updated_at: Timestamp,
    paused: bool,
    /// (A thin box: a boxed str would push this past 640 bytes.)
    #[allow(clippy::box_collection)] // deliberately thin: size matters here
    note: Option<Box<String>>,
    state: ScheduleState,
    /// The armed timer: (due, scheduled time).
    timer: Option<(Timestamp, Timestamp)>,
}

impl Sched {
    fn from_record(rec: ScheduleRecord) -> Sched {
        Sched {
            rec: Box::new(Kept {
                spec: rec.spec,
                template: rec.template,
                created_at: rec.created_at,
                updated_at: rec.updated_at,
                paused: rec.paused,
                note: rec.note.map(Box::new),
                state: rec.state,
                timer: None,
            }),
        }
    }
}

impl Kept {
    /// The stored form of schedule `name`.
    fn record(&self, name: &str) -> ScheduleRecord {
        ScheduleRecord {
            name: name.to_owned(),
            spec: self.spec.clone(),
            template: self.template.clone(),
            created_at: self.created_at,
            updated_at: self.updated_at,
            paused: self.paused,
            note: self.note.as_deref().cloned(),
            state: self.state.clone(),
        }
    }
}

/// What a schedule's manual fires need remembered: kept apart from
/// [`Sched`], since most schedules never have one.
#[derive(Debug, Default)]
pub(super) struct Manual {
    /// The last manual fire's time (manual fires are keyed by it).
    last: Timestamp,
    /// Times backfilled since this engine started (the store has older ones).
    backfilled: BTreeSet<Timestamp>,
}

impl Engine {
    /// Whether a schedule with this name exists.
    pub fn has_schedule(&self, name: &str) -> bool {
        self.schedules.contains_key(name)
    }

    /// Number of schedules.
    pub fn schedule_count(&self) -> usize {
        self.schedules.len()
    }

    /// One schedule, with its next fire and live tasks.
    pub fn schedule(&self, name: &str) -> Option<ScheduleView> {
        self.schedules.get(name).map(|s| self.view(name, s))
    }

    /// Every schedule, in name order.
    pub fn schedules(&self) -> Vec<ScheduleView> {
        self.schedules
            .iter()
            .map(|(name, s)| self.view(name, s))
            .collect()
    }

    fn view(&self, name: &str, s: &Sched) -> ScheduleView {
        ScheduleView {
            record: s.rec.record(name),
            next: s.rec.timer.map(|(_, at)| at),
            next_due: s.rec.timer.map(|(due, _)| due),
            live: self.live_of(&s.rec.state),
        }
    }

    fn live_of(&self, state: &ScheduleState) -> Vec<TaskId> {
        state
            .active
            .iter()
            .copied()
            .filter(|id| {
                self.tasks
                    .get(id)
                    .is_some_and(|e| !e.rec.status.state.is_terminal())
            })
            .collect()
    }

    /// Creates a schedule, or replaces the spec and template of the one
    /// with this name (keeping its history, runs and waiting fires).
    /// Returns whether it was created. Fires start strictly after `now`: an
    /// edit never makes a past fire due.
    pub fn put_schedule(
        &mut self,
        name: &str,
        spec: ScheduleSpec,
        template: TaskSpec,
        now: Timestamp,
        out: &mut Outbox,
    ) -> Result<bool, ScheduleError> {
        check_schedule_name(name)?;
        spec.validate()?;
        self.check_template(&template, now)?;
        let mut template = template;
        self.intern_template(&mut template);
        let created = !self.schedules.contains_key(name);
        let rec = match self.schedules.remove(name) {
            Some(mut old) => {
                self.disarm(name, &old);
                let rec = &mut old.rec;
                rec.spec = spec;
                rec.template = template;
                rec.updated_at = now;
                rec.state.cursor = rec.state.cursor.max(now);
                rec.timer = None;
                old
            }
            None => Sched::from_record(ScheduleRecord {
                name: name.to_owned(),
                spec,
                template,
                created_at: now,
                updated_at: now,
                paused: false,
                note: None,
                state: ScheduleState {
                    cursor: now,
                    ..ScheduleState::default()
                },
            }),
        };
        out.changes
            .push(Change::Schedule(Box::new(rec.rec.record(name))));
        self.schedules.insert(name.to_owned(), rec);
        self.arm(name);
        Ok(created)
    }

    /// Makes `t` share the engine's copy of its queue and handler names:
    /// a hundred thousand schedules of one handler on one queue hold two
    /// strings, not two hundred thousand. At most
    /// [`TEMPLATE_NAMES_MAX`] distinct names are kept; past that a template
    /// keeps its own.
    fn intern_template(&mut self, t: &mut TaskSpec) {
        let names = &mut self.template_names;
        let mut intern = |s: &mut Arc<str>| {
            if let Some(shared) = names.get(&**s) {
                *s = shared.clone();
            } else if names.len() < TEMPLATE_NAMES_MAX {
                names.insert(s.clone());
            }
        };
        intern(&mut t.queue);
        if let TaskKind::Handler { name, .. } = &mut t.kind {
            intern(name);
        }
    }

    fn check_template(&self, t: &TaskSpec, now: Timestamp) -> Result<(), ScheduleError> {
        let reject = |field: &'static str| {
            Err(ScheduleError::Bad(BadSchedule {
                field,
                reason: "a task template may not set it (each fire's task is new)".into(),
            }))
        };
        if t.run_at.is_some() {
            return reject("template.run_at");
        }
        if t.expires_at.is_some() {
            return reject("template.expires_at");
        }
        if !t.after.is_empty() {
            return reject("template.after");
        }
        if t.parent.is_some() {
            return reject("template.parent");
        }
        if t.tags.len() + 2 > super::submit::MAX_TAGS {
            return Err(ScheduleError::Bad(BadSchedule {
                field: "template.tags",
                reason: format!(
                    "more than {} tags (each fire adds two)",
                    super::submit::MAX_TAGS - 2
                ),
            }));
        }
        self.validate(t, now).map_err(ScheduleError::Template)
    }

    /// Deletes a schedule (its store record and fire history go with it);
    /// tasks it submitted run on.
    pub fn delete_schedule(&mut self, name: &str, out: &mut Outbox) -> Result<(), ScheduleError> {
        let s = self
            .schedules
            .remove(name)
            .ok_or_else(|| ScheduleError::NotFound(name.to_owned()))?;
        self.disarm(name, &s);
        self.schedule_of.retain(|_, n| n != name);
        self.schedule_manual.remove(name);
        out.changes.push(Change::ScheduleDeleted {
            name: name.to_owned(),
        });
        Ok(())
    }

    /// Pauses a schedule: it does not fire until resumed.
    pub fn pause_schedule(
        &mut self,
        name: &str,
        note: Option<String>,
        now: Timestamp,
        out: &mut Outbox,
    ) -> Result<(), ScheduleError> {
        let s = self
            .schedules
            .get_mut(name)
            .ok_or_else(|| ScheduleError::NotFound(name.to_owned()))?;
        s.rec.paused = true;
        s.rec.note = note.map(Box::new);
        s.rec.updated_at = now;
        out.changes
            .push(Change::Schedule(Box::new(s.rec.record(name))));
        let timer = s.rec.timer.take();
        if let Some((due, _)) = timer {
            self.schedule_timers.remove(&(due, name.to_owned()));
        }
        Ok(())
    }

    /// Resumes a paused schedule. Fires that fell due while it was paused
    /// are not run: it fires next at its first scheduled time after `now`.
    pub fn resume_schedule(
        &mut self,
        name: &str,
        now: Timestamp,
        out: &mut Outbox,
    ) -> Result<(), ScheduleError> {
        let s = self
            .schedules
            .get_mut(name)
            .ok_or_else(|| ScheduleError::NotFound(name.to_owned()))?;
        if s.rec.paused {
            s.rec.paused = false;
            s.rec.note = None;
            s.rec.updated_at = now;
            s.rec.state.cursor = s.rec.state.cursor.max(now);
            out.changes
                .push(Change::Schedule(Box::new(s.rec.record(name))));
            self.arm(name);
            self.release_buffered(name, now, out);
        }
        Ok(())
    }

    /// Runs the schedule's task now, whatever its overlap policy (a paused
    /// schedule too): the fire is recorded as manual, at `now`. Returns the
    /// fire.
    pub fn trigger_schedule(
        &mut self,
        name: &str,
        now: Timestamp,
        out: &mut Outbox,
    ) -> Result<FireRecord, ScheduleError> {
        if !self.schedules.contains_key(name) {
            return Err(ScheduleError::NotFound(name.to_owned()));
        }
        let m = self.schedule_manual.entry(name.to_owned()).or_default();
        // Manual fires are keyed by their time: never two at one instant.
        let at = now.max(Timestamp::from_micros(m.last.as_micros() + 1));
        m.last = at;
        let fire = self.submit_fire(name, at, now, true, out);
        self.push_state(name, out);
        Ok(fire)
    }

    /// The scheduled times in `from..=to` a backfill would run: those of
    /// the recurrence up to the schedule's cursor (later ones are still to
    /// come), less those in `done` (already backfilled, read from the
    /// store) and those this engine backfilled itself.
    pub fn backfill_times(
        &self,
        name: &str,
        from: Timestamp,
        to: Timestamp,
        done: &HashSet<Timestamp>,
    ) -> Result<Vec<Timestamp>, ScheduleError> {
        let s = self
            .schedules
            .get(name)
            .ok_or_else(|| ScheduleError::NotFound(name.to_owned()))?;
        if to < from {
            return Err(ScheduleError::Bad(BadSchedule {
                field: "to",
                reason: "before from".into(),
            }));
        }
        let to = to.min(s.rec.state.cursor);
        let mut times = Vec::new();
        let mut t = Timestamp::from_micros(from.as_micros().saturating_sub(1));
        // Ignore start, end and max_runs: a backfill asks for these times.
        let spec = ScheduleSpec {
            start: None,
            end: None,
            ..s.rec.spec.clone()
        };
        while let Some(next) = spec.next_after(t) {
            if next > to {
                break;
            }
            let mine = self
                .schedule_manual
                .get(name)
                .is_some_and(|m| m.backfilled.contains(&next));
            if !done.contains(&next) && !mine {
                if times.len() == BACKFILL_MAX {
                    return Err(ScheduleError::Bad(BadSchedule {
                        field: "to",
                        reason: format!(
                            "the range holds more than {BACKFILL_MAX} fires; backfill it in parts"
                        ),
                    }));
                }
                times.push(next);
            }
            t = next;
        }
        Ok(times)
    }

    /// Runs the fires of `times` (from [`Engine::backfill_times`]) now,
    /// each recorded as manual at its scheduled time, whatever the overlap
    /// policy. Returns the fires.
    pub fn backfill_schedule(
        &mut self,
        name: &str,
        times: &[Timestamp],
        now: Timestamp,
        out: &mut Outbox,
    ) -> Result<Vec<FireRecord>, ScheduleError> {
        if !self.schedules.contains_key(name) {
            return Err(ScheduleError::NotFound(name.to_owned()));
        }
        let m = self.schedule_manual.entry(name.to_owned()).or_default();
        let fresh: Vec<Timestamp> = times
            .iter()
            .copied()
            .filter(|t| m.backfilled.insert(*t))
            .collect();
        let fires = fresh
            .into_iter()
            .map(|t| self.submit_fire(name, t, now, true, out))
            .collect();
        self.push_state(name, out);
        Ok(fires)
    }

    /// Why the schedule is not firing, or what holds its next fire back.
    pub fn explain_schedule(&self, name: &str, now: Timestamp) -> Option<Vec<ScheduleGate>> {
        let s = self.schedules.get(name)?;
        let rec = &s.rec;
        let mut gates = Vec::new();
        if rec.paused {
            gates.push(ScheduleGate::Paused {
                note: rec.note.as_deref().cloned(),
            });
        }
        if let Some(max) = rec.spec.max_runs
            && rec.state.runs >= max
        {
            gates.push(ScheduleGate::MaxRunsReached { max_runs: max });
        } else if rec.spec.next_after(rec.state.cursor).is_none() {
            gates.push(ScheduleGate::Ended);
        }
        if let Some(start) = rec.spec.start
            && start > now
        {
            gates.push(ScheduleGate::NotStarted { start });
        }
        let live = self.live_of(&rec.state);
        if let Some(&task) = live.first()
            && !matches!(
                rec.spec.overlap,
                Overlap::AllowAll | Overlap::CancelPrevious
            )
        {
            gates.push(ScheduleGate::Overlap {
                policy: rec.spec.overlap,
                task,
            });
        }
        if !rec.state.buffered.is_empty() {
            gates.push(ScheduleGate::Buffered {
                count: rec.state.buffered.len(),
            });
        }
        Some(gates)
    }

    /// Rebuilds schedules from the store after a restart or a take-over,
    /// after [`Engine::restore`] rebuilt the tasks. Fires that fell due
    /// while no coordinator ran are made now if they are within the
    /// schedule's catch-up window, and recorded as missed if older.
    pub fn restore_schedules(
        &mut self,
        records: Vec<ScheduleRecord>,
        now: Timestamp,
        out: &mut Outbox,
    ) {
        for mut rec in records {
            self.intern_template(&mut rec.template);
            let live = self.live_of(&rec.state);
            rec.state.active = live;
            for id in &rec.state.active {
                self.schedule_of.insert(*id, rec.name.clone());
            }
            let name = rec.name.clone();
            self.schedules.insert(name.clone(), Sched::from_record(rec));
            if self.schedules.get(&name).is_some_and(|s| !s.rec.paused) {
                self.fire_due(&name, now, out);
                self.release_buffered(&name, now, out);
            }
        }
    }

    /// Fires every schedule whose timer is due at `now` (from
    /// [`Engine::tick`]).
    pub(super) fn tick_schedules(&mut self, now: Timestamp, out: &mut Outbox) {
        while let Some((due, name)) = self.schedule_timers.first().cloned() {
            if due > now {
                break;
            }
            self.schedule_timers.pop_first();
            if let Some(s) = self.schedules.get_mut(&name) {
                s.rec.timer = None;
            }
            self.fire_due(&name, now, out);
        }
    }

    /// When the first schedule timer is due.
    pub(super) fn next_schedule_wake(&self) -> Option<Timestamp> {
        self.schedule_timers.first().map(|(t, _)| *t)
    }

    /// Deals with every scheduled time after the cursor that is due at
    /// `now`: older than the catch-up window → one missed record; the rest
    /// fired by the overlap policy, in order. Then re-arms the timer.
    fn fire_due(&mut self, name: &str, now: Timestamp, out: &mut Outbox) {
        let Some(s) = self.schedules.get(name) else {
            return;
        };
        let spec = s.rec.spec.clone();
        let mut cursor = s.rec.state.cursor;
        let mut changed = false;
        // Missed: due before the window.
        let window_start = Timestamp::from_micros(
            now.as_micros()
                .saturating_sub(crate::duration_micros(spec.catch_up)),
        );
        if let Some(first) = spec.next_after(cursor)
            && first < window_start
            && !self.max_runs_reached(name)
        {
            let mut count = 0u64;
            let mut last = first;
            let mut t = first;
            while t < window_start && count < MISSED_COUNT_MAX {
                count += 1;
                last = t;
                match spec.next_after(t) {
                    Some(n) => t = n,
                    None => break,
                }
            }
            let at_least = count == MISSED_COUNT_MAX && t < window_start;
            if at_least {
                // Too many to count: jump to the window.
                last = Timestamp::from_micros(window_start.as_micros().saturating_sub(1));
            }
            out.changes.push(Change::Fire(Box::new(FireRecord {
                schedule: name.to_owned(),
                at: first,
                fired_at: now,
                outcome: FireOutcome::Missed,
                task: None,
                reason: Some(format!(
                    "{}{count} fire(s) due before the catch-up window ({}) while no coordinator ran",
                    if at_least { "at least " } else { "" },
                    fmt_duration(spec.catch_up)
                )),
                until: Some(last),
                count,
                manual: false,
            })));
            cursor = last;
            changed = true;
        }
        while let Some(at) = spec.next_after(cursor) {
            if at.plus(spec.jitter_for(name, at)) > now || self.max_runs_reached(name) {
                break;
            }
            cursor = at;
            self.set_cursor(name, cursor);
            self.fire_one(name, at, now, out);
            changed = true;
        }
        self.set_cursor(name, cursor);
        if changed {
            self.push_state(name, out);
        }
        self.arm(name);
    }

    fn set_cursor(&mut self, name: &str, cursor: Timestamp) {
        if let Some(s) = self.schedules.get_mut(name) {
            s.rec.state.cursor = cursor;
        }
    }

    fn max_runs_reached(&self, name: &str) -> bool {
        self.schedules
            .get(name)
            .is_some_and(|s| s.rec.spec.max_runs.is_some_and(|m| s.rec.state.runs >= m))
    }

    /// One scheduled time is due: run it, or skip, buffer or cancel by
    /// the overlap policy.
    fn fire_one(&mut self, name: &str, at: Timestamp, now: Timestamp, out: &mut Outbox) {
        let Some(s) = self.schedules.get(name) else {
            return;
        };
        let live = self.live_of(&s.rec.state);
        let policy = s.rec.spec.overlap;
        let Some(&previous) = live.first() else {
            self.submit_fire(name, at, now, false, out);
            return;
        };
        let skip = |reason: String, out: &mut Outbox| {
            out.changes.push(Change::Fire(Box::new(FireRecord {
                schedule: name.to_owned(),
                at,
                fired_at: now,
                outcome: FireOutcome::Skipped,
                task: None,
                reason: Some(reason),
                until: None,
                count: 1,
                manual: false,
            })));
        };
        match policy {
            Overlap::AllowAll => {
                self.submit_fire(name, at, now, false, out);
            }
            Overlap::Skip => skip(format!("overlap skip: task {previous} still live"), out),
            Overlap::BufferOne | Overlap::BufferAll => {
                let cap = if policy == Overlap::BufferOne {
                    1
                } else {
                    BUFFER_MAX
                };
                let s = self.schedules.get_mut(name).expect("looked up above");
                if s.rec.state.buffered.len() < cap {
                    s.rec.state.buffered.push(at);
                } else {
                    skip(
                        format!(
                            "overlap {}: task {previous} still live and {cap} fire(s) already waiting",
                            policy.as_str()
                        ),
                        out,
                    );
                }
            }
            Overlap::CancelPrevious => {
                for id in live {
                    let _ = self.cancel(id, now, out);
                }
                self.submit_fire(name, at, now, false, out);
            }
        }
    }

    /// Submits the schedule's task for the fire at `at` and records the
    /// fire (submitted, or failed with the reason).
    fn submit_fire(
        &mut self,
        name: &str,
        at: Timestamp,
        now: Timestamp,
        manual: bool,
        out: &mut Outbox,
    ) -> FireRecord {
        let Some(s) = self.schedules.get(name) else {
            return FireRecord {
                schedule: name.to_owned(),
                at,
                fired_at: now,
                outcome: FireOutcome::Failed,
                task: None,
                reason: Some("the schedule was deleted".into()),
                until: None,
                count: 1,
                manual,
            };
        };
        let mut spec = s.rec.template.clone();
        spec.tags.push(format!("schedule:{name}"));
        spec.tags.push(format!("scheduled:{}", rfc3339(at)));
        let id = self.schedule_task_id(name, at, now);
        let (outcome, task, reason) = match self.submit(id, spec, now, out) {
            Ok(Submitted::Created(id)) => (FireOutcome::Submitted, Some(id), None),
            Ok(Submitted::Existing(other)) => (
                FireOutcome::Skipped,
                None,
                Some(format!("task {other} with the same unique key is live")),
            ),
            Err(e) => (FireOutcome::Failed, None, Some(e.to_string())),
        };
        if let Some(id) = task {
            self.schedule_of.insert(id, name.to_owned());
            if let Some(s) = self.schedules.get_mut(name) {
                s.rec.state.runs += 1;
                s.rec.state.active.push(id);
                s.rec.state.last_task = Some(id);
            }
        }
        let fire = FireRecord {
            schedule: name.to_owned(),
            at,
            fired_at: now,
            outcome,
            task,
            reason,
            until: None,
            count: 1,
            manual,
        };
        out.changes.push(Change::Fire(Box::new(fire.clone())));
        fire
    }

    /// Records the schedule's state (cursor, runs, buffer, live tasks).
    fn push_state(&mut self, name: &str, out: &mut Outbox) {
        let live = self.schedules.get(name).map(|s| self.live_of(&s.rec.state));
        if let (Some(s), Some(live)) = (self.schedules.get_mut(name), live) {
            s.rec.state.active = live;
            out.changes
                .push(Change::Schedule(Box::new(s.rec.record(name))));
        }
    }

    /// A task a schedule submitted has finished: a waiting fire may run.
    pub(super) fn on_schedule_task_finished(
        &mut self,
        id: TaskId,
        now: Timestamp,
        out: &mut Outbox,
    ) {
        let Some(name) = self.schedule_of.remove(&id) else {
            return;
        };
        let Some(s) = self.schedules.get_mut(&name) else {
            return;
        };
        s.rec.state.active.retain(|t| *t != id);
        let idle = match self.schedules.get(&name) {
            Some(s) => self.live_of(&s.rec.state).is_empty(),
            None => return,
        };
        if idle {
            self.release_buffered(&name, now, out);
        }
    }

    /// Runs the oldest waiting fire if the schedule has no live task.
    fn release_buffered(&mut self, name: &str, now: Timestamp, out: &mut Outbox) {
        let Some(s) = self.schedules.get(name) else {
            return;
        };
        if s.rec.paused || s.rec.state.buffered.is_empty() || !self.live_of(&s.rec.state).is_empty()
        {
            return;
        }
        let Some(s) = self.schedules.get_mut(name) else {
            return;
        };
        let at = s.rec.state.buffered.remove(0);
        self.submit_fire(name, at, now, false, out);
        self.push_state(name, out);
    }

    /// Arms the schedule's timer for its next fire after the cursor (none
    /// while paused, after its end, or with its runs used up).
    fn arm(&mut self, name: &str) {
        let Some(s) = self.schedules.get(name) else {
            return;
        };
        if let Some((due, _)) = s.rec.timer {
            self.schedule_timers.remove(&(due, name.to_owned()));
        }
        let next = if s.rec.paused || self.max_runs_reached(name) {
            None
        } else {
            s.rec
                .spec
                .next_after(s.rec.state.cursor)
                .map(|at| (at.plus(s.rec.spec.jitter_for(name, at)), at))
        };
        if let Some((due, _)) = next {
            self.schedule_timers.insert((due, name.to_owned()));
        }
        if let Some(s) = self.schedules.get_mut(name) {
            s.rec.timer = next;
        }
    }

    fn disarm(&mut self, name: &str, s: &Sched) {
        if let Some((due, _)) = s.rec.timer {
            self.schedule_timers.remove(&(due, name.to_owned()));
        }
    }

    /// A UUIDv7 for a fire's task: `now`'s milliseconds, and bits drawn
    /// from the engine's generator mixed with the schedule and the
    /// scheduled time.
    fn schedule_task_id(&mut self, name: &str, at: Timestamp, now: Timestamp) -> TaskId {
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        for b in name.bytes().chain(at.as_micros().to_le_bytes()) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        loop {
            let r1 = (self.next_unit() * (1u64 << 53) as f64) as u64 ^ h;
            let r2 = (self.next_unit() * (1u64 << 53) as f64) as u64;
            let ms = u128::from(now.as_millis() & ((1 << 48) - 1));
            let rand_a = u128::from(r1 & 0xfff);
            let rand_b =
                (u128::from(r1 >> 12) << 32 | u128::from(r2 & 0xffff_ffff)) & ((1u128 << 62) - 1);
            let v = ms << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b;
            let id = TaskId::from_u128(v);
            if !self.tasks.contains_key(&id) {
                return id;
            }
        }
    }
}

/// `at` as RFC 3339 in UTC, to the second (or microsecond when it has any).
pub(crate) fn rfc3339(at: Timestamp) -> String {
    let micros = i64::try_from(at.as_micros()).unwrap_or(i64::MAX);
    match chrono::DateTime::from_timestamp_micros(micros) {
        Some(t) if micros % 1_000_000 == 0 => t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        Some(t) => t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
        None => format!("{}µs", at.as_micros()),
    }
}

fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s > 0 && s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s > 0 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{}s", d.as_secs_f64())
    }
}
