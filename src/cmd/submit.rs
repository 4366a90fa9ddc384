//! `taskgrid submit`: one task (a program, a script or a handler), or a
//! JSON-lines file of them; with `--wait`, run like a local command —
//! output streamed, progress shown, exit code mirrored, Ctrl-C cancels.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, bail};
use taskgrid_api::{EventFilter, EventKind, Kind, SubmitRequest};
use taskgrid_client::{Client, FollowItem};
use taskgrid_core::{
    ContainerSpec, LabelReq, Priority, Resources, RetryPolicy, ShellCommand, ShellSpec, State,
    Stream, TaskId,
};

use super::client::Conn;

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

/// A fraction from 0 to 1 (`0.5`).
fn parse_fraction(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err(format!(
            "invalid fraction {s:?}: expected a number from 0 to 1"
        )),
    }
}

/// This command's standard input, when it is not a terminal: the text a
/// `--wait` shell task reads, as a local command would. At most
/// [`TaskSpec::STDIN_MAX`](taskgrid_core::TaskSpec::STDIN_MAX) bytes of
/// UTF-8; more, or binary data, is refused before anything is submitted.
fn piped_stdin() -> anyhow::Result<Option<String>> {
    use std::io::{IsTerminal, Read};
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        return Ok(None);
    }
    let max = taskgrid_core::TaskSpec::STDIN_MAX;
    let mut data = Vec::new();
    stdin
        .lock()
        .take(max as u64 + 1)
        .read_to_end(&mut data)
        .context("cannot read standard input")?;
    if data.len() > max {
        bail!(
            "standard input is more than {} MiB, the most a task carries: \
             put the data in a file the task reads, or pass --no-stdin",
            max >> 20
        );
    }
    if data.is_empty() {
        return Ok(None);
    }
    String::from_utf8(data)
        .map(Some)
        .map_err(|_| anyhow::anyhow!("standard input is not UTF-8 text: pass --no-stdin, or put the data in a file the task reads"))
}

/// A CPU count above 0 (`1.5`).
fn parse_cpus(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(c) if c.is_finite() && c > 0.0 && c <= Resources::CPUS_MAX => Ok(c),
        _ => Err(format!(
            "invalid CPU count {s:?}: expected a number above 0, e.g. 0.5 or 2"
        )),
    }
}

/// A memory size: bytes, or with a unit K, M, G or T (powers of 1024;
/// `KiB`, `MB`… read the same), at least 1 MiB.
pub(crate) fn parse_memory(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(format!("invalid memory size {s:?}: use e.g. 512M or 2G")),
    };
    let bytes = num
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| format!("invalid memory size {s:?}: use e.g. 512M or 2G"))?;
    if bytes < Resources::MEMORY_MIN {
        return Err(format!("memory size {s:?} is below the least, 1M"));
    }
    Ok(bytes)
}

/// An environment variable `KEY=VALUE` (the value may be empty or hold `=`).
fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() && !k.contains('\0') && !v.contains('\0') => {
            Ok((k.to_owned(), v.to_owned()))
        }
        _ => Err(format!(
            "invalid environment variable {s:?}: expected KEY=VALUE"
        )),
    }
}

/// Options of `taskgrid submit`.
#[derive(Debug, clap::Args)]
pub(crate) struct SubmitArgs {
    #[command(flatten)]
    conn: Conn,
    /// Wait for the task: stream its output and exit with its exit code:
    /// the program's own; 128 + N if signal N killed it (137 for SIGKILL);
    /// 124 if it timed out; 130 if it was cancelled (the first Ctrl-C
    /// cancels it and waits for its end; a second leaves at once); 1 if it
    /// failed without a code (a handler, a refusal).
    #[arg(long)]
    wait: bool,
    /// With --wait, do not pass this command's standard input to the task
    /// (by default a shell task reads it when it is not a terminal, up to
    /// 1 MiB of UTF-8 text).
    #[arg(long, requires = "wait")]
    no_stdin: bool,
    #[command(flatten)]
    pub(crate) task: TaskFlags,
    /// Submit every task of this file instead: one JSON task per line, in
    /// the API's submit form. With --wait, a progress bar follows them all.
    #[arg(long, conflicts_with_all = ["handler", "script", "image"])]
    file: Option<std::path::PathBuf>,
}

