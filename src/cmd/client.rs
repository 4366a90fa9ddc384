//! The client commands: `submit`, `status`, `list`, `logs`, `cancel`,
//! `retry`, `workers`, `queues`, `explain`, `stats` — thin wrappers over the
//! HTTP API with human tables by default and `--json` for scripts.

use std::fmt::Write as _;
use std::io::Write;
use std::time::Duration;

use anyhow::{Context, bail};
use taskgrid_client::{Client, FollowItem};
use taskgrid_core::{
    LabelReq, MetricsSnapshot, Priority, RetryPolicy, ShellCommand, ShellSpec, State, Stream,
    TaskId,
};
use taskgrid_proto::api::{EventFilter, EventKind, Kind, ListQuery, SubmitRequest};

/// Where the coordinator is and how to talk to it.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Conn {
    /// The coordinator's address.
    #[arg(
        long,
        global = true,
        env = "TASKGRID_SERVER",
        default_value = "http://127.0.0.1:7070"
    )]
    server: String,
    /// Client token.
    #[arg(long, global = true, env = "TASKGRID_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
}

impl Conn {
    fn client(&self) -> anyhow::Result<Client> {
        Client::new(&self.server, self.token.clone())
            .with_context(|| format!("coordinator {}", self.server))
    }
}

/// A duration: `500ms`, `30s`, `5m`, `2h`, or plain seconds.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 500ms, 30s, 5m"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => {
            return Err(format!(
                "invalid duration unit {unit:?} in {s:?}: use ms, s, m or h"
            ));
        }
    };
    if !secs.is_finite() || !(0.0..=365.0 * 86400.0).contains(&secs) {
        return Err(format!("duration {s:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Options of `taskgrid submit`.
#[derive(Debug, clap::Args)]
pub(crate) struct SubmitArgs {
    #[command(flatten)]
    conn: Conn,
    /// Wait for the task: stream its output and exit with its exit code
    /// (1 if it failed without one, 124 if it timed out). Ctrl-C cancels it.
    #[arg(long)]
    wait: bool,
    /// Queue.
    #[arg(long, default_value = "default")]
    queue: String,
    /// critical, high, normal, low or 0-255.
    #[arg(long, default_value = "normal")]
    priority: Priority,
    /// Required worker label (`key` or `key=value`); repeatable.
    #[arg(long = "label")]
    labels: Vec<LabelReq>,
    /// Longest the task may run (e.g. 30s, 5m).
    #[arg(long, value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// Retries after a failure.
    #[arg(long, default_value_t = 0)]
    retries: u32,
    /// Tag; repeatable.
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Run only after this task succeeded; repeatable.
    #[arg(long = "after")]
    after: Vec<TaskId>,
    /// Start no sooner than this (e.g. 10s).
    #[arg(long, value_parser = parse_duration)]
    delay: Option<Duration>,
    /// Fail "no capable worker" if no connected worker could run it for this long.
    #[arg(long, value_parser = parse_duration)]
    dispatch_timeout: Option<Duration>,
    /// Unique key: while a task with it is live, return that task.
    #[arg(long)]
    unique_key: Option<String>,
    /// Run CMD under `sh -c` (one string) instead of as a program.
    #[arg(long)]
    script: bool,
    /// Run this named handler with `--payload` instead of a command.
    #[arg(long, conflicts_with = "script")]
    handler: Option<String>,
    /// JSON payload for `--handler`.
    #[arg(long, requires = "handler", default_value = "null")]
    payload: String,
    /// Submit every task of this file instead: one JSON task per line, in
    /// the API's submit form. With --wait, a progress bar follows them all.
    #[arg(long, conflicts_with_all = ["handler", "script"])]
    file: Option<std::path::PathBuf>,
    /// The command and its arguments (after `--`).
    #[arg(last = true)]
    command: Vec<String>,
}

fn request(a: &SubmitArgs) -> anyhow::Result<SubmitRequest> {
    let kind = match &a.handler {
        Some(name) => {
            let payload =
                serde_json::from_str(&a.payload).context("--payload is not valid JSON")?;
            Kind::Handler {
                name: name.clone(),
                payload,
            }
        }
        None => {
            if a.command.is_empty() {
                bail!("nothing to run: give a command after `--` (or --handler NAME)");
            }
            let command = if a.script {
                ShellCommand::Script(a.command.join(" "))
            } else {
                ShellCommand::Argv(a.command.clone())
            };
            Kind::Shell(ShellSpec {
                command,
                env: vec![],
                cwd: None,
            })
        }
    };
    let mut r: SubmitRequest = serde_json::from_value(serde_json::json!({ "kind": kind }))?;
    r.queue = a.queue.clone();
    r.priority = a.priority;
    r.labels = a.labels.clone();
    r.timeout_ms = a.timeout.map(ms);
    r.retry = RetryPolicy::retries(a.retries);
    r.tags = a.tags.clone();
    r.after = a.after.clone();
    r.delay_ms = a.delay.map(ms);
    r.dispatch_timeout_ms = a.dispatch_timeout.map(ms);
    r.unique_key = a.unique_key.clone();
    Ok(r)
}

/// The exit code `submit --wait` mirrors for a finished task.
fn exit_code(state: State, code: Option<i32>) -> i32 {
    match state {
        State::Succeeded => code.unwrap_or(0),
        State::TimedOut => 124,
        State::Cancelled => 130,
        _ => code.filter(|c| *c != 0).unwrap_or(1),
    }
}

pub(crate) async fn submit(a: SubmitArgs) -> anyhow::Result<i32> {
    let client = a.conn.client()?;
    if let Some(path) = &a.file {
        return submit_file(&client, path, a.wait, a.conn.json).await;
    }
    let req = request(&a)?;
    // Subscribe before submitting: a quick task's progress must not slip by.
    let events = if a.wait {
        Some(client.events(&EventFilter::default(), None).await?)
    } else {
        None
    };
    let res = client.submit(&req).await?;
    if !a.wait {
        if a.conn.json {
            println!("{}", serde_json::to_string(&res)?);
        } else {
            println!("{}", res.id);
        }
        return Ok(0);
    }
    eprintln!("taskgrid: task {} {}", res.id, res.state);
    follow(&client, res.id, events, true).await
}

/// Streams a task's output until it ends; returns the exit code to mirror.
async fn follow(
    client: &Client,
    id: TaskId,
    events: Option<taskgrid_client::SseStream<taskgrid_client::ServerEvent>>,
    cancel_on_ctrl_c: bool,
) -> anyhow::Result<i32> {
    let mut progress = match events {
        Some(e) => e,
        None => {
            client
                .events(
                    &EventFilter {
                        task: Some(id),
                        ..EventFilter::default()
                    },
                    None,
                )
                .await?
        }
    };
    let mut stream = client.follow_output(id, 0).await?;
    let mut cancelled = false;
    let mut shown: Option<(u32, Option<String>)> = None;
    loop {
        let item = tokio::select! {
            item = stream.next() => item,
            Some(Ok(taskgrid_client::ServerEvent::Task(e))) = progress.next() => {
                if e.id != id {
                    continue;
                }
                if let EventKind::Progress(p) = e.kind {
                    // Whole percents only, so a chatty task does not flood stderr.
                    let now = ((p.fraction * 100.0) as u32, p.message);
                    if shown.as_ref() != Some(&now) {
                        eprintln!("taskgrid: {}% {}", now.0, now.1.as_deref().unwrap_or(""));
                        shown = Some(now);
                    }
                }
                continue;
            }
            _ = tokio::signal::ctrl_c(), if cancel_on_ctrl_c && !cancelled => {
                cancelled = true;
                eprintln!("taskgrid: cancelling task {id}");
                client.cancel(id).await?;
                continue;
            }
        };
        match item {
            Some(Ok(FollowItem::Chunk(c))) => match c.stream {
                Stream::Stdout => {
                    let mut out = std::io::stdout().lock();
                    out.write_all(c.data.as_bytes())?;
                    out.flush()?;
                }
                Stream::Stderr | Stream::Log => {
                    let mut err = std::io::stderr().lock();
                    err.write_all(c.data.as_bytes())?;
                    if c.stream == Stream::Log && !c.data.ends_with('\n') {
                        err.write_all(b"\n")?;
                    }
                }
            },
            Some(Ok(FollowItem::End(end))) => {
                if end.state != State::Succeeded {
                    let why = end.error.map(|e| e.message).unwrap_or_default();
                    eprintln!("taskgrid: task {id} {} {why}", end.state);
                }
                return Ok(exit_code(end.state, end.exit_code));
            }
            Some(Err(e)) => return Err(e.into()),
            None => bail!("the coordinator closed the output stream of {id} before it ended"),
        }
    }
}

/// Options of `taskgrid status`.
#[derive(Debug, clap::Args)]
pub(crate) struct IdArgs {
    #[command(flatten)]
    conn: Conn,
    /// The task.
    id: TaskId,
}

pub(crate) async fn status(a: IdArgs) -> anyhow::Result<i32> {
    let d = a.conn.client()?.get(a.id).await?;
    if a.conn.json {
        println!("{}", serde_json::to_string_pretty(&d)?);
        return Ok(0);
    }
    let t = &d.task;
    println!("task      {}", t.id);
    println!("state     {}", t.status.state);
    println!("queue     {} (priority {})", t.spec.queue, t.spec.priority);
    println!("kind      {}", describe(&t.spec.kind));
    if let Some(p) = &t.progress {
        println!(
            "progress  {:.0}% {}",
            p.fraction * 100.0,
            p.message.as_deref().unwrap_or("")
        );
    }
    if let Some(e) = &t.status.error {
        println!("error     {}", e.message);
    }
    if let Some(r) = &t.status.result {
        println!("result    {r}");
    }
    for at in &d.attempts {
        let outcome = at.outcome.map(|o| o.as_str()).unwrap_or("running");
        let code = at
            .exit_code
            .map(|c| format!(" exit {c}"))
            .unwrap_or_default();
        let cost = at
            .usage
            .map(|u| {
                format!(
                    " (cpu {:.2}s, peak {:.1} MiB)",
                    u.cpu_seconds,
                    u.peak_rss_bytes as f64 / 1048576.0
                )
            })
            .unwrap_or_default();
        println!(
            "attempt   #{} on {}: {outcome}{code}{cost}",
            at.attempt, at.worker
        );
    }
    Ok(0)
}

fn describe(k: &Kind) -> String {
    match k {
        Kind::Handler { name, .. } => format!("handler {name}"),
        Kind::Shell(s) => match &s.command {
            ShellCommand::Argv(a) => a.join(" "),
            ShellCommand::Script(s) => format!("sh -c {s:?}"),
        },
        Kind::Container(c) => format!("container {}", c.image),
    }
}

/// Options of `taskgrid list`.
#[derive(Debug, clap::Args)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    conn: Conn,
    /// Only tasks in this state.
    #[arg(long)]
    state: Option<State>,
    /// Only this queue.
    #[arg(long)]
    queue: Option<String>,
    /// Only this tag.
    #[arg(long)]
    tag: Option<String>,
    /// Only tasks that ran on this worker.
    #[arg(long)]
    worker: Option<String>,
    /// At most this many.
    #[arg(long, default_value_t = 50)]
    limit: usize,
    /// Start after this task id (the previous page's last).
    #[arg(long)]
    cursor: Option<TaskId>,
}

pub(crate) async fn list(a: ListArgs) -> anyhow::Result<i32> {
    let q = ListQuery {
        state: a.state,
        queue: a.queue,
        tag: a.tag,
        worker: a.worker,
        parent: None,
        cursor: a.cursor,
        limit: Some(a.limit),
    };
    let page = a.conn.client()?.list(&q).await?;
    if a.conn.json {
        println!("{}", serde_json::to_string_pretty(&page)?);
        return Ok(0);
    }
    println!(
        "{:<36}  {:<10}  {:<10}  {:<8}  what",
        "id", "state", "queue", "priority"
    );
    for t in &page.tasks {
        println!(
            "{:<36}  {:<10}  {:<10}  {:<8}  {}",
            t.id,
            t.status.state,
            t.spec.queue,
            t.spec.priority.to_string(),
            describe(&t.spec.kind)
        );
    }
    if let Some(c) = page.next_cursor {
        eprintln!("more: --cursor {c}");
    }
    Ok(0)
}

/// Options of `taskgrid logs`.
#[derive(Debug, clap::Args)]
pub(crate) struct LogsArgs {
    #[command(flatten)]
    conn: Conn,
    /// The task.
    id: TaskId,
    /// Keep following until the task ends.
    #[arg(short, long)]
    follow: bool,
}

pub(crate) async fn logs(a: LogsArgs) -> anyhow::Result<i32> {
    let client = a.conn.client()?;
    if a.follow {
        follow(&client, a.id, None, false).await?;
        return Ok(0);
    }
    let mut after = 0;
    loop {
        let page = client.output(a.id, after, None).await?;
        if page.chunks.is_empty() {
            return Ok(0);
        }
        for c in &page.chunks {
            match c.stream {
                Stream::Stdout => print!("{}", c.data),
                _ => eprint!("{}", c.data),
            }
        }
        after = page.next_after;
    }
}

/// Options of `taskgrid cancel`.
#[derive(Debug, clap::Args)]
pub(crate) struct CancelArgs {
    #[command(flatten)]
    conn: Conn,
    /// The task.
    #[arg(required_unless_present = "tag")]
    id: Option<TaskId>,
    /// Cancel every live task with this tag instead.
    #[arg(long, conflicts_with = "id")]
    tag: Option<String>,
}

pub(crate) async fn cancel(a: CancelArgs) -> anyhow::Result<i32> {
    let client = a.conn.client()?;
    match (a.id, a.tag) {
        (Some(id), _) => {
            let r = client.cancel(id).await?;
            if a.conn.json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!("{id}: {:?} ({})", r.outcome, r.state);
            }
        }
        (None, Some(tag)) => {
            let n = client.cancel_tag(&tag).await?;
            if a.conn.json {
                println!("{}", serde_json::json!({ "tag": tag, "cancelled": n }));
            } else {
                println!("{n} task(s) with tag {tag:?} cancelled");
            }
        }
        (None, None) => bail!("give a task id or --tag"),
    }
    Ok(0)
}

pub(crate) async fn retry(a: IdArgs) -> anyhow::Result<i32> {
    let r = a.conn.client()?.retry(a.id).await?;
    if a.conn.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!("{}", r.id);
    }
    Ok(0)
}

