//! `taskgrid demo`: the embedded engine on a SQLite file, doing what a real
//! application would — a batch of thumbnail jobs reporting progress, flaky
//! uploads that succeed on a retry, a report that waits for its inputs, and
//! a long job that gets cancelled — then a summary of what happened.
//!
//! Run it again on the same `--data-dir` and it first finishes whatever the
//! last run left (say, after a crash); `--tasks 0` does only that.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;
use taskgrid_core::{RetryPolicy, State};
use taskgrid_runtime::{Task, TaskError, TaskSystem};
use taskgrid_store::TaskQuery;

/// Tag of the render task the demo cancels.
const RENDER_TAG: &str = "demo-render";

/// Options of `taskgrid demo`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Where the SQLite database lives.
    #[arg(long, env = "TASKGRID_DATA_DIR", default_value = "taskgrid-data")]
    data_dir: PathBuf,
    /// Thumbnail tasks to submit (0: only finish what a previous run left).
    #[arg(long, default_value_t = 300)]
    tasks: usize,
    /// Handler calls run at once.
    #[arg(long, default_value_t = 16)]
    concurrency: u32,
    /// Print the id of every task as soon as its submit is acknowledged.
    #[arg(long)]
    print_ids: bool,
    /// Survive power loss, not only a crash (fsync every commit).
    #[arg(long)]
    full_sync: bool,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let (db, options) = super::server::sqlite_in(&args.data_dir, args.full_sync)?;
    let system = TaskSystem::builder()
        .sqlite(&db, options)
        .concurrency(args.concurrency)
        .handler("thumbnail", |ctx| async move {
            let n: u64 = ctx.payload()?;
            for step in 1..=4u8 {
                tokio::time::sleep(Duration::from_micros(200 + (n % 7) * 100)).await;
                ctx.progress(f32::from(step) / 4.0, format!("pass {step} of 4"));
            }
            Ok(json!({ "image": n, "bytes": 1024 + n * 3 }))
        })
        .handler("upload", |ctx| async move {
            // The network is flaky: every first attempt fails.
            if ctx.attempt() == 1 {
                return Err(TaskError::failed("connection reset by peer"));
            }
            Ok(json!({ "uploaded": ctx.payload::<u64>()?, "attempt": ctx.attempt() }))
        })
        .handler("report", |ctx| async move {
            ctx.log("all uploads done; writing the report");
            Ok(json!({ "report": "ok", "inputs": ctx.payload::<Vec<String>>()?.len() }))
        })
        .handler("long-render", |ctx| async move {
            ctx.progress(0.0, "rendering");
            ctx.cancelled().await;
            ctx.log("render stopped on request");
            Err(TaskError::fatal("stopped"))
        })
        .build()
        .with_context(|| format!("opening {}", db.display()))?;
    let leftover = system.live_tasks();
    if leftover > 0 {
        println!(
            "recovered {leftover} unfinished task(s) from {}",
            db.display()
        );
    }
    // A render left by a killed run would wait for a cancel forever.
    system.cancel_tag(RENDER_TAG).await?;
    system.start()?;
    let started = Instant::now();
    let mut stdout = std::io::stdout().lock();

    let mut thumbs = Vec::with_capacity(args.tasks);
    for n in 0..args.tasks as u64 {
        let task = Task::handler("thumbnail", &n)
            .tag("thumbnails")
            .priority(if n % 10 == 0 {
                taskgrid_core::Priority::HIGH
            } else {
                taskgrid_core::Priority::NORMAL
            });
        let h = system.submit(task).await?;
        if args.print_ids {
            writeln!(stdout, "{}", h.id())?;
            stdout.flush()?;
        }
        thumbs.push(h);
    }
    if args.tasks > 0 {
        let retry = RetryPolicy {
            initial_backoff: Duration::from_millis(20),
            ..RetryPolicy::retries(3)
        };
        let mut uploads = Vec::new();
        for n in 0..10u64 {
            uploads.push(
                system
                    .submit(Task::handler("upload", &n).retry(retry))
                    .await?,
            );
        }
        let mut report = Task::handler(
            "report",
            &uploads
                .iter()
                .map(|u| u.id().to_string())
                .collect::<Vec<_>>(),
        );
        for u in &uploads {
            report = report.after(u.id());
        }
        let report = system.submit(report).await?;
        let render = Task::handler("long-render", &())
            .priority(taskgrid_core::Priority::CRITICAL)
            .tag(RENDER_TAG)
            .timeout(Duration::from_secs(60));
        // Subscribed before submitting, so its start cannot slip past.
        let mut events = system.subscribe();
        let render = system.submit(render).await?;
        // Cancel the render once it is really running.
        loop {
            match events.recv().await {
                Ok(ev) if ev.id == render.id() && ev.new_state() == Some(State::Running) => break,
                Ok(_) => {}
                // Fell behind the bus: read the state instead.
                Err(_) if render.status().await? == State::Running => break,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        render.cancel().await?;

        system.wait_idle().await?;
        let elapsed = started.elapsed();
        let m = system.metrics();
        writeln!(stdout, "\nran {} tasks in {:.2?}", m.submitted, elapsed)?;
        let r = render.wait().await?;
        writeln!(
            stdout,
            "  long-render: {} ({})",
            r.state,
            r.error.map(|e| e.message).unwrap_or_default()
        )?;
        let mut attempts = Vec::new();
        for u in &uploads {
            let r = u.wait().await?;
            if r.is_success() {
                attempts.push(r.attempts);
            }
        }
        let max = attempts.iter().max().copied().unwrap_or(0);
        writeln!(
            stdout,
            "  uploads: {} of {} succeeded, after up to {max} attempts",
            attempts.len(),
            uploads.len()
        )?;
        let r = report.wait().await?;
        writeln!(
            stdout,
            "  report: {} -> {}",
            r.state,
            r.result.unwrap_or_default()
        )?;
        writeln!(
            stdout,
            "  run time p50 {:?} p99 {:?}; queue wait p50 {:?} p99 {:?}; success rate {:.1}%",
            m.run_time.p50,
            m.run_time.p99,
            m.queue_wait.p50,
            m.queue_wait.p99,
            m.success_rate * 100.0
        )?;
    } else {
        system.wait_idle().await?;
    }
    let counts = system.counts().await?;
    let shown: Vec<String> = counts
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(s, n)| format!("{s}={n}"))
        .collect();
    writeln!(stdout, "store {}: {}", db.display(), shown.join(" "))?;
    let failed = system
        .list(&TaskQuery {
            state: Some(State::Failed),
            limit: 5,
            ..TaskQuery::default()
        })
        .await?;
    for f in failed {
        writeln!(stdout, "  failed {}: {:?}", f.id, f.status.error)?;
    }
    system.shutdown().await?;
    Ok(())
}
