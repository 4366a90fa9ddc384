//! The client commands: `submit`, `status`, `list`, `logs`, `cancel`,
//! `retry`, `workers`, `queues`, `explain`, `stats` — thin wrappers over the
//! HTTP API with human tables by default and `--json` for scripts.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context, bail};
use taskgrid_api::{ListOrder, ListQuery};
use taskgrid_client::Client;
use taskgrid_core::{MetricsSnapshot, State, Stream, TaskId, Timestamp};

/// Where the coordinator is and how to talk to it.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Conn {
    /// The coordinator's address, or a comma-separated list of the
    /// coordinators of a grid on PostgreSQL (calls find the leader), or
    /// `auto` / `auto:NAME` (found over mDNS; see `taskgrid discover`).
    #[arg(
        long,
        global = true,
        env = "TASKGRID_SERVER",
        default_value = "http://127.0.0.1:7070"
    )]
    server: String,
    /// Client token.
    #[arg(
        long,
        global = true,
        env = "TASKGRID_TOKEN",
        hide_env_values = true,
        value_parser = super::token
    )]
    token: Option<String>,
    /// CA certificate (PEM) that signed an https:// coordinator's
    /// certificate, trusted besides the system's roots.
    #[arg(long, global = true, env = "TASKGRID_CA", value_name = "PEM")]
    ca: Option<std::path::PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub(crate) json: bool,
}

impl Conn {
    pub(crate) fn client(&self) -> anyhow::Result<Client> {
        client_for(&self.server, self.token.clone(), self.ca.as_deref())
    }
}

