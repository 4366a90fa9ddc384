//! [`update`]: the one place the dashboard's state changes. It is a pure
//! function of the state and a [`Msg`] — a key, an event of the stream, an
//! answer of the coordinator — and returns the [`Effect`]s for the event
//! loop to carry out. No IO, no clock: tests drive it message by message.

use taskgrid_api::{
    CancelOutcomeKind, CancelResponse, EventKind, OutputEnd, OutputEntry, ScheduleDetail,
    ScheduleInfo, TaskDetail, TaskEvent, TaskView, WorkerView,
};
use taskgrid_core::{
    FireOutcome, FireRecord, MetricsSnapshot, QueueStats, State, TaskId, Timestamp,
};

use crate::keys;
use crate::state::{App, Connection, Detail, SchedulePanel};
use crate::text::one_line;

/// A key press, independent of the terminal library.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    /// A printable character.
    Char(char),
    /// Enter.
    Enter,
    /// Escape.
    Esc,
    /// Tab.
    Tab,
    /// Shift-Tab.
    BackTab,
    /// Arrow up.
    Up,
    /// Arrow down.
    Down,
    /// Page up.
    PageUp,
    /// Page down.
    PageDown,
    /// Home.
    Home,
    /// End.
    End,
    /// Ctrl-C.
    CtrlC,
}

/// Something that happened: the input of [`update`].
#[derive(Debug, Clone, PartialEq)]
pub enum Msg {
    /// A key was pressed.
    Key(Key),
    /// An event of the coordinator's stream.
    Event(TaskEvent),
    /// The event stream could not replay what was missed: re-read.
    Reset,
    /// The event stream is connected.
    Connected,
    /// The event stream broke; the event loop reconnects.
    Disconnected(String),
    /// A page of a task listing, oldest first; `done` on the last.
    Tasks {
        /// The tasks.
        tasks: Vec<TaskView>,
        /// No page follows.
        done: bool,
    },
    /// A listing failed.
    TasksFailed(String),
    /// The connected workers.
    Workers(Vec<WorkerView>),
    /// The queues.
    Queues(Vec<QueueStats>),
    /// The coordinator's counters.
    Metrics(Box<MetricsSnapshot>),
    /// Every schedule, in name order.
    Schedules(Vec<ScheduleInfo>),
    /// The open schedule as read: its last fires and what holds it back.
    Schedule(Box<ScheduleDetail>),
    /// A schedule was paused or resumed: how it stands now.
    ScheduleChanged(Box<ScheduleInfo>),
    /// A schedule was triggered.
    Triggered {
        /// The schedule.
        name: String,
        /// The fires it made.
        fires: Vec<FireRecord>,
    },
    /// The wall clock, read with each refresh: relative times ("in 5m")
    /// count from it.
    Now(Timestamp),
    /// The open task as read.
    Detail(Box<TaskDetail>),
    /// A chunk of a followed task's output.
    Output {
        /// The task.
        id: TaskId,
        /// The chunk.
        chunk: OutputEntry,
    },
    /// A followed task's output has ended: it finished.
    OutputEnd(OutputEnd),
    /// The answer to a cancel.
    Cancelled {
        /// The task.
        id: TaskId,
        /// What the cancel did.
        answer: CancelResponse,
    },
    /// Reading workers, queues, metrics, schedules, the open task or the
    /// open schedule failed; cleared,
    /// like a failed listing, by the next read that works.
    RefreshFailed(String),
    /// A call to the coordinator failed.
    Error(String),
    /// The terminal changed size.
    Resize,
    /// Time passed (the event loop's frame tick).
    Tick,
}

