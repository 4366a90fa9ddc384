//! `cargo bench --bench engine`: throughput and memory of the embedded
//! engine. Each scenario runs in a fresh child process (so resident memory
//! figures are its own) and prints one JSON line; the parent prints a table.
//!
//! Scenarios (`cargo bench --bench engine -- NAME…` runs a subset):
//! - `core`: the pure engine alone — submit, dispatch, accept, report.
//! - `noop-memory`, `noop-sqlite`: no-op handler tasks end to end through a
//!   started TaskSystem (submitted in batches of 1,000 while running).
//! - `submit-memory`, `submit-sqlite`: submit throughput alone (batches of
//!   1,000), and one-by-one from 64 concurrent submitters.
//! - `rss-memory`, `rss-sqlite`, `rss-core`: resident memory per queued
//!   task with 1,000,000 queued.
//! - `schedule-lag`: 10,000 schedules (every 10 s, phases spread 1 ms
//!   apart: 1,000 fires a second) on SQLite with a no-op handler; fire lag
//!   from the scheduled time to the fire's task committed and published.
//! - `schedule-rss`: 100,000 cron schedules (daily) in a started system on
//!   the memory store: resident memory per schedule, and the process's CPU
//!   time over 5 s in which none is due; `schedule-rss-core`: the engine
//!   alone with 100,000; `schedule-rss-sqlite`: a system started on a
//!   SQLite file holding 100,000 schedules against one holding none, per
//!   schedule (and from 100,000 to 200,000);
//!   `schedule-rss-restore`: the engine alone restored from such a file.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use taskgrid_core::{
    Engine, EngineConfig, Outbox, Outcome, Overlap, Recurrence, ScheduleSpec, TaskId, TaskKind,
    TaskSpec, Timestamp, WorkerInfo,
};
use taskgrid_runtime::{SystemConfig, Task, TaskSystem};
use taskgrid_store::{MemoryStore, SqliteOptions, SqliteStore, Store};