pub(crate) async fn explain(a: IdArgs) -> anyhow::Result<i32> {
    let x = a.conn.client()?.explain(a.id).await?;
    if a.conn.json {
        println!("{}", serde_json::to_string_pretty(&x)?);
        return Ok(0);
    }
    println!("task {} is {}", x.task, x.state);
    if let Some(w) = &x.worker {
        println!("  on worker {w}");
    }
    if x.gates.is_empty() && !x.state.is_terminal() && x.worker.is_none() {
        println!("  nothing holds it back: it is about to be dispatched");
    }
    for g in &x.gates {
        println!("  - {}", gate_text(g));
    }
    Ok(0)
}

fn gate_text(g: &taskgrid_core::Gate) -> String {
    use taskgrid_core::Gate;
    match g {
        Gate::RunAt { at } => format!(
            "waiting for its start time ({} ms since the epoch)",
            at.as_millis()
        ),
        Gate::Dependency { task, state } => match state {
            Some(s) => format!("waiting for dependency {task} ({s})"),
            None => format!("waiting for dependency {task} (unknown)"),
        },
        Gate::Backoff { until } => format!(
            "retry backoff until {} ms since the epoch",
            until.as_millis()
        ),
        Gate::QueuePaused { queue } => format!("queue {queue:?} is paused"),
        Gate::NoCapableWorker { detail, .. } => detail.clone(),
        Gate::WorkersBusy { workers, needs } => {
            let list: Vec<String> = workers
                .iter()
                .map(|(w, used, slots)| format!("{w} {used}/{slots}"))
                .collect();
            format!(
                "every capable worker is busy (needs {needs} slot(s)): {}",
                list.join(", ")
            )
        }
        Gate::Position {
            queue,
            priority,
            ahead,
        } => {
            format!(
                "{ahead} task(s) ahead of it in queue {queue:?} at priority {priority} or higher"
            )
        }
        Gate::Trust { min_trust, best } => {
            format!("needs worker trust {min_trust:.2}; the best capable worker has {best:.2}")
        }
    }
}