/// What the event loop must do after an [`update`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Cancel the task.
    Cancel(TaskId),
    /// Read the task and follow its output (as [`Msg::Detail`],
    /// [`Msg::Output`], [`Msg::OutputEnd`]).
    OpenDetail(TaskId),
    /// Stop following the open task.
    CloseDetail,
    /// Read workers, queues, metrics and schedules now (and the open task
    /// and the open schedule).
    Refresh,
    /// Read the schedule (as [`Msg::Schedule`]) now and with every refresh
    /// until [`Effect::CloseSchedule`].
    OpenSchedule(String),
    /// Stop reading the open schedule.
    CloseSchedule,
    /// Pause the schedule (no note); answered by [`Msg::ScheduleChanged`].
    PauseSchedule(String),
    /// Resume the paused schedule; answered by [`Msg::ScheduleChanged`].
    ResumeSchedule(String),
    /// Run the schedule's task now; answered by [`Msg::Triggered`].
    TriggerSchedule(String),
    /// List the tasks after `after` (all when `None`), page by page as
    /// [`Msg::Tasks`].
    LoadTasks {
        /// Exclusive lower bound (a cursor).
        after: Option<TaskId>,
    },
    /// Leave the dashboard.
    Quit,
}

/// Applies `msg` to `app`; returns what the event loop must do.
pub fn update(app: &mut App, msg: Msg) -> Vec<Effect> {
    if !matches!(msg, Msg::Tick) {
        app.changed();
    }
    match msg {
        Msg::Key(k) => keys::on_key(app, k),
        Msg::Event(ev) => {
            on_event(app, ev);
            Vec::new()
        }
        Msg::Reset => {
            app.log(
                None,
                "event stream reset: some events were missed; reloading".into(),
            );
            app.tasks.forget_seqs();
            app.last_seq = 0;
            vec![load_tasks(app, None), Effect::Refresh]
        }
        Msg::Connected => {
            app.log(None, "event stream connected".to_owned());
            app.connection = Connection::Live;
            // A listing that failed (the coordinator was down) is retried
            // once it answers again.
            if std::mem::take(&mut app.loads.failed) {
                vec![load_tasks(app, None)]
            } else {
                Vec::new()
            }
        }
        Msg::Disconnected(e) => {
            // Once per outage, not once per retry.
            if app.connection == Connection::Live {
                app.log(None, format!("event stream lost: {e}"));
            }
            app.connection = Connection::Lost(e);
            Vec::new()
        }
        Msg::Tasks { tasks, done } => {
            app.recovered();
            for t in &tasks {
                app.tasks.merge_listed(t, app.loads.mark);
            }
            if done {
                app.loads.finished();
            }
            Vec::new()
        }
        Msg::TasksFailed(e) => {
            app.loads.finished();
            app.loads.failed = true;
            app.last_error = Some(format!("listing tasks: {e}"));
            app.transient_error = true;
            Vec::new()
        }
        Msg::Workers(w) => {
            app.recovered();
            app.workers = w;
            app.clamp_selections();
            Vec::new()
        }
        Msg::Queues(q) => {
            app.queues = q;
            app.clamp_selections();
            Vec::new()
        }
        Msg::Metrics(m) => {
            app.metrics = Some(*m);
            Vec::new()
        }
        Msg::Schedules(list) => on_schedules(app, list),
        Msg::Schedule(d) => {
            if let Some(p) = app
                .schedule_panel
                .as_mut()
                .filter(|p| p.name == d.schedule.name)
            {
                p.detail = Some(*d);
            }
            Vec::new()
        }
        Msg::ScheduleChanged(info) => {
            app.notice = Some(match (info.paused, info.next_due.or(info.next)) {
                (true, _) => format!("paused {}", one_line(&info.name)),
                (false, Some(next)) => format!(
                    "resumed {}: next fire {}",
                    one_line(&info.name),
                    crate::time::when(next, app.now)
                ),
                (false, None) => format!("resumed {}: no further fire", one_line(&info.name)),
            });
            if let Some(row) = app.schedules.iter_mut().find(|s| s.name == info.name) {
                *row = *info;
            }
            vec![Effect::Refresh]
        }
        Msg::Triggered { name, fires } => {
            app.notice = Some(trigger_notice(&name, &fires));
            vec![Effect::Refresh]
        }
        Msg::Now(t) => {
            app.now = Some(t);
            Vec::new()
        }
        Msg::Detail(d) => {
            on_detail(app, *d);
            Vec::new()
        }
        Msg::Output { id, chunk } => {
            if let Some(d) = app
                .detail
                .as_mut()
                .filter(|d| d.id == id && chunk.seq > d.last_seq)
            {
                d.last_seq = chunk.seq;
                d.output.push(chunk.stream, &chunk.data);
                if d.scroll > 0 {
                    // Keep the lines in view while scrolled back.
                    d.scroll = (d.scroll + 1).min(d.output.len());
                }
            }
            Vec::new()
        }
        Msg::OutputEnd(end) => {
            if let Some(d) = app.detail.as_mut().filter(|d| d.id == end.id) {
                let attempt = d.live.map_or(0, |(_, a)| a);
                d.live = Some((end.state, attempt));
                d.end = Some(end);
            }
            Vec::new()
        }
        Msg::Cancelled { id, answer } => {
            app.notice = Some(cancel_notice(id, answer));
            Vec::new()
        }
        Msg::RefreshFailed(e) => {
            app.last_error = Some(e);
            app.transient_error = true;
            Vec::new()
        }
        Msg::Error(e) => {
            app.last_error = Some(e);
            app.transient_error = false;
            Vec::new()
        }
        Msg::Resize => Vec::new(),
        Msg::Tick => on_tick(app),
    }
}

