//! The open task's view: what it is and where it stands, its attempts, a
//! progress gauge fed by progress events, and its output as it comes (or
//! scrolled back).
//!
//! What the task runs is shown on its own lines, as many as the output
//! leaves room for; every other field is one line, its breaks made visible.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Gauge, Paragraph};
use taskgrid_core::Stream;

use crate::state::{App, Detail};
use crate::tasks::describe;
use crate::text::{self, one_line};
use crate::view::state_style;

/// The width of a field's name: its value starts after it.
const NAME_WIDTH: usize = 9;
/// Rows kept for the output box however long the command: its borders
/// and two lines.
const OUTPUT_MIN_ROWS: usize = 4;
/// Lines of the command shown at most; the rest are counted.
const COMMAND_LINES_MAX: usize = 12;
/// Characters of a result or an error shown.
const MESSAGE_CHARS_MAX: usize = 300;

/// Draws the open task `d` in `area`.
pub(crate) fn draw(frame: &mut Frame<'_>, area: Rect, app: &App, d: &Detail) {
    let block = Block::bordered().title(format!(" task {} ", d.id));
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let info = info_lines(app, d, usize::from(inner.height));
    let height = u16::try_from(info.len()).unwrap_or(u16::MAX);
    let [info_area, gauge_area, output_area] = Layout::vertical([
        Constraint::Length(height),
        Constraint::Length(1),
        Constraint::Min(0),
    ])
    .areas(inner);
    frame.render_widget(Paragraph::new(info), info_area);
    draw_progress(frame, gauge_area, d);
    draw_output(frame, output_area, d);
}

fn label(name: &'static str) -> Span<'static> {
    Span::styled(
        format!("{name:<NAME_WIDTH$}"),
        Style::new().add_modifier(Modifier::BOLD),
    )
}

/// A field on one line.
fn field(name: &'static str, value: &str) -> Line<'static> {
    Line::from(vec![label(name), Span::raw(one_line(value))])
}

/// The lines of the open task's fields, in `height` rows with the gauge and
/// the output.
fn info_lines(app: &App, d: &Detail, height: usize) -> Vec<Line<'static>> {
    let row = app.tasks.get(d.id);
    let state = d.state().or_else(|| row.map(|r| (r.state, r.attempt)));
    let mut lines = Vec::new();
    let mut first = vec![label("state")];
    match state {
        Some((s, attempt)) => {
            first.push(Span::styled(s.as_str(), state_style(s)));
            first.push(Span::raw(format!("   attempt {attempt}")));
        }
        None => first.push(Span::raw("loading…")),
    }
    if let Some(t) = &d.task {
        first.push(Span::raw(format!("   retries {}", t.status.retries)));
        if let Some(w) = &t.status.worker {
            first.push(Span::raw(format!("   worker {}", one_line(w.as_str()))));
        }
    }
    lines.push(Line::from(first));
    let Some(t) = &d.task else {
        return lines;
    };
    let mut queue = format!("{}   priority {}", t.spec.queue, t.spec.priority);
    if !t.spec.tags.is_empty() {
        queue.push_str(&format!("   tags {}", t.spec.tags.join(", ")));
    }
    lines.push(field("queue", &queue));
    let what_at = lines.len();
    if !d.attempts.is_empty() {
        let attempts: Vec<String> = d
            .attempts
            .iter()
            .map(|a| {
                let outcome = a.outcome.map_or("running", |o| o.as_str());
                let code = a
                    .exit_code
                    .map(|c| format!(" exit {c}"))
                    .unwrap_or_default();
                format!("#{} {} {outcome}{code}", a.attempt, a.worker)
            })
            .collect();
        lines.push(field("attempts", &attempts.join(" · ")));
    }
    let result = d
        .end
        .as_ref()
        .and_then(|e| e.result.as_deref())
        .or(t.status.result.as_deref());
    if let Some(r) = result {
        lines.push(field("result", &short(r)));
    }
    let error = d
        .end
        .as_ref()
        .and_then(|e| e.error.as_ref())
        .or(t.status.error.as_ref());
    if let Some(e) = error {
        lines.push(field("error", &short(&e.message)));
    }
    // The command gets what the other fields, the gauge and the output
    // leave.
    let room = height
        .saturating_sub(lines.len() + 1 + OUTPUT_MIN_ROWS)
        .clamp(1, COMMAND_LINES_MAX);
    let what = what_lines(&describe(&t.spec.kind), room);
    lines.splice(what_at..what_at, what);
    lines
}

/// The `what` field: the command on its own lines, at most `room` of them
/// (two when `room` is one), the last saying how many more there are.
fn what_lines(what: &str, room: usize) -> Vec<Line<'static>> {
    let total = text::lines(what).count();
    let keep = if total <= room {
        total
    } else {
        room.saturating_sub(1).max(1)
    };
    let mut lines: Vec<Line<'static>> = text::lines(what)
        .take(keep)
        .enumerate()
        .map(|(i, l)| {
            let head = if i == 0 {
                label("what")
            } else {
                Span::raw(" ".repeat(NAME_WIDTH))
            };
            Line::from(vec![head, Span::raw(text::shown(l))])
        })
        .collect();
    if total > keep {
        lines.push(Line::from(vec![
            Span::raw(" ".repeat(NAME_WIDTH)),
            Span::styled(
                format!("… {} more lines", total - keep),
                Style::new().fg(Color::DarkGray),
            ),
        ]));
    }
    lines
}

/// A result or an error message: its start, on one line.
fn short(s: &str) -> String {
    let start: String = s.chars().take(MESSAGE_CHARS_MAX).collect();
    one_line(&start)
}

fn draw_progress(frame: &mut Frame<'_>, area: Rect, d: &Detail) {
    match &d.progress {
        Some(p) => {
            let ratio = f64::from(p.fraction.clamp(0.0, 1.0));
            let mut label = format!("{:.0}%", ratio * 100.0);
            if let Some(m) = &p.message {
                label.push(' ');
                label.push_str(&one_line(m));
            }
            frame.render_widget(
                Gauge::default()
                    .ratio(ratio)
                    .label(label)
                    .gauge_style(Style::new().fg(Color::Cyan).bg(Color::Black)),
                area,
            );
        }
        None => frame.render_widget(
            Paragraph::new("progress not reported").style(Style::new().fg(Color::DarkGray)),
            area,
        ),
    }
}

fn draw_output(frame: &mut Frame<'_>, area: Rect, d: &Detail) {
    let mut title = match (&d.end, d.scroll) {
        (_, n) if n > 0 => format!(" output, {n} lines back (End follows) "),
        (Some(end), _) => format!(" output, finished: {} ", end.state),
        (None, _) => " output, following ".to_owned(),
    };
    if d.output.dropped() > 0 {
        title.push_str(&format!("· {} earlier lines dropped ", d.output.dropped()));
    }
    let block = Block::bordered().title(title);
    let inner = block.inner(area);
    let end = d.output.len().saturating_sub(d.scroll);
    let start = end.saturating_sub(usize::from(inner.height));
    let lines: Vec<Line<'_>> = d
        .output
        .lines(start..end)
        .map(|l| {
            let style = match l.stream {
                Stream::Stdout => Style::new(),
                Stream::Stderr => Style::new().fg(Color::Red),
                Stream::Log => Style::new().fg(Color::Cyan),
            };
            Line::styled(l.text.as_str(), style)
        })
        .collect();
    let body = if lines.is_empty() {
        Paragraph::new("no output yet").style(Style::new().fg(Color::DarkGray))
    } else {
        Paragraph::new(lines)
    };
    frame.render_widget(body.block(block), area);
}
