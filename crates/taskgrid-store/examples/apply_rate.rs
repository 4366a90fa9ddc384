//! Measures how many changes per second a store applies, with the change mix
//! of the real system: each task is submitted, assigned, started and
//! finished (four changes), pipelined so that one batch holds the
//! submissions of new tasks and the later steps of older ones.
//!
//! ```text
//! cargo run --release -p taskgrid-store --example apply_rate -- [BACKEND] [TASKS] [BATCH]
//! ```
//! BACKEND is `sqlite` (durability Process, the default), `sqlite-full`
//! (PowerLoss), `memory`, `writer` (SQLite behind the group-commit Writer,
//! fed batches of BATCH/4 changes from four threads) or `footprint` (memory
//! per finished task in a MemoryStore); TASKS defaults to 200000, BATCH (changes
//! per apply) to 4096.

use std::error::Error;
use std::sync::Arc;
use std::time::{Duration, Instant};

use taskgrid_core::{
    AttemptOutcome, Change, State, TaskId, TaskKind, TaskRecord, TaskSpec, TaskStatus, Timestamp,
    WorkerId,
};
use taskgrid_store::{Durability, MemoryStore, SqliteOptions, SqliteStore, Store, Writer};

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let backend = args.first().map_or("sqlite", String::as_str);
    let tasks: usize = args.get(1).map_or(Ok(200_000), |s| s.parse())?;
    let batch: usize = args.get(2).map_or(Ok(4_096), |s| s.parse())?;
    let per_wave = (batch / 4).max(1);

    let dir = tempfile::tempdir()?;
    let sqlite =
        |durability| SqliteStore::open(dir.path().join("bench.db"), SqliteOptions { durability });
    let (changes, elapsed) = match backend {
        "sqlite" => run_direct(&sqlite(Durability::Process)?, tasks, per_wave)?,
        "sqlite-full" => run_direct(&sqlite(Durability::PowerLoss)?, tasks, per_wave)?,
        "memory" => run_direct(&MemoryStore::new(), tasks, per_wave)?,
        "writer" => run_writer(Arc::new(sqlite(Durability::Process)?), tasks, per_wave)?,
        "footprint" => return footprint(tasks),
        other => return Err(format!("unknown backend {other:?}").into()),
    };
    let rate = changes as f64 / elapsed.as_secs_f64();
    println!(
        "{backend}: {changes} changes ({tasks} tasks) in batches of {batch} in {:.3} s = {rate:.0} changes/s = {:.0} tasks/s",
        elapsed.as_secs_f64(),
        rate / 4.0
    );
    Ok(())
}

/// Applies every wave directly, timing only the `apply` calls.
fn run_direct(
    store: &dyn Store,
    tasks: usize,
    per_wave: usize,
) -> Result<(usize, Duration), Box<dyn Error>> {
    let mut elapsed = Duration::ZERO;
    let mut changes = 0;
    for wave in 0..tasks.div_ceil(per_wave) + 3 {
        let batch = wave_changes(wave, tasks, per_wave);
        let started = Instant::now();
        store.apply(&batch)?;
        elapsed += started.elapsed();
        changes += batch.len();
    }
    Ok((changes, elapsed))
}

/// Submits every wave to a [`Writer`] from four threads (each wave split in
/// four), timing from the first submit to the final flush. A wave's changes
/// depend on earlier waves, so each wave is flushed before the next starts:
/// this measures group commit of concurrent submitters, not pipelining.
fn run_writer(
    store: Arc<dyn Store>,
    tasks: usize,
    per_wave: usize,
) -> Result<(usize, Duration), Box<dyn Error>> {
    let waves: Vec<Vec<Change>> = (0..tasks.div_ceil(per_wave) + 3)
        .map(|w| wave_changes(w, tasks, per_wave))
        .collect();
    let changes = waves.iter().map(Vec::len).sum();
    let writer = Writer::spawn(store);
    let started = Instant::now();
    for wave in waves {
        let quarter = wave.len().div_ceil(4).max(1);
        std::thread::scope(|s| {
            for part in wave.chunks(quarter) {
                let writer = &writer;
                s.spawn(move || writer.submit(part.to_vec(), None));
            }
        });
        writer.flush()?;
    }
    Ok((changes, started.elapsed()))
}

