//! [`TaskList`]: the newest tasks by id, the Tasks tab's selection, and how
//! events and listed pages merge into them.
//!
//! Events are the newest truth. A listed page is a snapshot taken at some
//! moment after the listing was asked for, so a row that an event changed
//! after that moment keeps the event's state; any change after the snapshot
//! arrives as an event anyway. A row first seen in an event has no spec yet
//! (its details are *missing*) until a listing brings it.
//!
//! The selection stays on the newest task until it is moved; then it
//! follows its task while newer tasks push it down, and when its row goes,
//! the row now at its place is selected.

use std::collections::BTreeMap;
use std::ops::Bound;

use taskgrid_api::{Kind, TaskView};
use taskgrid_core::{Priority, ShellCommand, State, TaskId};

/// Whether a row's spec (priority, what) is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Details {
    /// From a listing.
    Known,
    /// Only events so far; nobody asked for it yet.
    Missing,
    /// Asked for; not in a listing yet.
    Requested,
}

/// One row of the Tasks tab.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TaskRow {
    pub(crate) id: TaskId,
    pub(crate) state: State,
    pub(crate) queue: String,
    pub(crate) priority: Option<Priority>,
    /// What it runs, e.g. `handler resize` or the command line, as
    /// [`describe`] says it: it may hold line breaks.
    pub(crate) what: Option<String>,
    pub(crate) attempt: u32,
    /// Last reported progress, 0 to 1.
    pub(crate) progress: Option<f32>,
    pub(crate) error: Option<String>,
    /// The `seq` of the last event applied to it.
    pub(crate) last_seq: u64,
    pub(crate) details: Details,
}

impl TaskRow {
    fn from_event(id: TaskId, queue: Option<&str>, state: State) -> Self {
        TaskRow {
            id,
            state,
            queue: queue.unwrap_or("?").to_owned(),
            priority: None,
            what: None,
            attempt: 0,
            progress: None,
            error: None,
            last_seq: 0,
            details: Details::Missing,
        }
    }

    fn take_status(&mut self, v: &TaskView) {
        self.state = v.status.state;
        self.attempt = v.status.attempt;
        self.progress = v.progress.as_ref().map(|p| p.fraction);
        self.error = v.status.error.as_ref().map(|e| e.message.clone());
    }
}

/// What `kind` runs, as [`Kind::describe`] says it but with a script's
/// line breaks and tabs as they are, not escaped, so that the open task can
/// show its lines as lines (a task row shows them on one line).
pub(crate) fn describe(kind: &Kind) -> String {
    match kind {
        Kind::Shell(s) => match &s.command {
            ShellCommand::Script(script) => {
                let quoted = script.replace('\\', "\\\\").replace('"', "\\\"");
                format!("sh -c \"{quoted}\"")
            }
            ShellCommand::Argv(_) => kind.describe(),
        },
        Kind::Handler { .. } | Kind::Container(_) => kind.describe(),
    }
}

/// The newest tasks, at most `cap`, shown newest first.
#[derive(Debug, Clone)]
pub(crate) struct TaskList {
    rows: BTreeMap<TaskId, TaskRow>,
    cap: usize,
    sel_index: usize,
    sel_id: Option<TaskId>,
    /// The selection was moved by hand: it follows its task. Until then it
    /// stays on the newest.
    sticky: bool,
}

