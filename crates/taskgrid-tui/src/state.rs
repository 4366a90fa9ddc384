//! The dashboard's state, [`App`]: everything a frame shows, changed only
//! by [`crate::update`] and read by [`crate::draw`].
//!
//! Every collection of the live streams is bounded: the newest
//! [`MAX_TASKS`] tasks, the last [`MAX_LOG_LINES`] events and the last
//! [`MAX_OUTPUT_LINES`] lines of the open task's output. Workers, queues
//! and schedules are the coordinator's lists as last read.

use std::collections::VecDeque;

use taskgrid_api::{OutputEnd, ScheduleDetail, ScheduleInfo, TaskView, WorkerView};
use taskgrid_core::{
    AttemptRecord, MetricsSnapshot, Progress, QueueStats, State, TaskId, Timestamp,
};

use crate::output::OutputBuffer;
use crate::tasks::TaskList;

/// Tasks kept in the Tasks tab (the newest).
pub const MAX_TASKS: usize = 1_000;
/// Lines of the open task's output kept.
pub const MAX_OUTPUT_LINES: usize = 5_000;
/// Events kept in the Logs tab.
pub const MAX_LOG_LINES: usize = 1_000;

/// The dashboard's tabs, in the order of the tab bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tab {
    /// Connected workers.
    Workers,
    /// The newest tasks.
    Tasks,
    /// Queue depths.
    Queues,
    /// The last events, one a line.
    Logs,
    /// The coordinator's schedules.
    Schedules,
}

impl Tab {
    /// Every tab, in the order of the tab bar (keys `1`–`5`).
    pub const ALL: [Tab; 5] = [
        Tab::Workers,
        Tab::Tasks,
        Tab::Queues,
        Tab::Logs,
        Tab::Schedules,
    ];

    /// Its title in the tab bar.
    pub fn title(self) -> &'static str {
        match self {
            Tab::Workers => "Workers",
            Tab::Tasks => "Tasks",
            Tab::Queues => "Queues",
            Tab::Logs => "Logs",
            Tab::Schedules => "Schedules",
        }
    }

    /// Its position in [`Tab::ALL`].
    pub fn index(self) -> usize {
        Tab::ALL.iter().position(|t| *t == self).unwrap_or(0)
    }

    pub(crate) fn next(self) -> Tab {
        Tab::ALL[(self.index() + 1) % Tab::ALL.len()]
    }

    pub(crate) fn prev(self) -> Tab {
        Tab::ALL[(self.index() + Tab::ALL.len() - 1) % Tab::ALL.len()]
    }
}

/// The state of the live event stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Connection {
    /// Not connected yet.
    Connecting,
    /// Events arrive.
    Live,
    /// The stream broke; the event loop is reconnecting.
    Lost(String),
}

/// One event of the Logs tab.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LogLine {
    /// The task it is about, if any (Enter opens it).
    pub(crate) task: Option<TaskId>,
    /// The line.
    pub(crate) text: String,
}

/// The open task: what the detail view shows.
#[derive(Debug, Clone)]
pub(crate) struct Detail {
    pub(crate) id: TaskId,
    /// The task as last read.
    pub(crate) task: Option<TaskView>,
    /// The `seq` of the last event when it was opened.
    pub(crate) opened_seq: u64,
    /// State and attempt from events since it was opened: newer than any
    /// read.
    pub(crate) live: Option<(State, u32)>,
    pub(crate) attempts: Vec<AttemptRecord>,
    pub(crate) progress: Option<Progress>,
    pub(crate) output: OutputBuffer,
    /// The last output sequence number shown (chunks up to it are skipped).
    pub(crate) last_seq: u64,
    /// The output stream's end: the task has finished.
    pub(crate) end: Option<OutputEnd>,
    /// Lines scrolled back from the newest; 0 follows the output.
    pub(crate) scroll: usize,
}

impl Detail {
    pub(crate) fn new(id: TaskId, opened_seq: u64) -> Self {
        Detail {
            id,
            task: None,
            opened_seq,
            live: None,
            attempts: Vec::new(),
            progress: None,
            output: OutputBuffer::new(MAX_OUTPUT_LINES),
            last_seq: 0,
            end: None,
            scroll: 0,
        }
    }

    /// Its current state and attempt, as far as known.
    pub(crate) fn state(&self) -> Option<(State, u32)> {
        self.live.or_else(|| {
            self.task
                .as_ref()
                .map(|t| (t.status.state, t.status.attempt))
        })
    }
}

/// The open schedule: what the Schedules tab's panel shows.
#[derive(Debug, Clone)]
pub(crate) struct SchedulePanel {
    pub(crate) name: String,
    /// The schedule, its last fires and gates, as last read (`None` until
    /// the first read answers).
    pub(crate) detail: Option<ScheduleDetail>,
}

/// Task listings in flight, and the `seq` before the first of them
/// started: rows changed by later events keep their state.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Loads {
    pub(crate) in_flight: u32,
    pub(crate) mark: u64,
    /// A listing failed since the event stream last connected.
    pub(crate) failed: bool,
}

