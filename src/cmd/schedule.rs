//! `taskgrid schedule …`: cron and periodic tasks on a coordinator.

use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use taskgrid_api::{ScheduleInfo, ScheduleRequest};
use taskgrid_core::{FireOutcome, FireRecord, Overlap, ScheduleGate, Timestamp, duration_millis};

use super::client::{Conn, when};
use super::submit::{TaskFlags, parse_duration, request};

/// `taskgrid schedule`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: Sub,
}

#[derive(Debug, Subcommand)]
enum Sub {
    /// Create a schedule: a cron expression or an interval, and the task
    /// each fire submits (the same flags as `submit`, the command after
    /// `--`).
    Add(Box<DefineArgs>),
    /// Replace a schedule's definition (the same options as `add`),
    /// keeping its runs and history.
    Edit(Box<DefineArgs>),
    /// List schedules with their next fire.
    #[command(visible_alias = "ls")]
    List(ListArgs),
    /// Show a schedule: its definition, next fires, what holds it back and
    /// its last fires with their tasks.
    Show(NameArgs),
    /// Say why a schedule is not firing, or what holds its next fire back
    /// (paused, ended, max runs reached, not started, a live previous
    /// task, buffered fires, times missed beyond the catch-up window).
    Explain(NameArgs),
    /// Stop a schedule firing (fires due while paused are not run later).
    Pause(PauseArgs),
    /// Let a paused schedule fire again, from its next scheduled time.
    Resume(NameArgs),
    /// Run a schedule's task now, whatever its overlap policy.
    Trigger(NameArgs),
    /// Run the past fires of a time range that were not backfilled before.
    Backfill(BackfillArgs),
    /// Delete a schedule and its fire history (its tasks run on).
    Delete(NameArgs),
}

/// Options of `schedule add` and `schedule edit`.
#[derive(Debug, clap::Args)]
pub(crate) struct DefineArgs {
    #[command(flatten)]
    conn: Conn,
    /// The schedule's name (letters, digits, `-_.:`).
    name: String,
    /// Cron expression: 5 fields (`0 3 * * *`) or 6 with seconds first;
    /// `L`, `W`, `#` and names allowed.
    #[arg(long, required_unless_present = "every", conflicts_with = "every")]
    cron: Option<String>,
    /// Fire every DURATION instead (e.g. 30s, 5m), at multiples of it
    /// since the epoch.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    every: Option<Duration>,
    /// With --every: offset of the fires from those multiples.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION", requires = "every")]
    phase: Option<Duration>,
    /// IANA time zone the cron expression is read in (default UTC).
    #[arg(long, value_name = "ZONE")]
    tz: Option<String>,
    /// Delay each fire by up to this much (a fixed amount per scheduled time).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    jitter: Option<Duration>,
    /// While the previous task is live: skip, buffer-one, buffer-all,
    /// cancel-previous or allow-all.
    #[arg(long, default_value = "skip")]
    overlap: Overlap,
    /// Run fires missed (coordinator down) by at most this much; older ones
    /// are recorded as missed (default 1m).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    catch_up: Option<Duration>,
    /// No fire before this time (RFC 3339, e.g. 2027-01-01T00:00:00Z).
    #[arg(long, value_parser = parse_time, value_name = "TIME")]
    start: Option<Timestamp>,
    /// No fire after this time (RFC 3339).
    #[arg(long, value_parser = parse_time, value_name = "TIME")]
    end: Option<Timestamp>,
    /// Stop after this many fires that ran a task.
    #[arg(long, value_name = "N")]
    max_runs: Option<u64>,
    #[command(flatten)]
    task: TaskFlags,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    conn: Conn,
}

#[derive(Debug, clap::Args)]
pub(crate) struct NameArgs {
    #[command(flatten)]
    conn: Conn,
    /// The schedule.
    name: String,
}