/// Options of `taskgrid workers` and `taskgrid queues`.
#[derive(Debug, clap::Args)]
pub(crate) struct ConnArgs {
    #[command(flatten)]
    conn: Conn,
}

pub(crate) async fn workers(a: ConnArgs) -> anyhow::Result<i32> {
    let ws = a.conn.client()?.workers().await?;
    if a.conn.json {
        println!("{}", serde_json::to_string_pretty(&ws)?);
        return Ok(0);
    }
    println!(
        "{:<24}  {:>5}  {:>5}  {:>5}  labels / handlers",
        "worker", "used", "slots", "trust"
    );
    for w in &ws {
        let labels: Vec<String> = w
            .labels
            .iter()
            .map(|(k, v)| {
                if v.is_empty() {
                    k.clone()
                } else {
                    format!("{k}={v}")
                }
            })
            .collect();
        println!(
            "{:<24}  {:>5}  {:>5}  {:>5.2}  {} / {}",
            w.id.to_string(),
            w.used,
            w.slots,
            w.trust,
            labels.join(","),
            w.handlers.join(",")
        );
    }
    Ok(0)
}

pub(crate) async fn queues(a: ConnArgs) -> anyhow::Result<i32> {
    let qs = a.conn.client()?.queues().await?;
    if a.conn.json {
        println!("{}", serde_json::to_string_pretty(&qs)?);
        return Ok(0);
    }
    println!(
        "{:<16}  {:>7}  {:>7}  {:>7}  waiting by priority",
        "queue", "ready", "running", "paused"
    );
    for q in &qs {
        let by: Vec<String> = q.waiting.iter().map(|(p, n)| format!("{p}:{n}")).collect();
        println!(
            "{:<16}  {:>7}  {:>7}  {:>7}  {}",
            q.name,
            q.ready,
            q.running,
            q.paused,
            by.join(" ")
        );
    }
    Ok(0)
}