impl Loads {
    pub(crate) fn started(&mut self, seq: u64) {
        if self.in_flight == 0 {
            self.mark = seq;
        }
        self.in_flight += 1;
    }

    pub(crate) fn finished(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }
}

/// Everything the dashboard shows. Create it with [`App::new`], change it
/// with [`crate::update`], draw it with [`crate::draw`].
#[derive(Debug)]
pub struct App {
    pub(crate) tab: Tab,
    pub(crate) tasks: TaskList,
    pub(crate) loads: Loads,
    pub(crate) workers: Vec<WorkerView>,
    pub(crate) queues: Vec<QueueStats>,
    /// The schedules, in name order.
    pub(crate) schedules: Vec<ScheduleInfo>,
    /// The open schedule's panel.
    pub(crate) schedule_panel: Option<SchedulePanel>,
    /// The wall clock at the last refresh: relative times count from it.
    pub(crate) now: Option<Timestamp>,
    pub(crate) metrics: Option<MetricsSnapshot>,
    pub(crate) logs: VecDeque<LogLine>,
    pub(crate) detail: Option<Detail>,
    pub(crate) connection: Connection,
    /// Row selected in the Workers, Queues and Schedules tabs.
    pub(crate) worker_sel: usize,
    pub(crate) queue_sel: usize,
    pub(crate) schedule_sel: usize,
    /// Line selected in the Logs tab; `None` follows the newest.
    pub(crate) log_sel: Option<usize>,
    /// A cancel waiting for `y`.
    pub(crate) confirm: Option<TaskId>,
    /// What the last action did, for the status line.
    pub(crate) notice: Option<String>,
    pub(crate) last_error: Option<String>,
    /// `last_error` is a failed read: the next good one clears it.
    pub(crate) transient_error: bool,
    /// The `seq` of the last event applied.
    pub(crate) last_seq: u64,
    pub(crate) quit: bool,
    redraw: bool,
}

impl Default for App {
    fn default() -> Self {
        App::new()
    }
}

impl App {
    /// An empty dashboard on the Tasks tab, connecting.
    pub fn new() -> Self {
        App {
            tab: Tab::Tasks,
            tasks: TaskList::new(MAX_TASKS),
            loads: Loads::default(),
            workers: Vec::new(),
            queues: Vec::new(),
            schedules: Vec::new(),
            schedule_panel: None,
            now: None,
            metrics: None,
            logs: VecDeque::new(),
            detail: None,
            connection: Connection::Connecting,
            worker_sel: 0,
            queue_sel: 0,
            schedule_sel: 0,
            log_sel: None,
            confirm: None,
            notice: None,
            last_error: None,
            transient_error: false,
            last_seq: 0,
            quit: false,
            redraw: true,
        }
    }

    /// The tab shown.
    pub fn tab(&self) -> Tab {
        self.tab
    }

    /// The task selected in the Tasks tab.
    pub fn selected_task(&self) -> Option<TaskId> {
        self.tasks.selected()
    }

    /// The task whose detail view is open.
    pub fn open_task(&self) -> Option<TaskId> {
        self.detail.as_ref().map(|d| d.id)
    }

    /// The name of the schedule selected in the Schedules tab.
    pub fn selected_schedule(&self) -> Option<&str> {
        self.schedules
            .get(self.schedule_sel)
            .map(|s| s.name.as_str())
    }

    /// The schedule whose panel is open.
    pub fn open_schedule(&self) -> Option<&str> {
        self.schedule_panel.as_ref().map(|p| p.name.as_str())
    }

    /// The state of the event stream.
    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    /// The last error, until Esc clears it.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// Whether `q` was pressed.
    pub fn should_quit(&self) -> bool {
        self.quit
    }

    /// Whether anything changed since the last call: the event loop draws
    /// only then, so many messages between two frames make one redraw.
    pub fn take_redraw(&mut self) -> bool {
        std::mem::take(&mut self.redraw)
    }

    /// A read worked: a read's error no longer holds.
    pub(crate) fn recovered(&mut self) {
        if std::mem::take(&mut self.transient_error) {
            self.last_error = None;
        }
    }

    pub(crate) fn changed(&mut self) {
        self.redraw = true;
    }

    /// Adds a line to the Logs tab, dropping the oldest past the limit.
    pub(crate) fn log(&mut self, task: Option<TaskId>, text: String) {
        self.logs.push_back(LogLine { task, text });
        if self.logs.len() > MAX_LOG_LINES {
            self.logs.pop_front();
            // The selected line moved up by one.
            self.log_sel = self.log_sel.map(|i| i.saturating_sub(1));
        }
    }

    /// Keeps the Workers, Queues and Schedules selections on a row.
    pub(crate) fn clamp_selections(&mut self) {
        self.worker_sel = self.worker_sel.min(self.workers.len().saturating_sub(1));
        self.queue_sel = self.queue_sel.min(self.queues.len().saturating_sub(1));
        self.schedule_sel = self
            .schedule_sel
            .min(self.schedules.len().saturating_sub(1));
        if let Some(i) = self.log_sel {
            self.log_sel = (i < self.logs.len()).then_some(i);
        }
    }
}