/// What a task runs and how: the flags `submit` and `schedule add` share.
#[derive(Debug, clap::Args)]
pub(crate) struct TaskFlags {
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
    /// Delay before the first retry (default 1s).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    backoff: Option<Duration>,
    /// Each retry waits this many times longer than the one before (>= 1; default 2).
    #[arg(long, value_name = "FACTOR")]
    backoff_factor: Option<f64>,
    /// The retry delay never grows past this (default 5m).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    backoff_max: Option<Duration>,
    /// Fraction (0-1) of each retry delay that is randomised (default 0.2).
    #[arg(long, value_parser = parse_fraction, value_name = "FRACTION")]
    backoff_jitter: Option<f64>,
    /// Run only on workers trusted at least this much (0-1).
    #[arg(long, value_parser = parse_fraction, value_name = "FRACTION")]
    min_trust: Option<f64>,
    /// CPU limit of each attempt, in CPUs (e.g. 1.5); a shell task runs in
    /// a cgroup with it on Linux workers.
    #[arg(long, value_parser = parse_cpus, value_name = "CPUS")]
    cpus: Option<f64>,
    /// Memory limit of each attempt (e.g. 512M, 2G); past it the task ends
    /// failed "out of memory".
    #[arg(long, value_parser = parse_memory, value_name = "SIZE")]
    memory: Option<u64>,
    /// Run CMD (or the image's default command) in a container of this image.
    #[arg(long, conflicts_with_all = ["script", "handler"])]
    image: Option<String>,
    /// Environment variable of the command or container; repeatable.
    #[arg(long = "env", value_parser = parse_env, value_name = "KEY=VALUE", conflicts_with = "handler")]
    env: Vec<(String, String)>,
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
    /// Concurrency key (e.g. customer-42): tasks of different keys take
    /// turns, and the coordinator's --concurrency-limit and --rate-limit
    /// for the key hold it back.
    #[arg(long, value_name = "KEY")]
    concurrency_key: Option<String>,
    /// Run CMD under `sh -c` (one string) instead of as a program.
    #[arg(long)]
    script: bool,
    /// Run this named handler with `--payload` instead of a command.
    #[arg(long, conflicts_with = "script")]
    handler: Option<String>,
    /// JSON payload for `--handler`.
    #[arg(long, requires = "handler", default_value = "null")]
    payload: String,
    /// The command and its arguments (after `--`).
    #[arg(last = true)]
    command: Vec<String>,
}

