//! The Schedules tab: a table of the coordinator's schedules (name, when
//! it fires, whether it is paused, its next fire, runs, live tasks and the
//! last task), and under it the open schedule's panel: its definition,
//! what holds it back, its next times and its last fires.
//!
//! Names, notes and reasons came from people and are shown on one line
//! ([`one_line`]); times are relative to the last refresh's clock
//! ([`crate::time`]).

use std::time::Duration;

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph, Row, TableState};
use taskgrid_api::ScheduleInfo;
use taskgrid_core::{FireOutcome, FireRecord, Overlap, ScheduleGate, TaskId, Timestamp};

use crate::state::{App, SchedulePanel};
use crate::tasks::describe;
use crate::text::one_line;
use crate::time::{span, utc, when};
use crate::view::{SHORT_ID, header, table};

/// The width of a field's name in the panel: its value starts after it.
const NAME_WIDTH: usize = 10;
/// Rows the table keeps when the panel is open (borders, header, rows).
const TABLE_MIN_ROWS: u16 = 5;

/// Draws the Schedules tab in `area`: the table, and the open schedule's
/// panel under it.
pub(crate) fn draw(frame: &mut Frame<'_>, area: Rect, app: &App) {
    let Some(panel) = &app.schedule_panel else {
        draw_table(frame, area, app);
        return;
    };
    let lines = panel_lines(app, panel);
    let want = u16::try_from(lines.len() + 2).unwrap_or(u16::MAX);
    let room = area
        .height
        .saturating_sub(TABLE_MIN_ROWS)
        .max(area.height / 2);
    let [top, bottom] =
        Layout::vertical([Constraint::Min(0), Constraint::Length(want.min(room))]).areas(area);
    draw_table(frame, top, app);
    frame.render_widget(
        Paragraph::new(lines)
            .block(Block::bordered().title(format!(" schedule {} ", one_line(&panel.name)))),
        bottom,
    );
}

fn draw_table(frame: &mut Frame<'_>, area: Rect, app: &App) {
    let rows = app.schedules.iter().map(|s| {
        let (state, style) = state_text(s);
        let next = s
            .next_due
            .or(s.next)
            .map_or_else(|| "-".to_owned(), |t| when(t, app.now));
        Row::new([
            Span::raw(one_line(&s.name)),
            Span::raw(one_line(&spec_text(s))),
            Span::styled(one_line(&state), style),
            Span::raw(next),
            Span::raw(s.runs.to_string()),
            Span::raw(s.live.len().to_string()),
            Span::raw(s.last_task.map(short_id).unwrap_or_default()),
        ])
    });
    let widths = [
        Constraint::Fill(2),
        Constraint::Fill(3),
        Constraint::Fill(2),
        Constraint::Length(12),
        Constraint::Length(6),
        Constraint::Length(4),
        Constraint::Length(SHORT_ID as u16),
    ];
    let head = header(&[
        "name",
        "spec",
        "state",
        "next fire",
        "runs",
        "live",
        "last task",
    ]);
    let mut state = TableState::default().with_selected(Some(app.schedule_sel));
    frame.render_stateful_widget(
        table(rows.collect(), &widths, head, " schedules "),
        area,
        &mut state,
    );
}

/// When `s` fires: its cron expression and time zone, or `every 5m`.
pub(crate) fn spec_text(s: &ScheduleInfo) -> String {
    let d = &s.definition;
    match (&d.cron, d.every_ms) {
        (Some(cron), _) => match &d.tz {
            Some(tz) => format!("{cron} {tz}"),
            None => cron.clone(),
        },
        (None, Some(ms)) => format!("every {}", span(Duration::from_millis(ms), UNITS_ALL)),
        (None, None) => "?".to_owned(),
    }
}

/// Every unit of a duration that is a definition, not an estimate.
const UNITS_ALL: usize = 5;

/// `active`, `paused` (with its note) or `ended` (no further fire), and
/// its colour.
fn state_text(s: &ScheduleInfo) -> (String, Style) {
    match (&s.note, s.paused) {
        (Some(note), true) => (format!("paused: {note}"), Style::new().fg(Color::Yellow)),
        (None, true) => ("paused".to_owned(), Style::new().fg(Color::Yellow)),
        _ if s.next.is_none() => ("ended".to_owned(), Style::new().fg(Color::DarkGray)),
        _ => ("active".to_owned(), Style::new().fg(Color::Green)),
    }
}

/// The end of a task id, as the Tasks tab shows it on a narrow terminal.
fn short_id(id: TaskId) -> String {
    let id = id.to_string();
    let skip = id.chars().count().saturating_sub(SHORT_ID);
    id.chars().skip(skip).collect()
}

/// `t` in UTC, and relative to the clock when it is known.
fn stamp(t: Timestamp, now: Option<Timestamp>) -> String {
    match now {
        Some(_) => format!("{}, {}", utc(t), when(t, now)),
        None => utc(t),
    }
}