/// Options of `taskgrid stats`.
#[derive(Debug, clap::Args)]
pub(crate) struct StatsArgs {
    #[command(flatten)]
    conn: Conn,
    /// Print the Prometheus text exposition (`/metrics`) instead.
    #[arg(long)]
    prometheus: bool,
}

pub(crate) async fn stats(a: StatsArgs) -> anyhow::Result<i32> {
    let client = a.conn.client()?;
    if a.prometheus {
        print!("{}", client.prometheus().await?);
        return Ok(0);
    }
    let m = client.metrics().await?;
    if a.conn.json {
        println!("{}", serde_json::to_string_pretty(&m)?);
        return Ok(0);
    }
    print!("{}", stats_text(&m));
    Ok(0)
}

/// A duration in the unit that reads best: `850µs`, `12.3ms`, `4.56s`, `2.0m`.
fn short(d: Duration) -> String {
    let us = d.as_micros();
    if us < 1000 {
        format!("{us}µs")
    } else if us < 1_000_000 {
        format!("{:.1}ms", us as f64 / 1e3)
    } else if us < 60_000_000 {
        format!("{:.2}s", d.as_secs_f64())
    } else {
        format!("{:.1}m", d.as_secs_f64() / 60.0)
    }
}

/// The human form of `taskgrid stats`: totals, latencies, throughput, then
/// one table per breakdown.
fn stats_text(m: &MetricsSnapshot) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "tasks       {} submitted, {} succeeded, {} failed, {} timed out, {} cancelled, {} expired; {} retried",
        m.submitted, m.succeeded, m.failed, m.timed_out, m.cancelled, m.expired, m.retried
    );
    let _ = writeln!(
        out,
        "success     {:.1}%   throughput {:.2}/s (1m)  {:.2}/s (5m)  {:.2}/s (15m)",
        m.success_rate * 100.0,
        m.throughput.last_1m,
        m.throughput.last_5m,
        m.throughput.last_15m
    );
    for (name, h) in [("run time", &m.run_time), ("queue wait", &m.queue_wait)] {
        let _ = writeln!(
            out,
            "{name:<10}  min {}  avg {}  max {}  p50 {}  p95 {}  p99 {}",
            short(h.min),
            short(h.avg),
            short(h.max),
            short(h.p50),
            short(h.p95),
            short(h.p99)
        );
    }
    for (title, rows) in [
        ("queue", &m.queues),
        ("kind", &m.kinds),
        ("worker", &m.workers),
    ] {
        if rows.is_empty() {
            continue;
        }
        let width = rows.keys().map(|k| k.chars().count()).max().unwrap_or(0);
        let width = width.clamp(title.len(), 40);
        let _ = writeln!(
            out,
            "\n{title:<width$}  {:>9} {:>9} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7}  {:>8} {:>8}  {:>8} {:>8}",
            "submitted",
            "succeeded",
            "failed",
            "timeout",
            "cancel",
            "expired",
            "retried",
            "success",
            "run p50",
            "run p99",
            "wait p50",
            "wait p99"
        );
        for (name, s) in rows {
            let _ = writeln!(
                out,
                "{name:<width$}  {:>9} {:>9} {:>7} {:>7} {:>7} {:>7} {:>7} {:>6.1}%  {:>8} {:>8}  {:>8} {:>8}",
                s.submitted,
                s.succeeded,
                s.failed,
                s.timed_out,
                s.cancelled,
                s.expired,
                s.retried,
                s.success_rate * 100.0,
                short(s.run_time.p50),
                short(s.run_time.p99),
                short(s.queue_wait.p50),
                short(s.queue_wait.p99)
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_read_as_tables_by_breakdown() {
        let mut m = MetricsSnapshot {
            submitted: 7,
            succeeded: 4,
            retried: 1,
            success_rate: 0.5,
            ..MetricsSnapshot::default()
        };
        m.run_time.p99 = Duration::from_micros(1500);
        let queue = taskgrid_core::SeriesSnapshot {
            submitted: 3,
            succeeded: 2,
            success_rate: 1.0,
            ..Default::default()
        };
        m.queues.insert("emails".to_owned(), queue);
        let text = stats_text(&m);
        assert!(
            text.starts_with("tasks       7 submitted, 4 succeeded"),
            "{text}"
        );
        assert!(text.contains("p99 1.5ms"), "{text}");
        assert!(text.contains("\nqueue "), "{text}");
        assert!(text.contains("emails"), "{text}");
        assert!(!text.contains("\nworker "), "no empty tables: {text}");
        assert_eq!(short(Duration::from_micros(850)), "850µs");
        assert_eq!(short(Duration::from_millis(4560)), "4.56s");
        assert_eq!(short(Duration::from_secs(120)), "2.0m");
    }

    #[test]
    fn durations_parse_with_units_and_refuse_garbage() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn exit_codes_mirror_the_task() {
        assert_eq!(exit_code(State::Succeeded, Some(0)), 0);
        assert_eq!(exit_code(State::Failed, Some(3)), 3);
        assert_eq!(exit_code(State::Failed, None), 1);
        assert_eq!(exit_code(State::TimedOut, None), 124);
        assert_eq!(exit_code(State::Cancelled, None), 130);
        assert_eq!(exit_code(State::Expired, None), 1);
    }
}

/// Most tasks sent in one batch (the API's default batch limit).
const FILE_BATCH: usize = 10_000;

/// The tasks of a JSON-lines file; a bad line is an error naming it, and
/// then nothing is submitted.
fn read_tasks(path: &std::path::Path) -> anyhow::Result<Vec<SubmitRequest>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut tasks = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let t: SubmitRequest = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not a valid task", path.display(), i + 1))?;
        tasks.push(t);
    }
    if tasks.is_empty() {
        bail!("{} holds no tasks", path.display());
    }
    Ok(tasks)
}