#[derive(Debug, clap::Args)]
pub(crate) struct PauseArgs {
    #[command(flatten)]
    conn: Conn,
    /// The schedule.
    name: String,
    /// Why (shown with the schedule).
    #[arg(long)]
    note: Option<String>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct BackfillArgs {
    #[command(flatten)]
    conn: Conn,
    /// The schedule.
    name: String,
    /// The first scheduled time to run (RFC 3339).
    #[arg(long, value_parser = parse_time, value_name = "TIME")]
    from: Timestamp,
    /// The last (RFC 3339).
    #[arg(long, value_parser = parse_time, value_name = "TIME")]
    to: Timestamp,
}

/// An RFC 3339 time (`2027-01-01T03:00:00Z`, or with an offset).
fn parse_time(s: &str) -> Result<Timestamp, String> {
    let t = chrono::DateTime::parse_from_rfc3339(s)
        .map_err(|e| format!("{s:?} is not an RFC 3339 time such as 2027-01-01T03:00:00Z: {e}"))?;
    u64::try_from(t.timestamp_micros())
        .map(Timestamp::from_micros)
        .map_err(|_| format!("{s:?} is before 1970"))
}

fn definition(a: &DefineArgs) -> anyhow::Result<ScheduleRequest> {
    Ok(ScheduleRequest {
        name: Some(a.name.clone()),
        cron: a.cron.clone(),
        every_ms: a.every.map(duration_millis),
        phase_ms: a.phase.map(duration_millis),
        tz: a.tz.clone(),
        jitter_ms: a.jitter.map(duration_millis),
        start: a.start,
        end: a.end,
        max_runs: a.max_runs,
        overlap: a.overlap,
        catch_up_ms: a.catch_up.map(duration_millis),
        task: request(&a.task)?,
    })
}

pub(crate) async fn run(a: Args) -> anyhow::Result<i32> {
    match a.command {
        Sub::Add(d) => define(*d, false).await,
        Sub::Edit(d) => define(*d, true).await,
        Sub::List(l) => list(l).await,
        Sub::Show(n) => show(n).await,
        Sub::Explain(n) => explain(n).await,
        Sub::Pause(p) => {
            let s = p.conn.client()?.pause_schedule(&p.name, p.note).await?;
            print_info(&p.conn, &s, "paused")
        }
        Sub::Resume(n) => {
            let s = n.conn.client()?.resume_schedule(&n.name).await?;
            print_info(&n.conn, &s, "resumed")
        }
        Sub::Trigger(n) => {
            let fires = n.conn.client()?.trigger_schedule(&n.name).await?;
            print_fires(&n.conn, &fires)
        }
        Sub::Backfill(b) => {
            let fires = b
                .conn
                .client()?
                .backfill_schedule(&b.name, b.from, b.to)
                .await?;
            if !b.conn.json && fires.is_empty() {
                println!(
                    "nothing to backfill: no past fire of {} in that range that was not backfilled before",
                    b.name
                );
                return Ok(0);
            }
            print_fires(&b.conn, &fires)
        }
        Sub::Delete(n) => {
            n.conn.client()?.delete_schedule(&n.name).await?;
            if !n.conn.json {
                println!("deleted schedule {}", n.name);
            }
            Ok(0)
        }
    }
}

async fn define(a: DefineArgs, replace: bool) -> anyhow::Result<i32> {
    let def = definition(&a)?;
    let s = a
        .conn
        .client()?
        .put_schedule(&a.name, &def, replace)
        .await
        .with_context(|| format!("schedule {}", a.name))?;
    print_info(&a.conn, &s, if replace { "updated" } else { "created" })
}

fn print_info(conn: &Conn, s: &ScheduleInfo, what: &str) -> anyhow::Result<i32> {
    if conn.json {
        println!("{}", serde_json::to_string_pretty(s)?);
        return Ok(0);
    }
    println!("{what} schedule {} ({})", s.name, recurrence(s));
    match s.next {
        Some(n) => println!("next fire: {}", when(n)),
        None if s.paused => println!("paused; no fire until resumed"),
        None => println!("no further fire"),
    }
    Ok(0)
}

fn recurrence(s: &ScheduleInfo) -> String {
    let d = &s.definition;
    let base = match (&d.cron, d.every_ms) {
        (Some(c), _) => format!("cron '{c}'"),
        (None, Some(ms)) => format!(
            "every {}",
            humantime::format_duration(Duration::from_millis(ms))
        ),
        (None, None) => "?".to_owned(),
    };
    match &d.tz {
        Some(tz) => format!("{base} {tz}"),
        None => base,
    }
}

async fn list(a: ListArgs) -> anyhow::Result<i32> {
    let all = a.conn.client()?.schedules().await?;
    if a.conn.json {
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(0);
    }
    if all.is_empty() {
        println!("no schedules (add one: taskgrid schedule add NAME --cron '0 3 * * *' -- CMD)");
        return Ok(0);
    }
    println!(
        "{:<24} {:<28} {:<15} {:>6}  NEXT",
        "NAME", "WHEN", "OVERLAP", "RUNS"
    );
    for s in &all {
        let next = match s.next {
            Some(n) => when(n),
            None if s.paused => "paused".to_owned(),
            None => "ended".to_owned(),
        };
        println!(
            "{:<24} {:<28} {:<15} {:>6}  {next}",
            s.name,
            recurrence(s),
            s.definition.overlap.as_str(),
            s.runs
        );
    }
    Ok(0)
}

async fn show(a: NameArgs) -> anyhow::Result<i32> {
    let d = a.conn.client()?.schedule(&a.name).await?;
    if a.conn.json {
        println!("{}", serde_json::to_string_pretty(&d)?);
        return Ok(0);
    }
    let s = &d.schedule;
    println!("schedule {}: {}", s.name, recurrence(s));
    println!("  overlap     {}", s.definition.overlap.as_str());
    if let Some(ms) = s.definition.catch_up_ms {
        println!(
            "  catch-up    {}",
            humantime::format_duration(Duration::from_millis(ms))
        );
    }
    if let Some(ms) = s.definition.jitter_ms {
        println!(
            "  jitter      up to {}",
            humantime::format_duration(Duration::from_millis(ms))
        );
    }
    if let Some(t) = s.definition.start {
        println!("  start       {}", when(t));
    }
    if let Some(t) = s.definition.end {
        println!("  end         {}", when(t));
    }
    match s.definition.max_runs {
        Some(m) => println!("  runs        {} of {m}", s.runs),
        None => println!("  runs        {}", s.runs),
    }
    let task = &s.definition.task;
    println!(
        "  task        {} on queue {}",
        serde_json::to_string(&task.kind)?,
        task.queue
    );
    if !s.live.is_empty() {
        let live: Vec<String> = s.live.iter().map(ToString::to_string).collect();
        println!("  live tasks  {}", live.join(", "));
    }
    for g in &d.gates {
        println!("  held back   {}", gate_text(g));
    }
    if s.upcoming.is_empty() {
        println!("next fires: none");
    } else {
        println!("next fires:");
        for t in &s.upcoming {
            println!("  {}", when(*t));
        }
    }
    if d.fires.is_empty() {
        println!("no fires yet");
    } else {
        println!("last fires (newest first):");
        for f in &d.fires {
            println!("  {}", fire_text(f));
        }
    }
    Ok(0)
}

fn gate_text(g: &ScheduleGate) -> String {
    match g {
        ScheduleGate::Paused { note: Some(n) } => format!("paused: {n}"),
        ScheduleGate::Paused { note: None } => "paused".to_owned(),
        ScheduleGate::Ended => "ended: no scheduled time after its end".to_owned(),
        ScheduleGate::MaxRunsReached { max_runs } => format!("ran its {max_runs} runs"),
        ScheduleGate::NotStarted { start } => format!("starts {}", when(*start)),
        ScheduleGate::Overlap { policy, task } => format!(
            "task {task} is still live: the next fire will {}",
            match policy {
                Overlap::Skip => "be skipped",
                _ => "wait for it",
            }
        ),
        ScheduleGate::Buffered { count } => format!("{count} fire(s) waiting for it"),
        ScheduleGate::Missed { at, until, .. } if at == until => format!(
            "missed {}: due longer ago than the catch-up window (the coordinator was down)",
            when(*at)
        ),
        ScheduleGate::Missed { at, until, count } => format!(
            "missed {count} fires from {} to {}: due longer ago than the catch-up window (the coordinator was down)",
            when(*at),
            when(*until)
        ),
    }
}

async fn explain(a: NameArgs) -> anyhow::Result<i32> {
    let d = a.conn.client()?.schedule(&a.name).await?;
    if a.conn.json {
        println!("{}", serde_json::to_string_pretty(&d.gates)?);
        return Ok(0);
    }
    let s = &d.schedule;
    match (s.next, s.next_due) {
        (Some(next), Some(due)) if due != next => {
            println!("{}: next fire {} (due {})", s.name, when(next), when(due));
        }
        (Some(next), _) => println!("{}: next fire {}", s.name, when(next)),
        (None, _) => println!("{}: no next fire", s.name),
    }
    if d.gates.is_empty() {
        println!("  nothing holds it back: it fires as planned");
    }
    for g in &d.gates {
        println!("  {}", gate_text(g));
    }
    Ok(0)
}

fn fire_text(f: &FireRecord) -> String {
    let manual = if f.manual { " (manual)" } else { "" };
    let at = when(f.at);
    match f.outcome {
        FireOutcome::Submitted => format!(
            "{at}{manual}  submitted {}",
            f.task.map(|t| t.to_string()).unwrap_or_default()
        ),
        FireOutcome::Missed => format!(
            "{at}  missed {} fire(s){}: {}",
            f.count,
            f.until
                .map(|u| format!(" until {}", when(u)))
                .unwrap_or_default(),
            f.reason.as_deref().unwrap_or("")
        ),
        other => format!(
            "{at}{manual}  {}: {}",
            other.as_str(),
            f.reason.as_deref().unwrap_or("")
        ),
    }
}

fn print_fires(conn: &Conn, fires: &[FireRecord]) -> anyhow::Result<i32> {
    if conn.json {
        println!("{}", serde_json::to_string_pretty(fires)?);
        return Ok(0);
    }
    for f in fires {
        println!("{}", fire_text(f));
    }
    Ok(0)
}
