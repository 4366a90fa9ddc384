//! What each key does, as part of [`crate::update`].
//!
//! Tab/Shift-Tab or `1`–`5` switch tabs, ↑/↓ (`k`/`j`), PgUp/PgDn and
//! Home/End (`g`/`G`) move the selection (or scroll the open task's
//! output), Enter opens a task, Esc closes it, `c` then `y` cancels, `r`
//! reloads, `q` quits.
//!
//! On the Schedules tab Enter opens the selected schedule's panel (which
//! then follows the selection) and Esc closes it; `p` pauses the selected
//! schedule, or resumes it when paused, and `t` triggers it now.

use crate::state::{App, Tab};
use crate::text::one_line;
use crate::update::{Effect, Key, cancellable, load_tasks, open_detail, open_schedule};

/// Rows moved by PgUp/PgDn.
const PAGE: isize = 10;
/// A move that reaches either end.
const FAR: isize = isize::MAX / 2;

pub(crate) fn on_key(app: &mut App, key: Key) -> Vec<Effect> {
    if let Some(id) = app.confirm.take() {
        return match key {
            Key::Char('y' | 'Y') => {
                app.notice = Some(format!("cancelling {id}…"));
                vec![Effect::Cancel(id)]
            }
            Key::CtrlC => quit(app),
            _ => {
                app.notice = Some("cancel not sent".to_owned());
                Vec::new()
            }
        };
    }
    match key {
        Key::Char('q') | Key::CtrlC => quit(app),
        Key::Tab => switch(app, app.tab.next()),
        Key::BackTab => switch(app, app.tab.prev()),
        Key::Char(c @ '1'..='9') => {
            let i = usize::from(c as u8 - b'1');
            match Tab::ALL.get(i) {
                Some(tab) => switch(app, *tab),
                None => Vec::new(),
            }
        }
        Key::Char('r') => {
            app.notice = Some("reloading".to_owned());
            vec![Effect::Refresh, load_tasks(app, None)]
        }
        Key::Esc => {
            if app.detail.take().is_some() {
                vec![Effect::CloseDetail]
            } else if app.schedule_panel.take().is_some() {
                vec![Effect::CloseSchedule]
            } else {
                app.last_error = None;
                app.notice = None;
                Vec::new()
            }
        }
        Key::Enter => enter(app),
        Key::Char('c') => ask_cancel(app),
        Key::Char('p') => pause_or_resume(app),
        Key::Char('t') => trigger(app),
        Key::Up | Key::Char('k') => move_by(app, -1),
        Key::Down | Key::Char('j') => move_by(app, 1),
        Key::PageUp => move_by(app, -PAGE),
        Key::PageDown => move_by(app, PAGE),
        Key::Home | Key::Char('g') => move_by(app, -FAR),
        Key::End | Key::Char('G') => move_by(app, FAR),
        Key::Char(_) => Vec::new(),
    }
}

fn quit(app: &mut App) -> Vec<Effect> {
    app.quit = true;
    vec![Effect::Quit]
}

/// Shows `tab`, closing the open task and the open schedule.
fn switch(app: &mut App, tab: Tab) -> Vec<Effect> {
    app.tab = tab;
    let mut effects = Vec::new();
    if app.detail.take().is_some() {
        effects.push(Effect::CloseDetail);
    }
    if app.schedule_panel.take().is_some() {
        effects.push(Effect::CloseSchedule);
    }
    effects
}

/// The schedule `p` and `t` act on: the selected one of the Schedules
/// tab (the open panel's, which follows the selection).
fn target_schedule(app: &App) -> Option<(String, bool)> {
    if app.tab != Tab::Schedules || app.detail.is_some() {
        return None;
    }
    app.schedules
        .get(app.schedule_sel)
        .map(|s| (s.name.clone(), s.paused))
}

