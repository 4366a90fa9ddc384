#![allow(clippy::unwrap_used)]
//! Chaos: real `taskgrid server` and `taskgrid worker` processes, killed
//! with SIGKILL at random moments and restarted, under a mix of shell tasks
//! — successes, failures with retries, tasks that succeed on a later
//! attempt, timeouts, delays, dependencies and cancels. Every execution
//! appends `TASK ATTEMPT` to a marker file, and prints its attempt number,
//! so executions can be counted against what the coordinator recorded.
//!
//! Afterwards:
//! - every acknowledged submit is there, and every acknowledged cancel
//!   stuck (a task cancelled while waiting ends `cancelled`);
//! - every task is in exactly one terminal state, none stuck;
//! - no attempt number ran twice (a number is never handed out again) and
//!   no task ran under an attempt it never recorded;
//! - every line of output is recorded under the attempt that printed it.
//!
//! `TASKGRID_CHAOS_TASKS` (default 2,000), `TASKGRID_CHAOS_KILLS` (kills of
//! the coordinator; workers are killed twice as often, default 5) and
//! `TASKGRID_CHAOS_SEED` make it longer or repeat a run; the seed is
//! printed. One long run is recorded in `docs/testing.md`.

mod util;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use taskgrid_api::{CancelOutcomeKind, Kind, ListQuery, SubmitRequest};
use taskgrid_client::Client;
use taskgrid_core::{RetryPolicy, ShellCommand, ShellSpec, State, TaskId};
use util::{Proc, taskgrid};

/// A small deterministic generator (splitmix64), seeded per run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The coordinator, restarted on the same port after each kill.
struct Coordinator {
    proc: Option<Proc>,
    data: PathBuf,
    port: u16,
}

