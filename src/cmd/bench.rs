//! `taskgrid bench`: load tests of the whole system — a coordinator, workers
//! connected to it over real gRPC on the loopback, and clients submitting
//! over HTTP — in three modes:
//!
//! - **throughput** (the default): N tasks from K clients run by M workers;
//!   submit rate, end-to-end throughput, submit→start and submit→done
//!   latency percentiles, the coordinator's CPU seconds and peak memory,
//!   and the store's size on disk;
//! - **`--latency`**: one task at a time, submit → done as a client sees it
//!   and as the coordinator recorded it;
//! - **`--idle-workers N`**: N connected workers doing nothing but
//!   heartbeats; the coordinator's CPU and memory over a window.
//!
//! The coordinator is started here — in this process by default, or as a
//! child `taskgrid server` with `--coordinator-process` so its CPU and
//! memory are its own — or is an existing one (`--server`). Every mode
//! prints a table and one JSON line (`--json`: only the line).

mod coordinator;
mod fleet;
mod idle;
mod latency;
mod options;
mod plan;
mod records;
mod report;
mod stats;
mod throughput;
mod usage;

pub(crate) use options::Args;
use options::{BenchKind, StoreKind, WorkerMode};
use plan::{Mode, Placement, Plan, kind_name};
use report::Report;

/// Runs the benchmark and prints its report.
pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let plan = args.plan()?;
    let report = match plan.mode {
        Mode::Throughput { tasks } => Report::Throughput(throughput::run(&plan, tasks).await?),
        Mode::Latency { tasks } => Report::Latency(latency::run(&plan, tasks).await?),
        Mode::IdleWorkers { workers } => Report::IdleWorkers(idle::run(&plan, workers).await?),
    };
    if !args.json {
        print!("{}", report.table());
    }
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// The value of the label that ties this run's tasks to its workers, for
/// an existing coordinator whose other workers must not take them; none
/// for a coordinator started here (labels cost a little routing work).
fn route(target: &coordinator::Target) -> Option<String> {
    target.is_external().then(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        format!("{}-{nanos}", std::process::id())
    })
}

/// Starts a coordinator (or attaches to one) and the run's workers,
/// announces the run with `what`, runs `measure` with the coordinator and
/// the route label, and stops the workers and the coordinator whatever
/// `measure` returned.
async fn with_fleet<R>(
    plan: &Plan,
    what: impl FnOnce(&coordinator::Target) -> String,
    measure: impl AsyncFnOnce(&coordinator::Target, Option<&str>) -> anyhow::Result<R>,
) -> anyhow::Result<R> {
    let target = coordinator::Target::start(plan).await?;
    let route = route(&target);
    let outcome = async {
        let fleet = fleet::Fleet::start(plan, &target, route.as_deref()).await?;
        note(what(&target));
        let r = measure(&target, route.as_deref()).await;
        fleet.stop().await;
        r
    }
    .await;
    let stopped = target.stop().await;
    let report = outcome?;
    stopped?;
    Ok(report)
}

/// Progress for people, on stderr (stdout carries the report).
fn note(msg: impl std::fmt::Display) {
    eprintln!("taskgrid bench: {msg}");
}

#[cfg(test)]
mod tests;