/// The allocator the `taskgrid` binary uses too (remove these two lines to
/// measure with the system allocator).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SCENARIOS: [&str; 13] = [
    "core",
    "noop-memory",
    "noop-sqlite",
    "submit-memory",
    "submit-sqlite",
    "rss-core",
    "rss-memory",
    "rss-sqlite",
    "schedule-lag",
    "schedule-rss",
    "schedule-rss-core",
    "schedule-rss-sqlite",
    "schedule-rss-restore",
];

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if let Some(pos) = std::env::args().position(|a| a == "--scenario") {
        let name = std::env::args().nth(pos + 1).expect("scenario name");
        run_scenario(&name);
        return;
    }
    let chosen: Vec<&str> = SCENARIOS
        .iter()
        .copied()
        .filter(|s| args.is_empty() || args.iter().any(|a| a == s))
        .collect();
    println!("{:<15} {:>14} {:>12}  detail", "scenario", "result", "unit");
    for name in chosen {
        let out = Command::new(std::env::current_exe().expect("own path"))
            .args(["--scenario", name])
            .output()
            .expect("run scenario");
        let text = String::from_utf8_lossy(&out.stdout);
        for line in text.lines() {
            let v: serde_json::Value = match serde_json::from_str(line) {
                Ok(v) => v,
                Err(_) => continue,
            };
            println!(
                "{:<15} {:>14.0} {:>12}  {}",
                v["scenario"].as_str().unwrap_or(name),
                v["value"].as_f64().unwrap_or(0.0),
                v["unit"].as_str().unwrap_or(""),
                v["detail"].as_str().unwrap_or("")
            );
        }
        if !out.status.success() {
            println!(
                "{name:<15} FAILED: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

fn report(scenario: &str, value: f64, unit: &str, detail: String) {
    println!(
        "{}",
        json!({ "scenario": scenario, "value": value, "unit": unit, "detail": detail })
    );
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn noop_system(store: Arc<dyn Store>, concurrency: u32) -> TaskSystem {
    let config = SystemConfig {
        concurrency,
        engine: EngineConfig {
            retain_finished: 1000,
            ..EngineConfig::default()
        },
        ..SystemConfig::default()
    };
    TaskSystem::builder()
        .store(store)
        .config(config)
        .handler("noop", |_ctx| async move { Ok(serde_json::Value::Null) })
        .build()
        .expect("build")
}

fn sqlite(dir: &tempfile::TempDir) -> Arc<dyn Store> {
    Arc::new(
        SqliteStore::open(dir.path().join("bench.db"), SqliteOptions::default())
            .expect("open sqlite"),
    )
}

fn run_scenario(name: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    match name {
        "core" => core(),
        "noop-memory" => noop(name, Arc::new(MemoryStore::new()), 200_000),
        "noop-sqlite" => noop(name, sqlite(&dir), 200_000),
        "submit-memory" => submit(name, || Arc::new(MemoryStore::new()), 200_000),
        "submit-sqlite" => {
            // Two runs (batched, then one by one), each on its own live directory.
            let dirs = [
                tempfile::tempdir().expect("tempdir"),
                tempfile::tempdir().expect("tempdir"),
            ];
            let next = std::sync::atomic::AtomicUsize::new(0);
            submit(
                name,
                || sqlite(&dirs[next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 2]),
                200_000,
            )
        }
        "rss-core" => rss_core(),
        "rss-memory" => rss(name, Arc::new(MemoryStore::new())),
        "rss-sqlite" => rss(name, sqlite(&dir)),
        "schedule-lag" => schedule_lag(sqlite(&dir)),
        "schedule-rss" => schedule_rss(),
        "schedule-rss-core" => schedule_rss_core(),
        "schedule-rss-sqlite" => schedule_rss_sqlite(),
        "schedule-rss-sqlite-at" => schedule_rss_sqlite_at(),
        "schedule-write" => schedule_write(),
        "schedule-rss-restore" => schedule_rss_restore(),
        other => panic!("unknown scenario {other}"),
    }
}

/// The pure engine: how many tasks per second the core itself can move.
fn core() {
    const N: u128 = 1_000_000;
    let mut engine = Engine::new(EngineConfig {
        retain_finished: 1000,
        ..EngineConfig::default()
    });
    let mut now = Timestamp::from_micros(1);
    engine.register_worker(WorkerInfo::local("w", 256, ["noop"]), now);
    let spec = TaskSpec::new(TaskKind::handler("noop", "null"));
    let start = Instant::now();
    let mut out = Outbox::default();
    let mut next = 0u128;
    while next < N {
        let batch: Vec<(TaskId, TaskSpec)> = (next..(next + 1000).min(N))
            .map(|i| (TaskId::from_u128(i + 1), spec.clone()))
            .collect();
        next += batch.len() as u128;
        engine.submit_batch(batch, now, &mut out).expect("submit");
        while engine.live_tasks() > 0 {
            now = now.plus(Duration::from_micros(1));
            engine.dispatch(now, &mut out);
            let assigned = std::mem::take(&mut out.assignments);
            for a in &assigned {
                engine
                    .accept(&a.worker, a.id, a.attempt, now, &mut out)
                    .expect("accept");
            }
            for a in &assigned {
                engine
                    .report(&a.worker, a.id, a.attempt, Outcome::ok(), now, &mut out)
                    .expect("report");
            }
            out.changes.clear();
        }
    }
    let secs = start.elapsed().as_secs_f64();
    report(
        "core",
        N as f64 / secs,
        "tasks/s",
        format!("{N} tasks through submit/dispatch/accept/report, no store"),
    );
}

/// No-op handler tasks end to end: submitted in batches while the system runs.
fn noop(name: &str, store: Arc<dyn Store>, n: usize) {
    let rt = runtime();
    rt.block_on(async move {
        let sys = noop_system(store, 512);
        sys.start().expect("start");
        let start = Instant::now();
        let mut submitted = 0;
        while submitted < n {
            let batch: Vec<Task> = (0..1000.min(n - submitted))
                .map(|_| Task::handler("noop", &()))
                .collect();
            submitted += batch.len();
            sys.submit_batch(batch).await.expect("submit");
        }
        sys.wait_idle().await.expect("idle");
        let secs = start.elapsed().as_secs_f64();
        let m = sys.metrics();
        assert_eq!(m.succeeded as usize, n);
        report(
            name,
            n as f64 / secs,
            "tasks/s",
            format!(
                "{n} no-op tasks, batches of 1000, 512 slots; queue wait p50 {:?} p99 {:?}",
                m.queue_wait.p50, m.queue_wait.p99
            ),
        );
        sys.shutdown().await.expect("shutdown");
    });
}

/// Submit throughput alone, batched and one by one.
fn submit(name: &str, store: impl Fn() -> Arc<dyn Store>, n: usize) {
    let rt = runtime();
    rt.block_on(async move {
        let sys = noop_system(store(), 1);
        let start = Instant::now();
        for _ in 0..n / 1000 {
            let batch: Vec<Task> = (0..1000).map(|_| Task::handler("noop", &())).collect();
            sys.submit_batch(batch).await.expect("submit");
        }
        let secs = start.elapsed().as_secs_f64();
        report(
            &format!("{name}-batch"),
            n as f64 / secs,
            "tasks/s",
            format!("{n} tasks in batches of 1000, committed"),
        );

        let sys = Arc::new(noop_system(store(), 1));
        let single = n / 4;
        let start = Instant::now();
        let mut joins = Vec::new();
        for _ in 0..64 {
            let sys = sys.clone();
            joins.push(tokio::spawn(async move {
                for _ in 0..single / 64 {
                    sys.submit(Task::handler("noop", &()))
                        .await
                        .expect("submit");
                }
            }));
        }
        for j in joins {
            j.await.expect("submitter");
        }
        let secs = start.elapsed().as_secs_f64();
        report(
            &format!("{name}-single"),
            (single / 64 * 64) as f64 / secs,
            "tasks/s",
            "one task per submit, 64 concurrent submitters, each acknowledged after its commit"
                .into(),
        );
    });
}

/// Resident memory per queued task with 1,000,000 queued (system not started).
fn rss(name: &str, store: Arc<dyn Store>) {
    const N: usize = 1_000_000;
    let rt = runtime();
    rt.block_on(async move {
        let before = rss_bytes();
        let sys = noop_system(store, 1);
        for _ in 0..N / 10_000 {
            let batch: Vec<Task> = (0..10_000).map(|_| Task::handler("noop", &())).collect();
            sys.submit_batch(batch).await.expect("submit");
        }
        sys.flush().expect("flush");
        assert_eq!(sys.live_tasks(), N);
        let per = (rss_bytes() - before) as f64 / N as f64;
        report(
            name,
            per,
            "bytes/task",
            format!("RSS growth with {N} queued no-op tasks (engine + store in this process)"),
        );
    });
}

/// The engine alone with 1,000,000 queued tasks.
fn rss_core() {
    const N: u128 = 1_000_000;
    let before = rss_bytes();
    let mut engine = Engine::new(EngineConfig::default());
    let now = Timestamp::from_micros(1);
    let spec = TaskSpec::new(TaskKind::handler("noop", "null"));
    let mut out = Outbox::default();
    for i in 0..N {
        engine
            .submit(TaskId::from_u128(i + 1), spec.clone(), now, &mut out)
            .expect("submit");
        out.changes.clear();
    }
    let per = (rss_bytes() - before) as f64 / N as f64;
    report(
        "rss-core",
        per,
        "bytes/task",
        format!("engine alone, {N} queued"),
    );
}

/// The scheduled time a fire's task carries (`scheduled:RFC3339` tag).
fn scheduled_at(spec: &TaskSpec) -> Option<u64> {
    spec.tags.iter().find_map(|t| {
        let stamp = t.strip_prefix("scheduled:")?;
        let at = chrono::DateTime::parse_from_rfc3339(stamp).ok()?;
        u64::try_from(at.timestamp_micros()).ok()
    })
}

fn now_micros() -> u64 {
    u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after the epoch")
            .as_micros(),
    )
    .expect("fits")
}

/// Fire lag with 10,000 schedules: scheduled time → the fire's task
/// committed (an event is published only after its commit).
fn schedule_lag(store: Arc<dyn Store>) {
    const N: u64 = 10_000;
    const RUN: Duration = Duration::from_secs(25);
    let rt = runtime();
    rt.block_on(async move {
        let mut b = TaskSystem::builder()
            .store(store)
            .config(SystemConfig {
                concurrency: 256,
                engine: EngineConfig {
                    retain_finished: 20_000,
                    ..EngineConfig::default()
                },
                ..SystemConfig::default()
            })
            .handler("noop", |_ctx| async move { Ok(serde_json::Value::Null) });
        for i in 0..N {
            let spec = ScheduleSpec {
                overlap: Overlap::AllowAll,
                ..ScheduleSpec::new(Recurrence::Every {
                    every: Duration::from_secs(10),
                    phase: Duration::from_millis(i),
                })
            };
            b = b.schedule(
                &format!("s{i}"),
                spec,
                TaskSpec::new(TaskKind::handler("noop", "null")),
            );
        }
        let sys = b.build().expect("build");
        let mut events = sys.subscribe();
        sys.start().expect("start");
        let end = Instant::now() + RUN;
        let mut lags = Vec::new();
        while Instant::now() < end {
            let Ok(Ok(e)) = tokio::time::timeout(Duration::from_secs(1), events.recv()).await
            else {
                continue;
            };
            if !matches!(e.kind, taskgrid_runtime::EventKind::Submitted { .. }) {
                continue;
            }
            let seen = now_micros();
            if let Ok(rec) = sys.get(e.id).await
                && let Some(at) = scheduled_at(&rec.spec)
            {
                lags.push(seen.saturating_sub(at));
            }
        }
        lags.sort_unstable();
        let pct = |p: f64| lags[((lags.len() - 1) as f64 * p) as usize] as f64 / 1000.0;
        report(
            "schedule-lag",
            pct(0.99),
            "ms p99",
            format!(
                "{} fires of {N} schedules in {RUN:?}: lag p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (scheduled → committed)",
                lags.len(),
                pct(0.5),
                pct(0.99),
                pct(1.0)
            ),
        );
        sys.shutdown().await.expect("shutdown");
    });
}

/// CPU time of this process so far.
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = after
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    // utime and stime are fields 14 and 15 (11 and 12 after the comm).
    (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / 100.0
}

/// Memory per schedule with 100,000 defined, and CPU while none is due.
fn schedule_rss() {
    const N: usize = 100_000;
    let rt = runtime();
    rt.block_on(async move {
        let before = rss_bytes();
        let mut b = TaskSystem::builder()
            .store(Arc::new(MemoryStore::new()))
            .handler("noop", |_ctx| async move { Ok(serde_json::Value::Null) });
        for i in 0..N {
            b = b.schedule(
                &format!("daily-{i}"),
                daily(i),
                TaskSpec::new(TaskKind::handler("noop", "null")),
            );
        }
        let sys = b.build().expect("build");
        sys.start().expect("start");
        sys.flush().expect("flush");
        let grown = rss_bytes().saturating_sub(before);
        // The memory store keeps a copy of each record too: the engine's
        // share alone is scenario `schedule-rss-core`.
        let cpu0 = cpu_secs();
        std::thread::sleep(Duration::from_secs(5));
        let idle_cpu = cpu_secs() - cpu0;
        report(
            "schedule-rss",
            grown as f64 / N as f64,
            "bytes/sched",
            format!(
                "RSS growth with {N} daily cron schedules (engine + memory store + the declarations); CPU over 5 s with none due: {idle_cpu:.2} s"
            ),
        );
        sys.shutdown().await.expect("shutdown");
    });
}

/// The schedules of the `schedule-rss*` scenarios: daily cron in Berlin.
fn daily(i: usize) -> ScheduleSpec {
    ScheduleSpec {
        tz: Some("Europe/Berlin".into()),
        ..ScheduleSpec::cron(format!("{} {} * * *", i % 60, (i / 60) % 24))
    }
}

/// Writes [`schedule_count`] schedules into the SQLite file `TG_BENCH_DB` (a child
/// process of `schedule-rss-sqlite`, so that its allocations are not in
/// the measured process).
fn schedule_write() {
    let n = schedule_count();
    let path = std::env::var("TG_BENCH_DB").expect("TG_BENCH_DB");
    let store = SqliteStore::open(&path, SqliteOptions::default()).expect("open sqlite");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock");
    let now = Timestamp::from_micros(u64::try_from(now.as_micros()).expect("micros"));
    let mut engine = Engine::new(EngineConfig::default());
    let mut out = Outbox::default();
    for i in 0..n {
        engine
            .put_schedule(
                &format!("daily-{i}"),
                daily(i),
                TaskSpec::new(TaskKind::handler("noop", "null")),
                now,
                &mut out,
            )
            .expect("a valid schedule");
        if out.changes.len() >= 1_000 {
            store.apply(&out.changes).expect("apply");
            out.changes.clear();
        }
    }
    store.apply(&out.changes).expect("apply");
}

/// How many schedules `schedule-write` writes and the RSS scenarios
/// expect: `TG_BENCH_N`, 100,000 when unset.
fn schedule_count() -> usize {
    std::env::var("TG_BENCH_N")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000)
}

/// A SQLite file holding [`schedule_count`] schedules, written by a child
/// process (`schedule-write`) so that its allocations are not in this
/// one's RSS.
fn schedules_file() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("schedules.db");
    let ok = Command::new(std::env::current_exe().expect("own path"))
        .args(["--scenario", "schedule-write"])
        .env("TG_BENCH_DB", &path)
        .status()
        .expect("run the writer")
        .success();
    assert!(ok, "the writer failed");
    (dir, path)
}

/// What a coordinator costs per schedule: a system started on a SQLite
/// file that holds no schedules, 100,000, then 200,000 daily cron
/// schedules (each size in its own child process,
/// `schedule-rss-sqlite-at`), its RSS growth from before the build to
/// after the start. The cost of 100,000 schedules is what the system with
/// them takes beyond the same system without any, per schedule; the
/// marginal cost is the same from 100,000 to 200,000; the whole growth per
/// schedule (which counts what any started system takes) is in the detail.
fn schedule_rss_sqlite() {
    let at = |n: usize| -> (f64, f64) {
        let out = Command::new(std::env::current_exe().expect("own path"))
            .args(["--scenario", "schedule-rss-sqlite-at"])
            .env("TG_BENCH_N", n.to_string())
            .output()
            .expect("run the measurement");
        assert!(out.status.success(), "schedule-rss-sqlite-at {n} failed");
        let line: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
        (
            line["grown"].as_f64().expect("grown"),
            line["settled"].as_f64().expect("settled"),
        )
    };
    let (small, large) = (100_000usize, 200_000usize);
    let (g0, s0) = at(0);
    let (g1, s1) = at(small);
    let (g2, s2) = at(large);
    let per = |bytes: f64, n: usize| bytes / n as f64;
    report(
        "schedule-rss-sqlite",
        per(g1 - g0, small),
        "bytes/sched",
        format!(
            "a system started on SQLite with {small} daily cron schedules against one with none, per schedule ({:.0} B 5 s later); from {small} to {large}: {:.0} B ({:.0} B 5 s later); whole growth / count: {:.0} B at {small}, {:.0} B at {large} (none: {:.1} MB)",
            per(s1 - s0, small),
            per(g2 - g1, large - small),
            per(s2 - s1, large - small),
            per(g1, small),
            per(g2, large),
            g0 / 1e6,
        ),
    );
}

/// One size of [`schedule_rss_sqlite`] ([`schedule_count`] schedules):
/// prints the RSS growth right after the start and 5 s later, in bytes.
fn schedule_rss_sqlite_at() {
    let n = schedule_count();
    let (_dir, path) = schedules_file();
    let rt = runtime();
    rt.block_on(async move {
        let before = rss_bytes();
        let sys = TaskSystem::builder()
            .sqlite(&path, SqliteOptions::default())
            .handler("noop", |_ctx| async move { Ok(serde_json::Value::Null) })
            .build()
            .expect("build");
        sys.start().expect("start");
        sys.flush().expect("flush");
        let grown = rss_bytes().saturating_sub(before);
        // Again after 5 s idle: what the allocator gave back of what the
        // restore freed.
        std::thread::sleep(Duration::from_secs(5));
        let settled = rss_bytes().saturating_sub(before);
        let count = sys.schedules().await.expect("schedules").len();
        assert_eq!(count, n);
        println!("{}", json!({ "grown": grown, "settled": settled }));
        sys.shutdown().await.expect("shutdown");
    });
}

/// The engine alone, its 100,000 schedules restored from a SQLite file
/// (written by a child process) a page at a time, as a coordinator's
/// start-up does: the difference to `schedule-rss-core` is what the
/// restore path leaves.
fn schedule_rss_restore() {
    const N: usize = 100_000;
    let (_dir, path) = schedules_file();
    let store = SqliteStore::open(&path, SqliteOptions::default()).expect("open sqlite");
    let before = rss_bytes();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock");
    let now = Timestamp::from_micros(u64::try_from(now.as_micros()).expect("micros"));
    let mut engine = Engine::new(EngineConfig::default());
    let mut out = Outbox::default();
    // As a coordinator's start-up does: a page of 1,000 at a time.
    let mut after: Option<String> = None;
    let mut read = 0;
    loop {
        let page = store
            .schedules_after(after.as_deref(), 1_000)
            .expect("schedules");
        let full = page.len() == 1_000;
        after = page.last().map(|r| r.name.clone());
        read = read.max(rss_bytes().saturating_sub(before));
        engine.restore_schedules(page, now, &mut out);
        out.changes.clear();
        if !full {
            break;
        }
    }
    store.release_memory();
    let grown = rss_bytes().saturating_sub(before);
    report(
        "schedule-rss-restore",
        grown as f64 / N as f64,
        "bytes/sched",
        format!(
            "engine restored from SQLite a page of 1,000 at a time: {} schedules (at most {:.0} B/sched while reading)",
            engine.schedule_count(),
            read as f64 / N as f64
        ),
    );
}

/// The engine alone with 100,000 schedules.
fn schedule_rss_core() {
    const N: usize = 100_000;
    let before = rss_bytes();
    let mut engine = Engine::new(EngineConfig::default());
    let now = Timestamp::from_micros(1_800_000_000_000_000);
    let mut out = Outbox::default();
    for i in 0..N {
        engine
            .put_schedule(
                &format!("daily-{i}"),
                daily(i),
                TaskSpec::new(TaskKind::handler("noop", "null")),
                now,
                &mut out,
            )
            .expect("a valid schedule");
        out.changes.clear();
    }
    report(
        "schedule-rss-core",
        (rss_bytes() - before) as f64 / N as f64,
        "bytes/sched",
        format!(
            "engine alone, {N} daily cron schedules, {} timers armed",
            engine.schedule_count()
        ),
    );
}