impl Coordinator {
    fn spawn(data: &Path, listen: &str) -> Option<(Proc, u16)> {
        let mut child = taskgrid()
            .args([
                "server",
                "--listen",
                listen,
                "--heartbeat-ms",
                "200",
                "--data-dir",
            ])
            .arg(data)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        let _ = BufReader::new(child.stdout.take().unwrap()).read_line(&mut line);
        let port = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("127.0.0.1:"))
            .and_then(|p| p.parse().ok());
        match port {
            Some(p) => Some((Proc(child), p)),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                None
            }
        }
    }

    fn start(data: &Path) -> Coordinator {
        let (proc, port) = Coordinator::spawn(data, "127.0.0.1:0").expect("the coordinator starts");
        Coordinator {
            proc: Some(proc),
            data: data.to_owned(),
            port,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
    }

    /// Starts it again on its port (retrying while the port is not free
    /// yet, or the killed process's lock is not released yet).
    fn restart(&mut self) {
        let listen = format!("127.0.0.1:{}", self.port);
        for _ in 0..200 {
            if let Some((p, _)) = Coordinator::spawn(&self.data, &listen) {
                self.proc = Some(p);
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the coordinator did not come back on {listen}");
    }
}

fn start_worker(url: &str, id: &str) -> Proc {
    Proc(
        taskgrid()
            .args([
                "worker", "--server", url, "--id", id, "--name", id, "--slots", "4",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// What a task was meant to do, for checking its end.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Plan {
    /// Exits 0.
    Succeeds,
    /// Exits 3 every time; 2 retries.
    Fails,
    /// Fails on its first attempt, succeeds from the second; 3 retries.
    SucceedsLater,
    /// Sleeps past its 300 ms timeout; 1 retry.
    TimesOut,
    /// Sleeps a few seconds; the test cancels it.
    Cancelled,
    /// Depends on an earlier task.
    Dependent,
}

fn shell(script: String) -> Kind {
    Kind::Shell(ShellSpec {
        command: ShellCommand::Script(script),
        env: vec![],
        cwd: None,
    })
}

fn request(plan: Plan, marks: &Path, rng: &mut Rng, dep: Option<TaskId>) -> SubmitRequest {
    // Every execution leaves `TASK ATTEMPT` in the marker file (one short
    // O_APPEND write: atomic) and prints its attempt number.
    let mark = format!(
        "echo \"$TASKGRID_TASK_ID $TASKGRID_ATTEMPT\" >> '{}'; echo \"$TASKGRID_ATTEMPT\"",
        marks.display()
    );
    let nap = format!("sleep 0.0{}", rng.below(5));
    let script = match plan {
        Plan::Succeeds | Plan::Dependent => format!("{mark}; {nap}"),
        Plan::Fails => format!("{mark}; {nap}; exit 3"),
        Plan::SucceedsLater => format!("{mark}; {nap}; [ \"$TASKGRID_ATTEMPT\" -ge 2 ]"),
        Plan::TimesOut => format!("{mark}; sleep 5"),
        Plan::Cancelled => format!("{mark}; sleep {}", 2 + rng.below(3)),
    };
    let mut r: SubmitRequest =
        serde_json::from_value(serde_json::json!({ "kind": shell(script) })).unwrap();
    let quick = |n| RetryPolicy {
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
        ..RetryPolicy::retries(n)
    };
    match plan {
        Plan::Fails => r.retry = quick(2),
        Plan::SucceedsLater => r.retry = quick(3),
        Plan::TimesOut => {
            r.timeout_ms = Some(300);
            r.retry = quick(1);
        }
        _ => {}
    }
    if let Some(d) = dep {
        r.after = vec![d];
    }
    if rng.below(10) == 0 {
        r.delay_ms = Some(200 + rng.below(1500));
    }
    r
}

fn pick_plan(rng: &mut Rng) -> Plan {
    match rng.below(100) {
        0..=54 => Plan::Succeeds,
        55..=64 => Plan::Fails,
        65..=74 => Plan::SucceedsLater,
        75..=79 => Plan::TimesOut,
        80..=87 => Plan::Cancelled,
        _ => Plan::Dependent,
    }
}

/// What the clients were told.
#[derive(Default)]
struct Acked {
    tasks: BTreeMap<TaskId, Plan>,
    cancels: HashMap<TaskId, CancelOutcomeKind>,
}

/// Submits `total` tasks, retrying each until it is acknowledged (a submit
/// that got no answer may or may not have been committed: such tasks are
/// found by listing at the end), and cancels the long ones.
async fn submit_all(url: String, total: u64, seed: u64, marks: PathBuf, acked: Arc<Mutex<Acked>>) {
    let client = Client::new(&url, None).unwrap();
    let mut rng = Rng(seed ^ 0x5u64);
    let mut earlier: Vec<TaskId> = Vec::new();
    let mut to_cancel: Vec<TaskId> = Vec::new();
    for n in 0..total {
        let mut plan = pick_plan(&mut rng);
        let dep = if plan == Plan::Dependent && !earlier.is_empty() {
            Some(earlier[rng.below(earlier.len() as u64) as usize])
        } else {
            plan = if plan == Plan::Dependent {
                Plan::Succeeds
            } else {
                plan
            };
            None
        };
        let req = request(plan, &marks, &mut rng, dep);
        let id = loop {
            match client.submit(&req).await {
                Ok(r) => break r.id,
                Err(e) if e.status().is_none() || e.status() == Some(503) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("submit refused: {e}"),
            }
        };
        acked.lock().unwrap().tasks.insert(id, plan);
        earlier.push(id);
        if plan == Plan::Cancelled {
            to_cancel.push(id);
        }
        // Cancel some long ones a little later, at random.
        if n % 7 == 0 && !to_cancel.is_empty() {
            let victim = to_cancel.swap_remove(rng.below(to_cancel.len() as u64) as usize);
            match client.cancel(victim).await {
                Ok(r) => {
                    acked.lock().unwrap().cancels.insert(victim, r.outcome);
                }
                // Not answered (the coordinator is down): try again later.
                Err(_) => to_cancel.push(victim),
            }
        }
    }
    // The rest of the long ones are cancelled too (retrying until answered).
    for victim in to_cancel {
        loop {
            match client.cancel(victim).await {
                Ok(r) => {
                    acked.lock().unwrap().cancels.insert(victim, r.outcome);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }
}

/// Every task the coordinator holds, page by page.
async fn all_tasks(client: &Client) -> Vec<taskgrid_api::TaskView> {
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let page = client
            .list(&ListQuery {
                cursor,
                limit: Some(1000),
                ..ListQuery::default()
            })
            .await
            .unwrap();
        out.extend(page.tasks);
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => return out,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_chaos_keeps_every_promise() {
    let total = env_or("TASKGRID_CHAOS_TASKS", 2000);
    let coordinator_kills = env_or("TASKGRID_CHAOS_KILLS", 5);
    let seed = env_or(
        "TASKGRID_CHAOS_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    );
    eprintln!("chaos: {total} tasks, {coordinator_kills} coordinator kills, seed {seed}");
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let marks = dir.path().join("marks");
    std::fs::write(&marks, "").unwrap();
    let mut coordinator = Coordinator::start(&dir.path().join("data"));
    let url = coordinator.url();
    let ids = ["w1", "w2", "w3"];
    let mut workers: Vec<Proc> = ids.iter().map(|id| start_worker(&url, id)).collect();

    let acked = Arc::new(Mutex::new(Acked::default()));
    let submitter = tokio::spawn(submit_all(
        url.clone(),
        total,
        seed,
        marks.clone(),
        acked.clone(),
    ));

    // The chaos: while tasks are being submitted, kill the coordinator and
    // the workers at random moments, and bring them back.
    let mut rng = Rng(seed);
    let (mut c_kills, mut w_kills) = (0, 0);
    let mut failovers = Vec::new();
    while c_kills < coordinator_kills || w_kills < coordinator_kills * 2 {
        tokio::time::sleep(Duration::from_millis(150 + rng.below(600))).await;
        if rng.below(3) == 0 && c_kills < coordinator_kills {
            coordinator.kill();
            c_kills += 1;
            tokio::time::sleep(Duration::from_millis(rng.below(300))).await;
            let t = Instant::now();
            coordinator.restart();
            failovers.push(t.elapsed());
        } else if w_kills < coordinator_kills * 2 {
            let i = rng.below(ids.len() as u64) as usize;
            workers[i].kill9();
            w_kills += 1;
            tokio::time::sleep(Duration::from_millis(rng.below(500))).await;
            workers[i] = start_worker(&url, ids[i]);
        }
    }
    tokio::time::timeout(Duration::from_secs(240 + total / 50), submitter)
        .await
        .expect("every task was submitted in time")
        .unwrap();
    eprintln!(
        "chaos: {c_kills} coordinator kills, {w_kills} worker kills, restarts took {failovers:?}; submitted after {:?}",
        started.elapsed()
    );

    // Let everything end.
    let client = Client::new(&url, None).unwrap();
    let deadline = Instant::now() + Duration::from_secs(180) + Duration::from_millis(20 * total);
    let tasks = loop {
        let tasks = all_tasks(&client).await;
        let live: Vec<_> = tasks
            .iter()
            .filter(|t| !t.status.state.is_terminal())
            .collect();
        if live.is_empty() {
            break tasks;
        }
        assert!(
            Instant::now() < deadline,
            "seed {seed}: {} tasks did not end in time, e.g. {:?}",
            live.len(),
            live.iter()
                .take(5)
                .map(|t| (t.id, t.status.state))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!(
        "chaos: all {} tasks ended after {:?}",
        tasks.len(),
        started.elapsed()
    );

    let acked = std::mem::take(&mut *acked.lock().unwrap());
    let by_id: HashMap<TaskId, &taskgrid_api::TaskView> = tasks.iter().map(|t| (t.id, t)).collect();
    // Every acknowledged submit is there.
    let missing: Vec<_> = acked
        .tasks
        .keys()
        .filter(|id| !by_id.contains_key(id))
        .collect();
    assert!(
        missing.is_empty(),
        "seed {seed}: acknowledged but lost: {missing:?}"
    );
    // Every acknowledged cancel of a waiting task stuck.
    for (id, outcome) in &acked.cancels {
        let state = by_id[id].status.state;
        if *outcome == CancelOutcomeKind::Cancelled {
            assert_eq!(
                state,
                State::Cancelled,
                "seed {seed}: cancel of {id} was lost"
            );
        }
    }

    // Executions against recorded attempts.
    let text = std::fs::read_to_string(&marks).unwrap();
    let mut runs: HashMap<TaskId, Vec<u32>> = HashMap::new();
    for line in text.lines() {
        let (id, attempt) = line.split_once(' ').unwrap();
        runs.entry(id.parse().unwrap())
            .or_default()
            .push(attempt.parse().unwrap());
    }
    let mut executions = 0;
    for (id, attempts) in &runs {
        let task = by_id
            .get(id)
            .unwrap_or_else(|| panic!("seed {seed}: {id} ran but is not stored"));
        executions += attempts.len();
        let unique: HashSet<u32> = attempts.iter().copied().collect();
        assert_eq!(
            unique.len(),
            attempts.len(),
            "seed {seed}: task {id} ran the same attempt number twice: {attempts:?}"
        );
        let recorded = task.status.attempt;
        assert!(
            attempts.iter().all(|a| *a >= 1 && *a <= recorded),
            "seed {seed}: task {id} ran attempts {attempts:?}, recorded {recorded}"
        );
    }

    // Each task's end fits what it was meant to do, and its output is
    // recorded under the attempt that printed it.
    for (id, plan) in &acked.tasks {
        let t = by_id[id];
        let state = t.status.state;
        let ok = match plan {
            Plan::Succeeds => state == State::Succeeded,
            Plan::Fails => state == State::Failed,
            Plan::SucceedsLater => state == State::Succeeded && t.status.attempt >= 2,
            Plan::TimesOut => state == State::TimedOut,
            // A cancel that came after the task had finished (or was only
            // requested, and the task finished first) leaves it succeeded.
            Plan::Cancelled => {
                state == State::Cancelled
                    || state == State::Succeeded
                        && acked.cancels.get(id) != Some(&CancelOutcomeKind::Cancelled)
            }
            Plan::Dependent => matches!(state, State::Succeeded | State::Cancelled),
        };
        assert!(
            ok,
            "seed {seed}: task {id} ({plan:?}) ended {state} after {} attempts",
            t.status.attempt
        );
    }
    for t in &tasks {
        let mut after = 0;
        loop {
            let page = client.output(t.id, after, Some(1000)).await.unwrap();
            for c in &page.chunks {
                if c.stream == taskgrid_core::Stream::Stdout {
                    for line in c.data.lines() {
                        assert_eq!(
                            line,
                            c.attempt.to_string(),
                            "seed {seed}: task {} attempt {} recorded another attempt's output",
                            t.id,
                            c.attempt
                        );
                    }
                }
            }
            if page.chunks.is_empty() {
                break;
            }
            after = page.next_after;
        }
    }
    eprintln!(
        "chaos: {} tasks ({} acknowledged), {executions} executions, {} acknowledged cancels; done after {:?}",
        tasks.len(),
        acked.tasks.len(),
        acked.cancels.len(),
        started.elapsed()
    );
    drop(workers);
    coordinator.kill();
}