impl TaskList {
    pub(crate) fn new(cap: usize) -> Self {
        TaskList {
            rows: BTreeMap::new(),
            cap: cap.max(1),
            sel_index: 0,
            sel_id: None,
            sticky: false,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.rows.len()
    }

    pub(crate) fn get(&self, id: TaskId) -> Option<&TaskRow> {
        self.rows.get(&id)
    }

    pub(crate) fn row_mut(&mut self, id: TaskId) -> Option<&mut TaskRow> {
        self.rows.get_mut(&id)
    }

    /// The rows, newest first.
    pub(crate) fn newest_first(&self) -> impl Iterator<Item = &TaskRow> {
        self.rows.values().rev()
    }

    /// The selected task.
    pub(crate) fn selected(&self) -> Option<TaskId> {
        self.sel_id
    }

    /// The selected row's position, newest first.
    pub(crate) fn selected_index(&self) -> Option<usize> {
        self.sel_id.map(|_| self.sel_index)
    }

    /// The row an event about `id` applies to: the existing one, or a new
    /// one with missing details. `None` when the list is full of newer
    /// tasks, so the row would go at once.
    pub(crate) fn row_for_event(
        &mut self,
        id: TaskId,
        queue: Option<&str>,
        state: State,
    ) -> Option<&mut TaskRow> {
        if !self.rows.contains_key(&id) && !self.insert(TaskRow::from_event(id, queue, state)) {
            return None;
        }
        self.rows.get_mut(&id)
    }

    /// Merges a listed task; a row changed by an event after `mark` (a
    /// `seq`) keeps its state.
    pub(crate) fn merge_listed(&mut self, v: &TaskView, mark: u64) {
        match self.rows.get_mut(&v.id) {
            Some(row) => {
                if row.last_seq <= mark {
                    row.take_status(v);
                }
                row.queue.clone_from(&v.spec.queue);
                row.priority = Some(v.spec.priority);
                row.what = Some(describe(&v.spec.kind));
                row.details = Details::Known;
            }
            None => {
                let mut row = TaskRow::from_event(v.id, Some(&v.spec.queue), v.status.state);
                row.take_status(v);
                row.priority = Some(v.spec.priority);
                row.what = Some(describe(&v.spec.kind));
                row.details = Details::Known;
                self.insert(row);
            }
        }
    }

    /// The oldest row whose details nobody asked for yet; every such row
    /// is marked asked for.
    pub(crate) fn take_missing(&mut self) -> Option<TaskId> {
        let mut oldest = None;
        for row in self.rows.values_mut() {
            if row.details == Details::Missing {
                row.details = Details::Requested;
                oldest = oldest.or(Some(row.id));
            }
        }
        oldest
    }

    /// Forgets which events rows saw (a new event stream numbers afresh).
    pub(crate) fn forget_seqs(&mut self) {
        for row in self.rows.values_mut() {
            row.last_seq = 0;
        }
    }

    /// Moves the selection by `delta` rows (down is positive), within the
    /// list.
    pub(crate) fn move_selection(&mut self, delta: isize) {
        if self.rows.is_empty() {
            return;
        }
        let last = self.rows.len() - 1;
        self.sticky = true;
        self.sel_index = self.sel_index.saturating_add_signed(delta).min(last);
        self.sel_id = self.rows.values().rev().nth(self.sel_index).map(|r| r.id);
    }

    /// Inserts a row, dropping the oldest past the capacity; false if the
    /// new row itself was the oldest.
    fn insert(&mut self, row: TaskRow) -> bool {
        let id = row.id;
        self.rows.insert(id, row);
        while self.rows.len() > self.cap {
            self.rows.pop_first();
        }
        self.fix_selection();
        self.rows.contains_key(&id)
    }

    /// Keeps the selection on its task, or on the row now at its place.
    fn fix_selection(&mut self) {
        let kept = self
            .sel_id
            .filter(|id| self.sticky && self.rows.contains_key(id));
        if let Some(id) = kept {
            self.sel_index = self
                .rows
                .range((Bound::Excluded(id), Bound::Unbounded))
                .count();
            return;
        }
        self.sel_index = self.sel_index.min(self.rows.len().saturating_sub(1));
        self.sel_id = self.rows.values().rev().nth(self.sel_index).map(|r| r.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> TaskId {
        TaskId::from_u128(n)
    }

    #[test]
    fn a_script_keeps_its_lines_and_argv_is_joined() {
        let shell = |command| {
            Kind::Shell(taskgrid_core::ShellSpec {
                command,
                env: vec![],
                cwd: None,
            })
        };
        let script = shell(ShellCommand::Script("echo \"a\\b\"\n\tls".into()));
        assert_eq!(describe(&script), "sh -c \"echo \\\"a\\\\b\\\"\n\tls\"");
        let argv = shell(ShellCommand::Argv(vec!["make".into(), "test".into()]));
        assert_eq!(describe(&argv), "make test");
    }

    #[test]
    fn the_oldest_rows_go_past_the_capacity_and_older_events_are_ignored() {
        let mut l = TaskList::new(3);
        for n in 1..=5 {
            assert!(l.row_for_event(id(n), Some("q"), State::Queued).is_some());
        }
        let ids: Vec<_> = l.newest_first().map(|r| r.id).collect();
        assert_eq!(ids, [id(5), id(4), id(3)]);
        assert!(l.row_for_event(id(1), None, State::Running).is_none());
        assert_eq!(l.len(), 3);
    }

    #[test]
    fn the_selection_follows_its_task_and_falls_back_to_its_place() {
        let mut l = TaskList::new(3);
        l.row_for_event(id(1), None, State::Queued);
        l.row_for_event(id(2), None, State::Queued);
        assert_eq!(l.selected(), Some(id(2)), "the newest until moved");
        l.move_selection(1);
        assert_eq!(l.selected(), Some(id(1)));
        l.row_for_event(id(3), None, State::Queued);
        assert_eq!((l.selected(), l.selected_index()), (Some(id(1)), Some(2)));
        // id 1 is dropped: the row at its place (the oldest) is selected.
        l.row_for_event(id(4), None, State::Queued);
        assert_eq!((l.selected(), l.selected_index()), (Some(id(2)), Some(2)));
        l.move_selection(-10);
        assert_eq!(l.selected(), Some(id(4)));
    }
}