/// The API form of the task the flags describe.
pub(crate) fn request(a: &TaskFlags) -> anyhow::Result<SubmitRequest> {
    let kind = match &a.handler {
        Some(name) => {
            let payload =
                serde_json::from_str(&a.payload).context("--payload is not valid JSON")?;
            Kind::Handler {
                name: name.clone(),
                payload,
            }
        }
        None if a.image.is_some() => Kind::Container(ContainerSpec {
            image: a.image.clone().unwrap_or_default(),
            command: a.command.clone(),
            env: a.env.clone(),
        }),
        None => {
            if a.command.is_empty() {
                bail!(
                    "nothing to run: give a command after `--` (or --handler NAME, or --image IMAGE)"
                );
            }
            let command = if a.script {
                ShellCommand::Script(a.command.join(" "))
            } else {
                ShellCommand::Argv(a.command.clone())
            };
            Kind::Shell(ShellSpec {
                command,
                env: a.env.clone(),
                cwd: None,
            })
        }
    };
    let mut r: SubmitRequest = serde_json::from_value(serde_json::json!({ "kind": kind }))?;
    r.queue = a.queue.clone();
    r.priority = a.priority;
    r.labels = a.labels.clone();
    r.timeout_ms = a.timeout.map(taskgrid_core::duration_millis);
    let mut retry = RetryPolicy::retries(a.retries);
    if let Some(d) = a.backoff {
        retry.initial_backoff = d;
    }
    if let Some(f) = a.backoff_factor {
        retry.multiplier = f;
    }
    if let Some(d) = a.backoff_max {
        retry.max_backoff = d;
    }
    if let Some(j) = a.backoff_jitter {
        retry.jitter = j;
    }
    r.retry = retry;
    r.min_trust = a.min_trust;
    r.resources = Resources {
        cpus: a.cpus,
        memory_bytes: a.memory,
    };
    r.tags = a.tags.clone();
    r.after = a.after.clone();
    r.delay_ms = a.delay.map(taskgrid_core::duration_millis);
    r.dispatch_timeout_ms = a.dispatch_timeout.map(taskgrid_core::duration_millis);
    r.unique_key = a.unique_key.clone();
    r.concurrency_key = a.concurrency_key.clone();
    Ok(r)
}

/// The exit code `submit --wait` mirrors for a finished task, as a shell
/// would: 128 + N for a program killed by signal N.
fn exit_code(state: State, code: Option<i32>, signal: Option<i32>) -> i32 {
    match state {
        State::Succeeded => code.unwrap_or(0),
        State::TimedOut => 124,
        State::Cancelled => 130,
        _ => match signal {
            Some(n) if (1..128).contains(&n) => 128 + n,
            _ => code.filter(|c| *c != 0).unwrap_or(1),
        },
    }
}

/// A signal's name, as `kill -l` gives it (`SIGKILL`), or its number.
pub(crate) fn signal_name(n: i32) -> String {
    const NAMES: [&str; 16] = [
        "", "SIGHUP", "SIGINT", "SIGQUIT", "SIGILL", "SIGTRAP", "SIGABRT", "SIGBUS", "SIGFPE",
        "SIGKILL", "SIGUSR1", "SIGSEGV", "SIGUSR2", "SIGPIPE", "SIGALRM", "SIGTERM",
    ];
    usize::try_from(n)
        .ok()
        .and_then(|i| NAMES.get(i))
        .filter(|s| !s.is_empty())
        .map_or_else(|| format!("signal {n}"), |s| (*s).to_owned())
}

