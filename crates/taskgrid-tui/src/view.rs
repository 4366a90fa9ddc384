//! [`draw`]: one frame of the dashboard from an [`App`] — the tab bar with
//! the coordinator's counters, the tab's table (or the open task; the
//! Schedules tab's with the open schedule's panel under it), a status line
//! and the keys that apply. Reads the state, changes nothing.
//! Text that came from tasks or people is shown on one line, its line
//! breaks made visible ([`one_line`]).

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, List, ListItem, ListState, Paragraph, Row, Table, TableState, Tabs};
use taskgrid_core::State;

use crate::detail;
use crate::schedules;
use crate::state::{App, Connection, Tab};
use crate::text::one_line;

/// Draws `app` on the whole frame.
pub fn draw(frame: &mut Frame<'_>, app: &App) {
    let [top, body, status, help] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(0),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    draw_top(frame, top, app);
    match &app.detail {
        Some(d) => detail::draw(frame, body, app, d),
        None => match app.tab {
            Tab::Workers => draw_workers(frame, body, app),
            Tab::Tasks => draw_tasks(frame, body, app),
            Tab::Queues => draw_queues(frame, body, app),
            Tab::Logs => draw_logs(frame, body, app),
            Tab::Schedules => schedules::draw(frame, body, app),
        },
    }
    frame.render_widget(status_line(app), status);
    frame.render_widget(
        Paragraph::new(help_line(app)).style(Style::new().fg(Color::DarkGray)),
        help,
    );
}

fn draw_top(frame: &mut Frame<'_>, area: Rect, app: &App) {
    let counts = [
        app.workers.len(),
        app.tasks.len(),
        app.queues.len(),
        app.logs.len(),
        app.schedules.len(),
    ];
    let titles: Vec<String> = Tab::ALL
        .iter()
        .zip(counts)
        .map(|(t, n)| format!("{} {} ({n})", t.index() + 1, t.title()))
        .collect();
    // Titles, their padding and dividers.
    let tabs_width: usize = titles.iter().map(|t| t.chars().count() + 3).sum();
    let summary = app
        .metrics
        .as_ref()
        .map(|m| {
            format!(
                "submitted {} · succeeded {} · failed {} · success {:.1}% ",
                m.submitted,
                m.succeeded,
                m.failed + m.timed_out,
                m.success_rate * 100.0
            )
        })
        // The tabs come first: the counters only where they fit beside them.
        .filter(|s| tabs_width + s.chars().count() <= usize::from(area.width))
        .unwrap_or_default();
    let width = u16::try_from(summary.chars().count()).unwrap_or(u16::MAX);
    let [tabs, right] =
        Layout::horizontal([Constraint::Min(0), Constraint::Length(width)]).areas(area);
    frame.render_widget(
        Tabs::new(titles)
            .select(app.tab.index())
            .highlight_style(Style::new().add_modifier(Modifier::REVERSED | Modifier::BOLD)),
        tabs,
    );
    frame.render_widget(
        Paragraph::new(summary).style(Style::new().fg(Color::DarkGray)),
        right,
    );
}

pub(crate) fn header(cells: &[&'static str]) -> Row<'static> {
    Row::new(cells.iter().copied()).style(Style::new().add_modifier(Modifier::BOLD))
}

pub(crate) fn table<'a>(
    rows: Vec<Row<'a>>,
    widths: &[Constraint],
    head: Row<'a>,
    title: &'a str,
) -> Table<'a> {
    Table::new(rows, widths.iter().copied())
        .header(head)
        .block(Block::bordered().title(title))
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
}