/// A client of the coordinator(s) at `server`, trusting the CA
/// certificates of the PEM file `ca` too.
pub(crate) fn client_for(
    server: &str,
    token: Option<String>,
    ca: Option<&std::path::Path>,
) -> anyhow::Result<Client> {
    // `auto`: the coordinator advertised over mDNS.
    let server = &super::discover::resolve(server)?;
    let client = Client::new(server, token).with_context(|| format!("coordinator {server}"))?;
    match ca {
        Some(path) => {
            let pem = std::fs::read(path)
                .with_context(|| format!("--ca {}: cannot read it", path.display()))?;
            client
                .with_ca_pem(&pem)
                .with_context(|| format!("--ca {}", path.display()))
        }
        None => Ok(client),
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
    println!("kind      {}", t.spec.kind.describe());
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
        let killed = at
            .usage
            .and_then(|u| u.signal)
            .map(|n| format!(" killed by {}", super::submit::signal_name(n)))
            .unwrap_or_default();
        let cost = at
            .usage
            .map(|u| match u.peak_rss_bytes {
                // Not measured: a container, or a task the worker had to
                // spawn itself (no spawner) and that stayed under its size.
                0 => format!(" (cpu {:.2}s)", u.cpu_seconds),
                peak => format!(
                    " (cpu {:.2}s, peak {:.1} MiB)",
                    u.cpu_seconds,
                    peak as f64 / 1048576.0
                ),
            })
            .unwrap_or_default();
        println!(
            "attempt   #{} on {}: {outcome}{code}{killed}{cost}",
            at.attempt, at.worker
        );
    }
    Ok(0)
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
    /// Only tasks that ran, or are running, on this worker (not those it refused).
    #[arg(long)]
    worker: Option<String>,
    /// At most this many.
    #[arg(long, default_value_t = 50)]
    limit: usize,
    /// Start after this task id (the previous page's last).
    #[arg(long)]
    cursor: Option<TaskId>,
    /// Newest first (the cursor then pages on to older tasks).
    #[arg(long)]
    newest: bool,
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
        order: a.newest.then_some(ListOrder::Newest),
        counts: false,
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
            t.spec.kind.describe()
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
    if a.follow && a.conn.json {
        // One JSON line per chunk as it comes, then the end.
        let mut stream = client.follow_output(a.id, 0).await?;
        while let Some(item) = stream.next().await {
            match item? {
                taskgrid_client::FollowItem::Chunk(c) => println!("{}", serde_json::to_string(&c)?),
                taskgrid_client::FollowItem::End(end) => {
                    println!("{}", serde_json::to_string(&end)?);
                    break;
                }
            }
        }
        return Ok(0);
    }
    if a.follow {
        super::submit::follow(&client, a.id, None, false).await?;
        return Ok(0);
    }
    let mut after = 0;
    loop {
        let page = client.output(a.id, after, None).await?;
        if page.chunks.is_empty() {
            return Ok(0);
        }
        for c in &page.chunks {
            if a.conn.json {
                // One JSON line per chunk: `{"seq","attempt","stream","data"}`.
                println!("{}", serde_json::to_string(c)?);
                continue;
            }
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

/// Options of `delete`.
#[derive(Debug, clap::Args)]
#[command(group = clap::ArgGroup::new("filter").args(["tag", "state"]).multiple(true))]
pub(crate) struct DeleteArgs {
    #[command(flatten)]
    conn: Conn,
    /// The tasks (finished ones only).
    #[arg(required_unless_present_any = ["tag", "state"])]
    ids: Vec<TaskId>,
    /// Instead of ids: every finished task with this tag.
    #[arg(long, conflicts_with = "ids")]
    tag: Option<String>,
    /// Instead of ids: every task in this finished state (succeeded,
    /// failed, timed_out, cancelled, expired).
    #[arg(long, conflicts_with = "ids", value_parser = finished_state)]
    state: Option<State>,
    /// With --tag or --state: only tasks that ended longer ago than this
    /// (by this machine's clock).
    #[arg(long, value_parser = super::submit::parse_duration, value_name = "DURATION", requires = "filter")]
    older_than: Option<Duration>,
}

fn finished_state(s: &str) -> Result<State, String> {
    let state: State = s.parse().map_err(|_| format!("unknown state {s:?}"))?;
    if state.is_terminal() {
        Ok(state)
    } else {
        Err(format!(
            "{s} is not a finished state: only finished tasks are deleted"
        ))
    }
}

/// Deletes each task given, or every finished task matching --tag/--state
/// (and --older-than); a live or unknown id is reported and the rest are
/// still deleted; exits 1 if any named task was not deleted.
pub(crate) async fn delete(a: DeleteArgs) -> anyhow::Result<i32> {
    let client = a.conn.client()?;
    if a.tag.is_some() || a.state.is_some() {
        let cutoff = a.older_than.map(|d| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            Timestamp::from_micros(
                u64::try_from(now.saturating_sub(d).as_micros()).unwrap_or(u64::MAX),
            )
        });
        let mut query = ListQuery {
            tag: a.tag.clone(),
            state: a.state,
            limit: Some(1000),
            ..ListQuery::default()
        };
        let mut deleted = 0usize;
        loop {
            let page = client.list(&query).await?;
            for t in &page.tasks {
                let ended = t.status.finished_at;
                let old_enough = cutoff.is_none_or(|c| ended.is_some_and(|e| e < c));
                if t.status.state.is_terminal() && old_enough {
                    match client.delete(t.id).await {
                        Ok(()) => deleted += 1,
                        // Gone meanwhile (retention, another delete): fine.
                        Err(e) if e.code() == Some("not_found") => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            match page.next_cursor {
                Some(c) => query.cursor = Some(c),
                None => break,
            }
        }
        if a.conn.json {
            println!("{}", serde_json::json!({ "deleted": deleted }));
        } else {
            println!("{deleted} finished task(s) deleted");
        }
        return Ok(0);
    }
    let mut refused = 0;
    for id in &a.ids {
        match client.delete(*id).await {
            Ok(()) if a.conn.json => {
                println!("{}", serde_json::json!({ "id": id, "deleted": true }));
            }
            Ok(()) => println!("{id}: deleted"),
            Err(e) => {
                refused += 1;
                if a.conn.json {
                    println!(
                        "{}",
                        serde_json::json!({ "id": id, "deleted": false, "error": e.to_string() })
                    );
                } else {
                    eprintln!("taskgrid: {id}: {e}");
                }
            }
        }
    }
    Ok(i32::from(refused > 0))
}

pub(crate) async fn explain(a: IdArgs) -> anyhow::Result<i32> {
    let x = a.conn.client()?.explain(a.id).await?;
    if a.conn.json {
        println!("{}", serde_json::to_string_pretty(&x)?);
        return Ok(0);
    }
    println!("task {} is {}", x.task, x.state);
    if let Some(w) = &x.worker {
        if x.state.is_terminal() {
            println!("  ran on worker {w}");
        } else {
            println!("  on worker {w}");
        }
    }
    if x.gates.is_empty() && !x.state.is_terminal() && x.worker.is_none() {
        println!("  nothing holds it back: it is about to be dispatched");
    }
    for g in &x.gates {
        println!("  - {}", gate_text(g));
    }
    Ok(0)
}

/// A moment as a person reads it: UTC to the millisecond, and how far from
/// now (`2026-12-04T18:25:00.123Z, in 4.2 s`).
pub(crate) fn when(t: taskgrid_core::Timestamp) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_micros(t.as_micros());
    let stamp = humantime::format_rfc3339_millis(at);
    let now = std::time::SystemTime::now();
    match at.duration_since(now) {
        Ok(ahead) => format!("{stamp}, in {:.1} s", ahead.as_secs_f64()),
        Err(e) => format!("{stamp}, {:.1} s ago", e.duration().as_secs_f64()),
    }
}

fn gate_text(g: &taskgrid_core::Gate) -> String {
    use taskgrid_core::Gate;
    match g {
        Gate::RunAt { at } => format!("waiting for its start time, {}", when(*at)),
        Gate::Dependency { task, state } => match state {
            Some(s) => format!("waiting for dependency {task} ({s})"),
            None => format!("waiting for dependency {task} (unknown)"),
        },
        Gate::Backoff { until } => format!("retry backoff until {}", when(*until)),
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
        Gate::Overloaded { workers } => {
            let list: Vec<String> = workers
                .iter()
                .map(|(w, load, max)| format!("{w} {load:.2} > {max}"))
                .collect();
            format!(
                "capable workers take no new work over their max load (per CPU): {}",
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
        Gate::QueueConcurrency {
            queue,
            running,
            limit,
        } => format!("queue {queue:?} has {running} of at most {limit} task(s) running"),
        Gate::ConcurrencyLimit {
            key,
            running,
            limit,
            ahead,
        } => {
            let mut s =
                format!("concurrency key {key:?} has {running} of at most {limit} task(s) running");
            if *ahead > 0 {
                s.push_str(&format!(", {ahead} more let through ahead of it"));
            }
            s
        }
        Gate::RateLimit {
            key,
            starts,
            per_ms,
            next_at,
        } => {
            let per = humantime::format_duration(std::time::Duration::from_millis(*per_ms));
            let mut s = format!("concurrency key {key:?} may start {starts} task(s) per {per}");
            if let Some(t) = next_at {
                s.push_str(&format!("; next start {}", when(*t)));
            }
            s
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
    let client = a.conn.client()?;
    let ws = client.workers().await?;
    if a.conn.json {
        println!("{}", serde_json::to_string_pretty(&ws)?);
        return Ok(0);
    }
    // Which coordinator answered, on a grid with standbys.
    if let Ok(c) = client.coordinators().await
        && c.shared
    {
        let leader = c.leader.map_or_else(
            || "none right now".to_owned(),
            |l| format!("{} ({})", l.address, l.name),
        );
        let standbys: Vec<String> = c.standbys.iter().map(|s| s.address.clone()).collect();
        println!(
            "leader {leader}, term {}; standbys: {}",
            c.term,
            if standbys.is_empty() {
                "none".to_owned()
            } else {
                standbys.join(", ")
            }
        );
    }
    println!(
        "{:<24}  {:>5}  {:>5}  {:>5}  {:>9}  {:>9}  {:>9}  labels / handlers",
        "worker", "used", "slots", "trust", "load/cpu", "mem free", "disk free"
    );
    for w in &ws {
        let labels = w.label_texts();
        let health = w.health;
        let load = match (health.and_then(|h| h.load), w.max_load) {
            (Some(l), Some(m)) if l > m => format!("{l:.2}>{m}"),
            (Some(l), _) => format!("{l:.2}"),
            (None, _) => "-".into(),
        };
        let bytes = |b: Option<u64>| b.map_or_else(|| "-".to_owned(), human_bytes);
        println!(
            "{:<24}  {:>5}  {:>5}  {:>5.2}  {:>9}  {:>9}  {:>9}  {} / {}",
            w.id.to_string(),
            w.used,
            w.slots,
            w.trust,
            load,
            bytes(health.and_then(|h| h.memory_available_bytes)),
            bytes(health.and_then(|h| h.disk_free_bytes)),
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
        "{:<16}  {:>7}  {:>11}  {:>7}  {:>9}  waiting by priority",
        "queue", "ready", "running", "paused", "limit"
    );
    for q in &qs {
        let by: Vec<String> = q.waiting.iter().map(|(p, n)| format!("{p}:{n}")).collect();
        let limit = q.limit.map_or_else(|| "-".to_owned(), |l| l.to_string());
        // `3/4`: 3 running of at most 4 (--queue-concurrency).
        let running = match q.concurrency {
            Some(c) => format!("{}/{c}", q.running),
            None => q.running.to_string(),
        };
        println!(
            "{:<16}  {:>7}  {:>11}  {:>7}  {:>9}  {}",
            q.name,
            q.ready,
            running,
            q.paused,
            limit,
            by.join(" ")
        );
    }
    Ok(0)
}

pub(crate) async fn limits(a: ConnArgs) -> anyhow::Result<i32> {
    let ks = a.conn.client()?.limits().await?;
    if a.conn.json {
        println!("{}", serde_json::to_string_pretty(&ks)?);
        return Ok(0);
    }
    if ks.is_empty() {
        println!("no limited concurrency key has tasks waiting or running");
        return Ok(0);
    }
    println!(
        "{:<24}  {:>11}  {:>14}  {:>7}  {:>8}  {:>4}  {:>6}",
        "key", "concurrency", "rate", "running", "let in", "held", "tokens"
    );
    for k in &ks {
        let dash = || "-".to_owned();
        let rate = k.rate.map_or_else(dash, |r| {
            format!("{}/{}", r.starts, humantime::format_duration(r.per))
        });
        println!(
            "{:<24}  {:>11}  {:>14}  {:>7}  {:>8}  {:>4}  {:>6}",
            k.key,
            k.concurrency.map_or_else(dash, |c| c.to_string()),
            rate,
            k.running,
            k.admitted,
            k.held,
            k.tokens.map_or_else(dash, |t| t.to_string()),
        );
    }
    Ok(0)
}

/// Options of `taskgrid queue`.
#[derive(Debug, clap::Args)]
pub(crate) struct QueueArgs {
    #[command(subcommand)]
    action: QueueAction,
}

#[derive(Debug, clap::Subcommand)]
enum QueueAction {
    /// Stop dispatching from a queue (its tasks are kept, submits still
    /// accepted; a restart keeps it paused).
    Pause(QueueName),
    /// Let a paused queue dispatch again.
    Resume(QueueName),
}

#[derive(Debug, clap::Args)]
struct QueueName {
    #[command(flatten)]
    conn: Conn,
    /// The queue.
    name: String,
}

pub(crate) async fn queue(a: QueueArgs) -> anyhow::Result<i32> {
    let (q, what) = match a.action {
        QueueAction::Pause(q) => {
            let s = q.conn.client()?.pause_queue(&q.name).await?;
            (q, s)
        }
        QueueAction::Resume(q) => {
            let s = q.conn.client()?.resume_queue(&q.name).await?;
            (q, s)
        }
    };
    if q.conn.json {
        println!("{}", serde_json::to_string(&what)?);
    } else {
        println!(
            "queue {}: {} ({} ready, {} running)",
            what.name,
            if what.paused { "paused" } else { "dispatching" },
            what.ready,
            what.running
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
            total: taskgrid_core::SeriesSnapshot {
                counts: taskgrid_core::TaskCounts {
                    submitted: 7,
                    succeeded: 4,
                    retried: 1,
                    ..Default::default()
                },
                success_rate: 0.5,
                ..Default::default()
            },
            ..MetricsSnapshot::default()
        };
        m.total.run_time.p99 = Duration::from_micros(1500);
        let queue = taskgrid_core::SeriesSnapshot {
            counts: taskgrid_core::TaskCounts {
                submitted: 3,
                succeeded: 2,
                ..Default::default()
            },
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
}

/// Options of `taskgrid audit`.
#[derive(Debug, clap::Args)]
pub(crate) struct AuditArgs {
    #[command(flatten)]
    conn: Conn,
    /// Most entries shown (newest first).
    #[arg(long, default_value_t = 50)]
    limit: usize,
    /// Only entries numbered below this (to page back).
    #[arg(long)]
    before: Option<u64>,
}

/// `taskgrid audit`: who changed what, when, from where, and how it ended.
pub(crate) async fn audit(a: AuditArgs) -> anyhow::Result<i32> {
    let client = a.conn.client()?;
    let entries = client
        .audit(&taskgrid_api::AuditQuery {
            before: a.before,
            limit: Some(a.limit),
        })
        .await?;
    if a.conn.json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
        return Ok(0);
    }
    println!(
        "{:>6}  {:<24}  {:<22}  {:<21}  {:>6}  action",
        "seq", "at (UTC)", "who", "from", "status"
    );
    for e in &entries {
        let r = &e.record;
        let at = std::time::UNIX_EPOCH + Duration::from_micros(r.at.as_micros());
        let status = match &r.error {
            Some(code) => format!("{} {code}", r.status),
            None => r.status.to_string(),
        };
        println!(
            "{:>6}  {:<24}  {:<22}  {:<21}  {:>6}  {}",
            e.seq,
            humantime::format_rfc3339_millis(at).to_string(),
            r.actor,
            r.remote.as_deref().unwrap_or("-"),
            status,
            r.action
        );
    }
    Ok(0)
}

/// Bytes as a person reads them: `812M`, `3.4G`.
fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
    let mut v = b as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if v >= 10.0 || unit == 0 {
        format!("{v:.0}{}", UNITS[unit])
    } else {
        format!("{v:.1}{}", UNITS[unit])
    }
}