fn label(name: &'static str) -> Span<'static> {
    Span::styled(
        format!("{name:<NAME_WIDTH$}"),
        Style::new().add_modifier(Modifier::BOLD),
    )
}

/// The lines of a list field: the name on the first, the others indented.
fn list_field(name: &'static str, items: Vec<Vec<Span<'static>>>) -> Vec<Line<'static>> {
    items
        .into_iter()
        .enumerate()
        .map(|(i, mut spans)| {
            let head = if i == 0 {
                label(name)
            } else {
                Span::raw(" ".repeat(NAME_WIDTH))
            };
            spans.insert(0, head);
            Line::from(spans)
        })
        .collect()
}

/// The panel's lines: the definition and state first, the last fires at
/// the end (cut where the panel ends).
fn panel_lines(app: &App, panel: &SchedulePanel) -> Vec<Line<'static>> {
    let info = panel
        .detail
        .as_ref()
        .map(|d| &d.schedule)
        .or_else(|| app.schedules.iter().find(|s| s.name == panel.name));
    let Some(s) = info else {
        return vec![Line::raw("loading…")];
    };
    let d = &s.definition;
    let mut spec = format!("{} · overlap {}", spec_text(s), d.overlap.as_str());
    match d.max_runs {
        Some(max) => spec.push_str(&format!(" · runs {} of {max}", s.runs)),
        None => spec.push_str(&format!(" · runs {}", s.runs)),
    }
    let task = format!("{}: {}", d.task.queue, describe(&d.task.kind));
    let (state, style) = state_text(s);
    let mut state_line = vec![label("state"), Span::styled(one_line(&state), style)];
    if !s.live.is_empty() {
        let live: Vec<String> = s.live.iter().map(ToString::to_string).collect();
        state_line.push(Span::raw(format!(" · live {}", live.join(", "))));
    }
    let mut lines = vec![
        Line::from(vec![label("spec"), Span::raw(one_line(&spec))]),
        Line::from(vec![label("task"), Span::raw(one_line(&task))]),
        Line::from(state_line),
    ];
    if let Some(detail) = &panel.detail {
        let gates = detail
            .gates
            .iter()
            .map(|g| {
                vec![Span::styled(
                    gate_text(g, app.now),
                    Style::new().fg(Color::Yellow),
                )]
            })
            .collect();
        lines.extend(list_field("held back", gates));
    }
    let upcoming: Vec<Vec<Span<'static>>> = if s.upcoming.is_empty() {
        vec![vec![Span::raw("none")]]
    } else {
        s.upcoming
            .iter()
            .map(|t| vec![Span::raw(stamp(*t, app.now))])
            .collect()
    };
    lines.extend(list_field("upcoming", upcoming));
    let fires: Vec<Vec<Span<'static>>> = match &panel.detail {
        None => vec![vec![Span::raw("loading…")]],
        Some(d) if d.fires.is_empty() => vec![vec![Span::raw("none yet")]],
        Some(d) => d.fires.iter().map(|f| fire_spans(f, app.now)).collect(),
    };
    lines.extend(list_field("fires", fires));
    lines
}

/// One fire: when, what it did (coloured), its task or why not.
fn fire_spans(f: &FireRecord, now: Option<Timestamp>) -> Vec<Span<'static>> {
    let colour = match f.outcome {
        FireOutcome::Submitted => Color::Green,
        FireOutcome::Skipped => Color::Yellow,
        FireOutcome::Missed | FireOutcome::Failed => Color::Red,
    };
    let outcome = match f.outcome {
        FireOutcome::Missed if f.count != 1 => format!("missed {}", f.count),
        o => o.as_str().to_owned(),
    };
    let mut spans = vec![
        Span::raw(format!("{}  ", stamp(f.at, now))),
        Span::styled(outcome, Style::new().fg(colour)),
    ];
    if f.manual {
        spans.push(Span::raw(" (manual)"));
    }
    if let Some(until) = f.until {
        spans.push(Span::raw(format!(" until {}", utc(until))));
    }
    if let Some(task) = f.task {
        spans.push(Span::raw(format!("  {task}")));
    }
    if let Some(reason) = &f.reason {
        spans.push(Span::raw(format!("  {}", one_line(reason))));
    }
    spans
}

/// What holds a schedule back, in words.
fn gate_text(g: &ScheduleGate, now: Option<Timestamp>) -> String {
    match g {
        ScheduleGate::Paused { note: Some(n) } => format!("paused: {}", one_line(n)),
        ScheduleGate::Paused { note: None } => "paused".to_owned(),
        ScheduleGate::Ended => "ended: no scheduled time after its end".to_owned(),
        ScheduleGate::MaxRunsReached { max_runs } => format!("ran its {max_runs} runs"),
        ScheduleGate::NotStarted { start } => format!("starts {}", stamp(*start, now)),
        ScheduleGate::Overlap { policy, task } => format!(
            "task {task} is still live: the next fire will {}",
            match policy {
                Overlap::Skip => "be skipped",
                _ => "wait for it",
            }
        ),
        ScheduleGate::Buffered { count } => format!("{count} fire(s) waiting for it"),
        ScheduleGate::Missed { at, until, count } if at == until || *count == 1 => format!(
            "missed {}: due longer ago than the catch-up window",
            stamp(*at, now)
        ),
        ScheduleGate::Missed { at, until, count } => format!(
            "missed {count} fires from {} to {}: due longer ago than the catch-up window",
            utc(*at),
            utc(*until)
        ),
    }
}