/// A listing of the tasks after `after`, noted as in flight.
pub(crate) fn load_tasks(app: &mut App, after: Option<TaskId>) -> Effect {
    app.loads.started(app.last_seq);
    Effect::LoadTasks { after }
}

/// Rows first seen in events get their details by one listing from just
/// before the oldest of them, when no listing is in flight.
fn on_tick(app: &mut App) -> Vec<Effect> {
    if app.loads.in_flight > 0 {
        return Vec::new();
    }
    match app.tasks.take_missing() {
        Some(oldest) => {
            let after = TaskId::from_u128(oldest.as_u128().saturating_sub(1));
            vec![load_tasks(app, Some(after))]
        }
        None => Vec::new(),
    }
}

fn on_event(app: &mut App, ev: TaskEvent) {
    app.last_seq = ev.seq;
    app.log(Some(ev.id), describe_event(&ev));
    let (queue, state) = match &ev.kind {
        EventKind::Submitted { queue, state, .. } => (Some(queue.as_str()), Some(*state)),
        EventKind::State { to, .. } => (None, Some(*to)),
        _ => (None, None),
    };
    let row = match state {
        Some(s) => app.tasks.row_for_event(ev.id, queue, s),
        // Progress, output and checkpoints of tasks not listed add no row.
        None => app.tasks.row_mut(ev.id),
    };
    if let Some(row) = row {
        row.last_seq = ev.seq;
        match &ev.kind {
            EventKind::Submitted { state, .. } => row.state = *state,
            EventKind::State {
                to, attempt, error, ..
            } => {
                row.state = *to;
                row.attempt = *attempt;
                if let Some(e) = error {
                    row.error = Some(e.message.clone());
                }
            }
            EventKind::Progress(p) => row.progress = Some(p.fraction),
            EventKind::Checkpoint | EventKind::Output { .. } => {}
        }
    }
    if let Some(d) = app.detail.as_mut().filter(|d| d.id == ev.id) {
        match &ev.kind {
            EventKind::State { to, attempt, .. } => d.live = Some((*to, *attempt)),
            EventKind::Progress(p) => d.progress = Some(p.clone()),
            _ => {}
        }
    }
}

fn on_detail(app: &mut App, detail: TaskDetail) {
    let Some(d) = app.detail.as_mut().filter(|d| d.id == detail.task.id) else {
        return;
    };
    // Events applied since the detail was opened are newer than the read.
    app.tasks.merge_listed(&detail.task, d.opened_seq);
    if d.progress.is_none() {
        d.progress.clone_from(&detail.task.progress);
    }
    d.task = Some(detail.task);
    d.attempts = detail.attempts;
}