pub(crate) async fn submit(a: SubmitArgs) -> anyhow::Result<i32> {
    let client = a.conn.client()?;
    if let Some(path) = &a.file {
        return submit_file(&client, path, a.wait, a.conn.json).await;
    }
    let mut req = request(&a.task)?;
    if a.wait && !a.no_stdin && matches!(req.kind, Kind::Shell(_)) {
        req.stdin = piped_stdin()?;
    }
    // Subscribe before submitting: a quick task's progress must not slip by.
    let events = if a.wait {
        Some(client.events(&EventFilter::default(), None).await?)
    } else {
        None
    };
    let res = client.submit(&req).await?;
    if !res.created && !a.conn.json {
        // Said on stderr: stdout keeps just the id, for scripts.
        eprintln!(
            "taskgrid: a live task with unique key {:?} exists: returned {} ({}) instead of creating another",
            req.unique_key.as_deref().unwrap_or_default(),
            res.id,
            res.state
        );
    }
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

/// The next Ctrl-C, if there is a listener; never otherwise.
async fn next_interrupt(listener: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match listener {
        Some(l) => l.recv().await,
        None => std::future::pending().await,
    }
}

/// Streams a task's output until it ends; returns the exit code to mirror.
pub(crate) async fn follow(
    client: &Client,
    id: TaskId,
    events: Option<taskgrid_client::SseStream<taskgrid_client::ServerEvent>>,
    cancel_on_ctrl_c: bool,
) -> anyhow::Result<i32> {
    // Subscribed before the task was submitted: its end event will come.
    let from_the_start = events.is_some();
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
    // One listener for the whole wait: a Ctrl-C that comes while the first
    // one's cancel is being sent is kept, not lost.
    let mut interrupts = if cancel_on_ctrl_c {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).ok()
    } else {
        None
    };
    let mut cancelled = false;
    let mut shown: Option<(u32, Option<String>)> = None;
    // Whether the event stream has brought this task's end (or never will:
    // it was opened after the task may have ended).
    let mut seen_end = !from_the_start;
    loop {
        let item = tokio::select! {
            item = stream.next() => item,
            Some(Ok(taskgrid_client::ServerEvent::Task(e))) = progress.next() => {
                if e.id == id {
                    seen_end |= e.new_state().is_some_and(State::is_terminal);
                    show_progress(e.kind, &mut shown);
                }
                continue;
            }
            Some(()) = next_interrupt(&mut interrupts) => {
                if cancelled {
                    // A second Ctrl-C: leave now, whatever the task does.
                    eprintln!(
                        "taskgrid: detached; task {id} may still be ending (see `taskgrid status {id}`)"
                    );
                    return Ok(130);
                }
                cancelled = true;
                eprintln!("taskgrid: cancelling task {id} (Ctrl-C again to stop waiting)");
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
                // The output stream may end before the event stream has
                // brought the last progress (a short task's progress and end
                // are committed together): read events up to this task's
                // own end, which comes after them.
                let _ = tokio::time::timeout(END_EVENTS_WAIT, async {
                    while !seen_end
                        && let Some(Ok(taskgrid_client::ServerEvent::Task(e))) =
                            progress.next().await
                    {
                        if e.id != id {
                            continue;
                        }
                        if e.new_state().is_some_and(State::is_terminal) {
                            break;
                        }
                        show_progress(e.kind, &mut shown);
                    }
                })
                .await;
                if end.state != State::Succeeded {
                    let why = end.error.map(|e| e.message).unwrap_or_default();
                    let killed = end
                        .signal
                        .map(|n| format!(" (killed by {})", signal_name(n)))
                        .unwrap_or_default();
                    eprintln!("taskgrid: task {id} {} {why}{killed}", end.state);
                }
                return Ok(exit_code(end.state, end.exit_code, end.signal));
            }
            Some(Err(e)) => return Err(e.into()),
            None => bail!("the coordinator closed the output stream of {id} before it ended"),
        }
    }
}

/// How long a finished task's last events are waited for.
const END_EVENTS_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Prints a progress event when it moves by a whole percent or says
/// something new, so a chatty task does not flood stderr.
fn show_progress(kind: EventKind, shown: &mut Option<(u32, Option<String>)>) {
    if let EventKind::Progress(p) = kind {
        let now = ((p.fraction * 100.0) as u32, p.message);
        if shown.as_ref() != Some(&now) {
            eprintln!("taskgrid: {}% {}", now.0, now.1.as_deref().unwrap_or(""));
            *shown = Some(now);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(exit_code(State::Succeeded, Some(0), None), 0);
        assert_eq!(exit_code(State::Failed, Some(3), None), 3);
        assert_eq!(exit_code(State::Failed, None, None), 1);
        assert_eq!(exit_code(State::Failed, None, Some(9)), 137);
        assert_eq!(exit_code(State::Failed, None, Some(15)), 143);
        assert_eq!(exit_code(State::TimedOut, None, Some(9)), 124);
        assert_eq!(exit_code(State::Cancelled, None, Some(15)), 130);
        assert_eq!(exit_code(State::Expired, None, None), 1);
        assert_eq!(signal_name(9), "SIGKILL");
        assert_eq!(signal_name(64), "signal 64");
    }
}