/// Memory per finished task in a [`MemoryStore`], from the resident set size.
fn footprint(tasks: usize) -> Result<(), Box<dyn Error>> {
    let store = MemoryStore::new();
    let before = rss_bytes()?;
    for wave in 0..tasks.div_ceil(4_096) + 3 {
        store.apply(&wave_changes(wave, tasks, 4_096))?;
    }
    let after = rss_bytes()?;
    let per_task = (after.saturating_sub(before)) as f64 / tasks as f64;
    println!(
        "footprint: {tasks} finished tasks (1 attempt each) take {:.0} MiB resident = {per_task:.0} bytes/task",
        (after - before) as f64 / (1 << 20) as f64
    );
    Ok(())
}

fn rss_bytes() -> Result<u64, Box<dyn Error>> {
    let statm = std::fs::read_to_string("/proc/self/statm")?;
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .ok_or("bad /proc/self/statm")?
        .parse()?;
    Ok(pages * 4096)
}

/// Wave `w`: submit tasks of wave `w`, assign wave `w-1`, start wave `w-2`,
/// finish wave `w-3`.
fn wave_changes(w: usize, tasks: usize, per_wave: usize) -> Vec<Change> {
    let mut out = Vec::with_capacity(per_wave * 4);
    let ids =
        |wave: usize| (wave * per_wave..((wave + 1) * per_wave).min(tasks)).map(|i| i as u128);
    let now = Timestamp::from_micros(1_700_000_000_000_000 + w as u64 * 1_000);
    let worker = WorkerId::new("bench-worker");
    out.extend(ids(w).map(|i| Change::Submitted(Box::new(record(i, now)))));
    if let Some(prev) = w.checked_sub(1) {
        for i in ids(prev) {
            let mut s = TaskStatus::new(State::Assigned);
            s.attempt = 1;
            s.worker = Some(worker.clone());
            s.queued_at = Some(now);
            out.push(status(i, State::Queued, now, s, None));
        }
    }
    if let Some(prev) = w.checked_sub(2) {
        for i in ids(prev) {
            let mut s = running(&worker, now);
            s.state = State::Running;
            out.push(status(i, State::Assigned, now, s, None));
        }
    }
    if let Some(prev) = w.checked_sub(3) {
        for i in ids(prev) {
            let mut s = running(&worker, now);
            s.state = State::Succeeded;
            s.finished_at = Some(now);
            s.result = Some(r#"{"ok":true}"#.into());
            s.exit_code = Some(0);
            out.push(status(
                i,
                State::Running,
                now,
                s,
                Some(AttemptOutcome::Succeeded),
            ));
        }
    }
    out
}

fn record(i: u128, now: Timestamp) -> TaskRecord {
    TaskRecord {
        id: task_id(i),
        spec: TaskSpec::new(TaskKind::handler("bench", format!(r#"{{"i":{i}}}"#))),
        created_at: now,
        status: TaskStatus::new(State::Queued),
        progress: None,
        checkpoint: None,
    }
}

fn running(worker: &WorkerId, now: Timestamp) -> TaskStatus {
    let mut s = TaskStatus::new(State::Running);
    s.attempt = 1;
    s.worker = Some(worker.clone());
    s.queued_at = Some(now);
    s.started_at = Some(now);
    s
}

fn status(
    i: u128,
    from: State,
    at: Timestamp,
    status: TaskStatus,
    outcome: Option<AttemptOutcome>,
) -> Change {
    Change::Status {
        id: task_id(i),
        from,
        at,
        status: Box::new(status),
        attempt_outcome: outcome,
    }
}

/// UUIDv7-like ids: a time prefix, then a counter.
fn task_id(i: u128) -> TaskId {
    TaskId::from_u128((0x0192_3f4e_5a6b_u128 << 80) | (0x7000 << 64) | i)
}