fn draw_workers(frame: &mut Frame<'_>, area: Rect, app: &App) {
    let rows = app.workers.iter().map(|w| {
        let labels = w.label_texts();
        let mut can: Vec<&str> = Vec::new();
        if w.shell {
            can.push("shell");
        }
        if w.container {
            can.push("container");
        }
        can.extend(w.handlers.iter().map(String::as_str));
        let health = w.health;
        let load = match (health.and_then(|h| h.load), w.max_load) {
            (Some(l), Some(m)) if l > m => format!("{l:.2}>{m}"),
            (Some(l), _) => format!("{l:.2}"),
            (None, _) => "-".to_owned(),
        };
        let gib = |b: Option<u64>| {
            b.map_or_else(
                || "-".to_owned(),
                |b| format!("{:.1}G", b as f64 / f64::from(1u32 << 30)),
            )
        };
        Row::new([
            one_line(w.id.as_str()),
            format!("{}/{}", w.used, w.slots),
            format!("{:.2}", w.trust),
            load,
            gib(health.and_then(|h| h.memory_available_bytes)),
            gib(health.and_then(|h| h.disk_free_bytes)),
            one_line(&labels.join(", ")),
            one_line(&can.join(", ")),
        ])
    });
    let widths = [
        Constraint::Length(24),
        Constraint::Length(7),
        Constraint::Length(5),
        Constraint::Length(9),
        Constraint::Length(7),
        Constraint::Length(7),
        Constraint::Fill(1),
        Constraint::Fill(2),
    ];
    let head = header(&[
        "id", "slots", "trust", "load/cpu", "mem", "disk", "labels", "handlers",
    ]);
    let mut state = TableState::default().with_selected(Some(app.worker_sel));
    frame.render_stateful_widget(
        table(rows.collect(), &widths, head, " workers "),
        area,
        &mut state,
    );
}

/// The colour of a state.
pub(crate) fn state_style(s: State) -> Style {
    let c = match s {
        State::Pending | State::Retrying => Color::Magenta,
        State::Queued => Color::Yellow,
        State::Assigned | State::Running => Color::Cyan,
        State::Succeeded => Color::Green,
        State::Failed | State::TimedOut => Color::Red,
        State::Cancelled | State::Expired => Color::DarkGray,
    };
    Style::new().fg(c)
}

/// Below this width the Tasks tab shows the end of each id (its most
/// varying part), leaving room for what the task runs.
const FULL_ID_WIDTH: u16 = 110;
/// Characters of an id shown on a narrow terminal.
pub(crate) const SHORT_ID: usize = 12;

fn draw_tasks(frame: &mut Frame<'_>, area: Rect, app: &App) {
    let full = area.width >= FULL_ID_WIDTH;
    let rows = app.tasks.newest_first().map(|t| {
        let progress = t
            .progress
            .map(|p| format!("{:>3.0}%", p.clamp(0.0, 1.0) * 100.0))
            .unwrap_or_default();
        let id = t.id.to_string();
        let id = if full {
            id
        } else {
            id[id.len().saturating_sub(SHORT_ID)..].to_owned()
        };
        Row::new([
            Span::raw(id),
            Span::styled(t.state.as_str(), state_style(t.state)),
            Span::raw(one_line(&t.queue)),
            Span::raw(t.priority.map(|p| p.to_string()).unwrap_or_default()),
            Span::raw(t.attempt.to_string()),
            Span::raw(progress),
            Span::raw(t.what.as_deref().map(one_line).unwrap_or_default()),
        ])
    });
    let id_width = if full { 36 } else { SHORT_ID as u16 };
    let widths = [
        Constraint::Length(id_width),
        Constraint::Length(9),
        Constraint::Length(10),
        Constraint::Length(8),
        Constraint::Length(3),
        Constraint::Length(4),
        Constraint::Fill(1),
    ];
    let head = header(&[
        if full { "id" } else { "id (end)" },
        "state",
        "queue",
        "priority",
        "try",
        "done",
        "what",
    ]);
    let mut state = TableState::default().with_selected(app.tasks.selected_index());
    frame.render_stateful_widget(
        table(rows.collect(), &widths, head, " tasks, newest first "),
        area,
        &mut state,
    );
}