/// Takes a new list of schedules. The selection stays on its schedule
/// while others come and go (an action key must not land on a neighbour);
/// the open schedule's panel closes when its schedule is gone.
fn on_schedules(app: &mut App, list: Vec<ScheduleInfo>) -> Vec<Effect> {
    let selected = app.selected_schedule().map(str::to_owned);
    app.schedules = list;
    if let Some(i) = selected.and_then(|n| app.schedules.iter().position(|s| s.name == n)) {
        app.schedule_sel = i;
    }
    app.clamp_selections();
    let gone = app
        .schedule_panel
        .as_ref()
        .filter(|p| !app.schedules.iter().any(|s| s.name == p.name))
        .map(|p| p.name.clone());
    match gone {
        Some(name) => {
            app.schedule_panel = None;
            app.notice = Some(format!("schedule {} is gone", one_line(&name)));
            vec![Effect::CloseSchedule]
        }
        None => Vec::new(),
    }
}

/// Opens the panel of schedule `name`.
pub(crate) fn open_schedule(app: &mut App, name: String) -> Vec<Effect> {
    app.schedule_panel = Some(SchedulePanel {
        name: name.clone(),
        detail: None,
    });
    vec![Effect::OpenSchedule(name)]
}

/// What a trigger did, for the status line.
fn trigger_notice(name: &str, fires: &[FireRecord]) -> String {
    let name = one_line(name);
    let Some(f) = fires.first() else {
        return format!("triggered {name}");
    };
    match (f.outcome, f.task, &f.reason) {
        (FireOutcome::Submitted, Some(task), _) => format!("triggered {name}: submitted {task}"),
        (outcome, _, Some(reason)) => {
            format!(
                "triggered {name}: {}: {}",
                outcome.as_str(),
                one_line(reason)
            )
        }
        (outcome, _, None) => format!("triggered {name}: {}", outcome.as_str()),
    }
}

/// Opens the detail view of `id`.
pub(crate) fn open_detail(app: &mut App, id: TaskId) -> Vec<Effect> {
    app.detail = Some(Detail::new(id, app.last_seq));
    vec![Effect::OpenDetail(id)]
}

fn cancel_notice(id: TaskId, answer: CancelResponse) -> String {
    match answer.outcome {
        CancelOutcomeKind::Cancelled => format!("{id} cancelled"),
        CancelOutcomeKind::Requested => format!("{id} asked to stop ({})", answer.state),
        CancelOutcomeKind::AlreadyFinished => {
            format!("{id} had already finished ({})", answer.state)
        }
    }
}

/// One line of the Logs tab (the messages in it may hold line breaks,
/// shown when drawn).
fn describe_event(ev: &TaskEvent) -> String {
    let what = match &ev.kind {
        EventKind::Submitted { queue, state, .. } => format!("submitted to {queue} ({state})"),
        EventKind::State {
            from,
            to,
            attempt,
            error,
            ..
        } => {
            let mut s = format!("{from} -> {to} (attempt {attempt})");
            if let Some(e) = error {
                s.push_str(": ");
                s.push_str(&e.message);
            }
            s
        }
        EventKind::Progress(p) => {
            let pct = (p.fraction.clamp(0.0, 1.0) * 100.0).round();
            match &p.message {
                Some(m) => format!("progress {pct}% {m}"),
                None => format!("progress {pct}%"),
            }
        }
        EventKind::Checkpoint => "checkpoint saved".to_owned(),
        EventKind::Output { stream, data } => {
            // Its line breaks are shown when it is drawn.
            let text: String = data.trim_end().chars().take(200).collect();
            format!("{}: {text}", stream.as_str())
        }
    };
    format!("#{:<6} {} {what}", ev.seq, ev.id)
}

/// Whether `state` can still be cancelled.
pub(crate) fn cancellable(state: Option<State>) -> bool {
    !state.is_some_and(State::is_terminal)
}