/// `submit --file`: submits every task of the file; with `wait`, follows
/// them with a progress bar and exits 0 only if every one succeeded.
async fn submit_file(
    client: &Client,
    path: &std::path::Path,
    wait: bool,
    json: bool,
) -> anyhow::Result<i32> {
    use std::collections::HashSet;
    use taskgrid_client::ServerEvent;

    let tasks = read_tasks(path)?;
    let total = tasks.len();
    // Subscribe before submitting, so no ending can slip past.
    let mut events = if wait {
        Some(client.events(&EventFilter::default(), None).await?)
    } else {
        None
    };
    let started = std::time::Instant::now();
    let mut ids = Vec::with_capacity(total);
    for chunk in tasks.chunks(FILE_BATCH) {
        ids.extend(client.submit_batch(chunk).await?);
    }
    let Some(events) = events.as_mut() else {
        for id in &ids {
            println!("{id}");
        }
        return Ok(0);
    };
    // Events that came before the submit returned wait in the stream.
    let mut pending: HashSet<TaskId> = ids.iter().copied().collect();
    let bar = indicatif::ProgressBar::new(total as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let (mut ok, mut bad) = (0usize, 0usize);
    let mut settle = |id: TaskId, state: State, pending: &mut HashSet<TaskId>| {
        if pending.remove(&id) {
            if state == State::Succeeded {
                ok += 1;
            } else {
                bad += 1;
            }
            let rate = (ok + bad) as f64 / started.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(format!("ok {ok}  failed {bad}  {rate:.0}/s"));
            bar.inc(1);
        }
    };
    while !pending.is_empty() {
        match events.next().await {
            Some(Ok(ServerEvent::Task(e))) => {
                if let Some(state) = e.new_state().filter(|s| s.is_terminal()) {
                    settle(e.id, state, &mut pending);
                }
            }
            Some(Ok(ServerEvent::Reset(_))) => {
                // Events were missed: read the state of what is left.
                for id in pending.clone() {
                    let s = client.get(id).await?.task.status.state;
                    if s.is_terminal() {
                        settle(id, s, &mut pending);
                    }
                }
            }
            Some(Err(e)) => return Err(e.into()),
            None => bail!(
                "the coordinator closed the event stream with {} task(s) unfinished",
                pending.len()
            ),
        }
    }
    bar.finish();
    let secs = started.elapsed().as_secs_f64();
    if json {
        println!(
            "{}",
            serde_json::json!({ "tasks": total, "succeeded": ok, "failed": bad, "seconds": secs })
        );
    } else {
        eprintln!(
            "{total} tasks: {ok} succeeded, {bad} did not, in {secs:.2}s ({:.0}/s)",
            total as f64 / secs.max(1e-9)
        );
    }
    Ok(if bad == 0 { 0 } else { 1 })
}
