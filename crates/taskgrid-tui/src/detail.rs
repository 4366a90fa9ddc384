//! The open task's view: what it is and where it stands, its attempts, a
//! progress gauge fed by progress events, and its output as it comes (or
//! scrolled back).

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Gauge, Paragraph};
use taskgrid_core::Stream;

use crate::state::{App, Detail};
use crate::view::state_style;

/// Draws the open task `d` in `area`.
pub(crate) fn draw(frame: &mut Frame<'_>, area: Rect, app: &App, d: &Detail) {
    let block = Block::bordered().title(format!(" task {} ", d.id));
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let info = info_lines(app, d);
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

fn field(name: &'static str, value: impl Into<String>) -> Line<'static> {
    Line::from(vec![
        Span::styled(
            format!("{name:<9}"),
            Style::new().add_modifier(Modifier::BOLD),
        ),
        Span::raw(value.into()),
    ])
}

fn info_lines(app: &App, d: &Detail) -> Vec<Line<'static>> {
    let row = app.tasks.get(d.id);
    let state = d.state().or_else(|| row.map(|r| (r.state, r.attempt)));
    let mut lines = Vec::new();
    let mut first = vec![Span::styled(
        format!("{:<9}", "state"),
        Style::new().add_modifier(Modifier::BOLD),
    )];
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
            first.push(Span::raw(format!("   worker {w}")));
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
    lines.push(field("queue", queue));
    lines.push(field("what", t.spec.kind.describe()));
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
        lines.push(field("attempts", attempts.join(" · ")));
    }
    let result = d
        .end
        .as_ref()
        .and_then(|e| e.result.as_deref())
        .or(t.status.result.as_deref());
    if let Some(r) = result {
        lines.push(field("result", one_line(r)));
    }
    let error = d
        .end
        .as_ref()
        .and_then(|e| e.error.as_ref())
        .or(t.status.error.as_ref());
    if let Some(e) = error {
        lines.push(field("error", one_line(&e.message)));
    }
    lines
}

fn one_line(s: &str) -> String {
    s.chars()
        .take(300)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
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