/// Pauses the selected schedule, or resumes it when paused.
fn pause_or_resume(app: &mut App) -> Vec<Effect> {
    match target_schedule(app) {
        Some((name, true)) => {
            app.notice = Some(format!("resuming {}…", one_line(&name)));
            vec![Effect::ResumeSchedule(name)]
        }
        Some((name, false)) => {
            app.notice = Some(format!("pausing {}…", one_line(&name)));
            vec![Effect::PauseSchedule(name)]
        }
        None => Vec::new(),
    }
}

/// Triggers the selected schedule now.
fn trigger(app: &mut App) -> Vec<Effect> {
    match target_schedule(app) {
        Some((name, _)) => {
            app.notice = Some(format!("triggering {}…", one_line(&name)));
            vec![Effect::TriggerSchedule(name)]
        }
        None => Vec::new(),
    }
}

/// Opens the selected task of the Tasks tab, the task of the selected
/// event in the Logs tab, or the selected schedule's panel.
fn enter(app: &mut App) -> Vec<Effect> {
    if app.detail.is_some() {
        return Vec::new();
    }
    if app.tab == Tab::Schedules {
        return match app.selected_schedule() {
            Some(name) if app.open_schedule() != Some(name) => {
                let name = name.to_owned();
                open_schedule(app, name)
            }
            _ => Vec::new(),
        };
    }
    let target = match app.tab {
        Tab::Tasks => app.tasks.selected(),
        Tab::Logs => {
            let i = app.log_sel.unwrap_or(app.logs.len().saturating_sub(1));
            app.logs.get(i).and_then(|l| l.task)
        }
        Tab::Workers | Tab::Queues | Tab::Schedules => None,
    };
    match target {
        Some(id) => open_detail(app, id),
        None => Vec::new(),
    }
}

/// Asks to confirm cancelling the open or selected task.
fn ask_cancel(app: &mut App) -> Vec<Effect> {
    let (id, state) = match &app.detail {
        Some(d) => (Some(d.id), d.state().map(|(s, _)| s)),
        None if app.tab == Tab::Tasks => {
            let id = app.tasks.selected();
            (id, id.and_then(|id| app.tasks.get(id)).map(|r| r.state))
        }
        None => (None, None),
    };
    match id {
        None => app.notice = Some("select a task to cancel".to_owned()),
        Some(id) if !cancellable(state) => {
            app.notice = Some(format!("{id} has already finished"));
        }
        Some(id) => app.confirm = Some(id),
    }
    Vec::new()
}

/// Moves the selection of the tab shown, or scrolls the open task's
/// output (up is back in time; the far end down follows it again). An
/// open schedule's panel follows the selection.
fn move_by(app: &mut App, delta: isize) -> Vec<Effect> {
    if let Some(d) = app.detail.as_mut() {
        let max = d.output.len().saturating_sub(1);
        d.scroll = d.scroll.saturating_add_signed(-delta).min(max);
        return Vec::new();
    }
    match app.tab {
        Tab::Workers => app.worker_sel = step(app.worker_sel, delta, app.workers.len()),
        Tab::Queues => app.queue_sel = step(app.queue_sel, delta, app.queues.len()),
        Tab::Schedules => {
            app.schedule_sel = step(app.schedule_sel, delta, app.schedules.len());
            if let (Some(open), Some(sel)) = (app.open_schedule(), app.selected_schedule())
                && open != sel
            {
                let sel = sel.to_owned();
                return open_schedule(app, sel);
            }
        }
        Tab::Tasks => app.tasks.move_selection(delta),
        Tab::Logs => {
            let last = app.logs.len().saturating_sub(1);
            let next = step(app.log_sel.unwrap_or(last), delta, app.logs.len());
            app.log_sel = (next < last || delta < 0).then_some(next);
        }
    }
    Vec::new()
}

fn step(index: usize, delta: isize, len: usize) -> usize {
    index
        .saturating_add_signed(delta)
        .min(len.saturating_sub(1))
}