fn draw_queues(frame: &mut Frame<'_>, area: Rect, app: &App) {
    let rows = app.queues.iter().map(|q| {
        let waiting: Vec<String> = q.waiting.iter().map(|(p, n)| format!("{p} {n}")).collect();
        Row::new([
            one_line(&q.name),
            q.ready.to_string(),
            // `3/4`: 3 running of at most 4 (--queue-concurrency).
            match q.concurrency {
                Some(c) => format!("{}/{c}", q.running),
                None => q.running.to_string(),
            },
            if q.paused { "paused" } else { "" }.to_owned(),
            q.limit.map(|l| l.to_string()).unwrap_or_default(),
            waiting.join(", "),
        ])
    });
    let widths = [
        Constraint::Length(20),
        Constraint::Length(7),
        Constraint::Length(8),
        Constraint::Length(7),
        Constraint::Length(7),
        Constraint::Fill(1),
    ];
    let head = header(&[
        "queue",
        "ready",
        "running",
        "paused",
        "limit",
        "waiting by priority",
    ]);
    let mut state = TableState::default().with_selected(Some(app.queue_sel));
    frame.render_stateful_widget(
        table(rows.collect(), &widths, head, " queues "),
        area,
        &mut state,
    );
}

fn draw_logs(frame: &mut Frame<'_>, area: Rect, app: &App) {
    let items: Vec<ListItem<'_>> = app
        .logs
        .iter()
        .map(|l| ListItem::new(one_line(&l.text)))
        .collect();
    let last = app.logs.len().checked_sub(1);
    let mut state = ListState::default().with_selected(app.log_sel.or(last));
    let highlight = match app.log_sel {
        Some(_) => Style::new().add_modifier(Modifier::REVERSED),
        None => Style::new(),
    };
    let title = match app.log_sel {
        Some(_) => " events (End follows) ",
        None => " events, following ",
    };
    frame.render_stateful_widget(
        List::new(items)
            .block(Block::bordered().title(title))
            .highlight_style(highlight),
        area,
        &mut state,
    );
}

fn status_line(app: &App) -> Paragraph<'_> {
    let conn = match &app.connection {
        Connection::Connecting => Span::styled("○ connecting", Style::new().fg(Color::Yellow)),
        Connection::Live => Span::styled("● live", Style::new().fg(Color::Green)),
        Connection::Lost(e) => {
            let e = one_line(e);
            Span::styled(format!("✕ reconnecting ({e})"), Style::new().fg(Color::Red))
        }
    };
    let message = if let Some(id) = app.confirm {
        Span::styled(
            format!("cancel {id}? y = yes, any other key = no"),
            Style::new().fg(Color::Yellow).add_modifier(Modifier::BOLD),
        )
    } else if let Some(e) = &app.last_error {
        Span::styled(
            format!("error: {}", one_line(e)),
            Style::new().fg(Color::Red),
        )
    } else {
        Span::raw(app.notice.as_deref().map(one_line).unwrap_or_default())
    };
    Paragraph::new(Line::from(vec![conn, Span::raw("  "), message]))
}

fn help_line(app: &App) -> &'static str {
    if app.detail.is_some() {
        return "Esc close · ↑↓ PgUp PgDn scroll · End follow · c cancel · Tab/1-5 tabs · q quit";
    }
    match app.tab {
        Tab::Tasks => {
            "Tab/1-5 tabs · ↑↓ move · Enter open · c cancel · r reload · Esc clear · q quit"
        }
        Tab::Logs => "Tab/1-5 tabs · ↑↓ move · End follow · Enter open task · r reload · q quit",
        Tab::Workers | Tab::Queues => "Tab/1-5 tabs · ↑↓ move · r reload · Esc clear · q quit",
        Tab::Schedules if app.schedule_panel.is_some() => {
            "Esc close · ↑↓ move · p pause/resume · t trigger now · r reload · Tab/1-5 tabs · q quit"
        }
        Tab::Schedules => {
            "Tab/1-5 tabs · ↑↓ move · Enter details · p pause/resume · t trigger now · r reload · q quit"
        }
    }
}
